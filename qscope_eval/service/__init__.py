"""The team service: `qscope-eval serve` (app.py), read-only over one database."""
