"""Pooling: token mask, last / max / top against dense brute-force references, multi-encoder batches."""

from typing import NamedTuple

import numpy as np
import pytest
import torch

from qscope_eval.model import encode as enc
from qscope_eval.model.encode import (
    EncoderHandle,
    PooledBatch,
    encode_batch,
    pool_last,
    pool_max,
    pool_top,
    token_mask,
)
from qscope_eval.errors import SaeError
from qscope_eval.model.sae import Sae, SaeConfig, null_sae
from qscope_eval.model.feature_stats import FeatureStats
from qscope_eval.data.suite import EncodeSpec


class Res(NamedTuple):
    """Stand-in for backbone.Residuals."""

    hidden: dict
    attention_mask: torch.Tensor
    special_mask: torch.Tensor
    lengths: torch.Tensor


def rand_sae(d_model=8, d_sae=24, k=4, layer=1, seed=0) -> Sae:
    g = torch.Generator().manual_seed(seed)
    cfg = SaeConfig(d_model=d_model, d_sae=d_sae, k=k, layer=layer)
    # b_enc slightly negative so some top-k values are <= 0 (exercises the z > 0 rule)
    return Sae(cfg, torch.randn(d_sae, d_model, generator=g), torch.randn(d_sae, generator=g) - 1.0,
               torch.randn(d_model, d_sae, generator=g), torch.zeros(d_model))


def batch(B=3, T=7, d=8, lengths=(7, 4, 1), seed=1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, d, generator=g)
    lengths = torch.tensor(lengths)
    attn = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # right padding
    special = torch.zeros(B, T, dtype=torch.bool)
    return hidden, attn, special, lengths


def dense_codes(sae: Sae, hidden: torch.Tensor) -> torch.Tensor:
    """[B, T, d_sae] dense z: the brute-force reference the pooled results must match."""
    out = sae.encode(hidden)
    return torch.zeros(*hidden.shape[:-1], sae.cfg.d_sae).scatter(-1, out.top_indices, out.top_acts)


def as_dict(pb: PooledBatch, field="value"):
    return {(int(r), int(f)): v for r, f, v in zip(pb.row, pb.feature, getattr(pb, field))}


def check_types(pb: PooledBatch):
    assert pb.row.dtype == np.int64 and pb.feature.dtype == np.int32
    assert pb.value.dtype == np.float32 and pb.n_tokens.dtype == np.int32
    keys = list(zip(pb.row.tolist(), pb.feature.tolist()))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


# ---------------------------------------------------------------- token mask


