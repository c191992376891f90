"""Qwen-Scope SAE format: round trip, encode math by hand, loader refusals, registry, null SAE."""

import json
import os

import numpy as np
import pytest
import torch

from qscope_eval.errors import SaeError
from qscope_eval.model.feature_stats import FeatureStats, load_feature_stats, save_feature_stats
from qscope_eval.model.sae import (
    RELEASES,
    Sae,
    SaeConfig,
    check_compatible,
    load_sae,
    null_sae,
    read_sae_file,
    release_info,
    releases_for_model,
    save_sae,
)
from qscope_eval.data.suite import SaeSpec


def random_sae(d_model=8, d_sae=32, k=4, layer=3, seed=0) -> Sae:
    g = torch.Generator().manual_seed(seed)
    cfg = SaeConfig(d_model=d_model, d_sae=d_sae, k=k, layer=layer)
    return Sae(cfg, torch.randn(d_sae, d_model, generator=g), torch.randn(d_sae, generator=g),
               torch.randn(d_model, d_sae, generator=g), torch.randn(d_model, generator=g))


def write_pt(path, obj):
    torch.save(obj, path)
    return path


def good_tensors(d_model=8, d_sae=32):
    return {"W_enc": torch.randn(d_sae, d_model), "b_enc": torch.randn(d_sae),
            "W_dec": torch.randn(d_model, d_sae), "b_dec": torch.randn(d_model)}


# ---------------------------------------------------------------- format round trip


def test_save_load_round_trip_exact_format(tmp_path):
    sae = random_sae()
    save_sae(sae, tmp_path)
    raw = torch.load(tmp_path / "layer3.sae.pt", map_location="cpu", weights_only=True)
    assert set(raw) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert raw["W_enc"].shape == (32, 8) and raw["W_dec"].shape == (8, 32)
    assert raw["b_enc"].shape == (32,) and raw["b_dec"].shape == (8,)
    assert all(t.dtype == torch.float32 for t in raw.values())
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["d_model"] == 8 and cfg["d_sae"] == 32 and cfg["k"] == 4 and cfg["layers"] == [3]

    back = load_sae(SaeSpec(path=str(tmp_path)), 3)
    assert back.cfg == sae.cfg
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    x = torch.randn(5, 8)
    a, b = sae.encode(x), back.encode(x)
    assert torch.equal(a.top_acts, b.top_acts) and torch.equal(a.top_indices, b.top_indices)


def test_released_dir_without_config_needs_k(tmp_path):
    write_pt(tmp_path / "layer0.sae.pt", good_tensors())
    with pytest.raises(SaeError, match=r"sae: \{k: \.\.\.\}"):
        load_sae(SaeSpec(path=str(tmp_path)), 0)
    sae = load_sae(SaeSpec(path=str(tmp_path), k=5), 0)
    assert (sae.cfg.d_model, sae.cfg.d_sae, sae.cfg.k) == (8, 32, 5)


def test_save_refuses_mixing_shapes_in_one_dir(tmp_path):
    save_sae(random_sae(layer=1), tmp_path)
    save_sae(random_sae(layer=2), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["layers"] == [1, 2]
    with pytest.raises(SaeError, match="one directory is one SAE set"):
        save_sae(random_sae(d_sae=64, layer=4), tmp_path)


# ---------------------------------------------------------------- encode / decode by hand


def hand_sae() -> Sae:
    # d_model 3, d_sae 4, k 2
    W_enc = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    b_enc = torch.tensor([0.0, -1.0, 0.5, -10.0])
    W_dec = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]])  # [3, 4]
    b_dec = torch.tensor([100.0, 200.0, 300.0])
    return Sae(SaeConfig(d_model=3, d_sae=4, k=2, layer=0), W_enc, b_enc, W_dec, b_dec)


def test_encode_hand_computed():
    sae = hand_sae()
    x = torch.tensor([[2.0, 3.0, -1.0]])
    # pre = x @ W_enc.T + b_enc = [2, 3-1, -1+0.5, 4-10] = [2, 2, -0.5, -6]   (b_dec is NOT subtracted)
    assert torch.allclose(sae.pre_acts(x), torch.tensor([[2.0, 2.0, -0.5, -6.0]]))
    out = sae.encode(x)
    got = dict(zip(out.top_indices[0].tolist(), out.top_acts[0].tolist()))
    assert got == {0: 2.0, 1: 2.0}
    assert out.top_acts.shape == (1, 2) and out.top_indices.dtype == torch.int64


