"""Benchmark of the Table-2 analysis (analysis/behaviour.score_agreement) against the obvious version.

Data: seeded synthetic scores of M models on K benchmarks (general + group ability + noise, about
10 % of the cells missing) and three proxies (sae:sym, null:sym, lexical:tfidf), as in the tests.

- ours: score_agreement with R bootstrap replicates, P Mantel permutations and the reliability
  splits, everything included (point estimates, intervals, Mantel, comparisons, verdicts).
- obvious: pandas DataFrame.corr(min_periods) for the score correlations, a np.polyfit loop per
  benchmark for the residuals of the partial correlation, scipy.stats.pearsonr / spearmanr per
  proxy; a bootstrap replicate resamples the table's rows and redoes all of it, a permutation
  relabels each proxy matrix and calls pearsonr, a split redoes it on two halves. It is timed
  on a few replicates / permutations / splits and extrapolated linearly (printed as such).

Both wall and process-CPU seconds are printed, the CPU seconds also per stage (point estimates,
replicates, permutations, splits): the machine may be shared, so CPU seconds are the figure to
compare. Both run under one BLAS thread (score_agreement sets it for ours: its hundreds of small
products only contend with a second thread; the obvious version gets the same).

    python bench/behaviour_bench.py [--models 1000] [--benchmarks 500] [--missing 0.1] [--replicates 500]
                                    [--permutations 1000] [--splits 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qscope_eval.analysis.behaviour import AgreementConfig, score_agreement  # noqa: E402
from qscope_eval.analysis import behaviour, behaviour_stats  # noqa: E402


STAGES = (("rep", behaviour, "_bootstrap"), ("perm", behaviour, "_mantel"), ("split", behaviour_stats, "reliability"))


class stage_clock:
    """Process-CPU seconds spent inside our replicates, permutations and splits (the rest is 'point')."""

    def __enter__(self):
        self.cpu, self.saved = {}, []
        for name, mod, fn in STAGES:
            f = getattr(mod, fn)
            self.saved.append((mod, fn, f))

            def wrapped(*a, _f=f, _name=name, **kw):
                c = time.process_time()
                try:
                    return _f(*a, **kw)
                finally:
                    self.cpu[_name] = self.cpu.get(_name, 0.0) + time.process_time() - c
            setattr(mod, fn, wrapped)
        return self

    def __exit__(self, *exc):
        for mod, fn, f in self.saved:
            setattr(mod, fn, f)


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def data(m: int, k: int, missing: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = max(2, k // 20)
    grp = np.arange(k) % groups
    S = 0.5 + 0.1 * (rng.standard_normal(m)[:, None] + 0.8 * rng.standard_normal((m, groups))[:, grp]
                     + 0.8 * rng.standard_normal((m, k)))
    S[rng.random(S.shape) < missing] = np.nan
    true = (grp[:, None] == grp[None, :]).astype(float)

    def noise(s):
        A = rng.standard_normal((k, k)) * s
        return (A + A.T) / 2

    return S, {"sae:sym": true + noise(0.3), "null:sym": noise(1.0), "lexical:tfidf": 0.3 * true + noise(0.5)}


# ----------------------------------------------------------------------------- the obvious implementation
def obvious_scores(S: np.ndarray, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw (pandas pairwise-complete) and partial (polyfit residuals on the mean standardised score)."""
    df = pd.DataFrame(S)
    raw = df.corr(min_periods=min_n).to_numpy()
    Z = (S - np.nanmean(S, axis=0)) / np.nanstd(S, axis=0, ddof=1)
    g = np.nanmean(Z, axis=1)
    R = np.full_like(S, np.nan)
    for k in range(S.shape[1]):
        ok = np.isfinite(S[:, k])
        b, a = np.polyfit(g[ok], S[ok, k], 1)
        R[ok, k] = S[ok, k] - (b * g[ok] + a)
    return raw, pd.DataFrame(R).corr(min_periods=min_n).to_numpy()


def obvious_agreement(raw, par, proxies, iu, ju) -> dict:
    out = {}
    for name, P in proxies.items():
        p = P[iu, ju]
        for side, B in (("raw", raw), ("partial", par)):
            b = B[iu, ju]
            ok = np.isfinite(b)
            out[(name, side)] = (stats.pearsonr(p[ok], b[ok]).statistic, stats.spearmanr(p[ok], b[ok]).statistic)
    return out


