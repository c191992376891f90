"""`validate --scores` at scale: reading and matching a 1000-model × 500-benchmark table, and the proxies over 500 benchmarks.

Prints, each beside its baseline measured in the same run:
1. read_scores on a wide leaderboard-style CSV (1000 rows, 500 `harness|hendrycksTest-...|5`-style
   columns + metadata) matched to 500 stored names, against pandas.read_csv of the same file alone
   (the floor: parsing the text);
2. proxy_matrices (Eq. 11, frequency-weighted, characteristic) over K benchmarks against the obvious
   implementation (Python sets for Eq. 11, a per-pair loop for the frequency-weighted overlap), with
   the largest difference between the two;
3. the whole analysis (analysis/behaviour.score_agreement) on the 1000 × 500 table with 10 proxies.

Usage: python bench/scores_bench.py [--models 1000] [--benchmarks 500] [--replicates 200] [--permutations 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from qscope_eval.analysis.behaviour import AgreementConfig, score_agreement
from qscope_eval.analysis.proxies import proxy_matrices
from qscope_eval.data.scores import read_scores


def _table(n_models: int, K: int, rng) -> tuple[pd.DataFrame, list[str]]:
    names = [f"mmlu_subject_{k:03d}" for k in range(K)]
    g = rng.normal(size=(n_models, 1))
    topic = rng.normal(size=(n_models, K // 10 + 1))[:, np.arange(K) // 10]
    S = np.clip(0.5 + 0.1 * g + 0.07 * topic + 0.03 * rng.normal(size=(n_models, K)), 0, 1)
    S[rng.random(S.shape) < 0.02] = np.nan  # a few missing cells
    df = pd.DataFrame(S.round(4), columns=[f"harness|hendrycksTest-subject_{k:03d}|5" for k in range(K)])
    df.insert(0, "fullname", [f"org/model-{i}" for i in range(n_models)])
    df.insert(1, "Average ⬆️", np.nanmean(S, axis=1).round(4))
    df.insert(2, "#Params (B)", 7.0)
    return df, names


def _obvious(M: sp.csr_matrix, F: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    K = M.shape[0]
    Fd = F.toarray()
    sets, p = [], []
    for k in range(K):
        rows = Fd[M[k].indices]
        sets.append(set(np.flatnonzero(rows.any(axis=0)).tolist()))
        c = rows.sum(axis=0).astype(float)
        p.append(c / c.sum())
    sym, freq = np.full((K, K), np.nan), np.full((K, K), np.nan)
    for a in range(K):
        for b in range(K):
            if a != b:
                sym[a, b] = len(sets[a] & sets[b]) / min(len(sets[a]), len(sets[b]))
                freq[a, b] = float(np.minimum(p[a], p[b]).sum())
    return sym, freq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--benchmarks", type=int, default=500)
    ap.add_argument("--samples", type=int, default=40, help="samples per benchmark for the proxies")
    ap.add_argument("--d", type=int, default=4096, help="dictionary width for the proxies")
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--permutations", type=int, default=1000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    df, names = _table(a.models, a.benchmarks, rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leaderboard.csv"
        df.to_csv(path, index=False)
        t = time.perf_counter()
        pd.read_csv(path, dtype=str, keep_default_na=False)
        t_csv = time.perf_counter() - t
        t = time.perf_counter()
        table = read_scores([path], benchmarks=names)
        t_read = time.perf_counter() - t
    S = table.matched()[names].to_numpy(float)
    print(f"1. read + match {a.models} models x {a.benchmarks} columns: {t_read:.2f} s "
          f"(baseline pandas.read_csv alone: {t_csv:.2f} s); matched {table.matched().shape[1]} columns")

    K, n = a.benchmarks, a.samples
    topic = np.arange(K) // 10
    rows = np.repeat(np.arange(K * n), 12)
    feats = (topic[rows // 12 // n] * 64 + rng.integers(0, 64, rows.size) + rng.integers(0, 2, rows.size) * 2048) % a.d
    F = sp.csr_matrix((np.ones(rows.size, bool), (rows, feats)), shape=(K * n, a.d))
    M = sp.csr_matrix((np.ones(K * n, bool), (np.arange(K * n) // n, np.arange(K * n))), shape=(K, K * n))
    t = time.perf_counter()
    P = proxy_matrices(M, F)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    sym, freq = _obvious(M, F)
    t_slow = time.perf_counter() - t
    diff = max(np.nanmax(np.abs(P["sym"] - sym)), np.nanmax(np.abs(P["freq"] - freq)))
    print(f"2. proxies over {K} benchmarks x {n} samples, d {a.d}: {t_fast:.2f} s for sym + freq + characteristic "
          f"(obvious sets/loops, sym + freq only: {t_slow:.2f} s); max |difference| {diff:.1e}")

    proxies = {f"{kind}:{m}": P[m] + (0 if kind == "sae" else rng.normal(0, 0.05, (K, K)))
               for kind in ("sae", "null", "lexical") for m in ("sym", "freq", "characteristic")}
    proxies["lexical:tfidf"] = P["sym"] + rng.normal(0, 0.1, (K, K))
    proxies = {k: (v + v.T) / 2 for k, v in proxies.items()}
    cfg = AgreementConfig(replicates=a.replicates, permutations=a.permutations, splits=20)
    t, c = time.perf_counter(), time.process_time()
    res = score_agreement(S, proxies, names, cfg)
    t_ag, c_ag = time.perf_counter() - t, time.process_time() - c
    print(f"3. score_agreement {a.models} x {K}, {len(proxies)} proxies, {a.replicates} replicates, "
          f"{a.permutations} permutations: {t_ag:.1f} s wall, {c_ag:.1f} s CPU (the obvious version: "
          f"bench/behaviour_bench.py); headline: {res.verdicts[0][:110]}")


if __name__ == "__main__":
    main()
