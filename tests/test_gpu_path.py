"""The GPU encode path, checked on CPU through the real pipeline (pipeline.encode_texts / encode_suite).

A tiny random Qwen3 built from its config (toy.random_qwen3) with the real Qwen tokenizer gives
real residuals; nothing is downloaded. Covered here, and not in test_backbone.py / test_encode.py
(which test plan_batches, run_with_oom_split and the pooling functions alone; test_forward.py tests the iterator):
token-budget batching with real tokenizer lengths, OOM batch halving with a simulated OOM inside
the forward, the error when one prompt does not fit, `last` gathering only the last positions
before the SAE, `max`/`top` against a plain-Python reference, only non-zeros coming back, the
truncated forward, DB writes overlapping the next batch's compute, and a dry run of the GPU mode
of bench/encode_bench.py.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qscope_eval.model import encoders

from qscope_eval.jobs import pipeline
from qscope_eval.model import batching, forward
from qscope_eval.model.batching import plan_batches
from qscope_eval.model.encode import EncoderHandle
from qscope_eval.errors import OutOfMemory
from qscope_eval.model.sae import Sae, SaeConfig
from qscope_eval.model.feature_stats import FeatureStats
from qscope_eval.data.suite import BenchmarkSpec, EncodeSpec, ModelSpec, SaeSpec, Suite
from synthetic import OutOfMemoryError, tiny_backbone

LAYER = 1
D_SAE, K = 256, 8
WORDS = ("the quick brown fox jumps over a lazy dog while seven students solve "
         "an equation about triangles and the French revolution of 1789").split()
# 14 prompts of 2..55 tokens; one holds a special token mid-prompt (masked by max/top pooling)
TEXTS = [" ".join((WORDS * 3)[i: 3 + 4 * i]) for i in range(13)]
TEXTS.append("Question:<|im_start|> which number is prime, 21 or 23?")


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


@pytest.fixture(scope="module")
def sae():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D_SAE, 64, generator=g)
    W /= W.norm(dim=1, keepdim=True)
    # b_enc pushed down so some of the k largest pre-activations are <= 0 (must not come back)
    return Sae(SaeConfig(d_model=64, d_sae=D_SAE, k=K, layer=LAYER), W * 20, torch.randn(D_SAE, generator=g) - 2.0,
               W.T.contiguous(), torch.zeros(64))


@pytest.fixture(scope="module")
def stats():
    return FeatureStats(mean=np.random.default_rng(0).uniform(0.05, 1.0, D_SAE), freq=np.full(D_SAE, 0.1), n_tokens=100)


def make_suite(pooling="last", batch_tokens=2048, max_batch=256, commit_every_s=0.5) -> Suite:
    return Suite(name="gpu-path", model=ModelSpec(id="random:qwen3", device="cpu"), sae=SaeSpec(path="unused"),
                 layers=(LAYER,), pooling=pooling, benchmarks=(BenchmarkSpec(name="b", path="b.jsonl", text="text"),),
                 encode=EncodeSpec(batch_tokens=batch_tokens, max_batch=max_batch, commit_every_s=commit_every_s))


def runtime(bb, sae, stats, *poolings):
    return encoders.Runtime(bb, [EncoderHandle(p, LAYER, p, sae, stats if p == "top" else None, m=5) for p in poolings])


def run(rt, suite, texts=TEXTS):
    """encode_texts -> (batches, {encoder: {sample: {feature: (value, n_tokens)}}})."""
    batches = list(pipeline.encode_texts(rt, np.arange(len(texts)), list(texts), suite))
    out = {h.key: {} for h in rt.handles}
    for b in batches:
        for key, pb in b.pooled.items():
            for i in b.ids.tolist():
                out[key].setdefault(i, {})
            for r, f, v, n in zip(pb.row.tolist(), pb.feature.tolist(), pb.value.tolist(), pb.n_tokens.tolist()):
                out[key][int(b.ids[r])][f] = (v, n)
    return batches, out


def assert_same(got: dict, want: dict, rtol=1e-4):
    assert got.keys() == want.keys()
    for i in want:
        assert got[i].keys() == want[i].keys(), f"sample {i}: features differ"
        for f, (v, n) in want[i].items():
            assert got[i][f][0] == pytest.approx(v, rel=rtol, abs=1e-6) and got[i][f][1] == n


@pytest.fixture
def spy_forward(bb, monkeypatch):
    """Record the prompt lengths of every forward batch the pipeline runs."""
    calls: list[list[int]] = []
    real = forward._forward

    def spy(backbone, host, layers, opts):
        calls.append(host.lengths.tolist())
        return real(backbone, host, layers, opts)

    monkeypatch.setattr(forward, "_forward", spy)
    return calls


def oom_above(bb, max_rows: int):
    """A forward pre-hook on layer 0 that fails like a GPU out of memory for batches over max_rows prompts."""
    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] > max_rows:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return bb.layers_module[0].register_forward_pre_hook(hook, with_kwargs=True)


# ---------------------------------------------------------------- batching under a token budget


def test_batches_respect_token_budget_and_are_length_bucketed(bb, sae, spy_forward):
    budget, max_batch = 40, 5
    lengths = bb.tokenize(TEXTS).lengths
    assert lengths.max() > budget and lengths.min() < 8  # real tokenizer lengths spread the batches
    batches, _ = run(runtime(bb, sae, None, "last"), make_suite(batch_tokens=budget, max_batch=max_batch))
    assert [len(c) for c in spy_forward] == [len(b.ids) for b in batches] and len(batches) > 2
    seen = np.concatenate([b.ids for b in batches])
    assert sorted(seen.tolist()) == list(range(len(TEXTS)))  # every prompt exactly once
    for b, lens in zip(batches, spy_forward):
        assert b.n_tokens.tolist() == lens == lengths[b.ids].tolist()
        assert len(lens) <= max_batch and (len(lens) == 1 or max(lens) * len(lens) <= budget)
        assert max(lens) <= budget or len(lens) == 1  # an over-budget prompt rides alone
    # length-bucketed: longest first, and no batch's lengths interleave with another's
    spans = [(max(c), min(c)) for c in spy_forward]
    assert all(lo >= hi_next for (_, lo), (hi_next, _) in zip(spans, spans[1:]))


def test_cpu_caps_the_token_budget():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert batching.batch_tokens(EncodeSpec(batch_tokens=16384), cuda) == 16384
    assert batching.batch_tokens(EncodeSpec(batch_tokens=16384), cpu) == batching.CPU_BATCH_TOKENS
    assert batching.batch_tokens(EncodeSpec(batch_tokens=512), cpu) == 512


# ---------------------------------------------------------------- out of memory


def test_oom_halves_batches_and_keeps_results_in_order(bb, sae, stats, spy_forward):
    rt = runtime(bb, sae, stats, "last", "max", "top")
    suite = make_suite(batch_tokens=2048)
    clean_batches, clean = run(rt, suite)
    assert max(len(b.ids) for b in clean_batches) > 2
    n_clean = len(spy_forward)
    h = oom_above(bb, 2)
    try:
        batches, got = run(rt, suite)
    finally:
        h.remove()
    assert all(len(b.ids) <= 2 for b in batches)  # every yielded chunk fitted
    assert len(spy_forward) - n_clean > len(batches)  # the failed tries ran too
    order = np.concatenate([b.ids for b in batches]).tolist()
    assert order == np.concatenate([b.ids for b in clean_batches]).tolist()  # same order, nothing lost
    for key in clean:
        assert_same(got[key], clean[key])


def test_one_prompt_that_does_not_fit_fails_clearly(bb, sae):
    n = int(bb.tokenize(TEXTS[:3]).lengths.max())  # the longest is tried first, and fails alone
    h = oom_above(bb, 0)
    try:
        with pytest.raises(OutOfMemory, match=rf"a prompt of {n} tokens does not fit in cpu memory even alone.*"
                                               r"lower model.max_length"):
            run(runtime(bb, sae, None, "last"), make_suite(), TEXTS[:3])
    finally:
        h.remove()


# ---------------------------------------------------------------- pooling against references


def single_codes(bb, sae, text):
    """One unpadded prompt: ids, and the SAE codes of EVERY position (acts, idx [T, k]) and the residual norms."""
    ids = bb.tokenize([text]).ids[0]
    x = bb.residuals([ids], [LAYER]).hidden[LAYER][0]
    acts, idx = sae.encode(x)
    return ids.tolist(), acts.tolist(), idx.tolist(), x.float().norm(dim=-1).tolist()


def python_pool(bb, sae, text, pooling, ref_mean=None, m=5, spec=EncodeSpec()):
    """Plain-Python pooling over tokens: what pool_max / pool_top compute on the device."""
    ids, acts, idx, norms = single_codes(bb, sae, text)
    special = set(bb.special_ids.tolist())
    plain = [t for t, i in enumerate(ids) if i not in special]
    median = statistics.median_low([norms[t] for t in plain])
    keep = [t for t in plain if t != 0 and not norms[t] > spec.sink_factor * median]
    acc, count = {}, {}
    for t in keep:
        for f, v in zip(idx[t], acts[t]):
            if v > 0:
                acc[f] = max(acc.get(f, 0.0), v) if pooling == "max" else acc.get(f, 0.0) + v
                count[f] = count.get(f, 0) + 1
    if pooling == "max":
        return {f: (v, count[f]) for f, v in acc.items()}
    score = {f: s / len(keep) / ref_mean[f] for f, s in acc.items()}
    best = sorted(score, key=lambda f: (-score[f], f))[:m]
    return {f: (score[f], count[f]) for f in best}


def test_last_gathers_last_positions_before_the_sae(bb, sae, monkeypatch):
    from qscope_eval.model import encode as enc

    rows_seen = []
    real = enc._topk_block

    def encode(x, *args):
        rows_seen.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(enc, "_topk_block", encode)
    batches, got = run(runtime(bb, sae, None, "last"), make_suite(batch_tokens=256))
    # the SAE saw one row per prompt, never the [B, T] grid
    assert rows_seen == [(len(b.ids), 64) for b in batches]
    monkeypatch.undo()
    want = {}
    for i, text in enumerate(TEXTS):  # full encode of every position, then select the last one
        ids, acts, idx, _ = single_codes(bb, sae, text)
        last = max(t for t, tok in enumerate(ids) if tok not in set(bb.special_ids.tolist()))
        want[i] = {f: (v, 1) for f, v in zip(idx[last], acts[last]) if v > 0}
    assert_same(got["last"], want)


@pytest.mark.parametrize("poolings", [("last",), ("last", "max", "top")])
def test_pooled_arrays_settle_after_the_next_batch_is_queued(bb, sae, stats, monkeypatch, poolings):
    """Pooling's host half (the copies and the PooledBatches) runs once the next forward batch is queued; the results
    are the ones pooled in turn, array for array."""
    from qscope_eval.model import encode as enc

    events = []
    real_forward, real_settle = forward._forward, enc.DeferredPooled.settle
    monkeypatch.setattr(forward, "_forward", lambda *a, **k: events.append("forward") or real_forward(*a, **k))
    monkeypatch.setattr(enc.DeferredPooled, "settle", lambda self: events.append("settle") or real_settle(self))
    rt, suite = runtime(bb, sae, stats, *poolings), make_suite(batch_tokens=128)
    deferred, _ = run(rt, suite)
    n = len(deferred)
    assert n >= 3 and events == ["forward"] + ["forward", "settle"] * (n - 1) + ["settle"], events
    monkeypatch.setattr(enc, "DEFER_HOST_WORK", False)
    events.clear()
    in_turn, _ = run(rt, suite)
    assert events == ["forward"] * n  # nothing deferred
    for a, b in zip(deferred, in_turn):
        assert np.array_equal(a.ids, b.ids) and a.pooled.keys() == b.pooled.keys() == set(poolings)
        for p in poolings:
            assert len(a.pooled[p].row) > 0
            for f in enc.PooledBatch._fields:
                x, y = getattr(a.pooled[p], f), getattr(b.pooled[p], f)
                assert x.dtype == y.dtype and np.array_equal(x, y), (p, f)


@pytest.mark.parametrize("pooling", ["max", "top"])
def test_max_and_top_on_device_equal_python_reference(bb, sae, stats, pooling):
    _, got = run(runtime(bb, sae, stats, pooling), make_suite(batch_tokens=256))
    ref = stats.reference_mean().tolist()
    want = {i: python_pool(bb, sae, t, pooling, ref) for i, t in enumerate(TEXTS)}
    assert sum(map(len, want.values())) > 3 * len(TEXTS)
    assert_same(got[pooling], want)
    special_tok = len(TEXTS) - 1  # the <|im_start|> token is masked, not pooled
    assert len(got[pooling][special_tok]) > 0


def test_only_nonzeros_come_back(bb, sae, stats):
    batches, _ = run(runtime(bb, sae, stats, "last", "max", "top"), make_suite(batch_tokens=256))
    acts = torch.cat([sae.encode(bb.residuals([ids], [LAYER]).hidden[LAYER][0])[0].flatten()
                      for ids in bb.tokenize(TEXTS).ids])
    assert (acts <= 0).any() and (acts > 0).any()  # the SAE does produce zeros among its top-k
    for b in batches:
        for pb in b.pooled.values():
            assert isinstance(pb.value, np.ndarray) and (pb.value > 0).all() and (pb.n_tokens >= 1).all()
            keys = list(zip(pb.row.tolist(), pb.feature.tolist()))
            assert len(set(keys)) == len(keys) and pb.row.max(initial=0) < len(b.ids)
        assert np.bincount(b.pooled["last"].row, minlength=len(b.ids)).max() <= K


# ---------------------------------------------------------------- truncated forward


def test_pipeline_forward_never_runs_later_layers(bb, sae):
    calls = {n: 0 for n in range(4)}
    norm_calls = []
    handles = [layer.register_forward_pre_hook(lambda m, a, n=n: calls.__setitem__(n, calls[n] + 1))
               for n, layer in enumerate(bb.layers_module)]
    handles.append(bb.model.norm.register_forward_pre_hook(lambda m, a: norm_calls.append(1)))
    try:
        batches, _ = run(runtime(bb, sae, None, "last", "max"), make_suite(batch_tokens=128))
    finally:
        for h in handles:
            h.remove()
    assert len(batches) > 1
    assert calls == {0: len(batches), 1: len(batches), 2: 0, 3: 0} and norm_calls == []


# ---------------------------------------------------------------- writes overlap compute


def test_db_writes_overlap_compute_and_a_late_writer_merges(bb, sae, tmp_path, monkeypatch):
    """encode_suite: forwards go on while a write is pending, and the batches that queued up behind a slow write
    are written in one transaction, each sample with its own features."""
    from qscope_eval.store import Store

    suite = make_suite(batch_tokens=96, max_batch=4, commit_every_s=0)  # each batch as it comes unless some queued
    rows = pd.DataFrame({"benchmark": "b", "position": np.arange(len(TEXTS)), "text": TEXTS})
    n_batches = len(plan_batches(bb.tokenize(TEXTS).lengths, 96, 4))
    assert 2 < n_batches <= pipeline.WRITE_QUEUE
    queued = threading.Semaphore(0)  # one release per batch handed to the writer (on_batch runs after the put)
    real_write = pipeline.write_results
    calls = []

    def write_results(store, encoders, batch, texts=None):
        # the first write cannot finish before every batch was computed and queued: compute goes on meanwhile
        ok = all(queued.acquire(timeout=30) for _ in range(n_batches)) if not calls else True
        calls.append((ok, len(batch.ids)))
        return real_write(store, encoders, batch, texts)

    monkeypatch.setattr(pipeline, "write_results", write_results)
    monkeypatch.setattr(pipeline, "load_rows", lambda s: rows)
    rt = runtime(bb, sae, None, "last")
    monkeypatch.setattr(pipeline, "load_runtime", lambda s: rt)
    with Store(tmp_path / "x.duckdb") as store:
        report = pipeline.encode_suite(suite, store, progress=False, on_batch=lambda n: queued.release())
        sae_only = "JOIN encoders USING (encoder_id) WHERE kind = 'sae'"
        stored = store.con.execute(f"SELECT sample_id, feature, value FROM activations {sae_only} ORDER BY 1, 2").fetchall()
        n_done = store.con.execute(f"SELECT count(*) FROM encoded {sae_only}").fetchall()[0][0]
        # the writer thread filled the lexical twin of every sample in the same transactions (the words: host-side)
        n_words = store.con.execute("SELECT count(*) FROM encoded JOIN encoders USING (encoder_id) "
                                    "WHERE kind = 'lexical'").fetchall()[0][0]
    assert all(ok for ok, _ in calls), "the first write did not overlap the later forwards"
    # the first write took what was there (usually batch 0 alone), the batches that queued behind it went in one
    assert len(calls) <= 2 < n_batches
    assert sum(n for _, n in calls) == report.n_encoded == n_done == n_words == len(TEXTS)
    # the merged write put every feature on its own sample: the same as the batches computed alone
    from qscope_eval.store import sample_id

    ids = np.array([sample_id(t) for t in TEXTS])
    expect = []
    for eb in pipeline.encode_texts(rt, ids, TEXTS, suite):
        pb = eb.pooled[rt.handles[0].key]
        expect += [(int(eb.ids[r]), int(f), v) for r, f, v in zip(pb.row, pb.feature, pb.value)]
    assert [(s, f) for s, f, _ in stored] == [(s, f) for s, f, _ in sorted(expect)]
    np.testing.assert_allclose([v for *_, v in stored], [v for *_, v in sorted(expect)], rtol=1e-6)


def test_batches_within_the_write_interval_share_a_transaction(bb, sae, tmp_path, monkeypatch):
    from qscope_eval.store import Store

    rows = pd.DataFrame({"benchmark": "b", "position": np.arange(len(TEXTS)), "text": TEXTS})
    n_batches = len(plan_batches(bb.tokenize(TEXTS).lengths, 96, 4))
    monkeypatch.setattr(pipeline, "load_rows", lambda s: rows)
    monkeypatch.setattr(pipeline, "load_runtime", lambda s: runtime(bb, sae, None, "last"))
    for interval, transactions in ((60.0, 1), (0.0, None)):
        sizes = []
        real_write = pipeline.write_results
        suite = make_suite(batch_tokens=96, max_batch=4, commit_every_s=interval)
        monkeypatch.setattr(pipeline, "write_results",
                            lambda st, e, b, t=None: sizes.append(len(b.ids)) or real_write(st, e, b, t))
        with Store(tmp_path / f"w{interval}.duckdb") as store:
            pipeline.encode_suite(suite, store, progress=False)
        monkeypatch.setattr(pipeline, "write_results", real_write)
        assert sum(sizes) == len(TEXTS)
        assert len(sizes) == (transactions or len(sizes)) and 1 <= len(sizes) <= n_batches


def test_batches_past_the_pair_cap_are_written_apart(bb, sae, tmp_path, monkeypatch):
    """However long the interval, the writer stops merging once the waiting batches hold MERGE_PAIRS pairs: with a
    cap of one pair every batch is its own transaction, and nothing is lost or written twice."""
    from qscope_eval.store import Store

    rows = pd.DataFrame({"benchmark": "b", "position": np.arange(len(TEXTS)), "text": TEXTS})
    n_batches = len(plan_batches(bb.tokenize(TEXTS).lengths, 96, 4))
    monkeypatch.setattr(pipeline, "load_rows", lambda s: rows)
    monkeypatch.setattr(pipeline, "load_runtime", lambda s: runtime(bb, sae, None, "last"))
    monkeypatch.setattr(pipeline, "MERGE_PAIRS", 1)
    sizes = []
    real_write = pipeline.write_results
    monkeypatch.setattr(pipeline, "write_results",
                        lambda st, e, b, t=None: sizes.append(len(b.ids)) or real_write(st, e, b, t))
    with Store(tmp_path / "cap.duckdb") as store:
        pipeline.encode_suite(make_suite(batch_tokens=96, max_batch=4, commit_every_s=60.0), store, progress=False)
        n_stored = store.con.execute("SELECT count(*) FROM encoded JOIN encoders USING (encoder_id) "
                                     "WHERE kind = 'sae'").fetchone()[0]
    assert n_batches > 1 and len(sizes) == n_batches and sum(sizes) == n_stored == len(TEXTS)


def test_merge_batches_reindexes_rows():
    from qscope_eval.model.encode import PooledBatch

    def pb(rows, feats):
        return PooledBatch(np.array(rows, np.int64), np.array(feats, np.int32), np.ones(len(rows), np.float32),
                           np.ones(len(rows), np.int32))

    a = pipeline.EncodedBatch(np.array([10, 11]), np.array([3, 4]), np.array([False, True]), {"k": pb([0, 1, 1], [5, 6, 7])})
    b = pipeline.EncodedBatch(np.array([12]), np.array([5]), np.array([False]), {"k": pb([0], [9])})
    m = pipeline.merge_batches([a, b])
    assert m.ids.tolist() == [10, 11, 12] and m.n_tokens.tolist() == [3, 4, 5] and m.truncated.tolist() == [False, True, False]
    assert [(int(m.ids[r]), int(f)) for r, f in zip(m.pooled["k"].row, m.pooled["k"].feature)] == [(10, 5), (11, 6), (11, 7), (12, 9)]
    assert isinstance(m.pooled["k"], PooledBatch) and pipeline.merge_batches([a]) is a
    # merged_runs: consecutive batches joined while their pairs stay within the bound, order kept
    c = pipeline.EncodedBatch(np.array([13]), np.array([6]), np.array([False]), {"k": pb([0, 0], [1, 2])})
    runs = list(pipeline.merged_runs([a, b, c], max_pairs=4))
    assert [r.ids.tolist() for r in runs] == [[10, 11, 12], [13]]
    assert [r.ids.tolist() for r in pipeline.merged_runs([a, b, c], max_pairs=1)] == [[10, 11], [12], [13]]
    assert list(pipeline.merged_runs([])) == []


# ---------------------------------------------------------------- the benchmark's GPU mode, dry run


def test_encode_bench_gpu_mode_dry_run(capsys, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "bench" / "encode_bench.py"
    spec = importlib.util.spec_from_file_location("encode_bench", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "encode_bench", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    rc = bench.main(["--gpu", "--device", "cpu", "--tiny", "--n", "12", "--baseline-n", "4", "--rounds", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "identity baseline vs encode_texts: OK (4 samples" in out
    assert "identity encode_texts vs encode_suite + DB: OK (12 samples" in out
    assert "ratio ours: encode_texts / baseline (model card)" in out


def test_encode_arms_dry_run(tmp_path, capsys, monkeypatch):
    """bench/encode_arms.py (the GPU arms of issue 14) runs end to end on a tiny CPU config and writes its rows."""
    import json

    path = Path(__file__).resolve().parents[1] / "bench" / "encode_arms.py"
    spec = importlib.util.spec_from_file_location("encode_arms", path)
    arms = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "encode_arms", arms)
    spec.loader.exec_module(arms)
    rc = arms.main(["--device", "cpu", "--tiny", "--n", "8", "--only", "padded 16k eager", "--out", str(tmp_path),
                    "--steps", "suite last best", "noise best", "vs baseline best"])
    out = capsys.readouterr().out
    assert rc == 0 and "FAILED" not in out and "issue 14 targets" in out, out
    rows = [json.loads(line) for line in (tmp_path / "arms.jsonl").read_text().splitlines()]
    names = [r["arm"] for r in rows]
    assert "forward: padded 16k eager" in names and "encode_suite+DB last: padded 16k eager" in names
    assert any(n.startswith("noise floor last") for n in names) and any("vs model-card baseline" in n for n in names)
    assert all(r["tokens_per_s"] > 0 for r in rows if "tokens_per_s" in r)
    suite_row = next(r for r in rows if r["arm"] == "encode_suite+DB last: padded 16k eager")
    # the suite arm says where its time outside the batches went (the gap to encode_texts)
    parts = [suite_row[k] for k in ("open_s", "prepare_s", "first_batch_s", "tail_s", "close_s")]
    assert min(parts) >= 0 and sum(parts) <= suite_row["seconds"] + 0.05


def test_encode_arms_target_lines_pick_the_best_candidate(monkeypatch):
    path = Path(__file__).resolve().parents[1] / "bench" / "encode_arms.py"
    spec = importlib.util.spec_from_file_location("encode_arms", path)
    arms = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "encode_arms", arms)
    spec.loader.exec_module(arms)
    rows = [{"arm": "forward: padded auto eager", "share_of_peak_pct": 26.4},
            {"arm": "forward: packed varlen auto+compile", "share_of_peak_pct": 56.0},
            {"arm": "encode_suite+DB last: padded auto+compile", "share_of_peak_pct": 42.5},
            {"arm": "encode_suite+DB last: padded auto+compile, host work in turn", "share_of_peak_pct": 47.0},
            {"arm": "encode_suite+DB max: x", "share_of_peak_pct": None},
            {"arm": "encode_suite+DB top: x, tf32 SAE, pooling with syncs", "share_of_peak_pct": 40.0},
            {"arm": "encode_suite+DB max: x, bf16 SAE", "share_of_peak_pct": 40.0}]
    lines = arms.targets(rows)
    assert "best  56.0% (met): forward: packed varlen auto+compile" in lines[1]
    assert "best  42.5% (missed): encode_suite+DB last: padded auto+compile" in lines[2]  # in-turn arms are baselines
    assert lines[3].endswith("not measured") and lines[4].endswith("not measured")  # nor the previous code's arms


def test_gpu_probe_dry_run(tmp_path, capsys, monkeypatch):
    """bench/gpu_probe.py runs on a tiny CPU config: the baseline's own floors (another attention kernel, fp32),
    then ours against the baseline (exact on CPU)."""
    import json

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_probe", root / "bench" / "gpu_probe.py")
    gp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gp)
    rc = gp.main(["--device", "cpu", "--tiny", "--n", "8", "--n-fidelity", "4", "--out", str(tmp_path),
                  "--sections", "floors", "eager"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = {r["what"]: r for r in map(json.loads, (tmp_path / "probe.jsonl").read_text().splitlines())}
    assert rows["floor: baseline bf16 vs baseline fp32"]["n_samples"] == 4
    assert "floor: baseline sdpa vs baseline eager attention" in rows and "forward padded auto eager" in rows
    assert "ours (eager at 16k) vs model-card baseline (last, 4 prompts): mean Jaccard 1.0000" in out


def test_gpu_arms_script_names_real_arms():
    # bench/gpu_arms.sh is the one device call that measures issue 14: a misspelt arm would be skipped silently
    # on a device whose minutes are counted, so every name it passes must be one encode_arms.py knows
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("encode_arms_names", root / "bench" / "encode_arms.py")
    arms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arms)
    words = shlex.split(re.sub(r"\\\n", " ", (root / "bench" / "gpu_arms.sh").read_text()).split("bench/encode_arms.py", 1)[1])
    only = words[words.index("--only") + 1: words.index("--steps")]
    steps = words[words.index("--steps") + 1: words.index("$@")]
    assert only and set(only) <= set(arms.CONFIGS)
    assert steps and set(steps) <= set(arms.STEPS)
    probe = shlex.split(re.sub(r"\\\n", " ", (root / "bench" / "gpu_arms.sh").read_text()).split("$PY bench/gpu_probe.py", 1)[1])
    sections = probe[probe.index("--sections") + 1: probe.index("${PROBE_ARGS:-}")]
    spec = importlib.util.spec_from_file_location("gpu_probe_names", root / "bench" / "gpu_probe.py")
    gp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gp)
    assert sections and set(sections) <= set(gp.SECTIONS)
