"""Benchmark of the metrics pass against a straightforward plain-Python version.

Builds a seeded synthetic store (100 000 samples in 10 benchmarks, d_sae 32 768,
~50 fired features per sample, Zipf-like feature frequencies, 2 % of samples
shared by two benchmarks, 300 planted near-duplicate pairs), times every stage
of qscope_eval.metrics / qscope_eval.select, then the same stages written the
obvious way (one Python set of ints per sample, Counter per benchmark, R̂ via
the closed form with lgamma in a loop per feature per n, lazy greedy on sets),
checks that both give the same numbers, and prints a table.

The baseline's R̂ (|F(D)| × N lgamma terms per benchmark, ~10^9 in all) is
timed on a few n per benchmark and extrapolated linearly to all N; the output
says so. Its near-duplicate search (all pairs) is checked on a 1 500-sample
subset only and is not part of the totals.

    python bench/metrics_bench.py [--samples 100000] [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import sys
import time
from collections import Counter

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qscope_eval import metrics, select  # noqa: E402

D_SAE = 32_768
N_BENCH = 10
PER_SAMPLE = 50
TARGET = 0.95


def synthetic(n: int, seed: int = 0):
    """X (n × D_SAE float32 CSR), membership M, planted duplicate pairs."""
    rng = np.random.default_rng(seed)
    bench = np.sort(rng.integers(0, N_BENCH, n))
    # Zipf(1.1) popularity over a per-benchmark permutation: benchmarks share the
    # head partly (overlap) and differ in the tail.
    base = rng.permutation(D_SAE)
    pop = 1.0 / np.arange(1, D_SAE + 1) ** 1.1
    rows = []
    for b in range(N_BENCH):
        perm = base.copy()
        swap = rng.random(D_SAE) < 0.3 + 0.05 * b
        perm[swap] = rng.permutation(perm[swap])
        cdf = np.cumsum(pop[np.argsort(perm)])
        cdf /= cdf[-1]
        k = int((bench == b).sum())
        draws = np.searchsorted(cdf, rng.random((k, PER_SAMPLE + 12)))
        rows.extend(draws)
    idx = [np.unique(r)[:PER_SAMPLE] for r in rows]
    dup = rng.choice(n, size=(300, 2), replace=False)
    for a, b in dup:  # b := a with one feature swapped -> Jaccard ~ 0.92
        s = idx[a].copy()
        s[rng.integers(s.size)] = rng.integers(D_SAE)
        idx[b] = np.unique(s)
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in idx])])
    vals = rng.gamma(2.0, 1.0, indptr[-1]).astype(np.float32)
    X = sp.csr_matrix((vals, np.concatenate(idx), indptr), shape=(n, D_SAE))
    shared = rng.choice(n, size=n // 50, replace=False)
    other = (bench[shared] + rng.integers(1, N_BENCH, shared.size)) % N_BENCH
    M = metrics.membership_from_pairs(np.concatenate([bench, other]),
                                      np.concatenate([np.arange(n), shared]), N_BENCH, n)
    return X, M, {tuple(sorted(p)) for p in dup.tolist()}


def timed(table, name, fn):
    t = time.perf_counter()
    out = fn()
    table[name] = time.perf_counter() - t
    return out


def ours(X, M, n_dup_check):
    t = {}
    F = timed(t, "fired", lambda: metrics.fired(X, 0.0))
    C = timed(t, "coverage", lambda: (metrics.coverage(M, F, D_SAE), metrics.benchmark_features(M, F)))
    cov, C = C
    ov = timed(t, "overlaps", lambda: metrics.overlap_matrices(M, F))
    per = [C.data[C.indptr[b]:C.indptr[b + 1]].astype(np.int64) for b in range(N_BENCH)]
    Ns = cov.n_samples
    red = timed(t, "r_hat + curves", lambda: [metrics.redundancy(k, int(N)) for k, N in zip(per, Ns)])
    nmin = int(Ns.min())
    rare = timed(t, "rarefied", lambda: [metrics.rarefied_coverage(k, int(N), nmin) for k, N in zip(per, Ns)])
    ch = timed(t, "chao1", lambda: [metrics.chao1(k) for k in per])
    sel = timed(t, "greedy select", lambda: select.greedy_cover(F, target=TARGET))
    nd = timed(t, "near-duplicates", lambda: metrics.near_duplicates(F, M, 0.9))
    # not part of the pass, shown for scale: the full c_n for every n of every benchmark
    t0 = time.perf_counter()
    curves = [metrics.expected_coverage_curve(k, int(N)) for k, N in zip(per, Ns)]
    full = time.perf_counter() - t0
    return t, dict(cov=cov, ov=ov, red=red, rare=rare, chao1=ch, sel=sel, nd=nd, curves=curves,
                   full_curve_s=full, nmin=nmin)


def baseline(X, M, r_hat_ns: int):
    """The obvious implementation: Python sets and loops."""
    rows = [list(zip(X.indices[X.indptr[i]:X.indptr[i + 1]].tolist(),
                     X.data[X.indptr[i]:X.indptr[i + 1]].tolist())) for i in range(X.shape[0])]
    members = [M.indices[M.indptr[b]:M.indptr[b + 1]].tolist() for b in range(M.shape[0])]
    t = {}
    sets = timed(t, "fired", lambda: [{f for f, v in r if v > 0.0} for r in rows])

    def cov():
        counts = []
        for mem in members:
            c = Counter()
            for s in mem:
                c.update(sets[s])
            counts.append(c)
        fd = [set(c) for c in counts]
        return counts, fd, len(set().union(*fd))
    counts, fd, union = timed(t, "coverage", cov)
    inter = timed(t, "overlaps", lambda: [[len(a & b) for b in fd] for a in fd])

    def logratio(N, k, n):  # log C(N-k, n) / C(N, n)
        return (math.lgamma(N - k + 1) - math.lgamma(N - k - n + 1)
                - math.lgamma(N + 1) + math.lgamma(N - n + 1))

    def c_at(c, N, n):
        tot = 0.0
        for k in c.values():
            tot += 1.0 if n > N - k else 1.0 - math.exp(logratio(N, k, n))
        return tot / len(c)

    # R̂ needs c_n for all n = 1..N: time r_hat_ns evenly spaced n per benchmark, extrapolate x N/r_hat_ns
    sampled, t_rhat = [], 0.0
    for c, mem in zip(counts, members):
        N = len(mem)
        ns = np.unique(np.linspace(1, N, r_hat_ns).round().astype(int)).tolist()
        t0 = time.perf_counter()
        vals = [c_at(c, N, n) for n in ns]
        t_rhat += (time.perf_counter() - t0) * N / len(ns)
        sampled.append((ns, vals))
    t["r_hat + curves"] = t_rhat
    nmin = min(len(m) for m in members)
    rare = timed(t, "rarefied", lambda: [c_at(c, len(m), nmin) * len(c) for c, m in zip(counts, members)])

    def chao(c):
        f = Counter(c.values())
        f1, f2 = f.get(1, 0), f.get(2, 0)
        return len(c) + (f1 * f1 / (2 * f2) if f2 else f1 * (f1 - 1) / 2)
    ch = timed(t, "chao1", lambda: [chao(c) for c in counts])

    def greedy():
        universe = set().union(*sets)
        need = math.ceil(TARGET * len(universe) - 1e-9)
        heap = [(-len(s), i) for i, s in enumerate(sets) if s]
        heapq.heapify(heap)
        covered, order = set(), []
        while len(covered) < need:
            _, i = heapq.heappop(heap)
            g = len(sets[i] - covered)
            if heap and (-g, i) > heap[0]:
                heapq.heappush(heap, (-g, i))
                continue
            covered |= sets[i]
            order.append(i)
        return order
    order = timed(t, "greedy select", greedy)
    return t, dict(counts=counts, fd=fd, union=union, inter=inter, sampled=sampled, rare=rare,
                   chao1=ch, order=order, sets=sets, nmin=nmin)


def near_dup_bruteforce(sets, ids, threshold):
    out = set()
    for a in range(len(ids)):
        sa = sets[ids[a]]
        for b in range(a + 1, len(ids)):
            sb = sets[ids[b]]
            u = len(sa | sb)
            if u and len(sa & sb) / u >= threshold:
                out.add((ids[a], ids[b]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--rhat-ns", type=int, default=8, help="n values per benchmark timed for the baseline R̂")
    ap.add_argument("--quick", action="store_true", help="10 000 samples")
    a = ap.parse_args()
    n = 10_000 if a.quick else a.samples
    t0 = time.perf_counter()
    X, M, planted = synthetic(n)
    print(f"synthetic store: {n} samples, {N_BENCH} benchmarks, d_sae {D_SAE}, nnz {X.nnz}, "
          f"{M.nnz - n} extra memberships, {len(planted)} planted near-duplicate pairs "
          f"(built in {time.perf_counter() - t0:.1f} s); {os.cpu_count()} CPUs")
    t_ours, o = ours(X, M, planted)
    t_base, b = baseline(X, M, a.rhat_ns)

    # ---- same numbers?
    checks = {}
    checks["coverage |F(D)|"] = np.array_equal(o["cov"].n_features, [len(s) for s in b["fd"]]) \
        and o["cov"].union == b["union"]
    checks["overlap intersections"] = np.array_equal(o["ov"].intersection, np.array(b["inter"]))
    err = max(abs(o["curves"][i][np.array(ns) - 1] - np.array(v)).max() for i, (ns, v) in enumerate(b["sampled"]))
    checks[f"c_n at sampled n (max |diff| {err:.1e})"] = err < 1e-9
    r_sum = max(abs(r.r_hat - c.sum() / r.n_features) for r, c in zip(o["red"], o["curves"]))
    checks[f"R̂ closed form vs Σ full curve (max |diff| {r_sum:.1e})"] = r_sum < 1e-9
    checks["rarefied"] = np.allclose(o["rare"], b["rare"], rtol=1e-10)
    checks["chao1"] = np.allclose(o["chao1"], b["chao1"], rtol=1e-12)
    checks[f"greedy picks ({len(b['order'])} samples, same order)"] = np.array_equal(o["sel"].order, b["order"])
    ids = sorted(set(range(1500)) | {i for p in planted for i in p if i < 4000})[:1500]
    brute = near_dup_bruteforce(b["sets"], ids, 0.9)
    idset = set(ids)
    found = {(i, j) for i, j in zip(o["nd"].i.tolist(), o["nd"].j.tolist()) if i in idset and j in idset}
    checks["near-duplicates = all-pairs on 1 500-sample subset"] = found == brute
    checks["all planted duplicates found"] = planted <= set(zip(o["nd"].i.tolist(), o["nd"].j.tolist()))

    # ---- table
    stages = list(t_base)
    w = max(len(s) for s in list(t_ours) + stages) + 2
    print(f"\n{'stage':<{w}}{'ours s':>10}{'baseline s':>14}{'ratio':>10}")
    for s in t_ours:
        tb = t_base.get(s)
        extra = " (extrapolated)" if s == "r_hat + curves" else ""
        print(f"{s:<{w}}{t_ours[s]:>10.3f}" + (f"{tb:>14.2f}{tb / t_ours[s]:>9.0f}x{extra}" if tb
                                                 else f"{'-':>14}{'':>10} (not compared)"))
    T_o = sum(t_ours[s] for s in stages)
    T_b = sum(t_base.values())
    T_o_nr = T_o - t_ours["r_hat + curves"]
    T_b_nr = T_b - t_base["r_hat + curves"]
    print(f"{'TOTAL (compared stages)':<{w}}{T_o:>10.3f}{T_b:>14.1f}{T_b / T_o:>9.0f}x")
    print(f"{'  without R̂ stage':<{w}}{T_o_nr:>10.3f}{T_b_nr:>14.1f}{T_b_nr / T_o_nr:>9.1f}x")
    print(f"{'  + near-duplicates':<{w}}{T_o + t_ours['near-duplicates']:>10.3f}")
    print(f"\n(for scale, not in the pass: full c_n for every n of all {N_BENCH} benchmarks "
          f"= {sum(len(c) for c in o['curves'])} points in {o['full_curve_s']:.2f} s)")
    print(f"greedy: {len(o['sel'].order)} picks, {o['sel'].rows.size} after clean-up, coverage "
          f"{o['sel'].coverage:.4f} of union {int(o['sel'].union)}; near-duplicate pairs found: {o['nd'].i.size}")
    print("\nchecks:")
    for k, v in checks.items():
        print(f"  [{'ok' if v else 'FAIL'}] {k}")
    ok = all(checks.values()) and T_o <= 3.0 and T_b / T_o >= 15
    print(f"\nours {T_o:.2f} s (goal <= 3 s), {T_b / T_o:.0f}x the straightforward version (goal >= 15x): "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
