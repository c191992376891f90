"""Storage benchmark: bytes per (sample, feature) pair, write rate, readers during a write, load and summary time.

Writes the seeded synthetic suite of bench/metrics_bench.py (N samples in 10
benchmarks, d_sae 32 768, ~50 fired features per sample) through the store's
own write path (Store.write_batches, batches of --batch samples), and, as the
baseline in the same run, through the previous layout (one DuckDB table for
activations, markers in the same transaction, the file held open for the whole
write). During each write a separate reader process runs
`SELECT count(*) FROM encoded` through query.run_sql every 50 ms and records
how many queries were answered and how long they took. Then it times
analysis.load and analysis.audit_summary on the new store, stage by stage.

    python bench/store_bench.py [--samples 1000000] [--batch 1024] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from metrics_bench import D_SAE, synthetic  # noqa: E402

from qscope_eval.jobs import summary as analysis  # noqa: E402
from qscope_eval.store import Store  # noqa: E402

READER = """
import json, sys, time
from pathlib import Path
from qscope_eval.store.query import run_sql
from qscope_eval.errors import QueryError
db, stop, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
LOCK_WAIT = None
import qscope_eval.store.query as Q
Q.LOCK_WAIT_S = LOCK_WAIT if LOCK_WAIT is not None else Q.LOCK_WAIT_S
lat, ok, asked = [], 0, 0
while not stop.exists():
    if db.exists():
        t = time.perf_counter(); asked += 1
        try:
            run_sql(db, "SELECT count(*) FROM encoded", timeout_s=30)
            ok += 1; lat.append(time.perf_counter() - t)
        except QueryError:
            pass
    time.sleep(0.05)
out.write_text(json.dumps({"asked": asked, "answered": ok, "latency": lat}))
"""


class Reader:
    """A reader process polling the database while the block runs; `.result` afterwards."""

    def __init__(self, db: Path, tmp: Path, lock_wait_s: float):
        self.db, self.stop, self.out = db, tmp / f"stop-{db.name}", tmp / f"reader-{db.name}.json"
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        code = READER.replace("LOCK_WAIT = None", f"LOCK_WAIT = {lock_wait_s}")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(self.stop), str(self.out)], env=env)
        time.sleep(1.5)  # its imports

    def finish(self) -> dict:
        self.stop.touch()
        self.proc.wait(120)
        r = json.loads(self.out.read_text())
        lat = np.array(r["latency"] or [np.nan])
        return {"asked": r["asked"], "answered": r["answered"], "p50_ms": float(np.median(lat) * 1e3),
                "p95_ms": float(np.percentile(lat, 95) * 1e3), "max_ms": float(lat.max() * 1e3)}


def suite(n: int):
    """Synthetic X, membership and the content addresses, as the store will see them."""
    X, M, _ = synthetic(n)
    texts = [f"synthetic prompt {j}" for j in range(n)]
    return X, M, texts


def batches(X, sids: np.ndarray, size: int, seed: int = 0):
    """(ids, n_tokens, truncated, rows, features, values, fired_tokens) per batch of `size` samples."""
    rng = np.random.default_rng(seed)
    for a in range(0, X.shape[0], size):
        b = min(a + size, X.shape[0])
        lo, hi = X.indptr[a], X.indptr[b]
        counts = np.diff(X.indptr[a:b + 1])
        yield (sids[a:b], rng.integers(20, 400, b - a), np.zeros(b - a, bool), np.repeat(np.arange(b - a), counts),
               X.indices[lo:hi], X.data[lo:hi], rng.integers(1, 30, hi - lo))


def size_of(db: Path) -> int:
    parts = db.with_name(db.name + ".parts")
    return db.stat().st_size + (sum(p.stat().st_size for p in parts.iterdir()) if parts.is_dir() else 0)


def write_new(db: Path, X, M, texts, size: int) -> tuple[float, np.ndarray]:
    with Store(db) as s:
        sids = np.zeros(len(texts), np.int64)
        for b in range(M.shape[0]):
            cols = M[b].indices
            sids[cols] = s.register_benchmark(f"bench_{b}", "synth", {"path": "x"}, [texts[j] for j in cols])
        e = s.register_encoder("synth@main|sae|L1|last|sae", "synth", "main", "sae", 1, "last", "sae", D_SAE, {})
        t = time.perf_counter()
        for parts in batches(X, sids, size):
            s.write_batches([(e.encoder_id, *parts)])
        return time.perf_counter() - t, sids


LEGACY = """
CREATE TABLE encoded (encoder_id INTEGER NOT NULL, sample_id BIGINT NOT NULL, n_tokens INTEGER NOT NULL,
  truncated BOOLEAN NOT NULL, n_features INTEGER NOT NULL, encoded_at TIMESTAMP NOT NULL, PRIMARY KEY (encoder_id, sample_id));
