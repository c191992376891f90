"""Benchmark recommendations with a per-benchmark guarantee (DESIGN §5): the pure math.

The sentence a recommendation means: *every dropped benchmark has at least τ of
what characterizes it measured by one kept benchmark, and by more than a random
dictionary of the same shape would show.*

Building blocks (numpy / scipy only; reused by the coverage-gap analysis):

- ``benchmark_profiles(M, F) -> P``: per-benchmark firing frequencies
  ``P[D, f] = n_f(D) / N_D`` (n_bench × d). Frequencies, not the union F(D):
  a feature that fires once in 10^5 prompts weighs 10^-5, not 1, so a
  benchmark's profile does not grow with its size or its prompt length.
- ``background(P)``: what a feature fires on any benchmark of the suite,
  ``b(f) = mean_D P[D, f]`` (each benchmark weighs the same, whatever its size).
- ``characteristic(P, b) -> E``: ``E[D, f] = max(0, P[D, f] − b(f))``, the mass
  by which D fires f more often than the suite at large: what characterizes D.
- ``covered_share(E_from, E_by) -> C``: ``C[i, j] = Σ_f min(E_i(f), E_j(f)) / Σ_f E_i(f)``,
  the share of what characterizes benchmark i that benchmark j also shows.
- ``self_coverage(M, F, b)``: the same share between two random halves of one
  benchmark (its noise ceiling: what a second draw of the *same* benchmark shows).
- ``assess(M, F, F_null, F_lexical=...)``: all of the above, normalised by the ceiling
  (``ratio = C / self``), with bootstrap intervals (samples of each benchmark
  resampled) and the same quantity on the null encoder and on the lexical baseline
  (the prompts' words); ``covers[i, j]`` says j can stand in for i: above both
  baselines, and i not template-dominated (analysis/template.py).
- ``containment(M)``: benchmark i's prompts all appear in j (exact duplicates,
  strict subsets): j covers i outright.
- ``recommend(assessment, costs)``: the cheapest set of kept benchmarks such that
  each benchmark is kept or covered by a kept one — a set cover over benchmarks,
  solved by ``select.greedy_cover`` (greedy + irredundant clean-up) or
  ``select.exact_cover`` (MILP, HiGHS).
- ``stand_ins(a)``: ``covers`` where, of two benchmarks covering each other,
  only the one with more prompts may stand in for the other.
- ``null_scale(ratio, null_ratio)``: the suite-wide SAE / null scale; a pair is
  above the null when the SAE singles it out more than random features do.
- ``sample_weights(P, b)`` / ``subset_share(F_S, e, b)``: feature weights for
  sample-level selection (keep what characterizes the benchmark, not every
  one-off feature) and the share of a benchmark's characteristic a subset shows.

Reuse (e.g. gaps against a reference corpus): stack the corpus as one more row
of M, ``P = benchmark_profiles(M, F)``, and ``covered_share(E[[corpus]], E[bench])``
is how much of what characterizes the corpus each benchmark shows.

Why these choices (bench/recommend_bench.py, docs/recommendation.md "Validation"): the union of
fired features is dominated by one-off features and grows with benchmark size
(a benchmark 10× larger "covers" +0.37 more of the others; frequencies: +0.05);
the background removes what every benchmark fires; the split-half ceiling puts
small and large, focused and mixed benchmarks on one scale; τ = 0.8 sits above
the across-topic pairs seen on the validation suites, including one of all 59
benchmarks, where the lower background lifts related topics to 0.7–0.79.

Shapes: M (n_bench × n_samples) bool membership; F (n_samples × d) bool fired
features; P, E (n_bench × d) dense float; C, ratio (n_bench × n_bench), row =
the benchmark being covered, column = the one covering it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from qscope_eval.analysis import select as sel
from qscope_eval.analysis.template import TEMPLATE_SHARE, is_template_dominated, template_share
from qscope_eval.errors import QScopeError

__all__ = ["RecommendError", "RecommendConfig", "Assessment", "Recommendation", "benchmark_profiles",
           "background", "characteristic", "covered_share", "self_coverage", "assess", "recommend",
           "sample_weights", "subset_share", "containment", "null_scale", "stand_ins", "DEFINITION"]

DEFINITION = ("every dropped benchmark has at least τ of what characterizes it (the features it fires more often "
              "than the suite at large, weighted by how much more, relative to what a second half of the same "
              "benchmark shows) measured by one kept benchmark, with the bootstrap lower bound above the null "
              "dictionary's and the lexical baseline's values on the SAE's scale, and not mostly the prompt "
              "template every benchmark shares; or all its prompts are prompts of a kept benchmark")


class RecommendError(QScopeError):
    """Recommendation inputs are out of range or of the wrong shape."""


@dataclass(frozen=True)
class RecommendConfig:
    """How a benchmark may stand in for another."""

    tau: float = 0.8
    """Share of a benchmark's reproducible characteristic mass a kept benchmark must show to cover it."""
    level: float = 0.90
    """Two-sided bootstrap interval level; its lower bound must exceed the null's value."""
    replicates: int = 100
    """Bootstrap replicates (samples of every benchmark resampled with replacement)."""
    splits: int = 4
    """Random half-splits averaged for each benchmark's self-coverage (noise ceiling)."""
    seed: int = 0
    """Seed for splits and bootstrap."""
    max_draws: int = 5000
    """Bootstrap draws per benchmark at most (larger benchmarks: a wider, conservative interval, bounded time)."""
    template_max: float = TEMPLATE_SHARE
    """A benchmark whose template share (analysis/template.py) reaches this is kept: its features are the template."""

    def __post_init__(self):
        if not 0 < self.tau <= 1.5:
            raise RecommendError(f"tau must be in (0, 1.5] (a share of the noise ceiling, e.g. 0.8), got {self.tau}")
        if not 0 < self.level < 1:
            raise RecommendError(f"level must be in (0, 1), e.g. 0.9, got {self.level}")
        if not 0 < self.template_max <= 1:
            raise RecommendError(f"template_max must be in (0, 1], e.g. 0.5, got {self.template_max}")
        if self.replicates < 10 or self.splits < 1 or self.max_draws < 10:
            raise RecommendError("replicates must be >= 10, splits >= 1 and max_draws >= 10")


