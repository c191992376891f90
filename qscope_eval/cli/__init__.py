"""The `qscope-eval` command line (see cli/main.py for the group, cli/common.py for shared options)."""

from qscope_eval.cli.main import cli, main

__all__ = ["cli", "main"]
