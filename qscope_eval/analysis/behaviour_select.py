"""The cheapest kept benchmark set whose dropped benchmarks are predicted within tolerance (DESIGN §5c).

Given scores Y (n_models × p, points, NaN missing) and a cost per benchmark:

- ``search``: the cheapest kept set K such that every benchmark outside K has a
  cross-validated MAE <= ``max_error`` points and/or a held-out Kendall τ >=
  ``min_tau`` (on the *selection* models, ``predict.FastCV``). Greedy forward
  selection by (violation removed per cost), where a benchmark's violation is
  how far its error exceeds the tolerance (relative to it) plus how far its τ
  falls short; lazy re-evaluation (a candidate's last gain is an upper bound
  used to skip re-evaluating the others; gains here are not provably
  diminishing, so ``lazy=False`` re-evaluates every candidate at every step),
  then an irredundant clean-up (drop kept benchmarks, costliest first, while
  the set stays feasible). A second start seeds the greedy with the cheapest
  member of each cluster of correlated benchmarks; the cheaper result wins.
- ``random_sets``: random kept sets of the same cost (within a tolerance).
- ``frontier``: for a grid of cost shares, the greedy set (objective: summed
  dropped error) and random equal-cost sets, both measured on the held-out
  *report* models with the same evaluator.

Selection bias: the search's CV chooses; every error this module reports for a
chosen or random set is from a ``FastCV`` whose test models are the report
models (see ``predict``), never the ones that chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from qscope_eval.analysis.predict import CVErrors, FastCV, PredictConfig, PredictError

__all__ = ["SelectConfig", "Search", "Baseline", "FrontierPoint", "violations", "search", "random_sets",
           "baseline", "frontier", "set_errors"]


@dataclass(frozen=True)
class SelectConfig:
    """What a dropped benchmark must satisfy, and how the search and its baselines run."""

    max_error: float | None = 2.0
    """Largest cross-validated MAE (points) of a dropped benchmark; None: no error bound."""
    min_tau: float | None = None
    """Smallest held-out Kendall τ between predicted and true model ranking of a dropped benchmark; None: no bound."""
    margin: float = 1.0
    """Standard errors added to a benchmark's search-CV MAE before it is compared with max_error, so that
    estimation noise alone does not drop it (the chosen errors are re-measured on held-out models)."""
    lazy: bool = True
    """Lazy re-evaluation of greedy gains (False: every candidate at every step)."""
    cluster_start: bool = True
    """Also start from the cheapest member of each cluster of correlated benchmarks; keep the cheaper result."""
    trials: int = 30
    """Random kept sets of equal cost at the chosen cost."""
    frontier_trials: int = 10
    """Random kept sets per frontier budget (the band)."""
    tolerance: float = 0.05
    """Random sets' cost within ±this share of the chosen cost."""
    budgets: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
    """Cost shares of the frontier."""
    predict: PredictConfig = field(default_factory=PredictConfig)
    """Cross-validation settings."""

    def __post_init__(self):
        if self.max_error is None and self.min_tau is None:
            raise PredictError("give a tolerance: max_error (points, e.g. 2.0) and/or min_tau (e.g. 0.8)")
        if self.margin < 0:
            raise PredictError(f"margin must be >= 0 standard errors, got {self.margin}")
        if self.max_error is not None and not self.max_error > 0:
            raise PredictError(f"max_error must be > 0 points, got {self.max_error}")
        if self.min_tau is not None and not -1 < self.min_tau <= 1:
            raise PredictError(f"min_tau must be in (-1, 1], got {self.min_tau}")
        if min(self.trials, self.frontier_trials) < 2 or not 0 < self.tolerance < 1:
            raise PredictError("trials must be >= 2 and tolerance in (0, 1)")
        if not self.budgets or not all(0 < b <= 1 for b in self.budgets):
            raise PredictError("budgets must be cost shares in (0, 1]")


@dataclass(frozen=True)
class Search:
    """The chosen kept set and how the search got there (errors on the selection models)."""

    kept: np.ndarray        # sorted column indices
    order: list[int]        # greedy picks in order (before clean-up), forced ones first
    cost: float
    feasible: bool          # every dropped benchmark within tolerance on the selection CV
    start: str              # "empty" or "clusters"
    evaluations: int        # kept sets evaluated
    errors: CVErrors        # search CV errors of the final set
    taus: np.ndarray | None  # (p,) search CV τ (None without min_tau)


