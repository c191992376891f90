"""Residuals -> pooled sparse features per prompt (DESIGN §3).

One forward batch gives, per layer, hidden states [B, T, d_model] with right padding.
Each *encoder* (an SAE at a layer, with a pooling mode) turns them into one sparse
vector per prompt, returned as COO triples in a `PooledBatch`:

- `last`: the codes at each prompt's last real token (z > 0), n_tokens = 1.
- `max`:  per feature, the max of z over the prompt's masked tokens; n_tokens = tokens where it fired.
- `top`:  the m features with the highest (mean z over masked tokens) / (reference mean z).

The token mask for `max`/`top` drops padding, special tokens, position 0 and attention
sinks (norm > sink_factor x the prompt's median). Everything runs on the model's device
and never materialises a dense [B, T, d_sae] tensor: the real tokens are flattened to
[N, d_model], encoded in chunks to [N, k] (codes of the tokens the mask drops zeroed), and
reduced on flattened (row * d_sae + feature) keys with no host sync (model.pooling), split
back into the PooledBatch's arrays on the device. Only the non-zeros cross to CPU numpy
(`last`: the [B, k] codes, tiny, whole); when the caller defers (pooling.DeferredPooled) they
cross after model.forward has queued the next batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from qscope_eval.errors import SaeError
from qscope_eval.model import pooling
from qscope_eval.model.pooling import DeferredPooled, HostWork, PooledBatch, to_host
from qscope_eval.model.sae import Sae
from qscope_eval.data.suite import POOLINGS, EncodeSpec

if TYPE_CHECKING:  # annotations only: feature_stats imports this module
    from qscope_eval.model.feature_stats import FeatureStats

# Bound on the [chunk, d_sae] fp32 pre-activation block: 2**27 floats = 512 MiB.
PRE_ACT_BUDGET = 2**27


@dataclass
class EncoderHandle:
    """One encoder riding along a forward pass: an SAE at a layer, with its pooling."""

    key: str
    """Encoder identity; the key of its result in `encode_batch`'s output."""
    layer: int
    """Decoder layer whose output residual it reads."""
    pooling: str
    """last | max | top."""
    sae: Sae
    """The SAE (already on the model's device)."""
    stats: FeatureStats | None = None
    """Reference statistics; required for `top` pooling."""
    m: int = 32
    """`top` pooling: features kept per prompt."""
    kind: str = "sae"
    """`sae`, or `null` for the random-dictionary twin (as in its EncoderKey)."""

    def __post_init__(self):
        if self.kind not in ("sae", "null"):
            raise SaeError(f"encoder {self.key}: kind must be `sae` or `null`, not {self.kind!r}")
        if self.pooling not in POOLINGS:
            raise SaeError(f"encoder {self.key}: pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.sae.cfg.layer != self.layer:
            raise SaeError(f"encoder {self.key}: the SAE was loaded for layer {self.sae.cfg.layer}, not {self.layer}")
        if self.pooling == "top":
            if self.stats is None:
                raise SaeError(f"encoder {self.key}: `top` pooling needs reference feature statistics; run `qscope-eval feature-stats`")
            if self.stats.d_sae != self.sae.cfg.d_sae:
                raise SaeError(
                    f"encoder {self.key}: feature stats cover {self.stats.d_sae} features but the SAE has {self.sae.cfg.d_sae}; "
                    f"recompute them for this SAE with `qscope-eval feature-stats`"
                )
        if self.m < 1:
            raise SaeError(f"encoder {self.key}: m must be >= 1")
        self._ref_mean: torch.Tensor | None = None

    def ref_mean(self) -> torch.Tensor:
        """[d_sae] floored reference means on the SAE's device (cached)."""
        if self._ref_mean is None:
            self._ref_mean = torch.from_numpy(self.stats.reference_mean()).to(self.sae.device)
        return self._ref_mean


# ---------------------------------------------------------------- masks and chunked encoding


def token_mask(hidden: torch.Tensor, attention_mask: torch.Tensor, special_mask: torch.Tensor,
               exclude_first: bool = True, sink_factor: float = 10.0) -> torch.Tensor:
    """[B, T] bool: tokens that `max`/`top` pooling read.

    Valid (not padding), not special, not position 0 (when exclude_first), and not an
    attention sink: residual norm > sink_factor x the median norm of the prompt's valid
    non-special tokens. Qwen-Scope SAEs were trained without such outliers (DESIGN §2).
    """
    valid = attention_mask.bool() & ~special_mask.bool()  # [B, T]
    norms = torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float32)  # [B, T], no fp32 copy of hidden
    median = torch.where(valid, norms, torch.nan).nanmedian(dim=1).values  # [B]; NaN for empty rows
    sink = norms > sink_factor * median.unsqueeze(1)  # NaN compares False
    mask = valid & ~sink
    if exclude_first:
        mask[:, 0] = False
    return mask