def obvious(S, proxies, reps: int, perms: int, splits: int, min_n: int, rng) -> dict:
    K = S.shape[1]
    iu, ju = np.triu_indices(K, 1)
    t = {}
    (raw, par), t["point_w"], t["point_c"] = timed(lambda: obvious_scores(S, min_n))
    point, w, c = timed(lambda: obvious_agreement(raw, par, proxies, iu, ju))
    t["point_w"] += w
    t["point_c"] += c

    def one_rep():
        rows = rng.integers(0, S.shape[0], S.shape[0])
        r, p = obvious_scores(S[rows], min_n)
        obvious_agreement(r, p, proxies, iu, ju)

    def one_perm():
        for P in proxies.values():
            pi = rng.permutation(K)
            Pp = P[pi][:, pi][iu, ju]
            for B in (raw, par):
                b = B[iu, ju]
                ok = np.isfinite(b)
                stats.pearsonr(Pp[ok], b[ok])

    def one_split():
        perm = rng.permutation(S.shape[0])
        h = S.shape[0] // 2
        a, b = obvious_scores(S[perm[:h]], min_n), obvious_scores(S[perm[h:2 * h]], min_n)
        for x, y in zip(a, b):
            ok = np.isfinite(x[iu, ju]) & np.isfinite(y[iu, ju])
            stats.pearsonr(x[iu, ju][ok], y[iu, ju][ok])

    for name, fn, n in (("rep", one_rep, reps), ("perm", one_perm, perms), ("split", one_split, splits)):
        _, t[name + "_w"], t[name + "_c"] = timed(lambda: [fn() for _ in range(n)])
        t[name + "_n"] = n
    return {"times": t, "point": point}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--benchmarks", type=int, default=500)
    ap.add_argument("--missing", type=float, default=0.1)
    ap.add_argument("--replicates", type=int, default=500)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--splits", type=int, default=50)
    ap.add_argument("--baseline-replicates", type=int, default=2)
    ap.add_argument("--baseline-permutations", type=int, default=20)
    ap.add_argument("--baseline-splits", type=int, default=1)
    a = ap.parse_args()
    warnings.simplefilter("error")                 # a warning reaching the terminal is a bug here
    S, proxies = data(a.models, a.benchmarks, a.missing)
    K = a.benchmarks
    print(f"# behaviour bench: {a.models} models x {K} benchmarks ({K * (K - 1) // 2} pairs), "
          f"{np.isnan(S).mean():.1%} cells missing, {len(proxies)} proxies; "
          f"{a.replicates} replicates, {a.permutations} permutations, {a.splits} splits")
    print(f"# cores: {os.cpu_count()}, load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cfg = AgreementConfig(replicates=a.replicates, permutations=a.permutations, splits=a.splits)
    with stage_clock() as clock:
        res, ow, oc = timed(lambda: score_agreement(S, proxies, [f"b{k}" for k in range(K)], cfg))
    print(f"ours     : {ow:8.1f} s wall {oc:8.1f} s CPU (everything, measured)")

    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):   # same BLAS threads as ours
        warnings.simplefilter("ignore")            # the obvious version may warn; it is not ours
        ob = obvious(S, proxies, a.baseline_replicates, a.baseline_permutations, a.baseline_splits,
                     cfg.min_pair_models, np.random.default_rng(1))
    t = ob["times"]
    scale = {"rep": a.replicates, "perm": a.permutations, "split": a.splits}
    tw, tc = t["point_w"], t["point_c"]
    parts = [f"point {t['point_w']:.1f} s"]
    for name in ("rep", "perm", "split"):
        f = scale[name] / max(t[name + "_n"], 1)
        tw += t[name + "_w"] * f
        tc += t[name + "_c"] * f
        parts.append(f"{t[name + '_n']} {name}s {t[name + '_w']:.1f} s x {f:.0f}")
    print(f"obvious  : {tw:8.1f} s wall {tc:8.1f} s CPU (extrapolated: {'; '.join(parts)})")
    print(f"ratio    : {tw / ow:8.1f} x wall {tc / oc:8.1f} x CPU")
    ours = dict(clock.cpu)
    ours["point"] = oc - sum(ours.values())
    print("CPU seconds per stage      ours   obvious")
    for name, label in (("point", "point estimates + rest"), ("rep", f"{a.replicates} replicates"),
                        ("perm", f"{a.permutations} permutations"), ("split", f"{a.splits} splits")):
        ob_c = t["point_c"] if name == "point" else t[name + "_c"] * scale[name] / max(t[name + "_n"], 1)
        print(f"  {label:<22} {ours.get(name, 0.0):8.2f} {ob_c:9.1f}")

    # same point estimates from both (the replicates differ by design: ours use the available-case form)
    worst = 0.0
    for row in res.proxies:
        for side, pre in (("raw", ""), ("partial", "partial_")):
            pe, sr = ob["point"][(row["name"], side)]
            worst = max(worst, abs(pe - row[pre + "pearson"]), abs(sr - row[pre + "spearman"]))
    print(f"point estimates: largest |ours - obvious| over proxies x raw/partial x Pearson/Spearman = {worst:.2e}")
    for row in res.proxies:
        print(f"  {row['name']:<14} partial r = {row['partial_pearson']:+.3f} "
              f"[{row['partial_pearson_lo']:+.3f}, {row['partial_pearson_hi']:+.3f}] Mantel p = {row['partial_mantel_p']:.4f}")
    print(f"  reliability (Spearman-Brown) {res.reliability['spearman_brown']:.3f}, ceiling {res.reliability['ceiling']:.3f}")
    print(f"# load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
