"""Batching for the forward pass: token-budget batch plans, packed rows, host batches, out-of-memory halving.

`plan_batches` groups prompts (longest first) under a token budget; `plan_packed` fills packed
rows (first-fit decreasing); `build_host_batch` pads or packs one batch on the host (pinned on
CUDA) for model.forward; `run_with_oom_split` runs a batch and, on a device out-of-memory error,
halves it and retries each half. `ForwardOptions` says which of these the forward uses.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence, TypeVar

import numpy as np
import torch

from qscope_eval.errors import ModelError, OutOfMemory
from qscope_eval.model.varlen import segment_offsets

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
    """Tokens per forward batch: `encode.batch_tokens` on CUDA, at most CPU_BATCH_TOKENS elsewhere.

    0 (auto: sized from free GPU memory by model.forward.auto_batch_tokens) reads as CPU_BATCH_TOKENS here."""
    if spec.batch_tokens == 0:
        return CPU_BATCH_TOKENS
    return spec.batch_tokens if device.type == "cuda" else min(spec.batch_tokens, CPU_BATCH_TOKENS)


BATCH_OVERHEAD_CUDA = 8192
"""Fixed cost of one eager forward batch on CUDA, in padded-token equivalents: mostly the cuDNN attention plan
that torch builds for every new (batch, width) shape. Fitted on the H200 (bench/results/encode_arms_h200_run1.txt):
the same 2000 prompts ran 8.61 s in 80 batches of <= 16 384 tokens and 6.24 s in 18 of <= 131 072; time =
a x batches + b x padded tokens gives a = 43 ms, b = 4.4 us, a / b = 9 700 tokens. On an H100 an eager pass
over 12 new shapes took 0.51 s more than the same pass once the shapes were known (43 ms a shape;
bench/results/gpu_probe_h100_run2.txt)."""
BATCH_OVERHEAD_CUDA_COMPILED = 1024
"""The same for compiled batches, whose attention runs without cuDNN (model.forward.COMPILED_SDPA: no plan to
build per shape). Measured on an H100 (bench/gpu_probe.py, bench/results/gpu_probe_h100_run2.txt): the 2000 prompts,
shapes known, took 3.48 / 3.41 / 3.38 / 3.42 s planned with 8192 / 2048 / 1024 / 512 (12 / 22 / 30 / 44 batches,
padded / real 1.067 / 1.035 / 1.025 / 1.018): below 1024 smaller batches cost more than the padding saved;
timed batch by batch, a batch costs 0.7 ms + 2.66 us per padded token."""
BATCH_OVERHEAD_CPU = 64
"""The same off CUDA: the demo's MiniLM on 2 cores costs about 3.5 ms per batch and 58 us per token."""