def chunk_rows(d_sae: int, budget: int = PRE_ACT_BUDGET) -> int:
    """Tokens per encode chunk so the [chunk, d_sae] pre-activations stay within budget."""
    return max(1, budget // d_sae)


MIN_ROWS = 1024
"""Below this many tokens per chunk (a very wide SAE), the dictionary is split into column blocks instead."""


class matmul_precision:
    """Context: fp32 matmuls on CUDA as `precision` (fp32 | tf32); restores the previous setting.

    tf32 rounds only the fp32 SAE weights (to 10 mantissa bits) and accumulates in fp32: the bf16
    residual (7 mantissa bits) is exact in tf32, so the pre-activations err by ~2^-11 relative per
    weight, well below the bf16 residual's own rounding that sets the batch-composition noise floor."""

    def __init__(self, precision: str):
        self.want = {"fp32": "highest", "tf32": "high"}.get(precision, "highest")
        self.saved = None

    def __enter__(self):
        self.saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.want)
        return self

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.saved)
        return False


def _weights(sae: Sae, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc [d_sae, d_model], b_enc [d_sae]) in the matmul dtype; bf16 copies are cached on the SAE."""
    if precision != "bf16" or sae.dtype == torch.bfloat16:
        return sae.W_enc, sae.b_enc
    cache = getattr(sae, "_bf16", None)
    if cache is None or cache[0] is not sae.W_enc:
        cache = (sae.W_enc, sae.W_enc.to(torch.bfloat16), sae.b_enc.to(torch.bfloat16))
        sae._bf16 = cache
    return cache[1], cache[2]


def _topk_block(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, col_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of x @ W.T + b over all d_sae columns, computed col_step columns at a time.

    The top-k of the union of per-block top-ks is the top-k of the whole row, so only
    [rows, col_step] pre-activations are ever live; values are the same fp arithmetic."""
    d_sae = W.shape[0]
    if col_step >= d_sae:
        top = torch.addmm(b, x, W.T).topk(k, dim=-1, sorted=False)
        return top.values, top.indices
    vals, idxs = [], []
    for c in range(0, d_sae, col_step):
        pre = torch.addmm(b[c : c + col_step], x, W[c : c + col_step].T)  # [rows, <=col_step]
        top = pre.topk(min(k, pre.shape[1]), dim=-1, sorted=False)
        vals.append(top.values)
        idxs.append(top.indices + c)
    cand_v, cand_i = torch.cat(vals, dim=1), torch.cat(idxs, dim=1)  # [rows, n_blocks * k]
    best = cand_v.topk(k, dim=-1, sorted=False)
    return best.values, cand_i.gather(1, best.indices)


