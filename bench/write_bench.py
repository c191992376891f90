"""Write-path benchmark: merged commits and unsorted part rows, each against its baseline in the same run.

1. encode_suite on the demo suite (MiniLM, CPU) into fresh DuckDB files, with `encode.commit_every_s` 0 (a
   transaction per forward batch, except batches that queued while the writer was busy: the previous writer,
   which never merged, was slower still) and the default 0.5 s; alternating, best of --repeat; rows compared.
2. The audit flow's shard write: the demo's forward batches (computed once) stored one transaction per batch
   (the previous write_shard) and through pipeline.merged_runs (the current one).
3. One large batch, what `max` pooling gives (--prompts x --features pairs): Store.write_batch with the rows
   grouped by sample and features rising, as pooled batches arrive (taken as they come), and the same rows
   shuffled (sorted first, the path every batch took before).

4. The host half of one such batch's `max` pooling (--prompts x --features pairs as the device leaves them:
   sorted (row * d_sae + feature) keys): split into the PooledBatch's arrays with numpy on the host (the
   previous encode._coo, which ran while the GPU waited) and with torch (encode._parts: on a GPU this runs on
   the device) followed by the host's only remaining work, copying out the live slots (pooling.to_host; on a
   GPU that copy is the device-to-host one, of exactly the live slots); median of 5.

5. The writer thread of encode_suite fed `max`-sized batches (--prompts / 2 x --features pairs) every --gap seconds
   with the merge capped at pipeline.MERGE_PAIRS pairs (now) and uncapped (before): total wall time and the tail
   after the last batch, which nothing overlaps.

6. encode_suite's own cost (wall time minus the encoder's) on --texts prompts of the GPU bench's lengths, the
   encoder replaced by one yielding 30 `last` batches every --pace seconds: the texts stored before the first batch
   (before) and by the writer thread while the first batches compute (pipeline.QUICK_START, now).
7. encode_suite's closing check, the `coverage` view for one encoder (Store.footprints), and the views users query
   (`pairwise_overlap`, `benchmark_features`, `feature_support`, `feature_frequency`), on --prompts x 5 prompts of --features pairs each
   in 4 overlapping benchmarks (a `max` run's 10^7 pairs): the views as they were (count(DISTINCT sample_id) per
   feature, which coverage and pairwise_overlap were built on) and now (each benchmark's distinct fired features
   directly; count(*) over distinct memberships). No prompt repeats within a benchmark here, so the rows agree.

    python bench/write_bench.py [--repeat 2] [--prompts 200] [--features 10000] [--sections 1 2 3 4 5 6 7] [--texts 2000] [--pace 0.13]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_common import injected  # noqa: E402
from qscope_eval.data.suite import load_suite  # noqa: E402
from qscope_eval.jobs import pipeline  # noqa: E402
from qscope_eval.store import Store, sample_ids  # noqa: E402

ROWS_SQL = "SELECT encoder_id, sample_id, feature, value FROM activations ORDER BY ALL"


def commits(tmp: Path, repeat: int) -> None:
    base = load_suite("demo-minilm")
    rows, runtime = pipeline.load_rows(base), pipeline.load_runtime(base)
    best, stored = {}, {}
    for r in range(repeat):
        for every in (0.0, base.encode.commit_every_s):
            suite = dataclasses.replace(base, encode=dataclasses.replace(base.encode, commit_every_s=every))
            with injected(runtime, rows), Store(tmp / f"c{every}-{r}.duckdb") as store:
                t = time.perf_counter()
                pipeline.encode_suite(suite, store, progress=False)
                best[every] = min(best.get(every, float("inf")), time.perf_counter() - t)
                stored[every] = store.con.execute(ROWS_SQL).fetchall()
    (old, new), n = sorted(best), len(rows)
    print(f"1. encode_suite, demo ({n} prompts, MiniLM on CPU), best of {repeat}:")
    print(f"   commit_every_s 0 (each batch)  {best[old]:7.2f} s\n   commit_every_s {new:g} (default) {best[new]:7.2f} s")
    print(f"   ratio {best[old] / best[new]:.2f}x; stored rows identical: {stored[old] == stored[new]}")


def shard_write(tmp: Path) -> None:
    suite = load_suite("demo-minilm")
    rows, runtime = pipeline.load_rows(suite), pipeline.load_runtime(suite)
    times, batches = {}, None
    for mode in ("one transaction per batch", "merged_runs"):
        with Store(tmp / f"s{len(times)}.duckdb") as store:
            prep = pipeline.prepare(suite, store, rows, runtime.encoders)
            ids = prep.pending_ids[: suite.encode.shard_size]
            if batches is None:
                batches = list(pipeline.encode_texts(runtime, ids, [prep.texts[i] for i in ids.tolist()], suite))
            todo = batches if mode.startswith("one") else list(pipeline.merged_runs(batches))
            t = time.perf_counter()
            for b in todo:
                pipeline.write_results(store, prep.encoders, b)
            times[mode] = (time.perf_counter() - t, len(todo))
    print(f"2. the flow's shard write, demo ({len(batches)} forward batches):")
    for mode, (s, n) in times.items():
        print(f"   {mode:<27}{n:>5} transactions {s:7.2f} s")
    (a, _), (b, _) = times.values()
    print(f"   ratio {a / b:.1f}x")


def max_sized(rng: np.random.Generator, prompts: int, features: int,
              d_sae: int = 32768) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A `max`-pooled batch's COO rows: `features` random features per prompt, grouped by prompt with features
    rising, as pooling gives them: (rows int64, features int32, values fp32)."""
    rows = np.repeat(np.arange(prompts), features)
    feats = np.concatenate([np.sort(rng.choice(d_sae, features, replace=False)) for _ in range(prompts)])
    return rows, feats.astype(np.int32), rng.random(rows.size).astype(np.float32)