@dataclass(frozen=True)
class Assessment:
    """Pairwise evidence: row i = benchmark being covered, column j = benchmark covering it."""

    share: np.ndarray        # (n, n) covered share C[i, j]
    ratio: np.ndarray        # (n, n) share / self-coverage of i
    lo: np.ndarray           # (n, n) bootstrap lower bound of ratio
    hi: np.ndarray           # (n, n) bootstrap upper bound of ratio
    self_share: np.ndarray   # (n,) split-half self-coverage (noise ceiling)
    null_ratio: np.ndarray | None  # (n, n) same ratio on the null encoder, or None
    null_scale: float        # suite-wide SAE / null scale (1.0 without a null)
    covers: np.ndarray       # (n, n) bool: j may stand in for i (diagonal True)
    above_null: np.ndarray   # (n, n) bool: SAE above the scaled null (True everywhere when no null)
    contained: np.ndarray    # (n, n) bool: every prompt of i is also a prompt of j
    n_samples: np.ndarray    # (n,) samples per benchmark
    profiles: np.ndarray     # (n, d) P
    char: np.ndarray         # (n, d) E
    config: RecommendConfig
    lexical_ratio: np.ndarray | None = None  # (n, n) same ratio on the lexical baseline, or None
    lexical_scale: float = 1.0               # suite-wide SAE / lexical scale (1.0 without it)
    above_lexical: np.ndarray | None = None  # (n, n) bool: SAE above the scaled lexical (True everywhere without it)
    template: np.ndarray | None = None       # (n,) template share of each benchmark (analysis/template.py)
    template_dominated: np.ndarray | None = None  # (n,) bool: kept, its features are the shared template