@dataclass(frozen=True)
class Baseline:
    """Random kept sets of (nearly) the chosen cost, measured like the chosen set."""

    cost: float                 # target cost
    cost_mean: float            # achieved mean cost of the random sets
    max_error: np.ndarray       # (trials,) max dropped MAE per set
    mean_error: np.ndarray      # (trials,) mean dropped MAE per set
    per_benchmark: np.ndarray   # (p,) mean MAE of each benchmark over the random sets that drop it (NaN: never)
    dropped_in: np.ndarray      # (p,) number of random sets that drop it


@dataclass(frozen=True)
class FrontierPoint:
    """One budget of the cost-vs-error curve (errors on held-out models, points)."""

    budget_share: float
    cost_share: float           # of the greedy set actually chosen at this budget
    kept: np.ndarray
    error_chosen: float         # mean dropped MAE of the greedy set (0 when nothing is dropped)
    max_error_chosen: float
    error_random_mean: float
    error_random_lo: float
    error_random_hi: float
    max_error_random_mean: float


def violations(err: CVErrors, taus: np.ndarray | None, cfg: SelectConfig, kept) -> np.ndarray:
    """(p,) how far each non-kept benchmark is from the tolerance (0: within it; kept ones 0).

    MAE part: max(0, mae + margin·se − max_error) / max_error; τ part: max(0, min_tau − τ) / (1 − min_tau)
    (at least 0.05 below). A benchmark no test model has (NaN) counts 1: it cannot be shown predicted.
    """
    v = np.zeros(err.mae.shape)
    dropped = np.ones(err.mae.shape, bool)
    dropped[np.asarray(kept, np.int64)] = False
    if cfg.max_error is not None:
        e = err.mae + cfg.margin * np.nan_to_num(err.se)
        v += np.where(np.isnan(err.mae), 1.0, np.maximum(0.0, e - cfg.max_error) / cfg.max_error)
    if cfg.min_tau is not None and taus is not None:
        v += np.where(np.isnan(taus), 1.0, np.maximum(0.0, cfg.min_tau - taus) / max(1 - cfg.min_tau, 0.05))
    return np.where(dropped, v, 0.0)


class _Objective:
    """Potential of a kept set, cached: 'constraint' = Σ violations; 'sum' = Σ dropped MAE."""

    def __init__(self, ev: FastCV, cfg: SelectConfig, kind: str):
        self.ev, self.cfg, self.kind = ev, cfg, kind
        self.cache: dict[tuple, float] = {}
        self.calls = 0

    def full(self, K) -> tuple[CVErrors, np.ndarray | None]:
        tau = self.kind == "constraint" and self.cfg.min_tau is not None
        e = self.ev.errors(K, with_pred=tau)
        return e, (self.ev.taus(e.pred) if tau else None)

    def __call__(self, K) -> float:
        key = tuple(sorted(int(k) for k in K))
        if key not in self.cache:
            self.calls += 1
            e, t = self.full(key)
            if self.kind == "constraint":
                self.cache[key] = float(violations(e, t, self.cfg, key).sum())
            else:
                self.cache[key] = float(np.nansum(e.mae))
        return self.cache[key]


def _greedy(obj: _Objective, costs: np.ndarray, start, budget: float = np.inf, lazy: bool = True,
            stop: float = 1e-12, min_gain: float = 0.0) -> list[int]:
    """Cost-ratio greedy from ``start`` until the potential is <= ``stop``, nothing fits, or a pick removes
    less than ``min_gain`` of the potential; returns the set in order."""
    K = [int(k) for k in dict.fromkeys(start)]
    spent = float(costs[K].sum()) if K else 0.0
    phi = obj(K)
    stale: dict[int, float] = {}
    while phi > stop:
        avail = [c for c in range(costs.size) if c not in K and spent + costs[c] <= budget + 1e-9]
        if not avail:
            break
        fresh = lambda c: (phi - obj(K + [c])) / costs[c]  # noqa: E731
        if not lazy or not stale:
            stale = {c: fresh(c) for c in avail}
            pick = max(avail, key=lambda c: stale[c])
        else:
            todo = set()  # candidates re-evaluated at this step
            while True:
                c = max(avail, key=lambda x: stale.get(x, np.inf))
                if c in todo:
                    pick = c
                    break
                stale[c] = fresh(c)
                todo.add(c)
                rest = [stale.get(o, np.inf) for o in avail if o != c]
                if not rest or stale[c] >= max(rest):
                    pick = c
                    break
        if min_gain > 0 and phi - obj(K + [pick]) < min_gain:
            break  # (the constraint search never stops here: it adds the best pick even at a loss)
        K.append(int(pick))
        spent += costs[pick]
        phi = obj(K)
        stale.pop(pick, None)
    return K


