"""Feature proxy vs behaviour: performance-based redundancy and score correlations (report Eqs. 4–6).

Pure math on plain arrays (numpy/scipy only), so it can be checked on hand-made
matrices. Inputs are per-benchmark correctness matrices C (n_models × n_items,
one value per model and item, 0/1 or any score) and per-benchmark feature-side
numbers (R̂, AUC, overlap matrices) computed elsewhere.

- Performance-based redundancy (Eqs. 4–6): τ_n = E[Kendall τ-b between the model
  ranking on a random n-subset of D and on all of D], R(D) = (1/N) Σ_{n=1..N} τ_n.
  Estimated by Monte Carlo over (n, subset) pairs: n is stratified over 1..N (one
  draw per stratum of equal width, so the estimate is unbiased for the mean over n)
  and the subset is uniform given n. A subset on which every model ties says
  nothing about the ranking: its τ counts as 0 (τ-b itself is undefined there).
- Model bootstrap without re-drawing subsets: the per-draw pair signs (which model
  of each pair is ahead on the subset) do not depend on which models are resampled,
  so a bootstrap replicate is a weighted τ over distinct model pairs
  (weight = product of the two models' resample counts) — a matrix product.
- Agreement statistics (ρ(R, R̂), ρ(R, AUC), ρ(overlap, score correlation)) get
  percentile intervals from a bootstrap over models: the question is "on my
  benchmarks, with models like mine", so the benchmarks (and their feature-side
  numbers) stay fixed and the models are the sample. With few benchmarks the
  point value itself rests on few units: n_units says how many.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from qscope_eval.errors import QScopeError

MIN_MODELS = 3   # a ranking correlation over fewer models is meaningless
MIN_UNITS = 3    # benchmarks (or pairs) behind a correlation


class ValidationError(QScopeError):
    """The per-sample scores cannot support the requested statistic."""


# ----------------------------------------------------------------------------- R(D), Eqs. 4–6
@dataclass(frozen=True)
class PairSigns:
    """Monte Carlo draws of one benchmark, reduced to what τ needs."""

    ns: np.ndarray
    """(D,) subset size of each draw."""
    sub: np.ndarray
    """(D, P) int8 sign of score(i) − score(j) on the draw's subset, P = pairs i < j of models."""
    full: np.ndarray
    """(P,) the same sign on all of D."""
    n_models: int
    n_items: int


def _pair_index(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(m, 1)


def _signs(diff: np.ndarray, scale: float) -> np.ndarray:
    """sign(diff) with float noise (|diff| below 1e-9 of the score scale) counted as a tie."""
    return np.sign(np.where(np.abs(diff) <= 1e-9 * scale, 0.0, diff)).astype(np.int8)


def draw_pair_signs(C: np.ndarray, draws: int = 2000, seed: int = 0, batch: int = 256) -> PairSigns:
    """Draw `draws` random (n, n-subset) pairs of the items of C (models × items) and record pair signs.

    Subset sums, not means, are compared: every model is scored on the same subset,
    so sums rank like means and stay exact for 0/1 scores.
    """
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] < 2 or C.shape[1] < 1:
        raise ValidationError("a correctness matrix needs at least 2 models (rows) and 1 item (column)")
    if not np.isfinite(C).all():
        raise ValidationError("the correctness matrix has missing values; keep only items every model was scored on")
    if draws < 1:
        raise ValidationError("draws must be >= 1")
    m, N = C.shape
    iu, ju = _pair_index(m)
    scale = max(float(np.abs(C).max()), 1.0) * N
    rng = np.random.default_rng(seed)
    # stratified n: draw d falls in the d-th of `draws` equal slices of [0, N)
    ns = 1 + np.floor((np.arange(draws) + rng.random(draws)) * N / draws).astype(np.int64)
    ns = np.minimum(ns, N)
    sub = np.empty((draws, len(iu)), np.int8)
    for lo in range(0, draws, batch):
        n_b = ns[lo:lo + batch]
        keys = rng.random((len(n_b), N))                       # (b, N) uniform keys: a random order per draw
        kth = np.sort(keys, axis=1)[np.arange(len(n_b)), n_b - 1]
        mask = keys <= kth[:, None]                            # (b, N) the n smallest keys
        sums = mask.astype(np.float64) @ C.T                   # (b, m) subset score sums
        sub[lo:lo + batch] = _signs(sums[:, iu] - sums[:, ju], scale)
    full = C.sum(axis=1)
    return PairSigns(ns, sub, _signs(full[iu] - full[ju], scale), m, N)