def encode_tokens(sae: Sae, x: torch.Tensor, precision: str = "fp32", fixed_rows: bool = False,
                  budget: int = PRE_ACT_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, d_model] -> top_acts (fp32), top_indices [N, k], encoded in memory-bounded chunks.

    Rows go `chunk_rows` at a time (pre-activations [chunk, d_sae] within `budget` elements); a
    dictionary so wide that fewer than MIN_ROWS rows fit is split into column blocks instead
    (`_topk_block`). precision: fp32 | tf32 | bf16 matmul (tf32/bf16 on CUDA only; CPU stays fp32).
    fixed_rows: encode in blocks of exactly MIN_ROWS rows (the last zero-padded), so the matmul kernel
    (and its reduction order) does not depend on how many tokens the batch had (deterministic mode)."""
    if x.device.type != "cuda":
        precision = "fp32"
    k, d_sae = sae.cfg.k, sae.cfg.d_sae
    rows = max(chunk_rows(d_sae, budget), 1)
    col_step = d_sae
    if rows < MIN_ROWS:
        rows = MIN_ROWS
        col_step = max(k, budget // MIN_ROWS)
    if fixed_rows:
        rows = MIN_ROWS  # one block shape for every batch; the tail block is zero-padded to it
    W, b = _weights(sae, precision)
    outs_v, outs_i = [], []
    with matmul_precision(precision):
        for i in range(0, max(x.shape[0], 1), rows):
            part = x[i : i + rows].to(W.dtype)
            n = part.shape[0]
            if fixed_rows and n < rows:
                part = torch.cat([part, part.new_zeros(rows - n, part.shape[1])])
            v, j = _topk_block(part, W, b, k, col_step)
            outs_v.append(v[:n].float().relu())
            outs_i.append(j[:n])
    if len(outs_v) == 1:
        return outs_v[0], outs_i[0]
    return torch.cat(outs_v), torch.cat(outs_i)


SYNC_FREE = True
"""`max`/`top` reduce with model.pooling.reduce_max / reduce_top, whose shapes the host knows, so pooling never waits
for the GPU; False: unique_max / unique_top, the same reduction with syncs (bench/encode_arms.py measures both)."""


def _parts(red: pooling.Reduced, d_sae: int) -> HostWork:
    """A reduction's keys -> the PooledBatch's four arrays, split and cast on the device (row int64, feature int32,
    value fp32, n_tokens int32; the numpy split took 13-21 ms per 10^6 pairs on 2 cores, python
    bench/write_bench.py --sections 4), of which only the live leading slots will cross to the host."""
    arrays = (red.key // d_sae, (red.key % d_sae).to(torch.int32), red.value.float(), red.count.to(torch.int32))
    return HostWork(arrays, PooledBatch, red.n_live)


def _token_codes(sae: Sae, hidden: torch.Tensor, mask: torch.Tensor, precision: str, fixed_rows: bool,
                 real: tuple[torch.Tensor, torch.Tensor] | None = None):
    """SAE codes [N, k] of the tokens pooling may read, zeroed where the mask drops a token, and each token's row [N].

    real: (row, col) of the batch's real tokens (pooling.real_tokens); None: every position of the [B, T] grid.
    The tokens the mask drops among them (position 0, specials, sinks: a few per prompt) are encoded too, so that
    N is known on the host and nothing waits for the mask (a nonzero would)."""
    B, T = mask.shape
    if real is None:
        row = torch.arange(B, device=mask.device).repeat_interleave(T)
        x, keep = hidden.reshape(B * T, -1), mask.reshape(-1)
    else:
        row, col = real
        x, keep = hidden[row, col], mask[row, col]  # [N, d_model], [N]
    acts, idx = encode_tokens(sae, x, precision, fixed_rows)  # [N, k]
    return acts.masked_fill(~keep[:, None], 0.0), idx, row


# ---------------------------------------------------------------- pooling modes


def last_positions(attention_mask: torch.Tensor, special_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B] index of each prompt's last real token (-1 for an empty prompt).

    With `special_mask`, the last non-special token (an encoder's trailing [SEP] says nothing
    about the prompt); a prompt with only special tokens falls back to its last valid one.
    """
    T = attention_mask.shape[1]
    pos = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    valid = attention_mask.bool()
    last = torch.where(valid, pos, -1).amax(dim=1)
    if special_mask is not None:
        plain = torch.where(valid & ~special_mask.bool(), pos, -1).amax(dim=1)
        last = torch.where(plain >= 0, plain, last)
    return last


