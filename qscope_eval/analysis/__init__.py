"""Pure analysis on sparse matrices: metrics, selection (and, built on them, recommendation, validation, gaps).

Nothing here imports torch, DuckDB, Prefect or Altair (tests/test_layout.py checks it), so every
function can be checked on any set system with numpy / scipy inputs.
"""
