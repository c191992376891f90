"""The DuckDB store: schema, idempotent batch writes, reads (`db`), and read-only user SQL (`query`).

All SQL of the project lives in this package.
"""

from qscope_eval.store.db import EncodedSet, EncoderRow, Store, sample_id, sample_ids
from qscope_eval.store.parts import copy_database

__all__ = ["EncodedSet", "EncoderRow", "Store", "copy_database", "sample_id", "sample_ids"]