DEFER_HOST_WORK = True
"""encode_batch(defer=True): a pooling.DeferredPooled. What has a known size (`last`'s codes, `max`/`top`'s live
counts) leaves the device as async copies on a side stream; the rest (the live slots) crosses, and everything
becomes PooledBatches, when model.forward settles the batch, after it has queued the next one (so the GPU runs that
one meanwhile). With SYNC_FREE no pooling mode waits for the GPU. bench/encode_arms.py measures both ways in one run
("... host work in turn")."""


def _last_codes(sae: Sae, hidden: torch.Tensor, attention_mask: torch.Tensor, special_mask: torch.Tensor | None,
                precision: str, fixed_rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """pool_last's codes as dense [B, k] device tensors, with no host sync (rows without a real token fire none)."""
    last = last_positions(attention_mask, special_mask)  # [B]
    rows = torch.arange(last.shape[0], device=last.device)
    acts, idx = encode_tokens(sae, hidden[rows, last.clamp(min=0)], precision, fixed_rows)  # [B, k]
    return acts.masked_fill((last < 0)[:, None], 0.0), idx


def _last_coo(acts: np.ndarray, idx: np.ndarray, d_sae: int) -> PooledBatch:
    """[B, k] codes on the host -> the PooledBatch of their non-zeros, sorted by (row, feature)."""
    rows, cols = np.nonzero(acts > 0)  # row-major: rows rise
    feats = idx[rows, cols]
    order = np.argsort(rows.astype(np.int64) * d_sae + feats, kind="stable")  # features rise within a row
    return PooledBatch(rows[order].astype(np.int64), feats[order].astype(np.int32),
                       acts[rows, cols][order].astype(np.float32), np.ones(len(order), np.int32))


def pool_last(sae: Sae, hidden: torch.Tensor, attention_mask: torch.Tensor,
              special_mask: torch.Tensor | None = None, precision: str = "fp32", fixed_rows: bool = False) -> PooledBatch:
    """Codes (z > 0) at each prompt's last real token; the SAE only sees [B, d_model]."""
    acts, idx = _last_codes(sae, hidden, attention_mask, special_mask, precision, fixed_rows)
    return _last_coo(acts.cpu().numpy(), idx.cpu().numpy(), sae.cfg.d_sae)


def _max_parts(sae: Sae, hidden: torch.Tensor, mask: torch.Tensor, precision: str, fixed_rows: bool,
               real=None) -> HostWork:
    """pool_max on the device: per (prompt, feature), max z over the masked tokens and the tokens where it fired."""
    acts, idx, row = _token_codes(sae, hidden, mask, precision, fixed_rows, real)
    reduce = pooling.reduce_max if SYNC_FREE else pooling.unique_max
    return _parts(reduce(acts, idx, row, mask.shape[0], sae.cfg.d_sae), sae.cfg.d_sae)


def pool_max(sae: Sae, hidden: torch.Tensor, mask: torch.Tensor, precision: str = "fp32",
             fixed_rows: bool = False) -> PooledBatch:
    """Per (prompt, feature): max z over the masked tokens and the count of tokens where it fired."""
    return to_host(_max_parts(sae, hidden, mask, precision, fixed_rows))


def _top_parts(sae: Sae, hidden: torch.Tensor, mask: torch.Tensor, ref_mean: torch.Tensor, m: int, precision: str,
               fixed_rows: bool, real=None) -> HostWork:
    """pool_top on the device."""
    acts, idx, row = _token_codes(sae, hidden, mask, precision, fixed_rows, real)
    reduce = pooling.reduce_top if SYNC_FREE else pooling.unique_top
    return _parts(reduce(acts, idx, row, mask.sum(dim=1), ref_mean, m, sae.cfg.d_sae), sae.cfg.d_sae)


def pool_top(sae: Sae, hidden: torch.Tensor, mask: torch.Tensor, ref_mean: torch.Tensor, m: int = 32,
             precision: str = "fp32", fixed_rows: bool = False) -> PooledBatch:
    """Per prompt, the m features with the highest mean z over its masked tokens / ref_mean.

    Mean z counts zeros on tokens where the feature did not fire (so frequency and strength
    both count). `ref_mean` [d_sae] must already be floored (FeatureStats.reference_mean).
    value = the score; n_tokens = tokens where the feature fired. Ties break on lower id.
    """
    return to_host(_top_parts(sae, hidden, mask, ref_mean, m, precision, fixed_rows))


# ---------------------------------------------------------------- one forward, several encoders


def encode_batch(residuals, encoders: Sequence[EncoderHandle], spec: EncodeSpec | None = None,
                 defer: bool = False) -> dict[str, PooledBatch] | DeferredPooled:
    """Pool one forward batch for every encoder; the token mask is computed once per layer.

    `residuals` is a backbone.Residuals: hidden {layer: [B, T, d]}, attention_mask and
    special_mask [B, T] bool (right padding). defer (with DEFER_HOST_WORK): a DeferredPooled whose
    settle() gives the same dict.
    """
    spec = spec or EncodeSpec()
    precision = "fp32" if spec.deterministic else spec.sae_precision
    fixed = spec.deterministic
    for enc in encoders:
        if enc.layer not in residuals.hidden:
            raise SaeError(f"encoder {enc.key} reads layer {enc.layer} but the forward pass returned layers {sorted(residuals.hidden)}")
    masks: dict[int, torch.Tensor] = {}
    real = None  # (row, col) of the real tokens, when the host told their number (no sync to find them)
    if getattr(residuals, "n_real", None) is not None:
        real = pooling.real_tokens(residuals.lengths, residuals.n_real)
    parts = {}
    for enc in encoders:
        hidden = residuals.hidden[enc.layer]
        if enc.pooling == "last":
            codes = _last_codes(enc.sae, hidden, residuals.attention_mask, residuals.special_mask, precision, fixed)
            parts[enc.key] = HostWork(codes, functools.partial(_last_coo, d_sae=enc.sae.cfg.d_sae))
            continue
        if enc.layer not in masks:
            masks[enc.layer] = token_mask(hidden, residuals.attention_mask, residuals.special_mask,
                                          spec.exclude_first, spec.sink_factor)
        if enc.pooling == "max":
            got = _max_parts(enc.sae, hidden, masks[enc.layer], precision, fixed, real)
        else:
            got = _top_parts(enc.sae, hidden, masks[enc.layer], enc.ref_mean(), enc.m, precision, fixed, real)
        parts[enc.key] = got
    if defer and DEFER_HOST_WORK:
        return DeferredPooled(parts)
    return {key: to_host(work) for key, work in parts.items()}


# ---------------------------------------------------------------- corpus iteration (stats, training)


def iter_masked_residuals(backbone, texts: Sequence[str], layer: int, spec: EncodeSpec | None = None,
                          max_tokens: int | None = None, group: int = 256) -> Iterator[torch.Tensor]:
    """Yield [N_tok, d_model] residuals of `texts` at `layer`, only the tokens pooling reads.

    Texts are taken in order, in groups of `group` so that the batch planner's length sorting
    cannot bias which texts make the cut; stops once `max_tokens` tokens were yielded (the
    last batch is cut). Used for reference statistics and for SAE training data. The forward
    is model.forward.iter_texts (the encode job's loop: prefetch, packing, compile, OOM halving).
    """
    from qscope_eval.model.forward import iter_texts, options_for

    spec = spec or EncodeSpec()

    def masked(res) -> torch.Tensor:
        hidden = res.hidden[layer]
        mask = token_mask(hidden, res.attention_mask, res.special_mask, spec.exclude_first, spec.sink_factor)
        return hidden[mask]  # [N_tok, d_model]

    seen = 0
    chunks = iter_texts(backbone, texts, [layer], masked, options_for(spec, backbone, [layer], group=group))
    try:
        for chunk in chunks:
            flat = chunk.result
            if max_tokens is not None and seen + flat.shape[0] >= max_tokens:
                yield flat[: max_tokens - seen]
                return
            seen += flat.shape[0]
            yield flat
    finally:
        chunks.close()  # stops the prefetch thread when the caller stops early
