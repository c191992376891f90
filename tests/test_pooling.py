"""Sync-free pooling (model.pooling): equal to the torch.unique formulation array for array, and free of
data-dependent shapes (it runs on the meta device, where anything that would wait for the GPU's data fails)."""

import numpy as np
import pytest
import torch

from qscope_eval.model import encode as enc
from qscope_eval.model import pooling
from qscope_eval.model.backbone import Residuals
from qscope_eval.model.encode import EncoderHandle, encode_batch, token_mask
from qscope_eval.model.feature_stats import FeatureStats
from test_encode import rand_sae


def codes(n_rows=5, per_row=(7, 0, 3, 12, 1), k=4, d_sae=30, seed=0, levels=None, drop=0.3):
    """Random top-k codes of every token: acts [N, k] (some <= 0 and some tokens dropped by the mask, as zeros),
    distinct indices per token, each token's row. levels: quantise values so that scores tie."""
    g = torch.Generator().manual_seed(seed)
    row = torch.repeat_interleave(torch.arange(n_rows), torch.tensor(per_row))
    n = row.numel()
    idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)]) if n else torch.zeros(0, k, dtype=torch.long)
    acts = torch.randn(n, k, generator=g).relu()
    if levels:
        acts = (acts * levels).round() / levels
    keep = torch.rand(n, generator=g) > drop
    return acts.masked_fill(~keep[:, None], 0.0), idx, row, keep


def live(red: pooling.Reduced) -> tuple[np.ndarray, ...]:
    n = red.key.numel() if red.n_live is None else int(red.n_live)
    return tuple(t[:n].numpy() for t in (red.key, red.value, red.count))


def assert_same(a: pooling.Reduced, b: pooling.Reduced):
    for x, y in zip(live(a), live(b)):
        assert x.dtype == y.dtype or (x.dtype.kind == y.dtype.kind == "i"), (x.dtype, y.dtype)
        assert np.array_equal(x.astype(y.dtype), y)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_rows,wide", [(5, False), (2**20, True)])  # wide: keys past int32, the int64 sort
def test_reduce_max_equals_unique_max(seed, n_rows, wide):
    acts, idx, row, _ = codes(seed=seed, levels=4 if seed % 2 else None)
    got = pooling.reduce_max(acts, idx, row, n_rows, 30)
    assert got.key.numel() == acts.numel() and int(got.n_live) > 0
    assert_same(got, pooling.unique_max(acts, idx, row, n_rows, 30))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m", [1, 3, 50])