def test_encode_relu_on_negative_top_value():
    sae = hand_sae()
    x = torch.tensor([[-3.0, -2.0, 0.0]])
    # pre = [-3, -3, 0.5, -15]: top-2 = feature 2 (0.5) and one of the -3s, which ReLU makes 0
    out = sae.encode(x)
    got = dict(zip(out.top_indices[0].tolist(), out.top_acts[0].tolist()))
    assert got[2] == 0.5
    assert sorted(got.values()) == [0.0, 0.5]
    assert set(got) - {2} <= {0, 1}


def test_decode_hand_computed():
    sae = hand_sae()
    # z = 2 at feature 0, 1.5 at feature 2 -> 2*W_dec[:,0] + 1.5*W_dec[:,2] + b_dec
    rec = sae.decode(torch.tensor([[2.0, 1.5]]), torch.tensor([[0, 2]]))
    assert torch.allclose(rec, torch.tensor([[100 + 2 + 3.0, 200.0, 300 + 1.5]]))


def test_encode_decode_match_dense_formula():
    sae = random_sae(d_model=6, d_sae=20, k=5)
    x = torch.randn(3, 7, 6)
    out = sae.encode(x)
    assert out.top_acts.shape == (3, 7, 5)
    pre = x @ sae.W_enc.T + sae.b_enc
    z = torch.zeros_like(pre).scatter(-1, out.top_indices, out.top_acts)
    assert torch.allclose(torch.topk(pre, 5).values.relu().sort(-1).values, out.top_acts.sort(-1).values)
    assert torch.allclose(sae.decode(*out), z @ sae.W_dec.T + sae.b_dec, atol=1e-5)


# ---------------------------------------------------------------- loader refusals


def test_missing_layer_lists_present_layers(tmp_path):
    save_sae(random_sae(layer=2), tmp_path)
    save_sae(random_sae(layer=5), tmp_path)
    with pytest.raises(SaeError, match=r"no layer7\.sae\.pt \(layers present: 2, 5\)"):
        load_sae(SaeSpec(path=str(tmp_path)), 7)
    with pytest.raises(SaeError, match="does not exist"):
        load_sae(SaeSpec(path=str(tmp_path / "nope")), 0)


def test_refuses_non_dict_and_wrong_keys_shapes_dtypes_nan(tmp_path):
    cases = {
        "tensor": (torch.randn(3), "not a dict of tensors"),
        "keys": ({**good_tensors(), "extra": torch.zeros(1)}, "unexpected: extra"),
        "missing": ({k: v for k, v in good_tensors().items() if k != "b_dec"}, "missing: b_dec"),
        "shape": ({**good_tensors(), "W_dec": torch.randn(8, 31)}, "W_dec has shape"),
        "dtype": ({**good_tensors(), "b_enc": torch.zeros(32, dtype=torch.int64)}, "dtype torch.int64"),
        "nan": ({**good_tensors(), "b_dec": torch.full((8,), float("nan"))}, "NaN"),
        "notensor": ({**good_tensors(), "b_dec": [1.0] * 8}, "not a tensor"),
    }
    for name, (obj, msg) in cases.items():
        path = write_pt(tmp_path / f"{name}.pt", obj)
        with pytest.raises(SaeError, match=msg) as e:
            read_sae_file(path)
        assert str(path) in str(e.value)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(SaeError, match="not a readable torch file"):
        read_sae_file(tmp_path / "garbage.pt")


class _Payload:
    """Unpickling this would create a marker file: the loader must refuse it without running it."""

    marker = ""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_refuses_pickled_code_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    payload = _Payload()
    payload.marker = str(marker)
    path = tmp_path / "layer0.sae.pt"
    torch.save({**good_tensors(), "W_enc": payload}, path)
    with pytest.raises(SaeError, match="refused.*could run code"):
        load_sae(SaeSpec(path=str(tmp_path), k=2), 0)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_config_json_disagreeing_with_tensors(tmp_path):
    save_sae(random_sae(layer=0), tmp_path)
    torch.save(good_tensors(d_model=8, d_sae=16), tmp_path / "layer1.sae.pt")
    with pytest.raises(SaeError, match="config.json says 8 x 32"):
        load_sae(SaeSpec(path=str(tmp_path)), 1)


def test_check_compatible_width_and_layer():
    sae = random_sae(d_model=2048, d_sae=16, k=2, layer=3)
    with pytest.raises(SaeError) as e:
        check_compatible(sae, d_model=384, n_layers=6)
    assert str(e.value) == (
        "SAE width mismatch: layer3.sae.pt expects d_model 2048 but the model's hidden size is 384; "
        "pick the SAE release for this model"
    )
    with pytest.raises(SaeError, match="model has 3 layers"):
        check_compatible(sae, d_model=2048, n_layers=3)
    check_compatible(sae, d_model=2048, n_layers=28)


