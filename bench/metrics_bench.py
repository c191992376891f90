"""Benchmark of the metrics pass against a straightforward plain-Python version.

Builds a seeded synthetic store (100 000 samples in 10 benchmarks, d_sae 32 768,
~50 fired features per sample, Zipf-like feature frequencies, 2 % of samples
shared by two benchmarks, 300 planted near-duplicate pairs), times every stage
of qscope_eval.jobs.summary.metrics / qscope_eval.jobs.summary.select, then the same stages written the
obvious way (one Python set of ints per sample, Counter per benchmark, R̂ via
the closed form with lgamma in a loop per feature per n, lazy greedy on sets),
checks that both give the same numbers, and prints a table.

The baseline's R̂ (|F(D)| × N lgamma terms per benchmark, ~10^9 in all) is
timed on a few n per benchmark and extrapolated linearly to all N; the output
says so. Its near-duplicate search (all pairs) is checked on a 1 500-sample
subset only and is not part of the totals. Each stage reports wall and process
CPU seconds; ratios and the verdict use CPU seconds, which do not depend on
other tenants of a shared machine (the code is single-threaded).

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
from qscope_eval.analysis import metrics, samples
from qscope_eval.analysis import select  # noqa: E402

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


class Stopwatch:
    """Wall and process-CPU seconds. The CPU figure is what the code costs; the wall figure also
    counts waiting for a core, which on a shared machine can dominate."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def timed(table, name, fn):
    with Stopwatch() as sw:
        out = fn()
    table[name] = (sw.wall, sw.cpu)
    return out


def ours(X, M):
    t = {}
    F = timed(t, "fired", lambda: metrics.fired(X, 0.0))
    C = timed(t, "coverage + n_f", lambda: (metrics.coverage(M, F, D_SAE), metrics.benchmark_features(M, F)))
    cov, C = C
    ov = timed(t, "overlaps", lambda: metrics.overlap_matrices(M, F))
    per = [C.data[C.indptr[b]:C.indptr[b + 1]].astype(np.int64) for b in range(N_BENCH)]
    Ns = cov.n_samples
    red = timed(t, "r_hat + curves", lambda: [metrics.redundancy(k, int(N)) for k, N in zip(per, Ns)])
    nmin = int(Ns.min())
    rare = timed(t, "rarefied", lambda: [metrics.rarefied_coverage(k, int(N), nmin) for k, N in zip(per, Ns)])
    ch = timed(t, "chao1", lambda: [metrics.chao1(k) for k in per])
    sel = timed(t, "greedy select", lambda: select.greedy_cover(F, target=TARGET))
    nd = timed(t, "near-duplicates", lambda: samples.near_duplicates(F, M, 0.9))
    # not part of the pass, shown for scale: summarize() in one call, and every c_n of every benchmark
    extra = {}
    timed(extra, "summarize", lambda: metrics.summarize(X, M, [f"b{i}" for i in range(N_BENCH)], D_SAE))
    curves = timed(extra, "full", lambda: [metrics.expected_coverage_curve(k, int(N)) for k, N in zip(per, Ns)])
    return t, dict(cov=cov, ov=ov, red=red, rare=rare, chao1=ch, sel=sel, nd=nd, curves=curves,
                   extra=extra, nmin=nmin)


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
    counts, fd, union = timed(t, "coverage + n_f", cov)
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
    sampled, t_rhat = [], np.zeros(2)
    for c, mem in zip(counts, members):
        N = len(mem)
        ns = np.unique(np.linspace(1, N, r_hat_ns).round().astype(int)).tolist()
        with Stopwatch() as sw:
            vals = [c_at(c, N, n) for n in ns]
        t_rhat += np.array([sw.wall, sw.cpu]) * N / len(ns)
        sampled.append((ns, vals))
    t["r_hat + curves"] = tuple(t_rhat)
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
    load = os.getloadavg()
    t0 = time.perf_counter()
    X, M, planted = synthetic(n)
    print(f"synthetic store: {n} samples, {N_BENCH} benchmarks, d_sae {D_SAE}, nnz {X.nnz}, "
          f"{M.nnz - n} extra memberships, {len(planted)} planted near-duplicate pairs "
          f"(built in {time.perf_counter() - t0:.1f} s); {os.cpu_count()} CPUs")
    t_ours, o = ours(X, M)
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

    # ---- table (ratio and verdict on CPU seconds: robust to other tenants of a shared machine)
    w = 26
    print(f"\n{'stage':<{w}}{'ours wall':>10}{'ours cpu':>10}{'base wall':>12}{'base cpu':>12}{'ratio':>9}")
    for st, (ow, oc) in t_ours.items():
        if st in t_base:
            bw, bc = t_base[st]
            note = "  (baseline extrapolated)" if st == "r_hat + curves" else ""
            print(f"{st:<{w}}{ow:>10.3f}{oc:>10.3f}{bw:>12.2f}{bc:>12.2f}{bc / oc:>8.0f}x{note}")
        else:
            print(f"{st:<{w}}{ow:>10.3f}{oc:>10.3f}{'-':>12}{'-':>12}{'':>9}  (baseline: checked on a subset)")
    tot = lambda t, i, skip=(): sum(v[i] for k, v in t.items() if k in t_base and k not in skip)
    ow, oc, bw, bc = tot(t_ours, 0), tot(t_ours, 1), tot(t_base, 0), tot(t_base, 1)
    print(f"{'TOTAL (compared stages)':<{w}}{ow:>10.3f}{oc:>10.3f}{bw:>12.1f}{bc:>12.1f}{bc / oc:>8.0f}x")
    nr = ("r_hat + curves",)
    oc_nr, bc_nr = tot(t_ours, 1, nr), tot(t_base, 1, nr)
    print(f"{'  without the R-hat stage':<{w}}{tot(t_ours, 0, nr):>10.3f}{oc_nr:>10.3f}{tot(t_base, 0, nr):>12.1f}"
          f"{bc_nr:>12.1f}{bc_nr / oc_nr:>8.1f}x")
    nd_w, nd_c = t_ours["near-duplicates"]
    print(f"{'  + near-duplicates':<{w}}{ow + nd_w:>10.3f}{oc + nd_c:>10.3f}")
    sw, sc = o["extra"]["summarize"]
    fw, fc = o["extra"]["full"]
    print(f"\nsummarize() in one call (fired, coverage, overlaps, R̂ + curves, rarefied, chao1): "
          f"{sw:.3f} s wall, {sc:.3f} s cpu")
    print(f"for scale, not in the pass: every c_n of all {N_BENCH} benchmarks "
          f"({sum(len(c) for c in o['curves'])} points): {fw:.3f} s wall, {fc:.3f} s cpu")
    print(f"greedy: {len(o['sel'].order)} picks, {o['sel'].rows.size} after clean-up, coverage "
          f"{o['sel'].coverage:.4f} of union {int(o['sel'].union)}; near-duplicate pairs: {o['nd'].i.size}")
    print(f"load average at start {load[0]:.1f} on {os.cpu_count()} CPUs")
    print("\nchecks (ours == baseline):")
    for k, v in checks.items():
        print(f"  [{'ok' if v else 'FAIL'}] {k}")
    ok = all(checks.values()) and oc <= 3.0 and bc / oc >= 15
    print(f"\nours {oc:.2f} s cpu / {ow:.2f} s wall (goal <= 3 s), {bc / oc:.0f}x the straightforward "
          f"version (goal >= 15x): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
