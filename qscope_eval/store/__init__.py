"""The DuckDB store: schema, idempotent batch writes, reads (`db`), and read-only user SQL (`query`).

All SQL of the project lives in this package.
"""

from qscope_eval.store.db import EncodedSet, EncoderRow, Store, sample_id

__all__ = ["EncodedSet", "EncoderRow", "Store", "sample_id"]