def test_config_checks():
    with pytest.raises(SaeError, match="k must be between 1 and d_sae"):
        SaeConfig(d_model=4, d_sae=8, k=9, layer=0)
    with pytest.raises(SaeError, match="hook"):
        SaeConfig(d_model=4, d_sae=8, k=2, layer=0, hook="mlp_out")


# ---------------------------------------------------------------- hub path (offline, via the HF cache)


def _fake_hub_cache(root, repo_id, files: dict, commit="a" * 40):
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, obj in files.items():
        torch.save(obj, snap / name)


def test_hub_release_loads_from_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = "Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"
    # the real release is 2048 x 32768; a cached file with other shapes must be refused
    _fake_hub_cache(tmp_path, repo, {"layer3.sae.pt": good_tensors()})
    with pytest.raises(SaeError, match="registry entry for .* says 2048 x 32768"):
        load_sae(SaeSpec(release=repo), 3)
    with pytest.raises(SaeError, match="not in the Hugging Face cache.*hf download"):
        load_sae(SaeSpec(release=repo), 4)
    with pytest.raises(SaeError, match="covers layers 0-27"):
        load_sae(SaeSpec(release=repo), 28)


def test_hub_unregistered_release_from_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _fake_hub_cache(tmp_path, "someone/tiny-sae", {"layer1.sae.pt": good_tensors()})
    with pytest.raises(SaeError, match="no k is known"):
        load_sae(SaeSpec(release="someone/tiny-sae"), 1)
    sae = load_sae(SaeSpec(release="someone/tiny-sae", k=3), 1)
    assert sae.cfg.release == "someone/tiny-sae" and sae.cfg.k == 3


# ---------------------------------------------------------------- registry


def test_registry_has_the_14_releases():
    assert len(RELEASES) == 14
    r = release_info("Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50")
    assert (r.model_id, r.d_model, r.d_sae, r.k, r.n_layers) == ("Qwen/Qwen3-1.7B-Base", 2048, 32768, 50, 28)
    assert release_info("sae-res-qwen3.5-27b-w80k-l0_100").d_model == 5120
    moe = release_info("Qwen/SAE-Res-Qwen3-30B-A3B-Base-W128K-L0_100")
    assert moe.d_sae == 131072 == 64 * moe.d_model
    for rel in RELEASES.values():
        assert rel.d_sae in (16 * rel.d_model, 64 * rel.d_model) and rel.k in (50, 100)
    assert len(releases_for_model("Qwen/Qwen3.5-35B-A3B-Base")) == 2
    with pytest.raises(SaeError, match="did you mean Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"):
        release_info("Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_5")


# ---------------------------------------------------------------- null SAE and feature stats


def test_null_sae_deterministic_and_shaped():
    cfg = SaeConfig(d_model=16, d_sae=64, k=4, layer=2)
    a, b, c = null_sae(cfg, seed=0), null_sae(cfg, seed=0), null_sae(cfg, seed=1)
    assert torch.equal(a.W_enc, b.W_enc) and not torch.equal(a.W_enc, c.W_enc)
    assert torch.allclose(a.W_enc.norm(dim=1), torch.ones(64))
    assert torch.equal(a.W_dec, a.W_enc.T) and not a.b_enc.any() and not a.b_dec.any()
    assert (a.cfg.d_model, a.cfg.d_sae, a.cfg.k, a.cfg.layer) == (16, 64, 4, 2)
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(null_sae(cfg, seed=0).W_enc, a.W_enc)


def test_feature_stats_round_trip_and_floor(tmp_path):
    stats = FeatureStats(mean=np.array([0.0, 0.5, 0.02, 0.0]), freq=np.array([0.0, 0.3, 0.01, 0.0]), n_tokens=100, corpus="x")
    save_feature_stats(stats, tmp_path, 3)
    save_feature_stats(stats, tmp_path, 3, null=True)
    assert (tmp_path / "layer3.stats.npz").exists() and (tmp_path / "layer3.null.stats.npz").exists()
    back = load_feature_stats(tmp_path, 3)
    assert np.array_equal(back.mean, stats.mean) and back.n_tokens == 100 and back.corpus == "x"
    assert back.n_dead == 2
    ref = back.reference_mean()
    assert np.all(np.isfinite(ref)) and ref.min() == pytest.approx(0.02)
    with pytest.raises(SaeError, match="feature-stats"):
        load_feature_stats(tmp_path, 4)
    # no pickles in the file
    with np.load(tmp_path / "layer3.stats.npz", allow_pickle=False) as data:
        assert set(data.files) == {"mean", "freq", "n_tokens", "corpus"}