def _cleanup(obj: _Objective, costs: np.ndarray, K: list[int], forced: set[int]) -> list[int]:
    """Drop kept benchmarks, costliest first, while the potential stays 0 (an irredundant set)."""
    K = list(K)
    for c in sorted(K, key=lambda x: (-costs[x], x)):
        if c in forced:
            continue
        trial = [k for k in K if k != c]
        if obj(trial) <= 1e-12:
            K = trial
    return K


def _cluster_seed(Y: np.ndarray, costs: np.ndarray, k: int) -> list[int]:
    """The cheapest benchmark of each of k clusters (average linkage on 1 − score correlation)."""
    import pandas as pd
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    p = Y.shape[1]
    if k < 1 or p < 3:
        return []
    C = pd.DataFrame(Y).corr(min_periods=3).fillna(0.0).to_numpy()
    D = np.clip(1.0 - C, 0.0, 2.0)
    np.fill_diagonal(D, 0.0)
    lab = fcluster(linkage(squareform((D + D.T) / 2, checks=False), "average"), t=k, criterion="maxclust")
    return [int(min(np.flatnonzero(lab == g), key=lambda j: (costs[j], j))) for g in np.unique(lab)]


def search(ev: FastCV, costs, cfg: SelectConfig, forced=(), Y_select: np.ndarray | None = None) -> Search:
    """Cheapest kept set with every dropped benchmark within tolerance on ``ev`` (the selection CV).

    ``forced``: benchmarks that must stay (e.g. too few models to judge). ``Y_select``
    (selection models' scores) enables the cluster start.
    """
    costs = np.asarray(costs, float)
    if costs.shape != (ev.p,) or not np.all(costs > 0):
        raise PredictError(f"costs must be {ev.p} positive numbers, one per benchmark")
    forced = sorted({int(f) for f in forced})
    obj = _Objective(ev, cfg, "constraint")
    runs = []
    K = _cleanup(obj, costs, order := _greedy(obj, costs, forced, lazy=cfg.lazy), set(forced))
    runs.append((float(costs[K].sum()), obj(K), "empty", K, order))
    if cfg.cluster_start and Y_select is not None and len(K) > 1:
        seed = forced + [s for s in _cluster_seed(Y_select, costs, len(K)) if s not in forced]
        order2 = _greedy(obj, costs, seed, lazy=cfg.lazy)
        K2 = _cleanup(obj, costs, order2, set(forced))
        runs.append((float(costs[K2].sum()), obj(K2), "clusters", K2, order2))
    cost, phi, start, K, order = min(runs, key=lambda r: (r[1] > 1e-12, r[0], r[1]))
    e, t = obj.full(K)
    return Search(np.array(sorted(K), np.int64), order, cost, phi <= 1e-12, start, obj.calls, e, t)


def random_sets(costs, budget: float, trials: int, rng: np.random.Generator, tolerance: float = 0.05,
                forced=(), attempts: int = 30) -> list[np.ndarray]:
    """``trials`` random kept sets (each containing ``forced``) costing within ±tolerance of ``budget``.

    Benchmarks are taken in random order while they fit under budget·(1 + tolerance);
    a draw below budget·(1 − tolerance) is redrawn (up to ``attempts`` times; then the closest is used).
    """
    costs = np.asarray(costs, float)
    forced = np.unique(np.asarray(forced, np.int64))
    hi, lo = budget * (1 + tolerance), budget * (1 - tolerance)
    out = []
    for _ in range(trials):
        best = None
        for _ in range(attempts):
            K, spent = list(forced), float(costs[forced].sum())
            for c in rng.permutation(costs.size):
                if c not in forced and spent + costs[c] <= hi + 1e-9:
                    K.append(int(c))
                    spent += costs[c]
            if best is None or abs(spent - budget) < abs(costs[best].sum() - budget):
                best = np.array(sorted(K), np.int64)
            if spent >= lo - 1e-9:
                break
        out.append(best)
    return out


