"""`max` and `top` pooling's reductions on the device, with no host sync, and the pooled arrays' way to the host.

Input: the SAE codes of a batch's tokens (top_acts / top_indices [N, k], zero where the token mask drops the
token) and each token's prompt row [N]. Output: one sparse vector per prompt as flattened
(row * d_sae + feature) keys, sorted, with the pooled value and the tokens where each feature fired.

Two formulations, equal array for array (tests/test_pooling.py):

- `reduce_max` / `reduce_top` (what encode_batch runs): every shape is fixed by N, k, B and m, which the host knows
  before the GPU has run, so the host queues the whole reduction and moves on to the next batch. The output holds
  one slot per (token, code) entry (`top`: per (prompt, rank)); the live slots come first and their number is a
  0-d device tensor. It crosses to the host first (`DeferredPooled`); then exactly the live slots are copied.
- `unique_max` / `unique_top`: boolean indexing and torch.unique, whose output sizes depend on the data, so the
  host waits for the GPU at each of them (three or four times a batch). It is the plain statement of the
  reduction, and what ran before; bench/encode_arms.py measures both (`SYNC_FREE` in model.encode).

Ties in `top` break on the lower feature id; equal keys keep their token order, so on a CPU the sums add in the
same order in both formulations.
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import numpy as np
import torch

from qscope_eval.model.batching import Deferred


class PooledBatch(NamedTuple):
    """Sparse pooled features of one batch, sorted by (row, feature); only non-zeros."""

    row: np.ndarray
    """int64 index of the prompt within the batch."""
    feature: np.ndarray
    """int32 SAE feature id."""
    value: np.ndarray
    """float32 pooled value (`last`: z, `max`: max z, `top`: score)."""
    n_tokens: np.ndarray
    """int32 number of the prompt's tokens on which the feature fired."""


class Reduced(NamedTuple):
    """Pooled features of one batch on the device, sorted by key; the first `n_live` slots are the real ones."""

    key: torch.Tensor
    """[S] int64 row * d_sae + feature (slots past n_live hold garbage)."""
    value: torch.Tensor
    """[S] fp32 pooled value (`max`: max z; `top`: score)."""
    count: torch.Tensor
    """[S] int32 tokens where the feature fired."""
    n_live: torch.Tensor | None
    """0-d int64 on the device: live slots (None: all S are live)."""


def real_tokens(lengths: torch.Tensor, n_real: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) [n_real] of every real token of a right-padded batch, row-major, with no sync.

    `lengths` [B] lives on the device; their sum `n_real` is known on the host (the host batched the prompts)."""
    dev = lengths.device
    lengths = lengths.long()
    row = torch.repeat_interleave(torch.arange(lengths.shape[0], device=dev), lengths, output_size=n_real)
    starts = torch.cumsum(lengths, 0) - lengths  # [B]
    return row, torch.arange(n_real, device=dev) - starts[row]


def _keys(acts: torch.Tensor, idx: torch.Tensor, token_row: torch.Tensor, d_sae: int, sentinel: int) -> torch.Tensor:
    """[N, k] codes -> [N * k] keys row * d_sae + feature, `sentinel` (above every key) where nothing fired."""
    keys = token_row.long()[:, None] * d_sae + idx.long()  # [N, k]
    keys = torch.where(acts > 0, keys, sentinel)
    # int32 keys sort in half the passes; torch.sort keeps the dtype, the caller widens back
    return keys.flatten().to(torch.int32 if sentinel < 2**31 - 1 else torch.int64)


def _segments(keys: torch.Tensor, vals: torch.Tensor):
    """Sort the keys (stable: equal keys keep token order); -> sorted keys, values in that order, and each entry's
    slot (the index of its distinct key) [M]."""
    sk, perm = torch.sort(keys, stable=True)
    new = torch.ones_like(sk, dtype=torch.bool)
    new[1:] = sk[1:] != sk[:-1]
    return sk.long(), vals[perm], torch.cumsum(new, 0) - 1


def _slots(sk: torch.Tensor, seg: torch.Tensor, sentinel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each slot's key (the sentinel for slots no key reached) and its number of entries: the tokens where that
    feature fired in that prompt (a token's top-k indices are distinct)."""
    ukey = torch.full_like(sk, sentinel).scatter_(0, seg, sk)  # a slot's entries all carry its key
    count = torch.zeros(sk.shape, dtype=torch.int32, device=sk.device)
    count.scatter_add_(0, seg, torch.ones_like(seg, dtype=torch.int32))
    return ukey, count


