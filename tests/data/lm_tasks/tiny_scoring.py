"""Scoring code of the qscope_tiny test task; prompts must be built without importing it."""

raise RuntimeError("qscope-eval imported scoring code while building prompts")
