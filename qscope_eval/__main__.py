"""`python -m qscope_eval ...` runs the CLI (same as the `qscope-eval` script)."""

from qscope_eval.cli import main

main()