def max_encoder(s: Store):
    """A toy `max` encoder (d_sae 32768) registered in `s`."""
    return s.register_encoder("toy@main|sae|L1|max|sae", "toy", "main", "sae", 1, "max", "sae", 32768, {})


def toy_encoder(s: Store, n_texts: int):
    """A `max` encoder and one benchmark of n_texts prompts registered in `s`: (encoder row, sample ids)."""
    return max_encoder(s), s.register_benchmark("b", "t", {"path": "x"}, [f"q{i}" for i in range(n_texts)])


def big_batch(tmp: Path, prompts: int, features: int) -> None:
    rng = np.random.default_rng(0)
    rows, feats, vals = max_sized(rng, prompts, features)
    shuffle = rng.permutation(rows.size)
    times = {}
    for name, order in (("grouped, as pooled", slice(None)), ("shuffled (sorted first)", shuffle)):
        with Store(tmp / f"b{len(times)}.duckdb") as s:
            e, ids = toy_encoder(s, prompts)
            t = time.perf_counter()
            s.write_batch(e.encoder_id, ids, np.full(prompts, 500), np.zeros(prompts, bool), rows[order], feats[order],
                          vals[order], np.ones(rows.size, np.int32))
            times[name] = time.perf_counter() - t
    print(f"3. one batch of {rows.size:,} (sample, feature) pairs ({prompts} prompts x {features}), Store.write_batch:")
    for name, s in times.items():
        print(f"   {name:<27}{s:7.2f} s")
    a, b = times.values()
    print(f"   ratio {b / a:.2f}x")


def pooled_to_host(prompts: int, features: int, d_sae: int = 32768) -> None:
    import torch

    from qscope_eval.model import encode, pooling

    rows, feats, _ = max_sized(np.random.default_rng(0), prompts, features, d_sae)
    keys = torch.from_numpy(rows * d_sae + feats)
    vals, counts = torch.rand(keys.numel()), torch.randint(1, 5, (keys.numel(),))

    def numpy_split():  # the previous encode._coo
        k = keys.cpu()
        return ((k // d_sae).numpy().astype(np.int64), (k % d_sae).numpy().astype(np.int32),
                vals.float().cpu().numpy(), counts.cpu().numpy().astype(np.int32))

    def median(fn) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    red = pooling.Reduced(keys, vals, counts, torch.tensor(keys.numel()))  # every slot live
    parts = encode._parts(red, d_sae)
    old, new = numpy_split(), pooling.to_host(parts)
    same = all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(old, new))
    t_old, t_split, t_wrap = median(numpy_split), median(lambda: encode._parts(red, d_sae)), \
        median(lambda: pooling.to_host(parts))
    print(f"4. the host half of a `max` batch of {keys.numel():,} pairs ({prompts} prompts x {features}):")
    print(f"   split with numpy on the host (before)      {t_old * 1e3:7.1f} ms")
    print(f"   split with torch (a GPU: on the device)    {t_split * 1e3:7.1f} ms")
    print(f"   host work left: copy out the live slots    {t_wrap * 1e3:7.1f} ms")
    print(f"   host time taken off the critical path: {(t_old - t_wrap) * 1e3:.1f} ms; arrays identical: {same}")


