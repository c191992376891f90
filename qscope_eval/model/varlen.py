"""Packed prompts through flash attention's variable-length kernel: no padding, no mask, one row shape.

A packed batch is one row [1, L] of prompts laid end to end (model.batching.build_host_batch). Its
segments are where position_ids restart at 0: each prompt, and each PAD_SEGMENT-token piece of the
padding after it. flex_attention and sdpa get the same segments from transformers as a block mask or a
dense [L, L] mask; this module hands them to a kernel that takes them directly, as offsets:

    cu_seqlens = [0, s1, s2, ..., L]   int32 [S + 1]   segment i is tokens cu[i]:cu[i+1] of the row
    max_len    = max(cu[i+1] - cu[i])  host int        sizes the kernel's grid (no device sync to find it)

On CUDA (bf16/fp16, sm80+) the kernel is FlashAttention-2's varlen forward as torch ships it
(torch.ops.aten._flash_attention_forward: causal within each segment, grouped-query attention native,
the same kernel family sdpa's flash backend uses for padded batches). Its cost is that of the real
tokens; the row has one shape, so torch.compile can take whole decoder layers with the attention inside
(compiling.compile_layers scope 'layer'), which the flex path cannot (a new BlockMask closure per batch).
Elsewhere (CPU tests, fp32) the same segments become a dense block-diagonal causal mask through sdpa:
exact and quadratic, which CPU rows of at most backbone.CPU_BATCH_TOKENS afford.

The function is registered with transformers' AttentionInterface as VARLEN; with that name set as the
model's attn_implementation, transformers builds no mask at all (its mask functions do not know the name)
and passes our keyword arguments (SEGMENTS_KW, MAX_LEN_KW) through the decoder layers to it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

VARLEN = "qscope_varlen"
"""attn_implementation name of packed batches through the varlen kernel (ForwardOptions.attention)."""
SEGMENTS_KW = "qscope_cu_seqlens"
"""Model keyword argument: int32 [S + 1] segment offsets into the packed row, on the model's device."""
MAX_LEN_KW = "qscope_max_len"
"""Model keyword argument: the longest segment's length (a Python int)."""


def segment_offsets(position_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(cu_seqlens int32 [S + 1], longest segment) of a packed row whose positions restart at 0 per segment.

    position_ids: int64 [L]. The same segments transformers derives for flex_attention and sdpa
    (masking_utils.find_packed_sequence_indices: a new sequence wherever the position does not follow on)."""
    pos = np.asarray(position_ids, dtype=np.int64).reshape(-1)
    if pos.size == 0:
        raise ValueError("a packed row needs at least one token")
    starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1] + 1])
    cu = np.r_[starts, pos.size].astype(np.int32)
    return cu, int(np.diff(cu).max())


def flash_varlen_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """True where torch's FlashAttention-2 varlen kernel runs: CUDA, sm80 or newer, bf16 or fp16."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16) or not torch.cuda.is_available():
        return False
    if not hasattr(torch.ops.aten, "_flash_attention_forward"):
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                 scale: float | None) -> torch.Tensor:
    """Causal attention within segments on CUDA. q [L, H, D], k/v [L, H_kv, D] (H a multiple of H_kv) -> [L, H, D]."""
    out = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale)
    return out[0]


def dense_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                 scale: float | None) -> torch.Tensor:
    """The same attention as flash_varlen through sdpa and a dense block-diagonal causal mask (any device, any dtype)."""
    L = q.shape[0]
    idx = torch.arange(L, device=q.device)
    seg = torch.searchsorted(cu.to(idx.dtype), idx, right=True)  # [L] segment number, 1-based
    mask = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])  # [L, L] same segment, causal
    qh, kh, vh = (t.transpose(0, 1)[None] for t in (q, k, v))  # [1, H, L, D]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[None, None], scale=scale,
                                         enable_gqa=kh.shape[1] != qh.shape[1])
    return out[0].transpose(0, 1)  # [L, H, D]


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention function (AttentionInterface): q [1, H, L, D], k/v [1, H_kv, L, D] -> ([1, L, H, D], None).

    The segments come as keyword arguments of the model call (SEGMENTS_KW, MAX_LEN_KW)."""
    cu = kwargs.get(SEGMENTS_KW)
    max_len = kwargs.get(MAX_LEN_KW)
    if cu is None or max_len is None or query.shape[0] != 1:
        raise RuntimeError(f"attn_implementation {VARLEN!r} runs packed rows only: call the model on one row with "
                           f"{SEGMENTS_KW} and {MAX_LEN_KW} (model.forward does)")
    if kwargs.get("sliding_window"):
        raise RuntimeError(f"attn_implementation {VARLEN!r} does not do sliding-window attention")
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [L, H, D]
    # device and dtype are static to torch.compile; model.forward picks VARLEN on CUDA only where flash_varlen_ok
    run = flash_varlen if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) else dense_varlen
    return run(q, k, v, cu, int(max_len), scaling)[None], None


def register() -> str:
    """Register VARLEN with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface

    if VARLEN not in AttentionInterface._global_mapping:
        AttentionInterface.register(VARLEN, varlen_attention)
    return VARLEN


CAUSAL_SDPA = "qscope_sdpa_causal"
"""transformers' own sdpa attention function under a name its mask functions do not know. Padded causal batches run
without a mask (model.forward): transformers would build none for them either, but only after checking the
position_ids for packed sequences with a Python `if` on a device tensor (masking_utils.find_packed_sequence_indices),
a host sync at the start of every batch that lets the GPU drain before the batch's kernels are queued. Under this
name the mask step returns at once, and each layer calls the same sdpa function with the same arguments."""


def register_causal_sdpa() -> str:
    """Register CAUSAL_SDPA with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if CAUSAL_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)
    return CAUSAL_SDPA
