"""Selection from behaviour (`select --scores`) on suites of known structure, against its baselines (issue 25).

Each suite plants scores = 60 + 6·general + 4·group + noise·benchmark for n models (a near copy of
one benchmark, and benchmarks with a factor of their own where named), with unequal costs and
missing cells in some. Feature evidence for the same benchmarks comes from the REAL feature
recommendation (analysis.recommend.assess/recommend) run on synthetic fired-feature matrices built
from the same groups: each prompt fires features of its group's block, of its benchmark's own
block, and shared ones; the null encoder fires random features.

Printed per suite, in one run:
  default      the behaviour recommendation (max_error 2.0 points): kept / all, cost share, mean and
               worst error of the dropped benchmarks on models held out from the choice (sklearn RidgeCV)
  random       random kept sets of the same cost (30 draws, ±5 %): mean and worst dropped error, mean ± sd
               (the chosen set on that same evaluator beside it)
  features     the feature-only recommendation: kept / all, cost share, mean and worst dropped error on
               the same held-out models
  checks       groups with no kept benchmark (want 0), near copy dropped, unique benchmarks kept
Then the frontier of the first suite (cost share vs mean dropped error: greedy path, random band,
feature-only point), and the time of the whole decision at 60 × 100 and 500 × 1000 (CPU and wall).

Run:  python bench/behaviour_select_bench.py [--out bench/results/behaviour_select_bench.txt]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qscope_eval.analysis import behaviour_decide as bd  # noqa: E402
from qscope_eval.analysis import behaviour_select as bsel  # noqa: E402
from qscope_eval.analysis import recommend as rc  # noqa: E402


@dataclass(frozen=True)
class Suite:
    """A planted score structure."""

    name: str
    models: int
    groups: int
    per: int
    noise: float
    uniques: int = 1
    missing: float = 0.0
    costs: str = "equal"   # equal | uniform (1..10) | lognormal
    seed: int = 0


SUITES = [
    Suite("A 4x6 equal", 100, 4, 6, 1.0),
    Suite("B 8x5 lognormal costs, 10% missing", 150, 8, 5, 1.0, uniques=2, missing=0.10, costs="lognormal", seed=1),
    Suite("C 3x10 noisy (sd 2.5)", 80, 3, 10, 2.5, seed=2),
    Suite("D 15x4 uniform costs", 100, 15, 4, 1.0, uniques=0, costs="uniform", seed=3),
    Suite("E 6x6 200 models, 20% missing", 200, 6, 6, 1.0, uniques=2, missing=0.20, costs="uniform", seed=4),
]


def planted(s: Suite):
    """Scores (models × benchmarks), costs, group of each benchmark (-1-u: unique u; last column a near copy of 0)."""
    rng = np.random.default_rng(s.seed)
    g, G = rng.normal(size=s.models), rng.normal(size=(s.models, s.groups))
    cols, grp = [], []
    for k in range(s.groups):
        for _ in range(s.per):
            cols.append(60 + 6 * g + 4 * G[:, k] + s.noise * rng.normal(size=s.models))
            grp.append(k)
    for u in range(s.uniques):
        cols.append(60 + 5 * rng.normal(size=s.models))
        grp.append(-1 - u)
    cols.append(cols[0] + 0.2 * rng.normal(size=s.models))
    grp.append(0)
    Y = np.column_stack(cols)
    if s.missing:
        Y[rng.random(Y.shape) < s.missing] = np.nan
    p = Y.shape[1]
    costs = {"equal": np.ones(p), "uniform": rng.uniform(1, 10, p), "lognormal": rng.lognormal(0, 0.8, p)}[s.costs]
    costs[-1] = costs[0] * 1.5  # the copy costs more than its original
    return Y, costs, np.array(grp)


def features(grp: np.ndarray, seed: int, n: int = 40, d_block: int = 30):
    """Membership M (bench × samples), SAE fired F and null fired F0 (samples × d) following the groups."""
    rng = np.random.default_rng(seed)
    kinds = sorted(set(grp.tolist()))
    p = grp.size
    d = d_block * len(kinds) + 10 * p + 100
    rows, cols, nrows, ncols = [], [], [], []
    for b in range(p):
        gblock = kinds.index(grp[b]) * d_block
        own = d_block * len(kinds) + 10 * b
        for i in range(n):
            r = b * n + i
            f = np.concatenate([gblock + rng.choice(d_block, 6, replace=False), own + rng.choice(10, 2, replace=False),
                                d - 100 + rng.choice(100, 3, replace=False)])
            rows += [r] * f.size
            cols += f.tolist()
            nrows += [r] * 11
            ncols += rng.choice(d, 11, replace=False).tolist()
    M = sp.csr_matrix((np.ones(p * n), (np.repeat(np.arange(p), n), np.arange(p * n))), shape=(p, p * n))
    F = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(p * n, d))
    F0 = sp.csr_matrix((np.ones(len(nrows)), (nrows, ncols)), shape=(p * n, d))
    return M, F, F0


def run_suite(s: Suite, cfg: bsel.SelectConfig, out):
    Y, costs, grp = planted(s)
    M, F, F0 = features(grp, s.seed)
    a = rc.assess(M, F, F0, rc.RecommendConfig())
    fk = rc.recommend(a, costs).kept
    t0 = time.process_time()
    d = bd.decide(Y, costs, cfg, rc.stand_ins(a), a.ratio, fk)
    cpu = time.process_time() - t0
    p, total = Y.shape[1], costs.sum()
    kept = set(d.kept.tolist())
    maes = [x.mae for x in d.predictions.values()]
    b = d.baseline
    fp = d.feature_point
    groups_dropped = sum(1 for k in set(grp.tolist()) if not kept & set(np.flatnonzero(grp == k).tolist()))
    f_groups = sum(1 for k in set(grp.tolist()) if not set(fk.tolist()) & set(np.flatnonzero(grp == k).tolist()))
    pr_ = lambda *x: print(*x, file=out)  # noqa: E731
    pr_(f"\n== {s.name}: {s.models} models x {p} benchmarks, noise sd {s.noise}, missing {s.missing:.0%}, "
        f"costs {s.costs}  ({cpu:.1f} s CPU)")
    err = (f"dropped error mean {np.mean(maes):.2f}  worst {max(maes):.2f} points (held-out models: "
           f"{d.split.report.size})") if maes else "nothing dropped: no benchmark predicted within the tolerance"
    pr_(f"  default   keep {len(kept):2d}/{p}  cost {costs[d.kept].sum() / total:6.1%}  {err}")
    if not maes:
        pr_("  random    - (the default keeps everything)")
    else:
        pr_(f"  random    same cost ({b.cost_mean / total:.1%}, {b.max_error.size} draws): mean {b.mean_error.mean():.2f} "
            f"± {b.mean_error.std(ddof=1):.2f}  worst {b.max_error.mean():.2f} ± {b.max_error.std(ddof=1):.2f}  "
            f"[chosen on this evaluator: {d.chosen_errors[0]:.2f} / {d.chosen_errors[1]:.2f}; random sets with a "
            f"lower worst error: {np.mean(b.max_error <= d.chosen_errors[1]):.0%}]")
    pr_(f"  features  keep {len(fk):2d}/{p}  cost {costs[fk].sum() / total:6.1%}  dropped error mean "
        f"{fp['error']:.2f}  worst {fp['max_error']:.2f} points; groups dropped {f_groups}")
    pr_(f"  checks    groups dropped {groups_dropped}; near copy dropped: {p - 1 not in kept}; uniques kept: "
        f"{all(j in kept for j in np.flatnonzero(grp < 0))}; dropped better than random worst: "
        f"{all(m < np.mean(b.max_error) for m in maes)}; disagreements {len(d.disagreements)}")
    return d, costs


def timing(out, models: int, groups: int, per: int):
    s = Suite("t", models, groups, per, 1.0, uniques=0)
    Y, costs, _ = planted(s)
    t0, w0 = time.process_time(), time.perf_counter()
    d = bd.decide(Y, costs, bsel.SelectConfig())
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    print(f"  {models} models x {Y.shape[1]} benchmarks: {cpu:.1f} s CPU, {wall:.1f} s wall "
          f"(search {d.search.evaluations} kept sets evaluated, keep {d.kept.size})", file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="Also write the output to this file.")
    ap.add_argument("--no-large", action="store_true", help="Skip the 500 x 1000 timing.")
    args = ap.parse_args(argv)

    class Tee:
        def __init__(self, path):
            self.f = open(path, "w") if path else None

        def write(self, x):
            sys.stdout.write(x)
            if self.f:
                self.f.write(x)

        def flush(self):
            sys.stdout.flush()

    out = Tee(args.out)
    cfg = bsel.SelectConfig(max_error=2.0)
    print(f"behaviour selection bench (max_error {cfg.max_error} points, {cfg.predict.folds}-fold x "
          f"{cfg.predict.repeats} on held-out models, holdout {cfg.predict.holdout:.0%})", file=out)
    first = None
    for s in SUITES:
        d, costs = run_suite(s, cfg, out)
        first = first or (s, d, costs)
    s, d, costs = first
    print(f"\nfrontier of {s.name} (cost share of the suite; mean dropped MAE on held-out models, points):", file=out)
    print(f"  {'cost':>6} {'kept':>4} {'greedy':>7} {'random mean':>11} {'random band':>14}", file=out)
    for f in d.frontier:
        print(f"  {f.cost_share:6.1%} {f.kept.size:4d} {f.error_chosen:7.2f} {f.error_random_mean:11.2f} "
              f"{f.error_random_lo:6.2f}–{f.error_random_hi:<6.2f}", file=out)
    fp = d.feature_point
    print(f"  feature-only point: {fp['cost_share']:.1%}, {fp['error']:.2f}; chosen point: "
          f"{d.search.cost / costs.sum():.1%}, {d.chosen_errors[0]:.2f}", file=out)
    print("\ntiming of the whole decision (search, report errors, random baseline, frontier; no features):", file=out)
    timing(out, 100, 10, 6)
    if not args.no_large:
        timing(out, 1000, 50, 10)


if __name__ == "__main__":
    main()