@dataclass(frozen=True)
class Recommendation:
    """Kept benchmarks and, for each dropped one, the kept benchmark that covers it best."""

    kept: np.ndarray          # row indices, sorted
    covered_by: np.ndarray    # (n,) index of the best covering kept benchmark, -1 for kept ones
    cost: float
    total_cost: float
    selection: sel.Selection  # the underlying set cover over benchmarks
    exact: bool


# ----------------------------------------------------------------------------- building blocks
def _bool_csr(A: Any, name: str) -> sp.csr_matrix:
    A = sp.csr_matrix(A) if sp.issparse(A) else sp.csr_matrix(np.asarray(A))
    if A.ndim != 2:
        raise RecommendError(f"{name} must be a 2-D matrix")
    A = A.copy()
    A.eliminate_zeros()
    return sp.csr_matrix((np.ones(A.nnz), A.indices, A.indptr), shape=A.shape)


def benchmark_profiles(M: Any, F: Any) -> np.ndarray:
    """(n_bench × d) firing frequencies P[D, f] = n_f(D) / N_D; M (n_bench × n_samples), F (n_samples × d)."""
    M, F = _bool_csr(M, "M"), _bool_csr(F, "F")
    if M.shape[1] != F.shape[0]:
        raise RecommendError(f"M has {M.shape[1]} sample columns but F has {F.shape[0]} sample rows")
    N = np.asarray(M.sum(axis=1)).ravel()
    if np.any(N == 0):
        raise RecommendError("a benchmark has no samples; encode it first or leave it out")
    return (M @ F).toarray() / N[:, None]


def background(P: np.ndarray) -> np.ndarray:
    """(d,) b(f) = mean over benchmarks of P[D, f]: each benchmark weighs the same, whatever its size."""
    return np.asarray(P, float).mean(axis=0)


def characteristic(P: np.ndarray, b: np.ndarray) -> np.ndarray:
    """E = max(0, P − b): how much more often each benchmark fires each feature than the suite at large.

    A row with no mass at all (every feature at or below the background: a suite
    of two identical benchmarks, say) falls back to its frequencies P, so it is
    characterized by everything it fires rather than by nothing.
    """
    P = np.asarray(P, float)
    E = np.maximum(P - np.asarray(b, float)[None, :], 0.0)
    empty = E.sum(axis=1) <= 0
    E[empty] = P[empty]
    return E


def covered_share(E_from: np.ndarray, E_by: np.ndarray | None = None) -> np.ndarray:
    """C[i, j] = Σ_f min(E_from[i, f], E_by[j, f]) / Σ_f E_from[i, f] (0 where row i has no mass)."""
    E_from = np.atleast_2d(np.asarray(E_from, float))
    E_by = E_from if E_by is None else np.atleast_2d(np.asarray(E_by, float))
    mass = E_from.sum(axis=1)
    live = np.flatnonzero((E_from > 0).any(axis=0) & (E_by > 0).any(axis=0))  # only shared columns matter
    A, B = E_from[:, live], E_by[:, live]
    inter = np.empty((A.shape[0], B.shape[0]))
    for i in range(A.shape[0]):  # (n_by × live) per row: memory stays O(n · d)
        inter[i] = np.minimum(A[i][None, :], B).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass[:, None] > 0, inter / mass[:, None], 0.0)