def _widths(lengths: np.ndarray, bucket: int) -> np.ndarray:
    return -(-lengths // bucket) * bucket


def plan_batches(lengths: Sequence[int] | np.ndarray, batch_tokens: int, max_batch: int, bucket: int = 1,
                 overhead: int = BATCH_OVERHEAD_CPU) -> list[np.ndarray]:
    """Group prompt indices into batches, longest first, minimising padded tokens + overhead x batches.

    A batch is a run of the length-sorted prompts (descending, stable); its padded size is its
    first (longest) prompt's length rounded up to `bucket`, times its size, and must stay within
    `batch_tokens` and `max_batch` (a prompt longer than the budget rides alone). Among all such
    cuts, dynamic programming picks the one with the least estimated forward time, `overhead`
    being a batch's fixed cost in tokens (BATCH_OVERHEAD_*): with overhead 0 only equal widths
    share a batch, with a large one batches fill the budget. Against filling each batch greedily
    (the previous planner), bench/plan_bench.py estimates 2-26 % (eager) and 8-27 % (compiled) less
    forward time on lm-eval and synthetic prompts at CUDA settings, and measures no change on the CPU demo. O(n x max_batch).
    Every index appears exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ModelError("plan_batches needs a 1-D sequence of prompt lengths")
    if batch_tokens < 1 or max_batch < 1 or bucket < 1 or overhead < 0:
        raise ModelError("encode.batch_tokens, encode.max_batch and the bucket must be >= 1, the overhead >= 0")
    if len(lengths) and lengths.min() < 1:
        raise ModelError("every prompt needs at least one token; drop empty prompts first")
    order = np.argsort(-lengths, kind="stable")
    width = _widths(lengths[order], bucket)  # padded width of a batch that starts at sorted position i
    n = len(order)
    cost = np.zeros(n + 1)  # cost[i]: least cost of batching sorted prompts i..n-1
    take = np.ones(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        most = max(1, min(max_batch, batch_tokens // int(width[i]), n - i))
        sizes = np.arange(1, most + 1)
        total = width[i] * sizes + overhead + cost[i + 1 : i + most + 1]
        best = int(most - 1 - np.argmin(total[::-1]))  # on a tie, the bigger batch
        cost[i], take[i] = total[best], best + 1
    batches, i = [], 0
    while i < n:
        batches.append(order[i : i + take[i]])
        i += int(take[i])
    return batches


def padded_tokens(lengths: np.ndarray, batches: Sequence[np.ndarray], bucket: int = 1) -> int:
    """Tokens the forward computes for a plan (each batch padded to its longest prompt, rounded up to `bucket`)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(sum(int(_widths(lengths[b].max(), bucket)) * len(b) for b in batches))


# ---------------------------------------------------------------- packed rows and host batches

ALIGN_DETERMINISTIC = 128
"""Deterministic mode: packed prompts start at multiples of flex_attention's block size."""
PAD_SEGMENT = 128
"""Packed padding restarts its positions this often (one attention block of flex_attention)."""


@dataclass(frozen=True)
class ForwardOptions:
    """How prompts become forward batches (build with `options_for` from a suite's EncodeSpec)."""

    batch_tokens: int
    """Token budget per forward: padded B x T, or the packed row's length."""
    max_batch: int = 256
    """Most prompts per padded batch."""
    packing: bool = False
    """Pack prompts into one row with per-prompt attention (PACKABLE_TYPES only)."""
    bucket: int = 1
    """Padded batches: width rounded up to a multiple of this many tokens."""
    overhead: int = BATCH_OVERHEAD_CPU
    """A batch's fixed cost in padded tokens, for plan_batches (options_for: BATCH_OVERHEAD_CUDA[_COMPILED] on CUDA)."""
    align: int = 1
    """Packed batches: each prompt starts at a multiple of this many tokens."""
    fixed_shape: bool = False
    """Packed batches: every row is exactly batch_tokens long (one shape for torch.compile)."""
    compile: bool = False
    """torch.compile each decoder layer (falls back to eager, with a warning, if compilation fails)."""
    attention: str | None = None
    """attn_implementation for packed batches (options_for: model.varlen.VARLEN where flash runs, else flex_attention
    on CUDA, sdpa elsewhere; None: flex_attention on CUDA, sdpa elsewhere)."""
    sdpa_backends: tuple[str, ...] | None = None
    """The sdpa kernels a padded batch may use (torch.nn.attention.SDPBackend names; None: torch's own choice)."""
    group: int | None = None
    """Tokenize and plan this many texts at a time, in order (None: all at once)."""

    def __post_init__(self):
        if self.batch_tokens < 1 or self.max_batch < 1 or self.bucket < 1 or self.align < 1 or self.overhead < 0:
            raise ModelError("forward options: batch_tokens, max_batch, bucket and align must be >= 1, overhead >= 0")
        if self.group is not None and self.group < 1:
            raise ModelError("forward options: group must be >= 1 (or None for all texts at once)")
        if self.fixed_shape and not self.packing:
            raise ModelError("forward options: fixed_shape needs packing (padded batches vary in shape)")


def plan_packed(lengths: np.ndarray, capacity: int, align: int = 1) -> list[np.ndarray]:
    """Prompt indices per packed row: first-fit decreasing into rows of `capacity` tokens.

    Each prompt takes its length rounded up to `align`; a prompt longer than capacity gets a row
    of its own. Rows come out longest-prompt-first; within a row, prompts keep that order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    slots = -(-lengths // align) * align
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []
    free = np.zeros(0, dtype=np.int64)
    for i in order.tolist():
        fits = np.flatnonzero(free >= slots[i])
        if fits.size:
            rows[fits[0]].append(i)
            free[fits[0]] -= slots[i]
        else:
            rows.append([i])
            free = np.append(free, max(0, capacity - slots[i]))
    return [np.asarray(r, dtype=np.int64) for r in rows]


class Deferred:
    """A forward batch's result whose host half has not run yet: its copies to the host are queued behind the
    batch's kernels. `settle()` waits for them and returns the result. model.forward settles a batch's results only
    after it has queued the next batch, so the GPU works on that one meanwhile."""

    def settle(self):  # pragma: no cover - subclasses define it
        raise NotImplementedError


class HostBatch(NamedTuple):
    """One batch built on the host (pinned on CUDA), ready to copy to the device."""

    input_ids: torch.Tensor
    """[B, T] int64 (padded) or [1, L] int64 (packed)."""
    lengths: torch.Tensor
    """[B] int64 real tokens per prompt."""
    special: torch.Tensor
    """[B, T] bool: padding or special token (the padded layout, also for packed batches)."""
    position_ids: torch.Tensor | None
    """Packed: [1, L] int64 positions restarting at 0 per prompt; None for padded batches."""
    gather: torch.Tensor | None
    """Packed: [B, T] int64 index into the packed row of each padded slot (padding points at 0)."""
    segments: torch.Tensor | None = None
    """Packed: int32 [S + 1] offsets of the row's segments, where position_ids restart (model.varlen)."""
    max_segment: int = 0
    """Packed: the longest segment's length in tokens."""


def _host(x: np.ndarray, pin: bool) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t.pin_memory() if pin else t


def build_host_batch(ids_batch: Sequence[np.ndarray], pad_id: int, special_ids: np.ndarray, opts: ForwardOptions,
                     pin: bool) -> HostBatch:
    """Pad (or pack) one batch on the host: numpy work that the background thread does ahead of the GPU."""
    lengths = np.fromiter((len(x) for x in ids_batch), dtype=np.int64, count=len(ids_batch))
    if len(lengths) == 0 or lengths.min() < 1:
        raise ModelError("a forward batch needs prompts of at least one token; drop empty prompts first")
    T = int(lengths.max())
    if not opts.packing:
        T = int(_widths(T, opts.bucket))
    padded = np.full((len(ids_batch), T), pad_id, dtype=np.int64)
    for row, ids in enumerate(ids_batch):
        padded[row, : len(ids)] = ids
    valid = np.arange(T)[None, :] < lengths[:, None]
    special = np.isin(padded, special_ids) | ~valid
    if not opts.packing:
        return HostBatch(_host(padded, pin), _host(lengths, pin), _host(special, pin), None, None)
    slots = -(-lengths // opts.align) * opts.align
    starts = np.concatenate([[0], np.cumsum(slots)[:-1]])
    used = int(starts[-1] + lengths[-1])
    L = max(used, opts.batch_tokens) if opts.fixed_shape else used
    row = np.full(L, pad_id, dtype=np.int64)
    # Padding between and after prompts is never read back; its positions restart every PAD_SEGMENT
    # tokens, so transformers sees it as many short sequences: a long tail costs linear, not
    # quadratic, attention. Each prompt's positions restart at 0.
    pos = np.arange(L, dtype=np.int64) % PAD_SEGMENT
    for s, n, ids in zip(starts.tolist(), lengths.tolist(), ids_batch):
        row[s : s + n] = ids
        pos[s : s + n] = np.arange(n)
        tail = (starts[starts > s].min() if (starts > s).any() else L) - (s + n)
        pos[s + n : s + n + tail] = np.arange(tail) % PAD_SEGMENT
    gather = np.where(valid, starts[:, None] + np.arange(T)[None, :], 0)
    cu, longest = segment_offsets(pos)
    return HostBatch(_host(row[None], pin), _host(lengths, pin), _host(special, pin), _host(pos[None], pin),
                     _host(gather, pin), _host(cu, pin), longest)
