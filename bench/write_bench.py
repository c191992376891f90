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
   the device) followed by the host's only remaining work, wrapping the arrays (encode._host); median of 5.

    python bench/write_bench.py [--repeat 2] [--prompts 200] [--features 10000] [--sections 1 2 3 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_common import injected  # noqa: E402
from qscope_eval.data.suite import load_suite  # noqa: E402
from qscope_eval.jobs import pipeline  # noqa: E402
from qscope_eval.store import Store  # noqa: E402

ROWS_SQL = "SELECT encoder_id, sample_id, feature, value FROM activations ORDER BY ALL"


def commits(tmp: Path, repeat: int) -> None:
    base = load_suite("demo")
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
    suite = load_suite("demo")
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


def big_batch(tmp: Path, prompts: int, features: int) -> None:
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(prompts), features)
    feats = np.concatenate([np.sort(rng.choice(32768, features, replace=False)) for _ in range(prompts)])
    vals = rng.random(rows.size).astype(np.float32)
    shuffle = rng.permutation(rows.size)
    times = {}
    for name, order in (("grouped, as pooled", slice(None)), ("shuffled (sorted first)", shuffle)):
        with Store(tmp / f"b{len(times)}.duckdb") as s:
            e = s.register_encoder("toy@main|sae|L1|max|sae", "toy", "main", "sae", 1, "max", "sae", 32768, {})
            ids = s.register_benchmark("b", "t", {"path": "x"}, [f"q{i}" for i in range(prompts)])
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

    from qscope_eval.model import encode

    rng = np.random.default_rng(0)
    keys = torch.from_numpy(np.concatenate([r * d_sae + np.sort(rng.choice(d_sae, features, replace=False))
                                            for r in range(prompts)]))
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

    parts = encode._parts(keys, vals, counts, d_sae)
    old, new = numpy_split(), encode._host(parts)
    same = all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(old, new))
    t_old, t_split, t_wrap = median(numpy_split), median(lambda: encode._parts(keys, vals, counts, d_sae)), \
        median(lambda: encode._host(parts))
    print(f"4. the host half of a `max` batch of {keys.numel():,} pairs ({prompts} prompts x {features}):")
    print(f"   split with numpy on the host (before)      {t_old * 1e3:7.1f} ms")
    print(f"   split with torch (a GPU: on the device)    {t_split * 1e3:7.1f} ms")
    print(f"   host work left: wrap the arrays (now)      {t_wrap * 1e3:7.1f} ms")
    print(f"   host time taken off the critical path: {(t_old - t_wrap) * 1e3:.1f} ms; arrays identical: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--features", type=int, default=10000)
    ap.add_argument("--sections", nargs="*", type=int, default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
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


if __name__ == "__main__":
    main()