def set_errors(ev: FastCV, K) -> tuple[float, float, np.ndarray]:
    """(mean, max) dropped MAE of kept set K on ``ev`` (0, 0 when nothing is dropped) and the (p,) MAEs."""
    mae = ev.errors(K).mae
    if np.all(np.isnan(mae)):
        return 0.0, 0.0, mae
    return float(np.nanmean(mae)), float(np.nanmax(mae)), mae


def baseline(ev: FastCV, costs, budget: float, cfg: SelectConfig, rng: np.random.Generator, forced=()) -> Baseline:
    """Random equal-cost kept sets measured on ``ev`` (the report CV): their max and mean dropped error."""
    sets = random_sets(costs, budget, cfg.trials, rng, cfg.tolerance, forced)
    p = ev.p
    mx, mn = np.empty(len(sets)), np.empty(len(sets))
    per, cnt = np.zeros(p), np.zeros(p, int)
    for t, K in enumerate(sets):
        mn[t], mx[t], mae = set_errors(ev, K)
        d = ~np.isnan(mae)
        per[d] += mae[d]
        cnt[d] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(cnt > 0, per / cnt, np.nan)
    cost_mean = float(np.mean([np.asarray(costs, float)[K].sum() for K in sets]))
    return Baseline(float(budget), cost_mean, mx, mn, per, cnt)


def frontier(ev_select: FastCV, ev_report: FastCV, costs, cfg: SelectConfig, rng: np.random.Generator,
             forced=(), order: list[int] | None = None) -> list[FrontierPoint]:
    """Cost-vs-error curve: for each budget share, the longest prefix of a greedy order that fits (then any
    later pick that still fits) against random sets of that cost, both measured on ``ev_report``.

    ``order``: the default search's picks (``Search.order``: the path it took), else a greedy run on the
    summed dropped error (selection CV) that stops once a pick removes under 0.5 % of the starting sum.
    Either way the order continues with the benchmarks its set predicts worst, worst first. Random band:
    the (1 − level)/2 quantiles of ``frontier_trials`` draws per budget."""
    costs = np.asarray(costs, float)
    total = costs.sum()
    inner = [b for b in cfg.budgets if b < 1]
    start = sorted(set(int(f) for f in forced))
    if order is None:
        obj = _Objective(ev_select, cfg, "sum")
        order = _greedy(obj, costs, start, budget=max(inner, default=0) * total, lazy=cfg.lazy, stop=1e-9,
                        min_gain=0.005 * obj(start))
    order = list(dict.fromkeys(start + [int(o) for o in order]))
    worst = ev_select.errors(order).mae
    order += [int(j) for j in np.argsort(-np.nan_to_num(worst, nan=-np.inf), kind="stable") if j not in order]
    q = (1 - cfg.predict.level) / 2
    out = []
    for b in sorted(cfg.budgets):
        K, spent = [], 0.0
        for c in order:
            if spent + costs[c] <= b * total + 1e-9:
                K.append(c)
                spent += costs[c]
        if b >= 1:
            K = list(range(costs.size))
        if out and np.array_equal(out[-1].kept, np.sort(K)):
            continue  # a budget too small to add anything repeats the previous point
        mean_c, max_c, _ = set_errors(ev_report, K)
        base = baseline(ev_report, costs, spent, replace(cfg, trials=cfg.frontier_trials), rng, forced) \
            if b < 1 and K else None
        if base is None:  # everything kept (error 0) or nothing affordable (the empty set either way)
            rm, rmax = np.array([mean_c]), np.array([max_c])
        else:
            rm, rmax = base.mean_error, base.max_error
        out.append(FrontierPoint(float(b), float(costs[K].sum() / total), np.array(sorted(K), np.int64), mean_c, max_c,
                                 float(rm.mean()), float(np.quantile(rm, q)), float(np.quantile(rm, 1 - q)),
                                 float(rmax.mean())))
    return out