def _halves(M: sp.csr_matrix, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Two membership matrices splitting each benchmark's samples at random into halves."""
    ra, ca, rb, cb = [], [], [], []
    for i in range(M.shape[0]):
        s = rng.permutation(M.indices[M.indptr[i]:M.indptr[i + 1]])
        h = max(1, s.size // 2)
        ra.append(np.full(h, i)), ca.append(s[:h]), rb.append(np.full(s.size - h, i)), cb.append(s[h:])
    mk = lambda r, c: sp.csr_matrix((np.ones(sum(x.size for x in c)), (np.concatenate(r), np.concatenate(c))),
                                    shape=M.shape)
    return mk(ra, ca), mk(rb, cb)


def self_coverage(M: Any, F: Any, b: np.ndarray, splits: int = 4, seed: int = 0) -> np.ndarray:
    """(n_bench,) mean over random half-splits of the covered share between the two halves (both ways)."""
    M, F = _bool_csr(M, "M"), _bool_csr(F, "F")
    rng = np.random.default_rng(seed)
    out = np.zeros(M.shape[0])
    N = np.asarray(M.sum(axis=1)).ravel()
    for _ in range(splits):
        A, B = _halves(M, rng)
        ok = (np.asarray(A.sum(axis=1)).ravel() > 0) & (np.asarray(B.sum(axis=1)).ravel() > 0)
        nA = np.maximum(np.asarray(A.sum(axis=1)).ravel(), 1)
        nB = np.maximum(np.asarray(B.sum(axis=1)).ravel(), 1)
        EA = characteristic((A @ F).toarray() / nA[:, None], b)
        EB = characteristic((B @ F).toarray() / nB[:, None], b)
        s = 0.5 * (_diag_share(EA, EB) + _diag_share(EB, EA))
        out += np.where(ok, s, np.nan)
    out /= splits
    return np.where(N >= 2, out, np.nan)


def _diag_share(E1: np.ndarray, E2: np.ndarray) -> np.ndarray:
    m = E1.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m > 0, np.minimum(E1, E2).sum(axis=1) / m, 0.0)


def _resampled(M: sp.csr_matrix, rng: np.random.Generator, max_draws: int | None = None) -> sp.csr_matrix:
    """Membership with each benchmark's samples drawn min(N_D, max_draws) times with replacement (counts as weights)."""
    rows, cols = [], []
    for i in range(M.shape[0]):
        s = M.indices[M.indptr[i]:M.indptr[i + 1]]
        k = s.size if max_draws is None else min(s.size, max_draws)
        rows.append(np.full(k, i)), cols.append(rng.choice(s, k, replace=True))
    W = sp.csr_matrix((np.ones(sum(c.size for c in cols)), (np.concatenate(rows), np.concatenate(cols))),
                      shape=M.shape)
    W.sum_duplicates()
    return W


def _ratio(share: np.ndarray, self_share: np.ndarray) -> np.ndarray:
    """share / self-coverage of the covered benchmark (row); the share itself where no ceiling exists."""
    s = np.where(np.isfinite(self_share) & (self_share > 0), self_share, 1.0)
    return share / s[:, None]


def _ratios(M: sp.csr_matrix, F: sp.csr_matrix, cfg: RecommendConfig):
    P = benchmark_profiles(M, F)
    b = background(P)
    E = characteristic(P, b)
    share = covered_share(E)
    selfs = self_coverage(M, F, b, cfg.splits, cfg.seed)
    return P, b, E, share, selfs, _ratio(share, selfs)


def _replicate(W: sp.csr_matrix, F: sp.csr_matrix, selfs: np.ndarray) -> np.ndarray:
    """Ratio matrix for one bootstrap membership W (counts as weights)."""
    Pr = (W @ F).toarray() / np.asarray(W.sum(axis=1)).ravel()[:, None]
    return _ratio(covered_share(characteristic(Pr, background(Pr))), selfs)


def containment(M: Any) -> np.ndarray:
    """(n, n) bool: C[i, j] iff every sample of benchmark i is also a sample of j (the store dedups prompts).

    A benchmark whose prompts all appear in another is covered by it outright:
    the other shows its very prompts, so no statistic (and no null) is needed.
    """
    M = _bool_csr(M, "M")
    inter = (M @ M.T).toarray()
    n = np.asarray(M.sum(axis=1)).ravel()
    return (inter >= n[:, None]) & (n[:, None] > 0)


def _interval(reps: np.ndarray, point: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval re-centred on the point estimate.

    Resampling with replacement repeats prompts, which makes a resampled profile
    spikier and its covered share biased low (min is concave); measured on the
    demo, plain percentile intervals sat wholly below the estimate. Shifting by
    (point − median of the replicates) removes that bias and keeps the spread.
    """
    q = (1 - level) / 2
    with warnings.catch_warnings():  # a pair with no shared mass gives all-NaN log ratios: its bound stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        shift = point - np.nanmedian(reps, axis=0)
        return np.nanquantile(reps, q, axis=0) + shift, np.nanquantile(reps, 1 - q, axis=0) + shift


def null_scale(ratio: np.ndarray, null_ratio: np.ndarray) -> float:
    """How the two encoders' scales differ over the whole suite: median over off-diagonal pairs of SAE / null.

    A random dictionary's features are broad, so its overlaps run uniformly
    higher than a specific SAE's (measured on the validation suites and the
    demo: scale 0.64–0.82, on same-topic and cross-topic pairs alike). A pair is evidence *above the
    null* when the SAE singles it out more than the null does after this
    suite-wide rescaling; with identical encoders the scale is 1 and no pair is.
    """
    off = ~np.eye(ratio.shape[0], dtype=bool) & (ratio > 0) & (null_ratio > 0)
    return float(np.exp(np.median(np.log(ratio[off] / null_ratio[off])))) if off.any() else 1.0


def _baseline(M: sp.csr_matrix, F: sp.csr_matrix, F_base: Any, name: str, ratio: np.ndarray, cfg: RecommendConfig):
    """(F_base on its live columns, its self-coverage, its ratio matrix, the SAE / baseline scale), or Nones."""
    if F_base is None:
        return None, None, None, 1.0
    Fb = _bool_csr(F_base, name)
    if Fb.shape[0] != F.shape[0]:
        raise RecommendError(f"the {name} encoder has {Fb.shape[0]} samples, the SAE {F.shape[0]}; "
                             "they must be the same samples")
    Fb = Fb[:, np.unique(Fb.indices)]  # a wide baseline (65 536 hashed words) on the columns that fire: same numbers
    _, _, _, _, selfs_b, ratio_b = _ratios(M, Fb, cfg)
    return Fb, selfs_b, ratio_b, null_scale(ratio, ratio_b)


def assess(M: Any, F: Any, F_null: Any = None, config: RecommendConfig | None = None,
           F_lexical: Any = None, progress: Any = None) -> Assessment:
    """Pairwise covered shares, normalised by each benchmark's noise ceiling, with bootstrap bounds and baselines.

    Bootstrap: every benchmark's samples are resampled with replacement and the
    whole chain (profiles, background, characteristic, share) is recomputed on
    the SAE and, with the *same* resampled samples, on the null encoder and the
    lexical baseline; the ceilings stay point estimates (re-splitting every
    replicate would double the noise they remove). ``covers[i, j]``: ratio ≥ τ,
    for each baseline present the lower bound of log(ratio / (scale · baseline
    ratio)) above 0 (see ``null_scale``), and i not template-dominated (its
    template share below ``config.template_max``); or every prompt of i is a
    prompt of j (``containment``).
    """
    cfg = config or RecommendConfig()
    M, F = _bool_csr(M, "M"), _bool_csr(F, "F")
    if M.shape[0] < 2:
        raise RecommendError("a recommendation needs at least 2 benchmarks")
    P, b, E, share, selfs, ratio = _ratios(M, F, cfg)
    bases = {k: _baseline(M, F, Fb, k, ratio, cfg) for k, Fb in (("null", F_null), ("lexical", F_lexical))}
    live = {k: v for k, v in bases.items() if v[0] is not None}
    rng = np.random.default_rng(cfg.seed + 1)
    reps = np.empty((cfg.replicates,) + share.shape)
    diffs = {k: np.empty_like(reps) for k in live}
    for r in (progress or iter)(range(cfg.replicates)):  # progress: an optional bar around the loop
        W = _resampled(M, rng, cfg.max_draws)
        reps[r] = _replicate(W, F, selfs)
        for k, (Fb, selfs_b, _, scale_b) in live.items():
            with np.errstate(divide="ignore", invalid="ignore"):
                diffs[k][r] = np.log(reps[r]) - np.log(scale_b * _replicate(W, Fb, selfs_b))
    lo, hi = _interval(reps, ratio, cfg.level)
    above = {k: np.ones(share.shape, bool) for k in bases}
    for k, (_, _, ratio_b, scale_b) in live.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.log(ratio) - np.log(scale_b * ratio_b)
        above[k] = np.nan_to_num(_interval(diffs[k], d, cfg.level)[0], nan=-np.inf) > 0
    tmpl = template_share(P)
    dominated = is_template_dominated(tmpl, cfg.template_max)
    contained = containment(M)
    covers = ((ratio >= cfg.tau) & above["null"] & above["lexical"] & ~dominated[:, None]) | contained
    np.fill_diagonal(covers, True)
    return Assessment(share, ratio, lo, hi, selfs, bases["null"][2], bases["null"][3], covers, above["null"],
                      contained, np.asarray(M.sum(axis=1)).ravel().astype(int), P, E, cfg,
                      bases["lexical"][2], bases["lexical"][3], above["lexical"], tmpl, dominated)


def stand_ins(a: Assessment) -> np.ndarray:
    """``covers`` with one preference: when two benchmarks cover each other, only the one with more samples
    may stand in for the other (it measures the same with more precision; equal sizes: either)."""
    n = a.n_samples
    eff = a.covers.copy()
    eff &= ~(a.covers & a.covers.T & (n[None, :] < n[:, None]))  # j covers i, i covers j, j smaller: no
    return eff


def recommend(a: Assessment, costs: Any = None, exact: bool = False, time_limit: float = 30.0) -> Recommendation:
    """Cheapest kept set such that every benchmark is kept or covered by a kept one (``a.covers``).

    A set cover whose elements are the benchmarks: candidate j covers {i : covers[i, j]}
    (always itself). Greedy = ``select.greedy_cover`` (cost-ratio greedy, the
    picks of Minoux's lazy greedy, then an irredundant clean-up); exact =
    ``select.exact_cover`` (MILP via HiGHS; greedy fallback with the gap).
    """
    n = a.covers.shape[0]
    c = np.ones(n) if costs is None else np.asarray(costs, float)
    if c.shape != (n,):
        raise RecommendError(f"costs must have one entry per benchmark ({n}), got shape {c.shape}")
    inc = sp.csr_matrix(stand_ins(a).T)  # rows: candidates j; columns: benchmarks i they cover
    s = sel.exact_cover(inc, c, 1.0, time_limit=time_limit) if exact else sel.greedy_cover(inc, c, 1.0)
    kept = np.sort(s.rows)
    by = np.full(n, -1)
    for i in np.setdiff1d(np.arange(n), kept):
        ok = kept[stand_ins(a)[i, kept]]
        assert ok.size, "a set cover covers every benchmark"
        by[i] = int(ok[np.argmax(a.ratio[i, ok])])
    return Recommendation(kept, by, float(c[kept].sum()), float(c.sum()), s, exact)


def sample_weights(P: np.ndarray, b: np.ndarray, row: int | None = None) -> np.ndarray:
    """(d,) feature weights for sample-level selection: E[row] (one benchmark) or max_D E[D] (the suite).

    Weighted set cover with these weights keeps the features that characterize
    the benchmark, in proportion to how much; one-off features weigh ~1/N.
    """
    E = characteristic(P, b)
    return E[row] if row is not None else E.max(axis=0)


def subset_share(F_subset: Any, e_target: np.ndarray, b: np.ndarray) -> float:
    """Share of a benchmark's characteristic ``e_target`` (d,) that a subset of its samples shows in frequency
    terms: covered_share(e_target, characteristic(p_S, b)) with p_S the subset's firing frequencies."""
    Fs = _bool_csr(F_subset, "F_subset")
    if Fs.shape[0] == 0:
        return 0.0
    p = np.asarray(Fs.sum(axis=0)).ravel() / Fs.shape[0]
    return float(covered_share(np.asarray(e_target, float)[None, :], np.maximum(p - b, 0.0)[None, :])[0, 0])