def reduce_max(acts: torch.Tensor, idx: torch.Tensor, token_row: torch.Tensor, n_rows: int, d_sae: int) -> Reduced:
    """Per (prompt, feature): max z over the tokens and the tokens where it fired; no sync. [N * k] slots."""
    sentinel = n_rows * d_sae
    sk, sv, seg = _segments(_keys(acts, idx, token_row, d_sae, sentinel), acts.flatten().float())
    ukey, count = _slots(sk, seg, sentinel)
    best = torch.zeros_like(sv).scatter_reduce_(0, seg, sv, reduce="amax", include_self=False)
    # slots are numbered in key order and the sentinel sorts last: the live ones are a prefix
    return Reduced(ukey, best, count, (ukey < sentinel).sum())


def reduce_top(acts: torch.Tensor, idx: torch.Tensor, token_row: torch.Tensor, n_tok: torch.Tensor,
               ref_mean: torch.Tensor, m: int, d_sae: int) -> Reduced:
    """Per prompt, the m features with the highest (sum z / n_tok[row]) / ref_mean; no sync. [B * m + 1] slots.

    n_tok [B]: tokens the mask kept per prompt (the mean counts zeros where a feature did not fire)."""
    B = n_tok.shape[0]
    sentinel = B * d_sae
    sk, sv, seg = _segments(_keys(acts, idx, token_row, d_sae, sentinel), acts.flatten().float())
    ukey, count = _slots(sk, seg, sentinel)
    sums = torch.zeros_like(sv).scatter_add_(0, seg, sv)
    live = ukey < sentinel
    row = torch.where(live, ukey // d_sae, B)  # dead slots rank in a row of their own, B
    score = sums / n_tok[row.clamp(max=B - 1)].float() / ref_mean.to(sums.device)[ukey % d_sae]
    score = torch.where(live, score, 0.0)
    # rank within each row: stable sorts keep key (feature) order among equal scores
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[torch.sort(row[order], stable=True).indices]
    per_row = torch.zeros(B + 1, dtype=torch.long, device=row.device).scatter_add_(0, row, torch.ones_like(row))
    starts = torch.cumsum(per_row, 0) - per_row
    row_o = row[order]
    rank = torch.arange(order.numel(), device=order.device) - starts[row_o]
    keep = (rank < m) & (score[order] > 0) & (row_o < B)
    dest = torch.where(keep, row_o * m + rank, B * m)  # one slot per (prompt, rank); the rest share a bin
    out_key = torch.full((B * m + 1,), sentinel, dtype=torch.long, device=row.device)
    out_key.scatter_(0, dest, torch.where(keep, ukey[order], sentinel))
    out_key[B * m] = sentinel  # the bin got whichever write came last
    out_val = torch.zeros(B * m + 1, dtype=score.dtype, device=row.device).scatter_(0, dest, score[order])
    out_cnt = torch.zeros(B * m + 1, dtype=count.dtype, device=row.device).scatter_(0, dest, count[order])
    key, p = torch.sort(out_key)  # back to (row, feature) order; the bin and empty slots last
    return Reduced(key, out_val[p], out_cnt[p], (key < sentinel).sum())


# ---------------------------------------------------------------- the same with syncs (reference)


def _fired(acts: torch.Tensor, idx: torch.Tensor, token_row: torch.Tensor, d_sae: int):
    fired = acts > 0  # [N, k]
    keys = token_row.long()[:, None].expand_as(idx)[fired] * d_sae + idx[fired].long()  # sync: sized by the data
    return keys, acts[fired].float()


def unique_max(acts: torch.Tensor, idx: torch.Tensor, token_row: torch.Tensor, n_rows: int, d_sae: int) -> Reduced:
    """reduce_max through torch.unique (syncs; every slot live)."""
    keys, vals = _fired(acts, idx, token_row, d_sae)
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    best = torch.zeros(uniq.shape[0], dtype=vals.dtype, device=vals.device)
    best.scatter_reduce_(0, inv, vals, reduce="amax", include_self=False)
    return Reduced(uniq, best, torch.bincount(inv, minlength=uniq.shape[0]).to(torch.int32), None)


def unique_top(acts: torch.Tensor, idx: torch.Tensor, token_row: torch.Tensor, n_tok: torch.Tensor,
               ref_mean: torch.Tensor, m: int, d_sae: int) -> Reduced:
    """reduce_top through torch.unique and boolean indexing (syncs; every slot live)."""
    keys, vals = _fired(acts, idx, token_row, d_sae)
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    sums = torch.zeros(uniq.shape[0], dtype=torch.float32, device=vals.device).index_add_(0, inv, vals)
    counts = torch.bincount(inv, minlength=uniq.shape[0]).to(torch.int32)
    row, feat = uniq // d_sae, uniq % d_sae
    score = sums / n_tok[row].float() / ref_mean.to(sums.device)[feat]
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[torch.sort(row[order], stable=True).indices]
    per_row = torch.bincount(row, minlength=n_tok.shape[0])
    starts = torch.cumsum(per_row, 0) - per_row
    rank = torch.arange(order.numel(), device=order.device) - starts[row[order]]
    keep = order[(rank < m) & (score[order] > 0)].sort().values  # back to (row, feature) order
    return Reduced(uniq[keep], score[keep], counts[keep], None)


# ---------------------------------------------------------------- to the host


class HostWork(NamedTuple):
    """One encoder's pooled arrays on the device, and how they become a PooledBatch on the host."""

    tensors: tuple[torch.Tensor, ...]
    """Device tensors; finish(*their numpy arrays) is the PooledBatch."""
    finish: Callable[..., PooledBatch]
    live: torch.Tensor | None = None
    """0-d count of the live leading entries of every tensor (`max`/`top` slots): only those cross to the host."""


_COPY_STREAMS: dict = {}


def _copy_stream(device: torch.device):
    """One side stream per device for the device-to-host copies (a copy queued on the compute stream would hold
    the next batch's kernels back until it is done)."""
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


def _pinned_copy(t: torch.Tensor) -> torch.Tensor:
    """An async copy to pinned host memory (CUDA), or the tensor itself (CPU)."""
    if t.device.type != "cuda":
        return t
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return out.copy_(t, non_blocking=True)


def _early(work: HostWork) -> tuple[torch.Tensor, ...]:
    """What can cross before the host knows a size: the whole tensors, or only the live count."""
    return work.tensors if work.live is None else (work.live,)


def to_host(work: HostWork, early: tuple[torch.Tensor, ...] | None = None, stream=None) -> PooledBatch:
    """The PooledBatch of `work`. `early`: _early(work) already on the host (else copied now, waiting for the
    device). The live slots of a sized work are copied once their count is known, exactly, on `stream`."""
    early = tuple(t.cpu() for t in _early(work)) if early is None else early
    if work.live is None:
        return work.finish(*(t.numpy() for t in early))
    n = int(early[0])
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        # a copy of exactly the live slots (on CPU, of the slice: the [N * k] buffers are not kept alive)
        arrays = [t[:n].cpu() if t.device.type != "cpu" else t[:n].clone() for t in work.tensors]
    return work.finish(*(a.numpy() for a in arrays))


class DeferredPooled(Deferred):
    """One batch's pooled arrays, per encoder, on their way to the host; settle() -> {key: PooledBatch}.

    At construction (model.forward then queues the next batch) it queues async copies of what has a known size
    (`last`'s [B, k] codes, `max`/`top`'s live counts) on a side stream, behind the batch's kernels; settle() waits
    for them, then copies exactly the live slots of `max`/`top` (tens of MB at most, while the GPU runs the next
    batch) instead of every slot (up to 20 bytes x k per token)."""

    def __init__(self, parts: dict[str, HostWork]):
        self.parts, self.stream, self.event = parts, None, None
        every = [t for w in parts.values() for t in (*w.tensors, *(() if w.live is None else (w.live,)))]
        on_gpu = [t for t in every if t.device.type == "cuda"]
        if not on_gpu:
            self.early = {key: _early(w) for key, w in parts.items()}
            return
        device = on_gpu[0].device
        self.stream = _copy_stream(device)
        self.stream.wait_stream(torch.cuda.current_stream(device))  # the copies start once pooling's kernels are done
        with torch.cuda.stream(self.stream):
            self.early = {key: tuple(_pinned_copy(t) for t in _early(w)) for key, w in parts.items()}
            for t in on_gpu:  # made on the compute stream, read on this one: not reused before the copies are done
                t.record_stream(self.stream)
            self.event = torch.cuda.Event()
            self.event.record(self.stream)

    def settle(self) -> dict[str, PooledBatch]:
        if self.event is not None:
            self.event.synchronize()
        return {key: to_host(w, self.early[key], self.stream) for key, w in self.parts.items()}
