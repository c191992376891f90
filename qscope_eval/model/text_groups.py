"""Texts to token ids group by group, each group tokenized while the one before it runs (used by model.forward).

The forward's producer thread plans and builds host batches one group of texts at a time. A small first group
lets the GPU start early; later groups grow GROUP_GROWTH-fold up to the group size (encode.shard_size), and with
TOKENIZE_AHEAD the next group is tokenized in a helper thread ("qscope-tokenize") on every core while this
group's batches are built and run.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from qscope_eval.model.backbone import Backbone


class parallel_tokenization:
    """Context: let the Rust tokenizer encode a batch on all cores (TOKENIZERS_PARALLELISM=true), then restore.

    The variable is off in our environment for fork safety (Dask workers); the tokenizers library reads it
    on every call, and restoring it to its old value keeps a later fork quiet and safe."""

    def __init__(self, on: bool = True):
        self.on, self.saved = on, None

    def __enter__(self):
        if self.on:
            self.saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "true"
        return self

    def __exit__(self, *exc):
        if self.on:
            if self.saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = self.saved
        return False


FIRST_GROUP = 256
"""The first group of texts is at most this large, so the GPU starts while the rest is tokenized."""
GROUP_GROWTH = 4
"""Each group is at most this many times the last (up to `step`): the next group's tokenization, on every core
and one group ahead (TOKENIZE_AHEAD), then fits in this group's forward. (Tokenizing ran at 1.8 M tokens/s on
the H100 machine's 16 cores, the compiled forward at 0.33 M: up to 5x.)"""


def group_bounds(n: int, step: int) -> list[tuple[int, int]]:
    """(start, stop) of the text groups: a small first group, growing GROUP_GROWTH-fold up to `step` at a time."""
    out, g = [], 0
    size = min(step, FIRST_GROUP)
    while g < n:
        out.append((g, min(n, g + size)))
        g += size
        size = min(step, size * GROUP_GROWTH)
    return out


TOKENIZE_AHEAD = True
"""Tokenize the next group of texts while this group's batches are built and run. Without it the producer, held
at most PREFETCH batches ahead, met each new group with nothing tokenized: the GPU waited for a whole group's
tokenization at every shard boundary (bench/encode_arms.py measures both in one run)."""


def tokenized_groups(backbone: Backbone, texts, ids, groups: list[tuple[int, int]], parallel: bool, stop: threading.Event):
    """Yield (start, ids, truncated) per group; with TOKENIZE_AHEAD, group g+1 is tokenized in a helper thread
    (qscope-tokenize) while the caller works on group g."""

    def tokenize(g: int, stop_at: int):
        if texts is None:
            return list(ids[g:stop_at]), np.zeros(stop_at - g, dtype=bool)
        with parallel_tokenization(parallel):
            tok = backbone.tokenize(texts[g:stop_at])
        return tok.ids, tok.truncated

    if not TOKENIZE_AHEAD or texts is None or len(groups) < 2:
        for g, stop_at in groups:
            yield (g, *tokenize(g, stop_at))
        return
    box: dict[int, Any] = {}

    def ahead(i: int):  # runs in the helper thread; an error is raised in the caller
        try:
            box[i] = tokenize(*groups[i])
        except BaseException as e:  # noqa: BLE001
            box[i] = e

    helper = None
    try:
        for i, (g, stop_at) in enumerate(groups):
            if helper is None:
                got = tokenize(g, stop_at)
            else:
                helper.join()
                got = box.pop(i)
                if isinstance(got, BaseException):
                    raise got
            helper = None
            if i + 1 < len(groups) and not stop.is_set():
                helper = threading.Thread(target=ahead, args=(i + 1,), name="qscope-tokenize", daemon=True)
                helper.start()
            yield (g, *got)
    finally:
        if helper is not None:
            helper.join()  # at most one group's tokenization