# ---------------------------------------------------------------- training


def test_sparse_backward_matches_dense_autograd():
    from qscope_eval.model.train_sae import _TopKEncoder

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g)
    W = torch.randn(20, 6, generator=g, requires_grad=True)
    b = torch.randn(20, generator=g, requires_grad=True)
    w_out = torch.randn(16, 3, generator=g)
    acts, idx = _TopKEncoder.apply(x, W, b, 3)
    (acts * w_out).sum().backward()
    gW, gb = W.grad.clone(), b.grad.clone()
    W.grad = b.grad = None
    vals = (x @ W.T + b).gather(1, idx).relu()  # same selection, dense autograd
    (vals * w_out).sum().backward()
    assert torch.allclose(gW, W.grad, atol=1e-5) and torch.allclose(gb, b.grad, atol=1e-5)


def test_train_sae_recovers_planted_dictionary():
    from qscope_eval.model.train_sae import TrainConfig, train_sae

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: thread start-up would dominate
    try:
        g = torch.Generator().manual_seed(0)
        d, n_true, N = 16, 32, 8000
        atoms = torch.randn(n_true, d, generator=g)
        atoms /= atoms.norm(dim=1, keepdim=True)
        which = torch.rand(N, n_true, generator=g).argsort(dim=1)[:, :3]  # 3 atoms per sample
        coef = torch.rand(N, 3, generator=g) * 2 + 0.5
        x = (coef.unsqueeze(-1) * atoms[which]).sum(1) + 0.5  # offset: b_dec must learn it
        cfg = TrainConfig(d_sae=64, k=4, steps=800, batch_tokens=256, lr=3e-3, warmup_steps=20, layer=0)
        sae, stats = train_sae(x, cfg)
    finally:
        torch.set_num_threads(threads)
    assert stats.fvu_heldout < 0.2 and stats.n_heldout == int(N * 0.05)
    assert stats.curve[0][1] > 3 * stats.fvu_heldout
    assert sae.W_enc.shape == (64, 16) and sae.W_dec.shape == (16, 64)
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(64), atol=1e-4)


@pytest.mark.slow
def test_train_command_end_to_end_on_minilm(tmp_path):
    """Real backbone (the MiniLM asset): collect, train, write the directory, reload, recompute stats."""
    from qscope_eval.model.backbone import load_backbone
    from qscope_eval.model.feature_stats import compute_feature_stats
    from qscope_eval.data.suite import EncodeSpec, ModelSpec
    from qscope_eval.model.train_sae import TrainConfig, collect_activations, train_sae_command

    texts = [f"Question {i}: what is {i} times {i + 3}? The answer is {i * (i + 3)}." for i in range(120)]
    cfg = TrainConfig(model="asset:minilm", layer=2, d_sae=128, k=8, steps=12, batch_tokens=512, warmup_steps=2,
                      max_tokens=1500, heldout=0.1)
    backbone = load_backbone(ModelSpec(id="asset:minilm", dtype="float32", device="cpu"))
    report = train_sae_command(texts, tmp_path, cfg, command="test", backbone=backbone, log=None)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"layer2.sae.pt", "config.json", "layer2.stats.npz", "layer2.null.stats.npz", "TRAINING.md"}
    assert report.stats.n_train == 1500 and 0 < report.stats.fvu_heldout < 1.5
    assert "held-out FVU" in (tmp_path / "TRAINING.md").read_text()

    sae = load_sae(SaeSpec(path=str(tmp_path)), 2)
    assert (sae.cfg.d_model, sae.cfg.d_sae, sae.cfg.k) == (384, 128, 8)
    check_compatible(sae, backbone.d_model, backbone.n_layers)
    spec = EncodeSpec()
    acts = collect_activations(backbone, texts[:10], 2, None, spec)
    assert acts.shape[1] == 384 and not torch.isnan(acts).any()
    # every prompt loses [CLS] (position 0, special) and [SEP] (special); nothing else here is a sink
    n_tokens = sum(len(t) - 2 for t in backbone.tokenize(texts[:10]).ids)
    assert acts.shape[0] == n_tokens
    stats = compute_feature_stats(backbone, sae, texts[:10], 2, spec)
    assert stats.n_tokens == n_tokens and stats.d_sae == 128
    z = sae.encode(acts)
    dense = torch.zeros(acts.shape[0], 128).scatter(1, z.top_indices, z.top_acts)
    assert np.allclose(stats.mean, dense.mean(0).double().numpy(), atol=1e-5)
    assert np.allclose(stats.freq, (dense > 0).double().mean(0).numpy())
    assert load_feature_stats(tmp_path, 2, null=True).d_sae == 128