def writer_tail(tmp: Path, prompts: int, features: int, batches: int, gap: float, repeat: int) -> None:
    """encode_suite's writer thread fed `max`-sized batches every `gap` seconds (a GPU batch's time; the sleep
    releases the GIL as a CUDA wait does): merged up to pipeline.MERGE_PAIRS pairs (now) and with no cap (before,
    only the 0.5 s interval); wall time from the first batch to the writer's end, and the part after the last
    batch arrived (the tail, which no compute overlaps)."""
    from qscope_eval.model.encode import PooledBatch

    rows, feats, vals = max_sized(np.random.default_rng(0), prompts, features)
    best, n_rows = {}, {}
    for r in range(repeat):
        for name, cap in (("no cap (before)", 1 << 62), (f"{pipeline.MERGE_PAIRS:,} pairs (now)", pipeline.MERGE_PAIRS)):
            with Store(tmp / f"t{r}-{len(best)}.duckdb") as s:
                e, ids = toy_encoder(s, prompts * batches)
                writer = pipeline.BatchWriter(s, {e.key: e}, 0.5, cap)
                t0 = time.perf_counter()
                for i in range(batches):
                    time.sleep(gap)
                    writer.put(pipeline.EncodedBatch(ids[i * prompts:(i + 1) * prompts], np.full(prompts, 500),
                                                     np.zeros(prompts, bool),
                                                     {e.key: PooledBatch(rows, feats, vals, np.ones(rows.size, np.int32))}))
                last = time.perf_counter()
                writer.close()
                writer.raise_error()
                end = time.perf_counter()
                n_rows[name] = s.con.execute("SELECT count(*) FROM activations").fetchone()[0]
            old = best.get(name, (float("inf"), 0.0))
            best[name] = min(old, (end - t0, end - last))
    print(f"5. the writer fed {batches} batches of {rows.size:,} pairs, one every {gap:g} s, best of {repeat}:")
    for name, (wall, tail) in best.items():
        print(f"   merge cap {name:<24} wall {wall:6.2f} s   tail after the last batch {tail:6.2f} s")
    (w0, t0_), (w1, t1_) = best.values()
    print(f"   tail ratio {t0_ / t1_:.2f}x, wall ratio {w0 / w1:.2f}x; rows stored equal: "
          f"{len(set(n_rows.values())) == 1} ({next(iter(n_rows.values())):,})")


