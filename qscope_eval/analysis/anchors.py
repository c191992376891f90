"""Anchor items: a few items of a benchmark whose results estimate a model's FULL-benchmark score, chosen
from the per-item results of many models, and the estimate's error on models held out from the choice.

Input: a benchmark's correctness matrix C (models × items, 0/1 or a score in [0, 1]; the rows of
training models only when choosing). A model's full score is its row mean.

Methods (`METHODS`):
- ``anchor`` — tinyBenchmarks' anchor points (Polo et al. 2024, "tinyBenchmarks: evaluating LLMs with
  fewer examples", §3.1 "correctness" anchors): cluster the items by their correctness pattern across the
  training models (each item is a vector of length n_models; KMeans), take per cluster the item nearest
  its centroid, weight = the cluster's share of the items; estimate = weighted mean of the anchor results.
- ``irt`` — the same anchors, scored with tinyBenchmarks' p-IRT: a 2PL IRT model fitted on the training
  models (analysis/irt.py) gives the model's ability posterior from its anchor results, and the full
  score is the observed anchors plus the expected result on every other item.
- ``gp-irt`` — tinyBenchmarks' gp-IRT: λ · anchor + (1 − λ) · p-IRT, λ chosen on an inner split of the
  training models (fit on one half, the λ with the least error on the other).
- ``info`` (the default) — metabench-style (Kipnis et al. 2024, "metabench: a sparse benchmark of
  reasoning and knowledge in LLMs": items chosen by their IRT Fisher information over the ability range):
  greedily, the item that most raises Σ_i log(precision of θ_i) over the training models' abilities (so
  every ability level gets items, not only the crowded middle), scored with p-IRT.

With a token budget instead of a count, items carry costs: ``anchor``/``irt``/``gp-irt`` take the
largest number of clusters whose anchors fit the budget, ``info`` takes items by information gain per token.

`evaluate` is the honest check: anchors chosen on the training folds of a K-fold split over MODELS,
error measured on the held-out fold's models (points, 0–100), pooled over folds, with a bootstrap
interval over models; beside it, many draws of random items of the same count (or the same budget),
scored by their plain mean, on the same models.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.model_selection import KFold

from qscope_eval.analysis import irt as irt_
from qscope_eval.errors import QScopeError

METHODS = ("anchor", "irt", "gp-irt", "info")
DEFAULT_METHOD = "info"        # least held-out error on every planted shape of bench/anchors_bench.py (bench/results)
MIN_MODELS = 6                 # fewer models cannot both train a choice and test it


class AnchorError(QScopeError):
    """The scores cannot support the requested anchor choice."""


@dataclass
class Anchors:
    """Chosen items of one benchmark and how to turn their results into a full-score estimate."""

    items: np.ndarray
    """(n,) positions of the chosen items among the benchmark's items (columns of C)."""
    weights: np.ndarray
    """(n,) weight of each item in the weighted-mean estimate (sums to 1): its cluster's share of the items."""
    method: str
    """One of METHODS."""
    n_items: int
    """Items of the full benchmark."""
    fit: irt_.IRTFit | None = None
    """The IRT model (irt, gp-irt, info); None for anchor."""
    lam: float | None = None
    """gp-irt: weight of the anchor estimate (1 − lam goes to p-IRT)."""


@dataclass
class AnchorEvaluation:
    """Held-out error of a method's estimate at one item count (or budget), beside random items."""

    method: str
    n_items: float
    """Items chosen (mean over folds when a token budget sets the count)."""
    n_models: int
    folds: int
    mae: float
    """Mean |estimate − full score| over held-out models, points (0–100)."""
    mae_lo: float
    mae_hi: float
    """Percentile bootstrap interval of mae over models (level `level`)."""
    rmse: float
    max_error: float
    """Largest |error| of any held-out model, points."""
    random_mae_mean: float
    """Mean over draws of the MAE of random items of the same count (budget), plain mean, same models."""
    random_mae_sd: float
    random_mae_q: tuple[float, float, float]
    """5th, 50th, 95th percentile of the random draws' MAE."""
    random_rmse_mean: float
    random_better: float
    """Share of random draws with a lower MAE than the method (0: the method beats every draw)."""
    random_n_items: float
    """Items per random draw (mean; equals n_items unless a token budget sets the count)."""
    level: float
    errors: np.ndarray = field(repr=False)
    """(models,) signed held-out error per model, points (estimate − full score)."""