def test_token_mask_excludes_first_special_padding_and_sink():
    hidden, attn, special, _ = batch(B=2, T=8, lengths=(8, 5))
    hidden = hidden / hidden.norm(dim=-1, keepdim=True)  # every token norm 1 ...
    hidden[0, 3] *= 100.0  # ... except a planted sink at 100x the median
    special[0, 7] = True  # e.g. a trailing [SEP]
    mask = token_mask(hidden, attn, special, exclude_first=True, sink_factor=10.0)
    want = torch.tensor([
        [0, 1, 1, 0, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(mask, want)
    keep_first = token_mask(hidden, attn, special, exclude_first=False, sink_factor=10.0)
    assert keep_first[0, 0] and keep_first[1, 0] and not keep_first[0, 3]
    # a factor above the planted ratio keeps the sink
    assert token_mask(hidden, attn, special, sink_factor=200.0)[0, 3]


def test_token_mask_empty_row_is_all_false():
    hidden, attn, special, _ = batch(B=2, T=4, lengths=(4, 0))
    mask = token_mask(hidden, attn, special)
    assert not mask[1].any() and mask[0, 1:].all()


# ---------------------------------------------------------------- last


def test_pool_last_equals_full_encode_then_select():
    sae = rand_sae()
    hidden, attn, special, lengths = batch()
    pb = pool_last(sae, hidden, attn)
    check_types(pb)
    z = dense_codes(sae, hidden)
    want = {}
    for b, n in enumerate(lengths.tolist()):
        for f in (z[b, n - 1] > 0).nonzero().flatten().tolist():
            want[(b, f)] = float(z[b, n - 1, f])
    got = as_dict(pb)
    assert got.keys() == want.keys()
    assert all(got[key] == pytest.approx(want[key], rel=1e-5) for key in want)
    assert (pb.n_tokens == 1).all()


def test_pool_last_skips_trailing_special_and_empty_rows():
    sae = rand_sae()
    hidden, attn, special, _ = batch(lengths=(7, 4, 0))
    special[0, 6] = True  # trailing [SEP] on prompt 0: read position 5 instead
    pb = pool_last(sae, hidden, attn, special)
    z = dense_codes(sae, hidden)
    got = as_dict(pb)
    want0 = {(0, f): float(z[0, 5, f]) for f in (z[0, 5] > 0).nonzero().flatten().tolist()}
    assert {k: v for k, v in got.items() if k[0] == 0} == pytest.approx(want0)
    assert not any(r == 2 for r, _ in got)


# ---------------------------------------------------------------- max


def test_pool_max_matches_dense_reference():
    sae = rand_sae(d_sae=40, k=6)
    hidden, attn, special, _ = batch(B=4, T=9, lengths=(9, 5, 2, 1), seed=7)
    mask = token_mask(hidden, attn, special)
    pb = pool_max(sae, hidden, mask)
    check_types(pb)
    z = dense_codes(sae, hidden) * mask.unsqueeze(-1)  # [B, T, d_sae]
    zmax, count = z.amax(dim=1), (z > 0).sum(dim=1)
    want = {(b, f): (float(zmax[b, f]), int(count[b, f])) for b, f in (zmax > 0).nonzero().tolist()}
    got_v, got_n = as_dict(pb), as_dict(pb, "n_tokens")
    assert got_v.keys() == want.keys()
    for key, (v, n) in want.items():
        assert got_v[key] == pytest.approx(v, rel=1e-5) and got_n[key] == n
    assert not any(r == 3 for r, _ in got_v)  # a 1-token prompt has only position 0


def test_pool_max_chunked_encoding_is_identical(monkeypatch):
    sae = rand_sae()
    hidden, attn, special, _ = batch(B=3, T=7)
    mask = token_mask(hidden, attn, special)
    whole = pool_max(sae, hidden, mask)
    assert enc.chunk_rows(sae.cfg.d_sae, budget=3 * sae.cfg.d_sae) == 3
    monkeypatch.setattr(enc, "chunk_rows", lambda d, budget=None: 3)  # 3 tokens per chunk
    chunked = pool_max(sae, hidden, mask)
    for a, b in zip(whole, chunked):
        assert np.allclose(a, b)


# ---------------------------------------------------------------- top


def identity_sae(k=2) -> Sae:
    eye = torch.eye(4)
    return Sae(SaeConfig(d_model=4, d_sae=4, k=k, layer=0), eye.clone(), torch.zeros(4), eye.clone(), torch.zeros(4))


def test_pool_top_hand_computed():
    sae = identity_sae(k=2)  # z = the two largest coordinates of x, ReLU'd
    hidden = torch.tensor([[
        [9.0, 9.0, 9.0, 9.0],  # position 0: excluded by the mask
        [4.0, 1.0, 0.0, -1.0],  # fires f0 = 4, f1 = 1
        [2.0, 0.0, 3.0, -1.0],  # fires f0 = 2, f2 = 3
        [0.0, 0.0, 0.0, 0.0],  # top-2 are zeros: nothing fires
    ]])
    mask = torch.tensor([[False, True, True, True]])
    ref = torch.tensor([2.0, 0.1, 1.0, 1.0])
    # means over 3 masked tokens: f0 = 6/3 = 2, f1 = 1/3, f2 = 3/3 = 1
    # scores: f0 = 2/2 = 1, f1 = (1/3)/0.1 = 3.33, f2 = 1/1 = 1
    pb = pool_top(sae, hidden, mask, ref, m=2)
    check_types(pb)
    got = as_dict(pb)
    assert set(got) == {(0, 0), (0, 1)}  # f0 and f2 tie at 1.0: the lower id wins
    assert got[(0, 1)] == pytest.approx(10 / 3) and got[(0, 0)] == pytest.approx(1.0)
    assert as_dict(pb, "n_tokens") == {(0, 0): 2, (0, 1): 1}
    assert set(as_dict(pool_top(sae, hidden, mask, ref, m=3))) == {(0, 0), (0, 1), (0, 2)}


def test_pool_top_matches_dense_reference():
    sae = rand_sae(d_sae=40, k=6)
    hidden, attn, special, _ = batch(B=4, T=9, lengths=(9, 6, 3, 1), seed=3)
    mask = token_mask(hidden, attn, special)
    ref = torch.rand(40) + 0.05
    m = 5
    pb = pool_top(sae, hidden, mask, ref, m=m)
    z = dense_codes(sae, hidden) * mask.unsqueeze(-1)
    score = z.sum(1) / mask.sum(1, keepdim=True).clamp(min=1) / ref  # [B, d_sae]
    got = as_dict(pb)
    for b in range(4):
        live = (score[b] > 0).nonzero().flatten()
        best = live[score[b, live].argsort(descending=True)[:m]].tolist()
        assert sorted(f for r, f in got if r == b) == sorted(best)
        for f in best:
            assert got[(b, f)] == pytest.approx(float(score[b, f]), rel=1e-5)


# ---------------------------------------------------------------- several encoders, one forward


def test_encode_batch_two_layers_and_a_null_twin():
    hidden, attn, special, lengths = batch(B=3, T=7)
    hidden2 = hidden.flip(-1) * 2
    res = Res({1: hidden, 2: hidden2}, attn, special, lengths)
    s1, s2 = rand_sae(layer=1, seed=0), rand_sae(layer=2, seed=5)
    null = null_sae(s1.cfg, seed=0)
    stats = FeatureStats(mean=np.full(24, 0.5), freq=np.full(24, 0.1), n_tokens=10)
    handles = [
        EncoderHandle("a", 1, "max", s1),
        EncoderHandle("b", 2, "last", s2),
        EncoderHandle("a-null", 1, "top", null, stats, m=3),
    ]
    spec = EncodeSpec()
    out = encode_batch(res, handles, spec)
    assert set(out) == {"a", "b", "a-null"}
    mask1 = token_mask(hidden, attn, special, spec.exclude_first, spec.sink_factor)
    for got, want in (
        (out["a"], pool_max(s1, hidden, mask1)),
        (out["b"], pool_last(s2, hidden2, attn, special)),
        (out["a-null"], pool_top(null, hidden, mask1, torch.full((24,), 0.5), m=3)),
    ):
        for x, y in zip(got, want):
            assert np.array_equal(x, y)
    assert max(np.bincount(out["a-null"].row)) <= 3


def test_encoder_handle_checks():
    sae = rand_sae(layer=1)
    with pytest.raises(SaeError, match="needs reference feature statistics"):
        EncoderHandle("x", 1, "top", sae)
    with pytest.raises(SaeError, match="not one of"):
        EncoderHandle("x", 1, "mean", sae)
    with pytest.raises(SaeError, match="loaded for layer 1"):
        EncoderHandle("x", 2, "max", sae)
    with pytest.raises(SaeError, match="cover 5 features"):
        EncoderHandle("x", 1, "top", sae, FeatureStats(np.ones(5), np.ones(5), 3))
    res = Res({2: torch.zeros(1, 2, 8)}, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.bool), None)
    with pytest.raises(SaeError, match="returned layers"):
        encode_batch(res, [EncoderHandle("x", 1, "max", sae)])


def test_one_saturation_rule():
    from qscope_eval.analysis.metrics import SATURATION_SHARE, is_saturated, saturation_warning

    assert not is_saturated(100, 4096)
    assert is_saturated(int(SATURATION_SHARE * 4096) + 1, 4096)
    assert is_saturated(3687, 4096, 0.9) and not is_saturated(3686, 4096, 0.9)  # >= 0.9 x d_sae, as everywhere
    assert list(is_saturated(np.array([10, 4000]), 4096)) == [False, True]
    msg = saturation_warning("gsm8k", 4000, 4096)
    assert "gsm8k" in msg and "4000/4096" in msg and "pooling: top" in msg
