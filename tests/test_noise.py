"""The batch-composition noise floor (qscope_eval.analysis.noise, qscope_eval.jobs.noise): the comparison itself, a measurement through the
real pipeline on a tiny model, drift reading the floor, and `encode --noise-floor`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from qscope_eval.analysis.noise import NoiseFloor, compare_sets, jaccard
from qscope_eval.data.suite import BenchmarkSpec, EncodeSpec, ModelSpec, SaeSpec, Suite
from qscope_eval.jobs import summary as analysis
from qscope_eval.jobs.noise import measure_noise_floor, with_deterministic
from qscope_eval.model.encode import EncoderHandle
from qscope_eval.model.encoders import Runtime
from qscope_eval.model.sae import Sae, SaeConfig
from synthetic import build_store, tiny_backbone, write_tiny_suite

WORDS = "the quick brown fox jumps over a lazy dog while seven students solve an equation about triangles".split()
TEXTS = [" ".join((WORDS * 4)[i: 2 + 3 * i]) for i in range(16)]


def test_compare_sets_by_hand():
    a = {0: {1, 2, 3}, 1: {4, 5}, 2: set(), 3: {7}}
    b = {0: {1, 2, 3}, 1: {4, 6}, 2: set(), 3: {7}}
    nf = compare_sets(a, b)
    assert jaccard({4, 5}, {4, 6}) == pytest.approx(1 / 3)
    assert nf.n_samples == 4 and nf.share_differ == 0.25 and nf.min_jaccard == pytest.approx(1 / 3)
    assert nf.mean_jaccard == pytest.approx((3 + 1 / 3) / 4)
    assert nf.union_sizes == (1, 2, 4)
    assert nf.union_jaccard[-1] == pytest.approx(jaccard({1, 2, 3, 4, 5, 7}, {1, 2, 3, 4, 6, 7}))
    assert nf.union_jaccard[0] == pytest.approx(1 / 3)  # 5th percentile of single samples: the bad one
    assert nf.union_floor(3) == (nf.union_jaccard[1], False) and nf.union_floor(100)[1]
    assert NoiseFloor.from_dict(json.loads(json.dumps(nf.to_dict()))) == nf


@pytest.fixture(scope="module")
def rt():
    bb = tiny_backbone(num_hidden_layers=3, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(512, 64, generator=g)
    sae = Sae(SaeConfig(64, 512, 16, 1), W, torch.randn(512, generator=g) * 0.1, W.T.contiguous(), torch.zeros(64))
    return Runtime(bb, [EncoderHandle("max", 1, "max", sae)])


def suite(**encode) -> Suite:
    return Suite(name="n", model=ModelSpec(id="random:qwen3", device="cpu"), sae=SaeSpec(path="unused"), layers=(1,),
                 pooling="max", benchmarks=(BenchmarkSpec(name="b", path="b.jsonl", text="text"),),
                 encode=EncodeSpec(**encode))


def test_measured_floor_batched_vs_alone(rt):
    """bf16 on CPU: padding and batch shape move residuals; the deterministic mode removes the dependence."""
    batched = measure_noise_floor(rt, TEXTS, suite(batch_tokens=512), n=16)["max"]
    assert batched.n_samples == 16 and 0 < batched.mean_jaccard <= 1 and batched.union_sizes[-1] == 16
    det = measure_noise_floor(rt, TEXTS, with_deterministic(suite(batch_tokens=512)), n=16)["max"]
    assert det.mean_jaccard == 1.0 and det.share_differ == 0.0, det
    assert det.mean_jaccard >= batched.mean_jaccard


def test_drift_reads_changes_below_the_floor_as_noise(tmp_path):
    s = build_store(str(tmp_path / "s.duckdb"))
    ld = analysis.load(s)
    now = analysis.feature_sets(ld.real)
    # the previous run: bench_0 lost one feature of ~40, bench_1 lost half of its features
    prev = {n: f for n, f in now.items()}
    prev["bench_0"], prev["bench_1"] = now["bench_0"][1:], now["bench_1"][::2]
    s.start_run("r0", "synth", {})
    s.save_run_features("r0", prev)
    s.finish_run("r0", "completed", encoder_id=ld.real.encoder.encoder_id)
    dr = analysis.drift(s, ld, "r1", "synth")
    assert [r["status"] for r in dr["benchmarks"][:2]] == ["changed", "changed"] and dr["noise_floor"] is None
    floor = NoiseFloor(64, 0.9, 0.5, 0.6, (1, 8, 64), (0.5, 0.9, 0.95))
    s.save_noise_floor(ld.real.encoder.encoder_id, floor.to_dict())
    dr = analysis.drift(s, ld, "r1", "synth")
    rows = {r["benchmark"]: r for r in dr["benchmarks"]}
    assert rows["bench_0"]["status"] == "noise" and rows["bench_0"]["jaccard"] >= 0.95  # 60 samples: floor of 8
    assert rows["bench_0"]["noise_floor"] == 0.9 and not rows["bench_0"]["noise_floor_extrapolated"]
    assert rows["bench_1"]["status"] == "changed" and rows["bench_1"]["jaccard"] < 0.6
    assert rows["bench_2"]["status"] == "same"
    s.close()


def test_encode_cli_records_the_floor(tmp_path):
    from qscope_eval.cli import cli
    from qscope_eval.store import Store

    path = write_tiny_suite(tmp_path / "tiny")
    db = str(tmp_path / "t.duckdb")
    res = CliRunner().invoke(cli, ["encode", str(path), "--db", db, "--noise-floor", "8", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    (key, nf), = [(k, v) for k, v in out["noise_floor"].items() if k.endswith("|sae")]
    assert nf["n_samples"] == 8 and 0 <= nf["mean_jaccard"] <= 1
    with Store(db) as store:
        assert store.noise_floor(store.encoder(key).encoder_id) == nf
