"""qscope-eval: evaluation-coverage analytics for LLM benchmark suites.

Runs benchmark prompts through a Qwen model, encodes the residual stream with
Qwen-Scope sparse autoencoders, stores each prompt's fired features in DuckDB
and computes coverage, overlap and redundancy across benchmarks.
"""

__version__ = "0.1.0"