# ----------------------------------------------------------------------------- choosing
def _quiet_kmeans(X: np.ndarray, k: int, w: np.ndarray, seed: int) -> KMeans:
    with warnings.catch_warnings():  # ConvergenceWarning on near-duplicate points: the clusters are still valid
        warnings.simplefilter("ignore")
        return KMeans(n_clusters=k, n_init=3, random_state=seed).fit(X, sample_weight=w)


def _cluster_anchors(X: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """tinyBenchmarks anchors: (items, weights) from item vectors X (items × dims). Identical vectors are
    clustered once (weighted); when n exceeds the distinct vectors, extra picks go to the largest clusters."""
    J = X.shape[0]
    uniq, inv, counts = np.unique(X, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    k = min(n, len(uniq))
    if k == len(uniq):
        lab_u, centers = np.arange(k), uniq
    else:
        km = _quiet_kmeans(uniq, k, counts.astype(np.float64), seed)
        lab_u, centers = km.labels_, km.cluster_centers_
    labels = lab_u[inv]
    size = np.bincount(labels, minlength=k)
    live = np.flatnonzero(size > 0)
    picks = np.zeros(k, np.int64)
    picks[live] = 1
    for _ in range(n - len(live)):                                       # D'Hondt: next pick to the largest quotient
        q = np.where(picks < size, size / (picks + 1.0), -1.0)
        if q.max() < 0:
            break
        picks[q.argmax()] += 1
    dist = ((X - centers[labels]) ** 2).sum(axis=1)
    tie = np.random.default_rng(seed).random(J)                           # identical items: a seeded choice
    order = np.lexsort((tie, dist, labels))                               # by cluster, then nearest the centroid
    starts = np.searchsorted(labels[order], np.arange(k))
    items, weights = [], []
    for c in live:
        chosen = order[starts[c]:starts[c] + picks[c]]
        items.extend(chosen)
        weights.extend([size[c] / J / picks[c]] * len(chosen))
    return np.asarray(items, np.int64), np.asarray(weights, np.float64)


def _embedding(C: np.ndarray, method: str, fit: irt_.IRTFit | None) -> np.ndarray:
    """Item vectors to cluster (items × dims): the correctness pattern across training models (anchor), or
    the IRT item parameters (irt, gp-irt: tinyBenchmarks' "IRT" anchors), standardised."""
    if method == "anchor" or fit is None:
        return np.asarray(C, np.float64).T
    E = np.column_stack([np.log(fit.a), fit.b])
    return (E - E.mean(axis=0)) / (E.std(axis=0) + 1e-9)


def _info_items(fit: irt_.IRTFit, n: int | None, costs: np.ndarray | None, budget: float | None) -> np.ndarray:
    """Greedy: each pick adds the most Σ_i log(precision of θ_i) over the training models (prior precision 1),
    per token under a budget, so every ability level gets items, not only the crowded middle."""
    I = irt_.information(fit, fit.theta)                                  # (models, items) Fisher information
    cur = np.ones(I.shape[0])
    left = np.ones(I.shape[1], bool)
    chosen, spent = [], 0.0
    while left.any() and (n is None or len(chosen) < n):
        gain = np.log1p(I / cur[:, None]).sum(axis=0)
        if budget is not None:
            left &= spent + costs <= budget
            if not left.any():
                break
            gain = gain / costs
        j = int(np.argmax(np.where(left, gain, -np.inf)))
        chosen.append(j)
        left[j] = False
        cur += I[:, j]
        spent += 0.0 if costs is None else costs[j]
    return np.sort(np.asarray(chosen, np.int64))


def _fit_lambda(C: np.ndarray, items: np.ndarray, weights: np.ndarray, seed: int) -> float:
    """gp-IRT's λ on an inner split of the training models: IRT fitted on half, λ scored on the other half."""
    m = C.shape[0]
    perm = np.random.default_rng(seed + 1).permutation(m)
    a, b = perm[: m // 2], perm[m // 2:]
    fit = irt_.fit_irt(C[a])
    truth = C[b].mean(axis=1)
    e_anchor = C[b][:, items] @ weights
    e_irt = irt_.p_irt(C[b][:, items], items, fit)
    grid = np.linspace(0, 1, 21)
    err = np.abs(grid[:, None] * e_anchor[None, :] + (1 - grid[:, None]) * e_irt[None, :] - truth[None, :]).mean(axis=1)
    return float(grid[err.argmin()])


def _choose_count(C: np.ndarray, n: int, method: str, seed: int, fit: irt_.IRTFit | None) -> Anchors:
    J = C.shape[1]
    if method == "info":
        items = _info_items(fit, n, None, None)
        return Anchors(items, np.full(len(items), 1 / len(items)), method, J, fit)
    items, weights = _cluster_anchors(_embedding(C, method, fit), n, seed)
    return Anchors(items, weights, method, J, fit)


def _choose_budget(C: np.ndarray, costs: np.ndarray, budget: float, method: str, seed: int,
                   fit: irt_.IRTFit | None) -> Anchors:
    """The most anchors whose summed cost fits `budget` (binary search over the cluster count)."""
    J = C.shape[1]
    if method == "info":
        items = _info_items(fit, None, costs, budget)
        if not len(items):
            raise AnchorError(f"a token budget of {budget:g} fits no item (the cheapest costs {costs.min():g}); raise it")
        return Anchors(items, np.full(len(items), 1 / len(items)), method, J, fit)
    best, X = None, _embedding(C, method, fit)
    lo, hi = 1, int(min(J, budget // max(costs.min(), 1e-9)))
    while lo <= hi:
        mid = (lo + hi) // 2
        items, weights = _cluster_anchors(X, mid, seed)
        if costs[items].sum() <= budget:
            best, lo = (items, weights), mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise AnchorError(f"a token budget of {budget:g} does not fit one anchor item of this benchmark "
                          f"(items cost {costs.min():g}–{costs.max():g} tokens); raise --token-budget")
    return Anchors(best[0], best[1], method, J, fit)


def choose_anchors(C_train: np.ndarray, n: int | None = None, method: str = DEFAULT_METHOD, seed: int = 0,
                   costs: np.ndarray | None = None, budget: float | None = None) -> Anchors:
    """Choose anchors on training models' results C_train (models × items): `n` items, or items whose
    `costs` sum to at most `budget`."""
    C = np.asarray(C_train, np.float64)
    m, J = C.shape
    if method not in METHODS:
        raise AnchorError(f"unknown anchor method {method!r}; choose one of {', '.join(METHODS)}")
    if (n is None) == (budget is None):
        raise AnchorError("give either a number of items or a token budget, not both (nor neither)")
    if n is not None and not 1 <= n < J:
        raise AnchorError(f"{n} anchors of a benchmark of {J} items: give a count between 1 and {J - 1}")
    if budget is not None and (costs is None or len(costs) != J):
        raise AnchorError("a token budget needs one cost per item")
    if m < 2:
        raise AnchorError(f"anchors need the results of several training models; got {m}")
    fit = irt_.fit_irt(C) if method != "anchor" else None
    a = (_choose_count(C, n, method, seed, fit) if budget is None
         else _choose_budget(C, np.asarray(costs, np.float64), float(budget), method, seed, fit))
    if method == "gp-irt":
        a.lam = _fit_lambda(C, a.items, a.weights, seed) if m >= 4 else 0.5
    return a


def estimate(Y_anchor: np.ndarray, anchors: Anchors) -> np.ndarray:
    """Full-benchmark score estimates (share solved, 0–1) from results on the anchors, (models × n) -> (models,)."""
    Y = np.asarray(Y_anchor, np.float64)
    if Y.ndim != 2 or Y.shape[1] != len(anchors.items):
        raise AnchorError(f"results on {Y.shape[-1]} items given for {len(anchors.items)} anchors")
    if anchors.method == "anchor":
        return Y @ anchors.weights
    e_irt = irt_.p_irt(Y, anchors.items, anchors.fit)
    if anchors.method == "gp-irt":
        return anchors.lam * (Y @ anchors.weights) + (1 - anchors.lam) * e_irt
    return e_irt


# ----------------------------------------------------------------------------- honest evaluation
def random_subsets(n_items: int, draws: int, seed: int, n: int | None = None, costs: np.ndarray | None = None,
                   budget: float | None = None) -> list[np.ndarray]:
    """Random item subsets: `n` items uniformly, or items taken in random order while they fit `budget`."""
    rng = np.random.default_rng(seed)
    if budget is None:
        return list(np.argsort(rng.random((draws, n_items)), axis=1)[:, :n])
    out = []
    for _ in range(draws):
        order = rng.permutation(n_items)
        total, keep = 0.0, []
        for j in order:
            if total + costs[j] <= budget:
                keep.append(j)
                total += costs[j]
        out.append(np.asarray(keep or [order[np.argmin(costs[order])]], np.int64))
    return out


def evaluate(C: np.ndarray, n: int | None = None, method: str = DEFAULT_METHOD, folds: int = 5,
             random_draws: int = 200, seed: int = 0, costs: np.ndarray | None = None, budget: float | None = None,
             level: float = 0.95, replicates: int = 1000) -> AnchorEvaluation:
    """K-fold over models: anchors chosen on the training folds, error on the held-out models; random items beside."""
    C = np.asarray(C, np.float64)
    m, J = C.shape
    if m < MIN_MODELS:
        raise AnchorError(f"held-out error needs the results of at least {MIN_MODELS} models; got {m}: add logs of more models")
    folds = min(folds, m)
    truth = C.mean(axis=1)
    est = np.empty(m)
    chosen = []
    for k, (tr, te) in enumerate(KFold(folds, shuffle=True, random_state=seed).split(C)):
        a = choose_anchors(C[tr], n, method, seed + k, costs, budget)
        est[te] = estimate(C[te][:, a.items], a)
        chosen.append(len(a.items))
    err = 100 * (est - truth)
    rng = np.random.default_rng(seed + 17)
    boot = np.abs(err)[rng.integers(0, m, size=(replicates, m))].mean(axis=1)
    alpha = (1 - level) / 2
    subsets = random_subsets(J, random_draws, seed + 29, n, costs, budget)
    r_err = np.stack([100 * (C[:, s].mean(axis=1) - truth) for s in subsets])     # (draws, models)
    r_mae = np.abs(r_err).mean(axis=1)
    mae = float(np.abs(err).mean())
    return AnchorEvaluation(
        method, float(np.mean(chosen)), m, folds, mae, float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha)),
        float(np.sqrt((err ** 2).mean())), float(np.abs(err).max()), float(r_mae.mean()), float(r_mae.std(ddof=1)),
        tuple(float(x) for x in np.quantile(r_mae, [0.05, 0.5, 0.95])), float(np.sqrt((r_err ** 2).mean(axis=1)).mean()),
        float((r_mae < mae).mean()), float(np.mean([len(s) for s in subsets])), level, err)