def test_reduce_top_equals_unique_top(seed, m):
    # levels=2 makes many equal scores: the order among them (lower feature first) must match too
    acts, idx, row, keep = codes(seed=seed, levels=2 if seed % 2 else None)
    n_tok = torch.zeros(5, dtype=torch.long).scatter_add_(0, row, keep.long())
    ref = torch.rand(30, generator=torch.Generator().manual_seed(seed)) + 0.05
    if seed % 2:
        ref = torch.ones(30)
    got = pooling.reduce_top(acts, idx, row, n_tok, ref, m, 30)
    assert got.key.numel() == 5 * m + 1
    want = pooling.unique_top(acts, idx, row, n_tok, ref, m, 30)
    assert_same(got, want)
    assert np.bincount(live(got)[0] // 30, minlength=5).max() <= m


def test_nothing_fired():
    acts, idx, row, _ = codes(drop=1.0)
    assert int(pooling.reduce_max(acts, idx, row, 5, 30).n_live) == 0
    n_tok = torch.zeros(5, dtype=torch.long)
    assert int(pooling.reduce_top(acts, idx, row, n_tok, torch.ones(30), 3, 30).n_live) == 0


def test_shapes_do_not_depend_on_the_data():
    """On the meta device a tensor has no values: an op whose output size depends on them (nonzero, unique,
    a boolean index, .item()) cannot run, as on a GPU it cannot run without waiting for the data."""
    acts, idx, row, keep = codes()
    meta = [t.to("meta") for t in (acts, idx, row)]
    n_tok = torch.zeros(5, dtype=torch.long, device="meta")
    red = pooling.reduce_max(*meta, 5, 30)
    assert red.key.shape == (acts.numel(),) and red.n_live.shape == ()
    red = pooling.reduce_top(*meta, n_tok, torch.ones(30, device="meta"), 3, 30)
    assert red.key.shape == (16,)
    r, c = pooling.real_tokens(torch.tensor([3, 0, 2], device="meta"), 5)
    assert r.shape == c.shape == (5,)
    with pytest.raises(NotImplementedError, match="data-independent"):  # the formulation with syncs needs the data
        pooling.unique_max(*meta, 5, 30)


def test_real_tokens():
    r, c = pooling.real_tokens(torch.tensor([3, 0, 2, 1]), 6)
    assert r.tolist() == [0, 0, 0, 2, 2, 3] and c.tolist() == [0, 1, 2, 0, 1, 0]


@pytest.mark.parametrize("sync_free", [True, False])
def test_encode_batch_real_tokens_equal_the_grid(monkeypatch, sync_free):
    """With n_real (what model.forward passes), only real tokens are encoded; without it, every position of the
    padded grid. Pooling reads the same tokens either way; each token's codes are its own row's arithmetic."""
    monkeypatch.setattr(enc, "SYNC_FREE", sync_free)
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([9, 4, 1, 6])
    hidden = torch.randn(4, 9, 8, generator=g)
    attn = torch.arange(9)[None, :] < lengths[:, None]
    special = ~attn
    special[0, 8] = True
    sae = rand_sae()
    stats = FeatureStats(mean=np.linspace(0.1, 1.0, 24), freq=np.full(24, 0.1), n_tokens=10)
    handles = [EncoderHandle("max", 1, "max", sae), EncoderHandle("top", 1, "top", sae, stats, m=3)]
    real = encode_batch(Residuals({1: hidden}, attn, special, lengths, int(lengths.sum())), handles)
    grid = encode_batch(Residuals({1: hidden}, attn, special, lengths), handles)
    mask = token_mask(hidden, attn, special)
    assert int(mask.sum()) > 0
    for key in ("max", "top"):
        a, b = real[key], grid[key]
        assert len(a.row) > 0
        assert np.array_equal(a.row, b.row) and np.array_equal(a.feature, b.feature)
        assert np.array_equal(a.n_tokens, b.n_tokens) and np.allclose(a.value, b.value, rtol=1e-6)
    assert set(real["max"].row.tolist()) == {0, 1, 3}  # a one-token prompt has only position 0, which max skips


@pytest.mark.parametrize("pooling_mode", ["last", "max", "top"])
def test_the_whole_device_half_runs_on_meta(pooling_mode):
    """Token mask, real tokens, chunked SAE encode, reduction and split: nothing between the residuals and the
    copies to the host needs the data (what model.forward hands encode_batch, on the meta device)."""
    sae = rand_sae().to("meta")
    lengths = torch.tensor([9, 4, 1, 6], device="meta")
    hidden = torch.empty(4, 9, 8, device="meta")
    attn = torch.arange(9, device="meta")[None, :] < lengths[:, None]
    mask = token_mask(hidden, attn, ~attn)
    real = pooling.real_tokens(lengths, 20)
    if pooling_mode == "last":
        acts, idx = enc._last_codes(sae, hidden, attn, ~attn, "fp32", False)
        assert acts.shape == idx.shape == (4, sae.cfg.k)
        return
    if pooling_mode == "max":
        parts = enc._max_parts(sae, hidden, mask, "fp32", False, real)
    else:
        parts = enc._top_parts(sae, hidden, mask, torch.ones(24, device="meta"), 3, "fp32", False, real)
    n = 20 * sae.cfg.k if pooling_mode == "max" else 4 * 3 + 1
    assert [tuple(t.shape) for t in parts.tensors] == [(n,)] * 4 and parts.live.shape == ()
    assert [t.dtype for t in parts.tensors] == [torch.int64, torch.int32, torch.float32, torch.int32]


def test_only_the_live_slots_cross_to_the_host():
    """DeferredPooled and to_host take the live count first, then exactly that many slots of every array (copies:
    the [N * k] buffers are not kept alive by the PooledBatch); a work without a count crosses whole."""
    acts, idx, row, _ = codes(seed=2)
    red = pooling.reduce_max(acts, idx, row, 5, 30)
    work = enc._parts(red, 30)
    n = int(red.n_live)
    assert 0 < n < red.key.numel()
    settled = pooling.DeferredPooled({"max": work, "whole": pooling.HostWork((red.key[:3],), lambda k: k)}).settle()
    pb = settled["max"]
    assert len(pb.row) == len(pb.feature) == len(pb.value) == len(pb.n_tokens) == n
    assert np.array_equal(pb.row * 30 + pb.feature, red.key[:n].numpy())
    assert not np.shares_memory(pb.value, work.tensors[2].numpy())
    assert np.array_equal(settled["whole"], red.key[:3].numpy())
    assert all(np.array_equal(a, b) for a, b in zip(pooling.to_host(work), pb))