def quick_start(tmp: Path, n: int, batches: int, pace: float, repeat: int) -> None:
    """encode_suite's own cost around an encoder that yields `last`-sized batches every `pace` seconds (the
    sleep releases the GIL as a CUDA wait does): wall time minus the batches' time, with pipeline.QUICK_START off
    (before: the texts stored and every encoder's stored samples queried before the first batch) and on (now)."""
    from qscope_eval.data.suite import BenchmarkSpec, EncodeSpec, ModelSpec, SaeSpec, Suite
    from qscope_eval.model.encode import PooledBatch
    from qscope_eval.model.encoders import EncoderInfo

    rng = np.random.default_rng(0)
    vocab = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(5000)])
    texts = [" ".join(rng.choice(vocab, rng.integers(100, 800))) + f" #{i}" for i in range(n)]  # ~GPU bench lengths
    rows = pd.DataFrame({"benchmark": "synthetic", "position": np.arange(n), "text": texts})
    suite = Suite(name="quick", model=ModelSpec(id="random:qwen3"), sae=SaeSpec(path="random"), layers=(14,),
                  pooling="last", encode=EncodeSpec(), benchmarks=(BenchmarkSpec(name="synthetic", path="s.jsonl", text="text"),))
    key, per = "random|L14|last|sae", -(-n // batches)
    runtime = types.SimpleNamespace(encoders=[EncoderInfo(key, 14, "sae", 32768, 50)])
    feats = np.sort(rng.integers(0, 32768, (per, 50)), axis=1).reshape(-1).astype(np.int32)

    def paced(runtime, ids, texts, suite, group=None):
        for s in range(0, len(ids), per):
            time.sleep(pace)
            b = ids[s:s + per]
            pb = PooledBatch(np.repeat(np.arange(len(b), dtype=np.int32), 50), feats[: len(b) * 50],
                             np.ones(len(b) * 50, np.float32), np.ones(len(b) * 50, np.int32))
            yield pipeline.EncodedBatch(b, np.full(len(b), 590), np.zeros(len(b), bool), {key: pb})

    best, ends, saved = {}, {}, (pipeline.encode_texts, pipeline.QUICK_START)
    pipeline.encode_texts = paced
    try:
        for r in range(repeat):
            for quick in (False, True):
                pipeline.QUICK_START = quick
                db = tmp / f"q{quick}-{r}.duckdb"
                with injected(runtime, rows):
                    t = time.perf_counter()
                    with Store(db) as store:
                        pipeline.encode_suite(suite, store, progress=False)
                    best[quick] = min(best.get(quick, float("inf")), time.perf_counter() - t - batches * pace)
                with Store(db, read_only=True) as store:
                    ends[quick] = [store.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                                   for t in ("samples", "memberships", "encoded", "activations")]
    finally:
        pipeline.encode_texts, pipeline.QUICK_START = saved
    print(f"6. encode_suite's own cost around {batches} `last` batches of {per} prompts ({sum(map(len, texts)) / 1e6:.1f} MB "
          f"of text), one every {pace:g} s, best of {repeat}:")
    print(f"   texts stored before the first batch (before)   {best[False]:6.3f} s")
    print(f"   texts stored by the writer (QUICK_START, now)  {best[True]:6.3f} s")
    print(f"   ratio {best[False] / best[True]:.2f}x; tables' row counts equal: {ends[False] == ends[True]} {ends[True]}")


COVERAGE_BEFORE = """CREATE TEMP VIEW coverage_before AS
SELECT bf.encoder_id, bf.benchmark, any_value(b.n_samples) AS n_samples, count(*) AS n_features,
       count(*) / any_value(e.d_sae) AS share_of_dsae
FROM benchmark_features_before bf JOIN benchmarks b ON b.name = bf.benchmark JOIN encoders e USING (encoder_id)
GROUP BY ALL"""
"""The `coverage` view as it was: counting benchmark_features' rows (each feature's distinct samples)."""

PAIRWISE_BEFORE = """CREATE TEMP VIEW pairwise_overlap_before AS
WITH inter AS (
  SELECT x.encoder_id, x.benchmark AS a, y.benchmark AS b, count(*) AS n_shared
  FROM benchmark_features_before x JOIN benchmark_features_before y
    ON x.encoder_id = y.encoder_id AND x.feature = y.feature
  GROUP BY ALL)
SELECT i.encoder_id, i.a, i.b, i.n_shared, ca.n_features AS n_a, cb.n_features AS n_b,
       i.n_shared / ca.n_features AS asym_a_to_b, i.n_shared / least(ca.n_features, cb.n_features) AS sym,
       i.n_shared / (ca.n_features + cb.n_features - i.n_shared) AS jaccard
FROM inter i JOIN coverage_before ca ON ca.encoder_id = i.encoder_id AND ca.benchmark = i.a
JOIN coverage_before cb ON cb.encoder_id = i.encoder_id AND cb.benchmark = i.b"""
"""`pairwise_overlap` as it was: benchmark_features twice, the old coverage twice."""

FEATURES_BEFORE = ("""CREATE TEMP VIEW benchmark_features_before AS
SELECT a.encoder_id, m.benchmark, a.feature, count(DISTINCT a.sample_id) AS n_samples
FROM activations a JOIN bench_memberships m USING (sample_id) WHERE a.value > 0 GROUP BY ALL""",
                   """CREATE TEMP VIEW feature_support_before AS
WITH sizes AS (SELECT e.encoder_id, m.benchmark, count(*) AS n_encoded
               FROM memberships m JOIN encoded e USING (sample_id) GROUP BY ALL)
SELECT a.encoder_id, b.role, m.benchmark, a.feature, count(DISTINCT a.sample_id) AS n_samples,
       any_value(z.n_encoded) AS n_encoded, count(DISTINCT a.sample_id) / any_value(z.n_encoded) AS frequency
FROM activations a JOIN memberships m USING (sample_id) JOIN benchmarks b ON b.name = m.benchmark
JOIN sizes z ON z.encoder_id = a.encoder_id AND z.benchmark = m.benchmark
WHERE a.value > 0 GROUP BY ALL""",
                   """CREATE TEMP VIEW feature_frequency_before AS
SELECT encoder_id, feature, count(DISTINCT sample_id) AS n_samples, count(DISTINCT benchmark) AS n_benchmarks
FROM activations JOIN bench_memberships USING (sample_id) WHERE value > 0 GROUP BY ALL""")
"""benchmark_features, feature_support and feature_frequency as they were: count(DISTINCT ...) per feature."""


def coverage_view(tmp: Path, prompts: int, features: int, repeat: int) -> None:
    """encode_suite's closing check (Store.footprints: `coverage` for one encoder) and the views users query on a
    `max` run's worth of pairs, --prompts x 5 prompts in 4 benchmarks (a fifth of each shared with the next): the
    views as they were and now."""
    rng = np.random.default_rng(0)
    n = prompts * 5
    with Store(tmp / "cov.duckdb") as s:
        e = max_encoder(s)
        texts = [f"q{i}" for i in range(n)]
        for b in range(4):  # overlapping quarters
            s.register_benchmark(f"b{b}", "t", {"path": "x"}, texts[b * n // 4: min(n, (b + 1) * n // 4 + n // 20)])
        ids = sample_ids(texts)
        for k, start in enumerate(range(0, n, prompts)):  # batch k fires features < 12000 + 4000 k: footprints differ
            rows, feats, vals = max_sized(rng, prompts, features, 12000 + 4000 * k)
            s.write_batch(e.encoder_id, ids[start:start + prompts], np.full(prompts, 500), np.zeros(prompts, bool),
                          rows, feats, vals, np.ones(rows.size, np.int32))
        pairs = s.con.execute("SELECT count(*) FROM activations").fetchone()[0]
    queries = {"coverage": "SELECT benchmark, n_features FROM {} WHERE encoder_id = ? ORDER BY ALL",
               "pairwise_overlap": "SELECT * FROM {} WHERE encoder_id = ? ORDER BY ALL",
               "benchmark_features": "SELECT * FROM {} WHERE encoder_id = ? ORDER BY ALL",
               "feature_support": "SELECT * FROM {} WHERE encoder_id = ? ORDER BY ALL",
               "feature_frequency": "SELECT * FROM {} WHERE encoder_id = ? ORDER BY ALL"}
    best, got = {}, {}
    with Store(tmp / "cov.duckdb", read_only=True) as s:
        for sql in (*FEATURES_BEFORE, COVERAGE_BEFORE, PAIRWISE_BEFORE):
            s.con.execute(sql)
        for _ in range(repeat):
            for view, sql in queries.items():
                for when, name in (("before", f"{view}_before"), ("now", view)):
                    t = time.perf_counter()
                    got[view, when] = s.con.execute(sql.format(name), [e.encoder_id]).fetchall()
                    best[view, when] = min(best.get((view, when), float("inf")), time.perf_counter() - t)
    print(f"7. the views for one encoder, {pairs:,} pairs ({n} prompts x {features}, 4 benchmarks), best of {repeat}:")
    for view in queries:
        b, a = best[view, "before"], best[view, "now"]
        print(f"   {view:<19} before {b:6.3f} s   now {a:6.3f} s   ratio {b / a:5.1f}x   "
              f"same rows: {got[view, 'before'] == got[view, 'now']} ({len(got[view, 'now'])})")
    print(f"   footprints: {got['coverage', 'now']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--features", type=int, default=10000)
    ap.add_argument("--sections", nargs="*", type=int, default=[1, 2, 3, 4, 5, 6, 7], choices=[1, 2, 3, 4, 5, 6, 7])
    ap.add_argument("--batches", type=int, default=8, help="section 5: batches fed to the writer")
    ap.add_argument("--gap", type=float, default=0.3, help="section 5: seconds between batches (a GPU batch's time)")
    ap.add_argument("--texts", type=int, default=2000, help="section 6: prompts (the GPU bench's 2000)")
    ap.add_argument("--pace", type=float, default=0.13,
                    help="section 6: seconds per batch (30 `last` batches of encode_texts took 3.98 s on the H100, run 4)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="write_bench.") as tmp:
        if 1 in args.sections:
            commits(Path(tmp), args.repeat)
        if 2 in args.sections:
            shard_write(Path(tmp))
        if 3 in args.sections:
            big_batch(Path(tmp), args.prompts, args.features)
        if 4 in args.sections:
            pooled_to_host(args.prompts, args.features)
        if 5 in args.sections:
            writer_tail(Path(tmp), args.prompts // 2, args.features, args.batches, args.gap, args.repeat)
        if 6 in args.sections:
            quick_start(Path(tmp), args.texts, 30, args.pace, args.repeat)
        if 7 in args.sections:
            coverage_view(Path(tmp), args.prompts, args.features, args.repeat)


if __name__ == "__main__":
    main()