CREATE TABLE activations (encoder_id INTEGER NOT NULL, sample_id BIGINT NOT NULL, feature INTEGER NOT NULL,
  value REAL NOT NULL, n_tokens INTEGER NOT NULL);
CREATE TABLE samples (sample_id BIGINT PRIMARY KEY, text VARCHAR NOT NULL, n_chars INTEGER NOT NULL);
"""


def write_legacy(db: Path, X, texts, sids: np.ndarray, size: int, release: bool = False) -> float:
    """The previous write path: activations + markers into DuckDB tables, one transaction per batch, file held open.

    release: candidate (b), the same tables but the file closed after every commit (readers get in between).
    """
    from qscope_eval.store import parts as P

    con = duckdb.connect(str(db))
    con.execute(LEGACY)
    con.register("_s", pa.table({"sample_id": sids, "text": texts, "n_chars": np.array([len(t) for t in texts], np.int32)}))
    con.execute("INSERT INTO samples SELECT * FROM _s")
    t = time.perf_counter()
    for ids, ntok, trunc, rows, feats, vals, fired in batches(X, sids, size):
        con.execute("BEGIN")
        con.register("_a", pa.table({"encoder_id": np.ones(len(rows), np.int32), "sample_id": ids[rows],
                                     "feature": feats.astype(np.int32), "value": vals.astype(np.float32), "n_tokens": fired.astype(np.int32)}))
        con.register("_m", pa.table({"encoder_id": np.ones(len(ids), np.int32), "sample_id": ids, "n_tokens": ntok.astype(np.int32),
                                     "truncated": trunc, "n_features": np.bincount(rows, minlength=len(ids)).astype(np.int32),
                                     "encoded_at": pa.array([pd.Timestamp.now()] * len(ids), pa.timestamp("us"))}))
        con.execute("INSERT INTO activations SELECT * FROM _a")
        con.execute("INSERT INTO encoded SELECT * FROM _m")
        con.execute("COMMIT")
        if release:
            con.close()
            P.yield_to_readers(db)
            con = P.connect_with_retry(db, 120, read_only=False, raise_flag=True)
    con.close()
    return time.perf_counter() - t


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def summary_stages(db: Path) -> dict:
    """analysis.load and each part of analysis.audit_summary, timed separately (seconds)."""
    from qscope_eval.analysis import metrics

    st = {}
    with Store(db, read_only=True) as s:
        ld, st["load"] = timed(lambda: analysis.load(s))
        _, st["audit_summary"] = timed(lambda: analysis.audit_summary(s, ld, "synth"))
        _, st["  suite_metrics"] = timed(lambda: analysis.suite_metrics(ld))
        _, st["  select_benchmarks"] = timed(lambda: analysis.select_benchmarks(s, ld))
        _, st["  select_samples"] = timed(lambda: analysis.select_samples(s, ld))
        _, st["  feature_frequency"] = timed(lambda: metrics.feature_frequency(metrics.fired(ld.real.X)))
        _, st["  duplicates_report"] = timed(lambda: analysis.duplicates_report(s, ld))
        from qscope_eval.analysis import samples

        keep, samples.MAX_KEYS_PER_SAMPLE = samples.MAX_KEYS_PER_SAMPLE, 0  # baseline: the product of prefixes
        try:
            _, st["  duplicates_report, product of prefixes (before)"] = timed(lambda: analysis.duplicates_report(s, ld))
        finally:
            samples.MAX_KEYS_PER_SAMPLE = keep
    return st


def print_stages(db: Path) -> None:
    st = summary_stages(db)
    print(f"\nstage ({db.name})                                   seconds")
    for k, v in st.items():
        print(f"{k:<52}{v:>8.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1024, help="samples per committed batch")
    ap.add_argument("--candidates", action="store_true",
                    help="also candidate (b): the previous DuckDB tables with the file released after every batch")
    ap.add_argument("--stages-only", default=None, metavar="DB",
                    help="only time load and the summary stages on an existing store (e.g. --keep DIR's new.duckdb)")
    ap.add_argument("--keep", default=None, help="folder to keep the databases in (default: a temp folder, removed)")
    args = ap.parse_args()
    if args.stages_only:
        return print_stages(Path(args.stages_only))
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="store_bench"))
    tmp.mkdir(parents=True, exist_ok=True)
    (X, M, texts), t_gen = timed(lambda: suite(args.samples))
    pairs = X.nnz
    print(f"synthetic suite: {args.samples:,} samples, {pairs:,} (sample, feature) pairs, d_sae {D_SAE} ({t_gen:.0f} s to generate)")

    new, busy, old = tmp / "new.duckdb", tmp / "busy.duckdb", tmp / "old.duckdb"
    t_alone, sids = write_new(new, X, M, texts, args.batch)
    rd = Reader(busy, tmp, lock_wait_s=15)
    t_new, _ = write_new(busy, X, M, texts, args.batch)
    r_new = rd.finish()
    rd = Reader(old, tmp, lock_wait_s=0.05)  # the previous reader failed at once on a locked file
    t_old = write_legacy(old, X, texts, sids, args.batch)
    r_old = rd.finish()
    rows = []
    if args.candidates:
        rel, rel_busy = tmp / "released.duckdb", tmp / "released_busy.duckdb"
        t_rel_alone = write_legacy(rel, X, texts, sids, args.batch, release=True)
        rd = Reader(rel_busy, tmp, lock_wait_s=15)
        t_rel = write_legacy(rel_busy, X, texts, sids, args.batch, release=True)
        rows.append(("candidate (b): DuckDB table, released", size_of(rel) / pairs, t_rel_alone, t_rel, rd.finish()))
    b_new, b_old = size_of(new) / pairs, size_of(old) / pairs
    b_parts = (size_of(new) - new.stat().st_size) / pairs
    print(f"\n{'layout (' + str(args.batch) + ' samples per batch)':<42}{'B/pair':>7}{'pairs/s':>11}{'+reader':>11}{'reads answered':>16}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}")
    for name, b, ta, t, r in (("Parquet parts + catalog, file released", b_new, t_alone, t_new, r_new),
                              ("previous: DuckDB table, file held open", b_old, t_old, t_old, r_old), *rows):
        print(f"{name:<42}{b:>7.2f}{pairs / ta:>11,.0f}{pairs / t:>11,.0f}{r['answered']:>8}/{r['asked']:<7}"
              f"{r['p50_ms']:>8.0f}{r['p95_ms']:>8.0f}{r['max_ms']:>8.0f}")
    print(f"new: {b_parts:.2f} B/pair in Parquet parts + {b_new - b_parts:.2f} in the DuckDB catalog "
          f"({len(list((tmp / 'new.duckdb.parts').iterdir()))} parts after compaction)")
    print(f"ratios new/old: bytes {b_new / b_old:.2f}, write rate alone {t_old / t_alone:.2f}, with a reader {t_old / t_new:.2f}")
    print("(reader: SELECT count(*) FROM encoded through query.run_sql every 50 ms during the write; the previous "
          "layout's reader gave up after 50 ms, as `qscope-eval sql` refused at once)")

    del X
    print_stages(new)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
