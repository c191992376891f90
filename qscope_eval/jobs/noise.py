"""Measure and record the batch-composition noise floor of a suite's encoders (analysis.noise compares).

`measure_noise_floor` runs the same prompts through the production path twice (pipeline.encode_texts):
as the suite batches them, and each prompt alone; `record_noise_floor` stores the result per encoder,
where drift (jobs.summary) reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from qscope_eval.analysis.noise import NoiseFloor, compare_sets, feature_sets
from qscope_eval.errors import QScopeError


def measure_noise_floor(runtime, texts: Sequence[str], suite, n: int = 64, seed: int = 0) -> dict[str, NoiseFloor]:
    """Per encoder key: NoiseFloor of n of `texts` (seeded draw), as the suite batches them vs each alone."""
    from qscope_eval.jobs.pipeline import encode_texts

    texts = list(dict.fromkeys(texts))
    if not texts:
        raise QScopeError("no texts to measure the noise floor on")
    pick = np.sort(np.random.default_rng(seed).choice(len(texts), size=min(n, len(texts)), replace=False))
    chosen = [texts[i] for i in pick]
    ids = np.arange(len(chosen), dtype=np.int64)
    batched = list(encode_texts(runtime, ids, chosen, suite))
    # each prompt alone: groups of one text, so every forward holds exactly one prompt
    alone = list(encode_texts(runtime, ids, chosen, suite, group=1))
    return {h.key: compare_sets(feature_sets(batched, h.key), feature_sets(alone, h.key), seed) for h in runtime.handles}


def with_deterministic(suite, on: bool = True):
    """The suite with encode.deterministic set (for measuring the floor of the deterministic mode)."""
    return dataclasses.replace(suite, encode=dataclasses.replace(suite.encode, deterministic=on))


def record_noise_floor(suite, store, n: int = 64, seed: int = 0) -> dict[str, dict]:
    """Measure the floor on n of the suite's prompts and record it per encoder in the store (drift reads it).

    Returns {encoder key: NoiseFloor dict}. The suite's encoders must be registered (run encode first)."""
    from qscope_eval.jobs.pipeline import load_rows
    from qscope_eval.model.encoders import load_runtime

    runtime = load_runtime(suite)
    floors = measure_noise_floor(runtime, load_rows(suite)["text"].tolist(), suite, n, seed)
    by_key = {e.key: e for e in store.encoders()}
    out = {}
    for key, floor in floors.items():
        if key not in by_key:
            raise QScopeError(f"encoder {key} is not in the database; encode the suite first")
        store.save_noise_floor(by_key[key].encoder_id, floor.to_dict())
        out[key] = floor.to_dict()
    return out
