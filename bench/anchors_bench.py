"""Anchor items (analysis/anchors.py) on planted item-response suites of several shapes: held-out error of
each method's full-score estimate at N in {10, 30, 100} items, beside random items of the same count,
measured in the same run; the published figures printed beside them for comparison.

Shapes (models × items; every matrix drawn from a known item-response model, so the truth is the
model's mean over all items of its own draws, exactly what the tool estimates):
- 2pl:      P = σ(a_j (θ_i − b_j)), θ ~ N(0, 1), log a ~ N(0, 0.4²), b ~ N(0, 1.2²)  (what IRT assumes)
- guess4:   P = 0.25 + 0.75 σ(...) (4-choice questions with guessing: a 3PL the 2PL fit does not know)
- 2skills:  items load on one of two skills, correlation 0.5 between the skills (one θ is not enough)
- noisy40:  40 models only, 30 % of the items coin flips (few models, weak items)
- big:      200 models × 1000 items, 2PL with guessing 0.2
Errors are in points (0–100): |estimate − full score| over models held out of the choice (5-fold over
models), 95 % bootstrap interval over models; random: 200 draws of N random items (plain mean), and
rnd+irt: 20 draws of N random items scored by p-IRT (what the IRT estimator alone gives, without the choice).

Published (real Open LLM Leaderboard data, not these planted suites): tinyBenchmarks (Polo et al. 2024)
report about 2 points average error with 100 items per benchmark (IRT-based estimators); metabench
(Kipnis et al. 2024) reconstructs each benchmark's score within about 1.5 points RMSE from under 3 % of
the items.

Run: PYTHONPATH=. python bench/anchors_bench.py | tee bench/results/anchors_bench.txt
"""

from __future__ import annotations

import sys
import time

import numpy as np

from sklearn.model_selection import KFold

from qscope_eval.analysis import anchors as A
from qscope_eval.analysis import irt

NS = (10, 30, 100)


def _sig(x):
    return 1 / (1 + np.exp(-x))


def shape(name: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    M, J, guess, noise = {"2pl": (120, 400, 0, 0), "guess4": (120, 400, 0.25, 0), "2skills": (120, 400, 0, 0),
                          "noisy40": (40, 400, 0, 0.3), "big": (200, 1000, 0.2, 0)}[name]
    a, b = np.exp(rng.normal(0, 0.4, J)), rng.normal(0, 1.2, J)
    if name == "2skills":
        th = rng.multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], size=M)
        skill = rng.random(J) < 0.5
        T = np.where(skill[None, :], th[:, :1], th[:, 1:])
    else:
        T = np.repeat(rng.normal(size=M)[:, None], J, axis=1)
    P = guess + (1 - guess) * _sig(a * (T - b))
    P = np.where(rng.random(J) < noise, 0.5, P)
    return (rng.random((M, J)) < P).astype(np.float64)


def random_irt(C: np.ndarray, n: int, draws: int = 20, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """Random items scored by p-IRT (IRT fitted on the training folds): what the estimator alone gives, so the
    item choice's own share of the gain shows. (mean, sd) over draws of the held-out MAE."""
    truth = C.mean(axis=1)
    err = np.zeros((draws, len(C)))
    subsets = A.random_subsets(C.shape[1], draws, seed + 29, n)
    for tr, te in KFold(folds, shuffle=True, random_state=seed).split(C):
        fit = irt.fit_irt(C[tr])
        for d, s in enumerate(subsets):
            err[d, te] = 100 * (irt.p_irt(C[te][:, s], s, fit) - truth[te])
    mae = np.abs(err).mean(axis=1)
    return float(mae.mean()), float(mae.std(ddof=1))


def main(shapes=("2pl", "guess4", "2skills", "noisy40", "big")) -> None:
    print(f"# anchors_bench: held-out MAE in points (5-fold over models; 95 % bootstrap interval); "
          f"random = 200 draws of N random items, mean ± sd; 'beaten' = share of random draws with a lower MAE")
    print("# published: tinyBenchmarks ~2 points at 100 items (IRT estimators); metabench RMSE ~1.5 points (<3 % of items)\n")
    best: dict[str, list] = {m: [] for m in A.METHODS}
    for sh in shapes:
        C = shape(sh)
        print(f"## {sh}: {C.shape[0]} models x {C.shape[1]} items, mean score {100 * C.mean():.1f}")
        print(f"{'N':>4} {'method':<8} {'MAE':>6} {'interval':>14} {'RMSE':>6} {'random MAE':>14} {'beaten':>7} {'time':>6}")
        for n in NS:
            rows = []
            for m in A.METHODS:
                t = time.perf_counter()
                ev = A.evaluate(C, n, m, folds=5, random_draws=200, seed=0)
                rows.append((m, ev, time.perf_counter() - t))
                best[m].append(ev.mae / ev.random_mae_mean)
            for m, ev, dt in rows:
                print(f"{n:>4} {m:<8} {ev.mae:6.2f} [{ev.mae_lo:5.2f}, {ev.mae_hi:5.2f}] {ev.rmse:6.2f} "
                      f"{ev.random_mae_mean:7.2f} ± {ev.random_mae_sd:4.2f} {ev.random_better:7.2f} {dt:5.1f}s")
            ri = random_irt(C, n)
            print(f"{n:>4} {'rnd+irt':<8} {ri[0]:6.2f} ± {ri[1]:4.2f} (20 draws of random items scored by p-IRT)")
        print()
        sys.stdout.flush()
    print("## summary: MAE / random items' mean MAE, averaged over shapes and N (lower is better; 1 = no better than random)")
    for m, r in best.items():
        print(f"{m:<8} {np.mean(r):.3f}  (worst {np.max(r):.3f})")
    print(f"default method: {A.DEFAULT_METHOD}")


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("2pl", "guess4", "2skills", "noisy40", "big"))
