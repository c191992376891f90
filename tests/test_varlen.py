"""Packed rows through the varlen attention (qscope_eval.model.varlen) on CPU.

The CUDA kernel (FlashAttention-2's varlen forward) does not run here; what does: the segments a packed row
gives the kernel (checked against transformers' own reading of the positions), the glue around the kernel
(checked with an independent loop implementation of the kernel's contract standing in for it), the
dense-mask path end to end through a tiny random Qwen3 (packed rows equal each prompt alone, compiled
or not), and the options that pick it.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from qscope_eval.data.suite import EncodeSpec
from qscope_eval.model import compiling, forward, varlen
from qscope_eval.model.batching import ForwardOptions, build_host_batch, plan_packed
from synthetic import tiny_backbone
from test_forward import LAYERS, TEXTS, per_prompt


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def _reference_kernel(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, scale=None):
    """torch.ops.aten._flash_attention_forward's contract, one segment and one head at a time (fp64 loops)."""
    assert dropout_p == 0.0 and not return_debug_mask and torch.equal(cu_q, cu_k) and max_q == max_k
    assert cu_q.dtype == torch.int32 and max_q == int(torch.diff(cu_q).max())
    L, H, D = q.shape
    group = H // k.shape[1]
    out = torch.zeros_like(q, dtype=torch.float64)
    bounds = cu_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        for h in range(H):
            s = q[a:b, h].double() @ k[a:b, h // group].double().T * (scale or 1 / math.sqrt(D))
            if is_causal:
                s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
            out[a:b, h] = torch.softmax(s, -1) @ v[a:b, h // group].double()
    return out.to(q.dtype), None, None, None, None


def test_segments_are_where_transformers_sees_a_new_sequence():
    from transformers.masking_utils import find_packed_sequence_indices

    rng = np.random.default_rng(1)
    ids = [rng.integers(5, 100, size=n) for n in rng.integers(1, 300, size=60)]
    lengths = np.array([len(x) for x in ids])
    for opts in (ForwardOptions(batch_tokens=1024, packing=True), ForwardOptions(batch_tokens=2048, packing=True,
                                                                               align=16, fixed_shape=True)):
        for row in plan_packed(lengths, opts.batch_tokens, opts.align):
            h = build_host_batch([ids[i] for i in row], 0, np.array([1]), opts, pin=False)
            seq = find_packed_sequence_indices(h.position_ids)[0].numpy()  # [L] sequence number per token
            cu = h.segments.numpy()
            assert cu.dtype == np.int32 and cu[0] == 0 and cu[-1] == h.input_ids.shape[1]
            assert np.array_equal(np.repeat(np.arange(len(cu) - 1), np.diff(cu)), seq - seq[0])
            assert h.max_segment == np.diff(cu).max()
            # every prompt starts a segment and fits inside it
            starts = set(cu[:-1].tolist())
            for r, i in enumerate(row):
                first = int(h.gather[r, 0])
                assert first in starts and cu[np.searchsorted(cu, first, side="right")] >= first + lengths[i]


def test_flash_glue_against_the_kernels_contract(monkeypatch):
    """flash_varlen with an fp64 loop implementation of the kernel standing in: same result as the dense path."""
    monkeypatch.setattr(torch.ops.aten, "_flash_attention_forward", _reference_kernel)
    g = torch.Generator().manual_seed(0)
    cu, longest = varlen.segment_offsets(np.r_[np.arange(7), np.arange(1), np.arange(12), np.arange(5)])
    assert cu.tolist() == [0, 7, 8, 20, 25] and longest == 12
    q = torch.randn(25, 4, 8, generator=g)
    k, v = torch.randn(25, 2, 8, generator=g), torch.randn(25, 2, 8, generator=g)  # grouped-query: 2 kv heads
    cu_t = torch.from_numpy(cu)
    got = varlen.flash_varlen(q, k, v, cu_t, longest, 0.3)
    want = varlen.dense_varlen(q, k, v, cu_t, longest, 0.3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # a token attends within its own segment only: changing another segment leaves it as it was
    k2 = k.clone()
    k2[8:20] += 5
    torch.testing.assert_close(varlen.dense_varlen(q, k2, v, cu_t, longest, 0.3)[:8], want[:8])
    assert not torch.allclose(varlen.dense_varlen(q, k2, v, cu_t, longest, 0.3)[8:20], want[8:20])


def test_varlen_rows_equal_each_prompt_alone(bb, monkeypatch):
    calls = []
    dense = varlen.dense_varlen
    monkeypatch.setattr(varlen, "dense_varlen", lambda *a: calls.append(a[3].numel()) or dense(*a))
    alone = per_prompt(bb, ForwardOptions(batch_tokens=4096, max_batch=1))
    for opts in (ForwardOptions(batch_tokens=4096, packing=True, attention=varlen.VARLEN),
                 ForwardOptions(batch_tokens=256, packing=True, align=16, fixed_shape=True, attention=varlen.VARLEN),
                 ForwardOptions(batch_tokens=40, packing=True, attention=varlen.VARLEN)):  # some prompts exceed a row
        calls.clear()
        packed = per_prompt(bb, opts)
        assert calls and max(calls) > 2  # the varlen attention ran, on rows of several segments
        assert packed.keys() == alone.keys() == set(range(len(TEXTS)))
        for i in alone:
            for n in LAYERS:
                torch.testing.assert_close(packed[i][n], alone[i][n], atol=2e-5, rtol=2e-5)
    assert bb.model.config._attn_implementation == "sdpa"  # restored after the packed forwards


def test_compiled_varlen_rows_compile_whole_layers(bb, monkeypatch):
    scopes = []

    def compile_eager(backbone, scope="layer", **kw):  # dynamo tracing without inductor: seconds on CPU
        scopes.append(scope)
        return compiling.compile_layers(backbone, backend="eager", scope=scope)

    monkeypatch.setattr(forward, "compile_layers", compile_eager)
    eager = per_prompt(bb, ForwardOptions(batch_tokens=4096))
    try:
        got = per_prompt(bb, ForwardOptions(batch_tokens=4096, packing=True, compile=True, attention=varlen.VARLEN))
        assert compiling.compiled(bb) and bb.model._qscope_compile.scope == "layer" and scopes == ["layer"]
        assert bb.model._qscope_compile.failed is None
    finally:
        compiling.uncompile(bb)
    for i in eager:
        for n in LAYERS:
            torch.testing.assert_close(got[i][n], eager[i][n], atol=2e-5, rtol=2e-5)


def test_options_pick_varlen_where_flash_runs(bb, monkeypatch):
    packed_compiled = EncodeSpec(batch_tokens=4096, packing=True, compile=True)
    cpu = forward.options_for(packed_compiled, bb, LAYERS)
    assert cpu.attention is None and cpu.fixed_shape  # CPU: sdpa, flex-style fixed rows for the MLP compile
    monkeypatch.setattr(varlen, "flash_varlen_ok", lambda device, dtype: True)
    opts = forward.options_for(packed_compiled, bb, LAYERS)
    assert opts.attention == varlen.VARLEN and not opts.fixed_shape and opts.packing
    assert forward.options_for(EncodeSpec(batch_tokens=4096, packing=True), bb, LAYERS).attention == varlen.VARLEN
    det = forward.options_for(EncodeSpec(batch_tokens=4096, deterministic=True), bb, LAYERS)
    assert det.attention is None and det.fixed_shape and det.align > 1  # the measured flex path
    assert forward.options_for(EncodeSpec(batch_tokens=4096, compile=True), bb, LAYERS).attention is None
    sliding = ["sliding_attention"] + ["full_attention"] * (bb.model.config.num_hidden_layers - 1)
    with monkeypatch.context() as m:  # a sliding-window layer needs transformers' own mask
        m.setattr(bb.model.config, "layer_types", sliding)
        assert forward.options_for(packed_compiled, bb, LAYERS).attention is None
        assert isinstance(forward._maskless_sdpa(bb), contextlib.nullcontext)
    monkeypatch.setattr(forward, "PACKED_VARLEN", False)
    assert forward.options_for(packed_compiled, bb, LAYERS).attention is None


def test_varlen_refuses_a_call_without_segments(bb):
    ids = torch.tensor([[5, 6, 7]])
    with forward.attention_implementation(bb.model, varlen.register()):
        with pytest.raises(RuntimeError, match="packed rows only"):
            bb.forward_hooked([1], input_ids=ids)
    assert bb.model.config._attn_implementation == "sdpa"


def test_a_failing_varlen_kernel_falls_back_once_with_a_warning(bb, monkeypatch, caplog):
    calls = []

    def broken(*a):
        calls.append(1)
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")

    monkeypatch.setattr(varlen, "dense_varlen", broken)
    alone = per_prompt(bb, ForwardOptions(batch_tokens=4096, max_batch=1))
    try:
        with caplog.at_level("WARNING", logger="qscope_eval.model.forward"):
            packed = per_prompt(bb, ForwardOptions(batch_tokens=40, packing=True, attention=varlen.VARLEN))
    finally:
        failed = bb.model.__dict__.pop("_qscope_varlen_failed", None)
    assert failed and "Ampere" in failed and len(calls) == 1  # tried once, then transformers' mask for every row
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "encode.packing: false" in caplog.records[0].message
    for i in alone:
        for n in LAYERS:
            torch.testing.assert_close(packed[i][n], alone[i][n], atol=2e-5, rtol=2e-5)
    assert bb.model.config._attn_implementation == "sdpa"


def test_padded_causal_batches_skip_the_mask_step_and_its_sync(bb, monkeypatch):
    """Padded causal batches run under CAUSAL_SDPA: transformers never reads the position_ids (a host sync on a GPU),
    and the residuals equal transformers' own sdpa forward bit for bit."""
    from transformers import masking_utils

    reads = []
    real = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda p: reads.append(p.shape) or real(p))
    ids = bb.tokenize(TEXTS).ids
    want = {}
    for i, x in enumerate(ids):  # transformers' own path: one prompt, attn_implementation sdpa, mask step and all
        want[i] = bb.forward_hooked(LAYERS, input_ids=torch.from_numpy(np.asarray(x))[None])
    assert len(reads) == len(ids)  # the standard path does read them (a sync per forward on a GPU)
    reads.clear()
    got = per_prompt(bb, ForwardOptions(batch_tokens=4096, max_batch=1))
    assert reads == [] and bb.model.config._attn_implementation == "sdpa"
    for i in want:
        for n in LAYERS:
            assert torch.equal(got[i][n], want[i][n][0])
    batched = per_prompt(bb, ForwardOptions(batch_tokens=4096, max_batch=4))
    assert reads == []
    for i in want:
        torch.testing.assert_close(batched[i][2], want[i][2][0], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("layout", ["padded", "packed varlen", "packed with transformers' mask"])
def test_a_batch_runs_on_the_meta_device(layout):
    """The forward and pooling of one batch need no value of any tensor (the meta device has none: whatever would
    make the host wait for the GPU fails there), for padded causal batches and varlen rows. The packed path through
    transformers' mask (the fallback) does need one, and the test says so: it can fail."""
    import dataclasses

    from qscope_eval.model import encode as enc
    from qscope_eval.model.sae import Sae, SaeConfig

    meta = tiny_backbone(num_hidden_layers=3)
    meta.model.to("meta")
    meta.device = torch.device("meta")
    ids = meta.tokenize(TEXTS[:3]).ids
    opts = forward.options_for(EncodeSpec(batch_tokens=4096, packing=layout != "padded"), meta, [1])
    if layout == "packed varlen":  # what options_for picks on CUDA (the kernel itself: test_flash_glue...)
        opts = dataclasses.replace(opts, attention=varlen.register())
    host = build_host_batch(ids, meta.pad_id, meta.special_ids, opts, pin=False)
    if layout == "packed with transformers' mask":
        with pytest.raises(RuntimeError, match="meta"):
            forward._forward(meta, host, [1], opts)
        return
    res = forward._forward(meta, host, [1], opts)
    sae = Sae(SaeConfig(64, 256, 8, 1), torch.randn(256, 64), torch.zeros(256), torch.randn(64, 256),
              torch.zeros(64)).to("meta")
    h = res.hidden[1]
    mask = enc.token_mask(h, res.attention_mask, res.special_mask)
    real = enc.pooling.real_tokens(res.lengths, res.n_real)
    n = int(sum(len(x) for x in ids))
    assert res.n_real == n and h.shape[:2] == (len(ids), max(len(x) for x in ids))
    assert enc._max_parts(sae, h, mask, "fp32", False, real).tensors[0].shape == (n * 8,)
    top = enc._top_parts(sae, h, mask, torch.ones(256, device="meta"), 4, "fp32", False, real)
    assert top.tensors[0].shape == (3 * 4 + 1,)
    assert enc._last_codes(sae, h, res.attention_mask, res.special_mask, "fp32", False)[0].shape == (3, 8)
