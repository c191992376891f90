"""Data in: the suite spec, benchmark sources (lm-eval tasks, local files) and the offline assets PyPI packages ship."""
