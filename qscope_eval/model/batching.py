"""Batching for the forward pass: token-budget batch plans, and out-of-memory halving.

`plan_batches` groups prompts (longest first) under a token budget; `run_with_oom_split`
runs a batch and, on a device out-of-memory error, halves it and retries each half.
"""

from __future__ import annotations

import gc
import math
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

from qscope_eval.errors import ModelError, OutOfMemory

T = TypeVar("T")
R = TypeVar("R")


def is_oom(exc: BaseException) -> bool:
    """True for device out-of-memory errors (and any exception class named OutOfMemoryError, for tests)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory() -> None:
    """After a CUDA OOM: collect tensors only reachable from reference cycles, return cached blocks."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def run_with_oom_split(items: Sequence[T], fn: Callable[[Sequence[T]], R],
                       on_split: Callable[[int], None] | None = None,
                       single_message: Callable[[T], str] | None = None) -> list[tuple[list[T], R]]:
    """Run `fn(items)`; on out-of-memory, halve the batch and retry each half (recursively).

    Returns `[(chunk, fn(chunk)), ...]`: contiguous chunks of `items` in their
    original order (one chunk when nothing failed), so concatenating the chunks
    gives `items` back. `on_split(n)` is told each time a batch of n items is
    split. An item that fails alone raises OutOfMemory with `single_message(item)`.
    """
    items = list(items)
    if not items:
        return []
    failed = False
    try:
        return [(items, fn(items))]
    except Exception as e:  # noqa: BLE001 - anything that is not an OOM is re-raised
        if not is_oom(e):
            raise
        failed = True
    if failed:
        # Outside the except block, so the traceback (and the tensors its
        # frames hold) is gone before we ask the allocator to release memory.
        free_device_memory()
    if len(items) == 1:
        msg = single_message(items[0]) if single_message else "a single item does not fit in device memory"
        raise OutOfMemory(msg)
    if on_split is not None:
        on_split(len(items))
    mid = (len(items) + 1) // 2
    return (run_with_oom_split(items[:mid], fn, on_split, single_message)
            + run_with_oom_split(items[mid:], fn, on_split, single_message))


CPU_BATCH_TOKENS = 2048
"""Token budget cap off CUDA: on a CPU, bigger batches only add padding and lose cache locality
(demo, 2 cores: 16384-token batches ran 1.37x slower than 2048-token ones; results are identical)."""


def batch_tokens(spec, device) -> int:
    """Tokens per forward batch: `encode.batch_tokens` on CUDA, at most CPU_BATCH_TOKENS elsewhere."""
    return spec.batch_tokens if device.type == "cuda" else min(spec.batch_tokens, CPU_BATCH_TOKENS)


SPREAD = 0.8
"""plan_batches closes a batch at a prompt shorter than SPREAD x the batch's longest ..."""
MIN_FILL = 0.125
"""... once the batch holds MIN_FILL x the token budget, so batches stay large enough to keep a GPU busy."""


def plan_batches(lengths: Sequence[int] | np.ndarray, batch_tokens: int, max_batch: int) -> list[np.ndarray]:
    """Group prompt indices into batches, longest first, each with padded size <= batch_tokens.

    Padded size = (longest prompt in the batch) x (batch size). Since indices are
    sorted by length (descending, stable), a batch's first prompt is its longest,
    so each batch takes as many prompts as fit behind it, but stops early at a
    prompt shorter than SPREAD x the longest once it already holds MIN_FILL of the
    budget: without that, a small shard at a GPU budget (300 demo prompts, 16 384
    tokens) rides in 4 batches padded to 1.48x its real tokens; with it, 13 batches
    padded to 1.10x. A prompt longer than batch_tokens gets a batch of its own.
    Every index appears exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ModelError("plan_batches needs a 1-D sequence of prompt lengths")
    if batch_tokens < 1 or max_batch < 1:
        raise ModelError("encode.batch_tokens and encode.max_batch must be >= 1")
    if len(lengths) and lengths.min() < 1:
        raise ModelError("every prompt needs at least one token; drop empty prompts first")
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, min(max_batch, batch_tokens // longest))
        # prompts in this candidate batch at least SPREAD x the longest (the segment is sorted, descending)
        close = int(np.searchsorted(-lengths[order[start:start + size]], -SPREAD * longest, side="right"))
        size = max(1, min(size, max(close, math.ceil(MIN_FILL * batch_tokens / longest))))
        batches.append(order[start:start + size])
        start += size
    return batches