def weighted_tau(ps: PairSigns, weights: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
    """Kendall τ-b per draw between subset and full rankings, for pair weights (B, P) (None: all pairs once).

    Returns (D, B). τ is 0 where either ranking is all ties (no information), which
    the full ranking never is when R is reported (see `performance_redundancy`).
    """
    P = ps.full.size
    W = np.ones((1, P)) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
    full = ps.full.astype(np.float64)
    n0 = W.sum(axis=1)                                        # (B,)
    t_full = W @ (full == 0)                                  # (B,) tied pairs in the full ranking
    out = np.empty((ps.sub.shape[0], W.shape[0]))
    for lo in range(0, ps.sub.shape[0], chunk):
        s = ps.sub[lo:lo + chunk].astype(np.float64)          # (c, P)
        conc = s @ (W * full).T                               # (c, B) concordant − discordant
        t_sub = (s == 0) @ W.T                                # (c, B) tied pairs on the subset
        den = np.sqrt(np.clip(n0 - t_full, 0, None) * np.clip(n0 - t_sub, 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + chunk] = np.where(den > 0, conc / np.where(den > 0, den, 1), 0.0)
    return out


@dataclass(frozen=True)
class PerfRedundancy:
    """R(D) of one benchmark with its Monte Carlo standard error."""

    r: float
    """Mean over n = 1..N of E[τ_n] (NaN when every model has the same full score)."""
    se: float
    """Monte Carlo standard error of r (iid formula; conservative for the stratified draws)."""
    draws: int
    n_models: int
    n_items: int
    ns: np.ndarray = field(repr=False)
    """(G,) subset sizes of the τ_n curve (for plots)."""
    tau_n: np.ndarray = field(repr=False)
    """(G,) mean τ of the draws whose n falls in each size bin."""


def performance_redundancy(C: np.ndarray, draws: int = 2000, seed: int = 0,
                           signs: PairSigns | None = None) -> PerfRedundancy:
    """R(D) (report Eqs. 4–6) from a models × items score matrix."""
    ps = signs if signs is not None else draw_pair_signs(C, draws, seed)
    tau = weighted_tau(ps)[:, 0]
    if not np.any(ps.full):
        r = se = math.nan
    else:
        r, se = float(tau.mean()), float(tau.std(ddof=1) / math.sqrt(len(tau))) if len(tau) > 1 else math.nan
    edges = np.unique(np.geomspace(1, ps.n_items + 1, 12).round().astype(np.int64))
    which = np.searchsorted(edges, ps.ns, side="right") - 1
    keep = [g for g in range(len(edges) - 1) if np.any(which == g)]
    ns = np.array([edges[g] for g in keep], np.int64)
    tau_n = np.array([tau[which == g].mean() for g in keep])
    return PerfRedundancy(r, se, len(tau), ps.n_models, ps.n_items, ns, tau_n)


def bootstrap_redundancy(ps: PairSigns, counts: np.ndarray) -> np.ndarray:
    """R(D) under model resamples: counts (B, n_models) = how often each model was drawn. Returns (B,)."""
    iu, ju = _pair_index(ps.n_models)
    counts = np.asarray(counts, np.float64)
    r = weighted_tau(ps, counts[:, iu] * counts[:, ju]).mean(axis=0)
    w = counts[:, iu] * counts[:, ju]
    r[(w * (ps.full != 0)).sum(axis=1) == 0] = np.nan        # resample whose full ranking is all ties
    return r


# ----------------------------------------------------------------------------- score correlations
def _masked_pearson(X: np.ndarray) -> np.ndarray:
    """Pairwise-complete Pearson between rows of X (K × M, NaN = missing). NaN where < 3 common columns."""
    present = np.isfinite(X).astype(np.float64)
    Z = np.where(present > 0, X, 0.0)
    n = present @ present.T
    sx = Z @ present.T                 # Σ x_a over columns where b is present too
    sxx = (Z * Z) @ present.T
    sxy = Z @ Z.T
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sx.T / n
        var_a = sxx - sx * sx / n
        var_a[var_a <= 1e-12 * np.maximum(sxx, 1.0)] = np.nan  # constant scores (float noise is not variance)
        r = cov / np.sqrt(var_a * var_a.T)
    r[n < MIN_MODELS] = np.nan
    return np.clip(r, -1.0, 1.0)


def _row_ranks(X: np.ndarray) -> np.ndarray:
    """Mid-ranks within each row over its present values (NaN stays NaN)."""
    filled = np.where(np.isfinite(X), X, np.inf)
    R = stats.rankdata(filled, axis=1)
    return np.where(np.isfinite(X), R, np.nan)


def partial_corr(r: np.ndarray, ref: int) -> np.ndarray:
    """Partial correlation of every pair given row `ref`: (r_ab − r_ar r_br) / sqrt((1 − r_ar²)(1 − r_br²))."""
    a = r[:, ref]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (r - np.outer(a, a)) / np.sqrt(np.outer(1 - a * a, 1 - a * a))
    p[ref, :] = p[:, ref] = np.nan
    return np.clip(p, -1.0, 1.0)


@dataclass(frozen=True)
class ScoreCorrelation:
    """Benchmark × benchmark correlation of model scores (pairwise-complete over models)."""

    pearson: np.ndarray
    spearman: np.ndarray
    partial_pearson: np.ndarray | None
    """Controlling for the reference benchmark (None without one); NaN on the reference's row and column."""
    partial_spearman: np.ndarray | None
    n_models: np.ndarray
    """(K, K) models scored on both benchmarks."""


def score_correlation(S: np.ndarray, reference: int | None = None) -> ScoreCorrelation:
    """S: (K benchmarks × M models) mean scores, NaN where a model lacks a benchmark."""
    S = np.asarray(S, np.float64)
    present = np.isfinite(S).astype(np.float64)
    pe, sp_ = _masked_pearson(S), _masked_pearson(_row_ranks(S))
    pp = ps = None
    if reference is not None:
        pp, ps = partial_corr(pe, reference), partial_corr(sp_, reference)
    return ScoreCorrelation(pe, sp_, pp, ps, (present @ present.T).astype(np.int64))


# ----------------------------------------------------------------------------- agreement
def _quiet(fn, x: np.ndarray, y: np.ndarray) -> float:
    """fn(x, y).statistic without scipy's (near-)constant-input warnings on the user's terminal: a bootstrap
    replicate that draws one model many times is near-constant by chance; its value is still what it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", getattr(stats, "ConstantInputWarning", RuntimeWarning))
        warnings.simplefilter("ignore", getattr(stats, "NearConstantInputWarning", RuntimeWarning))
        return float(fn(x, y).statistic)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < MIN_UNITS or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return _quiet(stats.spearmanr, x[ok], y[ok])


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < MIN_UNITS or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return _quiet(stats.pearsonr, x[ok], y[ok])


@dataclass(frozen=True)
class Agreement:
    """One correlation between a feature-side and a behaviour-side quantity, with its bootstrap interval."""

    name: str
    """What is correlated, e.g. `overlap_sym~score_pearson`."""
    method: str
    """spearman | pearson."""
    value: float
    lo: float
    hi: float
    n_units: int
    """Benchmarks (or benchmark pairs) behind the value."""
    n_models: int
    replicates: int
    """Bootstrap replicates with a finite value."""


def pairs_of(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a, b), a < b in position, of a benchmark list (self-pairs of repeated entries dropped)."""
    i, j = np.triu_indices(len(idx), 1)
    a, b = idx[i], idx[j]
    keep = a != b
    return np.minimum(a, b)[keep], np.maximum(a, b)[keep]


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, int]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size < 20:
        return math.nan, math.nan, int(v.size)
    q = (1 - level) / 2
    return float(np.quantile(v, q)), float(np.quantile(v, 1 - q)), int(v.size)


def verdict(a: Agreement | None, what: str, behaviour: str, n_models: int) -> str:
    """One plain line: does the feature side track behaviour on these models?"""
    if a is None or not math.isfinite(a.value):
        return (f"{what}: too few benchmarks (or pairs) with a defined {behaviour} to compare with it "
                f"(need {MIN_UNITS}; see the notes)")
    sym = "ρ" if a.method == "spearman" else "r"
    ci = f"[{a.lo:.2f}, {a.hi:.2f}]" if math.isfinite(a.lo) else "[interval needs more data]"
    if math.isfinite(a.lo) and a.lo > 0:
        how = "tracks"
    elif math.isfinite(a.hi) and a.hi < 0:
        how = "runs opposite to"
    else:
        how = "shows no clear relation to (the interval includes 0)" if math.isfinite(a.lo) else "relates to"
    return f"on your {n_models} models, {what} {how} {behaviour}: {sym} = {a.value:.2f} {ci} over {a.n_units} {'pairs' if '~score' in a.name else 'benchmarks'}"


@dataclass(frozen=True)
class ValidationInput:
    """Everything the agreement bootstrap needs, indexed by benchmark k = 0..K-1 and model j = 0..M-1."""

    names: list[str]
    models: list[str]
    signs: list[PairSigns]
    """Per benchmark: Monte Carlo pair signs over its models (model_idx[k])."""
    model_idx: list[np.ndarray]
    """Per benchmark: which of `models` were scored on it (row order of its correctness matrix)."""
    scores: np.ndarray
    """(K, M) mean score of model j on benchmark k's common items; NaN if not scored."""
    per_benchmark: dict[str, np.ndarray]
    """Feature-side (and baseline) numbers per benchmark, e.g. r_hat, auc, n_samples: name -> (K,)."""
    overlaps: dict[str, np.ndarray]
    """Pairwise feature overlap measures: name -> (K, K), symmetric."""
    reference: int | None = None
    """Benchmark to control for in partial score correlations (the report uses MMLU)."""

    def __post_init__(self):
        K, M = len(self.names), len(self.models)
        assert self.scores.shape == (K, M) and len(self.signs) == K == len(self.model_idx)
        assert all(v.shape == (K,) for v in self.per_benchmark.values())
        assert all(v.shape == (K, K) for v in self.overlaps.values())


@dataclass(frozen=True)
class ValidationResult:
    """R per benchmark with intervals, score correlations, and the agreements."""

    redundancy: list[PerfRedundancy]
    r_lo: np.ndarray
    r_hi: np.ndarray
    """(K,) model-bootstrap percentile interval of R."""
    corr: ScoreCorrelation
    agreements: list[Agreement]
    replicates: int
    level: float


def _behaviour_pairs(corr: ScoreCorrelation) -> dict[str, np.ndarray]:
    out = {"score_pearson": corr.pearson}
    if corr.partial_pearson is not None:
        out["score_partial"] = corr.partial_pearson
    return out


def _point_and_replicates(inp: ValidationInput, R: np.ndarray, Rb: np.ndarray, corr: ScoreCorrelation,
                          corr_b: list[ScoreCorrelation]) -> list[tuple]:
    """(name, method, point value, replicate values, n_units) for every agreement statistic."""
    out = []
    for feat, v in inp.per_benchmark.items():
        reps = np.array([_spearman(r, v) for r in Rb])
        out.append((f"r~{feat}", "spearman", _spearman(R, v), reps, int(np.isfinite(R).sum())))
    a, b = pairs_of(np.arange(len(inp.names)))
    for beh, mat in _behaviour_pairs(corr).items():
        reps_mat = [_behaviour_pairs(cb)[beh][a, b] for cb in corr_b]
        for ov_name, ov in inp.overlaps.items():
            x, y = ov[a, b], mat[a, b]
            n_pairs = int((np.isfinite(x) & np.isfinite(y)).sum())
            for method, fn in (("spearman", _spearman), ("pearson", _pearson)):
                reps = np.array([fn(x, yb) for yb in reps_mat])
                out.append((f"{ov_name}~{beh}", method, fn(x, y), reps, n_pairs))
    return out


def validate(inp: ValidationInput, replicates: int = 500, seed: int = 0, level: float = 0.95) -> ValidationResult:
    """R(D) per benchmark, score correlations and every agreement, with model-bootstrap intervals."""
    K, M = len(inp.names), len(inp.models)
    if M < MIN_MODELS:
        raise ValidationError(f"validation needs per-sample scores of at least {MIN_MODELS} models to rank; "
                              f"found {M} ({', '.join(inp.models)}); add the logs of more models")
    red = [performance_redundancy(None, signs=ps) for ps in inp.signs]
    R = np.array([r.r for r in red])
    corr = score_correlation(inp.scores, inp.reference)
    rng = np.random.default_rng(seed)
    midx = rng.integers(0, M, size=(replicates, M))                     # model resamples (B, M)
    counts = np.stack([np.bincount(row, minlength=M) for row in midx])  # (B, M)
    Rb = np.stack([bootstrap_redundancy(ps, counts[:, mi]) if ps.n_models >= 2 else np.full(replicates, np.nan)
                   for ps, mi in zip(inp.signs, inp.model_idx)], axis=1)  # (B, K)
    corr_b = [score_correlation(inp.scores[:, row], inp.reference) for row in midx]
    agreements = []
    for name, method, value, reps, n in _point_and_replicates(inp, R, Rb, corr, corr_b):
        lo, hi, ok = percentile_interval(reps, level)
        agreements.append(Agreement(name, method, value, lo, hi, n, M, ok))
    r_lo, r_hi = np.array([percentile_interval(Rb[:, k], level)[:2] for k in range(K)]).reshape(K, 2).T
    return ValidationResult(red, r_lo, r_hi, corr, agreements, replicates, level)


# ----------------------------------------------------------------------------- a feature-side measure
def frequency_weighted_overlap(counts) -> np.ndarray:
    """Σ_f min(p_a(f), p_b(f)) for every benchmark pair, p_D(f) = n_f(D) / Σ_f' n_f'(D).

    counts: (K × d_sae) samples of D firing f (scipy.sparse or dense). How alike two
    benchmarks' feature-firing distributions are (1 − total variation distance):
    robust to benchmark size and to one-off features, unlike the union-based Eq. 11.
    """
    import scipy.sparse as sp

    A = sp.csr_matrix(counts, dtype=np.float64)
    tot = np.asarray(A.sum(axis=1)).ravel()
    P = sp.diags(np.where(tot > 0, 1.0 / np.where(tot > 0, tot, 1), 0.0)) @ A
    P = P.toarray()  # K × d_sae: K is small (benchmarks)
    K = P.shape[0]
    out = np.empty((K, K))
    for a in range(K):
        out[a] = np.minimum(P[a][None, :], P).sum(axis=1)
    out[tot == 0, :] = np.nan
    out[:, tot == 0] = np.nan
    return out
