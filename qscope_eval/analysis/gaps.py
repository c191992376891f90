"""What no benchmark measures: coverage gaps of a suite against a reference corpus (DESIGN §5b).

Pure functions on sparse matrices (numpy / scipy / pandas only; no torch, DuckDB, Prefect or Altair).

Everything is in firing *frequencies* (share of a corpus's samples on which a feature fires), never raw
counts, so a 5000-prompt reference and a 40-prompt benchmark compare fairly. For a feature f:

    p_r(f) = n_r(f) / N_r                  its frequency in the reference
    q(f)   = max_b n_b(f) / N_b            the highest frequency any benchmark reaches ("closest" benchmark)

A feature is
  * a **gap** when the reference fires it with support (n_r >= min_count) and significantly more often than
    `ratio` x the best benchmark: one-sided binomial test of n_r ~ Bin(N_r, ratio * q~(f)), with q~ the
    best benchmark's smoothed rate (n_b + 1/2) / (N_b + 1) (a benchmark too small to show a rate cannot
    make a gap), Benjamini-Hochberg over the tested features at `alpha`;
  * **covered** when p_r <= ratio * q and the best benchmark fires it on at least min_count samples (some
    benchmark fires it at a comparable frequency, with support);
  * **unresolved** otherwise (too rare in the reference to tell).

Headline: the share of the reference's characteristic firing mass on covered features. Each reference
sample holds one unit of mass, shared among its fired features in proportion to their specificity
(log 1/frequency over all samples), so features every prompt fires weigh almost nothing and long prompts
count as much as short ones. The same number for the null encoder (a random dictionary riding along in
the same pass) shows how much of it residual-stream geometry alone gives. A gap feature carries the mass
no benchmark explains, mass x (1 - q / p_top) with p_top its highest frequency in the reference or a named
part of it. Gap features are grouped by co-firing on reference samples (average-linkage clustering of the
Jaccard distance of their sample sets, cut at `group_distance`); each group lists its most typical
reference samples (most of the group's weight fired) and the benchmarks that match most of its reference
frequency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from scipy.stats import binom

from qscope_eval.analysis import recommend


@dataclass(frozen=True)
class GapConfig:
    """How a gap is decided and grouped."""

    ratio: float = 2.0
    """A reference frequency up to `ratio` x the best benchmark's counts as covered ("comparable")."""
    min_count: int = 3
    """A gap needs at least this many reference samples firing the feature."""
    alpha: float = 0.05
    """False-discovery rate of the gap test (Benjamini-Hochberg over the tested features)."""
    group_distance: float = 0.9
    """Cut of the average-linkage tree on Jaccard distance (1 - Jaccard) of the features' sample sets."""
    max_groups: int = 8
    """Groups shown (largest reference mass first); the rest are counted, not listed."""
    top_samples: int = 5
    """Most typical reference samples listed per group."""
    top_benchmarks: int = 3
    """Closest benchmarks listed per group."""
    max_features: int = 400
    """Gap features clustered (largest mass first); beyond this the tail is counted, not grouped."""

    def __post_init__(self):
        if not self.ratio >= 1:
            raise ValueError("ratio must be >= 1 (a reference frequency up to ratio x a benchmark's counts as covered)")
        if self.min_count < 1 or not 0 < self.alpha < 1 or not 0 < self.group_distance <= 1:
            raise ValueError("min_count >= 1, 0 < alpha < 1 and 0 < group_distance <= 1 are required")
        if min(self.max_groups, self.top_samples, self.top_benchmarks, self.max_features) < 1:
            raise ValueError("max_groups, top_samples, top_benchmarks and max_features must be >= 1")


@dataclass(frozen=True)
class Frequencies:
    """Per-feature firing counts of every benchmark and of the reference."""

    bench_counts: np.ndarray
    """(n_benchmarks, d) samples of each benchmark firing each feature."""
    bench_sizes: np.ndarray
    """(n_benchmarks,) samples per benchmark."""
    ref_counts: np.ndarray
    """(d,) reference samples firing each feature."""
    ref_size: int
    """Reference samples."""

    @property
    def bench_freq(self) -> np.ndarray:
        return self.bench_counts / np.maximum(self.bench_sizes, 1)[:, None]

    @property
    def ref_freq(self) -> np.ndarray:
        return self.ref_counts / max(self.ref_size, 1)


def frequencies(F: sp.spmatrix, M: sp.spmatrix, ref: np.ndarray) -> Frequencies:
    """F (n_samples, d) fired, M (n_benchmarks, n_samples) membership, ref (n_samples,) bool reference rows."""
    F = sp.csr_matrix(F, dtype=np.float64)
    M = sp.csr_matrix(M, dtype=np.float64)
    ref = np.asarray(ref, bool)
    bench = np.asarray((M @ F).todense()) if M.shape[0] else np.zeros((0, F.shape[1]))
    return Frequencies(bench.astype(np.int64), np.asarray(M.sum(axis=1)).ravel().astype(np.int64),
                       np.asarray(F[ref].sum(axis=0)).ravel().astype(np.int64), int(ref.sum()))


@dataclass(frozen=True)
class FeatureCalls:
    """The gap / covered / unresolved call of every feature, with the numbers behind it."""

    p_ref: np.ndarray
    """(d,) reference frequency."""
    q_best: np.ndarray
    """(d,) highest benchmark frequency."""
    closest: np.ndarray
    """(d,) index of the benchmark reaching q_best (-1 without benchmarks)."""
    p_value: np.ndarray
    """(d,) one-sided binomial p-value (1 where not tested)."""
    gap: np.ndarray
    """(d,) bool."""
    covered: np.ndarray
    """(d,) bool."""
    mass: np.ndarray
    """(d,) the reference's firing mass on each feature (each sample weighs 1 in total; sums to 1)."""
    excess: np.ndarray
    """(d,) share of the reference mass the best benchmark does not explain, max(0, 1 - q/p_r) x mass."""
    bench_freq: np.ndarray
    """(n_benchmarks, d) every benchmark's frequency."""
    p_top: np.ndarray
    """(d,) the highest frequency in the pooled reference or any of its named corpora."""


def specificity(F: sp.csr_matrix) -> np.ndarray:
    """(d,) log(1 / frequency over all rows of F): ~0 for a feature every prompt fires (format, length),
    large for one only some topic fires. Computed over benchmarks and reference together, so it does not
    depend on which side a topic is on."""
    n_f = np.asarray(F.sum(axis=0)).ravel().astype(float)
    return np.log(np.divide(F.shape[0], n_f, out=np.ones_like(n_f), where=n_f > 0))


def reference_mass(F: sp.csr_matrix, ref: np.ndarray) -> np.ndarray:
    """(d,) the reference's characteristic firing mass per feature; sums to 1.

    Each reference sample holds one unit, shared among its fired features in proportion to their
    specificity, so features that every prompt fires (the answer-option format, say) carry almost none
    and the mass sits on what characterizes the prompt; long prompts count as much as short ones.
    """
    spec = specificity(F)
    R = sp.csr_matrix(F[ref], dtype=np.float64).multiply(spec[None, :]).tocsr()  # (N_r, d)
    row = np.asarray(R.sum(axis=1)).ravel()
    R = sp.diags(np.divide(1.0, row, out=np.zeros_like(row), where=row > 0)) @ R
    mass = np.asarray(R.sum(axis=0)).ravel()
    return mass / max(mass.sum(), 1e-300)


def characteristic_mass(bench_freq: np.ndarray, parts: list[tuple[np.ndarray, int]], min_count: int = 1) -> np.ndarray:
    """(d,) what characterizes the reference, per feature; sums to 1 (0 everywhere if nothing does).

    Background-subtracted frequency, as the recommendation measures what characterizes a benchmark: a
    feature's frequency in each reference part minus its mean frequency over all corpora (every benchmark
    and every reference part, each weighing the same whatever its size), floored at 0, summed over the
    parts weighted by their share of the reference. Features every corpus fires (the answer format, the
    language) cancel out; a topic's features stand out whether a benchmark shares them or not. Only
    features a part fires on at least `min_count` prompts count for it: in a small corpus, the many features
    seen once or twice would otherwise hold most of the mass, and they say nothing.
    bench_freq: (n_benchmarks, d); parts: (counts (d,), size) per reference part.
    """
    part_freq = np.array([c / max(n, 1) for c, n in parts])  # (n_parts, d)
    supported = np.array([c >= min_count for c, _ in parts])  # (n_parts, d)
    background = recommend.background(np.vstack([bench_freq, part_freq]))  # the recommendation's b(f), over all corpora
    sizes = np.array([n for _, n in parts], float)
    mass = (sizes / max(sizes.sum(), 1)) @ (np.clip(part_freq - background, 0.0, None) * supported)
    total = mass.sum()
    return mass / total if total > 0 else mass


def benjamini_hochberg(p: np.ndarray, alpha: float) -> np.ndarray:
    """bool mask of the p-values rejected at false-discovery rate alpha."""
    p = np.asarray(p, float)
    if p.size == 0:
        return np.zeros(0, bool)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    passed = np.flatnonzero(ranked <= alpha)
    out = np.zeros(p.size, bool)
    if passed.size:
        out[order[: passed[-1] + 1]] = True
    return out


def call_features(F: sp.spmatrix, M: sp.spmatrix, ref: np.ndarray, cfg: GapConfig = GapConfig(),
                  parts: sp.spmatrix | None = None) -> FeatureCalls:
    """Classify every feature as gap, covered or unresolved (module docstring).

    parts: (n_parts, n_samples) membership of the reference's named corpora. A mixed reference dilutes a
    small topic (a topic that is a fifth of the reference fires its features at a fifth of the rate), so
    each named corpus is tested too: a feature is a gap if the pooled reference or any corpus fires it
    significantly more than `ratio` x the best benchmark (one Benjamini-Hochberg over all tests), and
    covered only if the pooled reference and every corpus fire it at a comparable rate.
    """
    F = sp.csr_matrix(F, dtype=bool)
    ref = np.asarray(ref, bool)
    d = F.shape[1]
    fr = frequencies(F, M, ref)
    if fr.bench_counts.shape[0]:
        bf = fr.bench_freq
        closest = bf.argmax(axis=0)
        q_best = bf[closest, np.arange(d)]
        q_smooth = ((fr.bench_counts + 0.5) / (fr.bench_sizes[:, None] + 1.0)).max(axis=0)
    else:
        bf, closest, q_best, q_smooth = np.zeros((0, d)), np.full(d, -1), np.zeros(d), np.zeros(d)
    p0 = np.minimum(1.0, cfg.ratio * q_smooth)
    corpora = [(fr.ref_counts, fr.ref_size)]
    if parts is not None and parts.shape[0] > 1:
        P = sp.csr_matrix(parts, dtype=np.float64)
        counts = np.asarray((P @ sp.csr_matrix(F, dtype=np.float64)).todense()).astype(np.int64)
        corpora += list(zip(counts, np.asarray(P.sum(axis=1)).ravel().astype(np.int64)))
    # covered needs evidence too: the best benchmark fires the feature on at least min_count prompts (two
    # features each seen once on either side are noise, not coverage; they stay "too rare to call")
    best_count = fr.bench_counts[closest, np.arange(d)] if fr.bench_counts.shape[0] else np.zeros(d, np.int64)
    tests, covered = [], (fr.ref_counts > 0) & (best_count >= cfg.min_count)
    p_top = np.zeros(d)  # the highest frequency in the pooled reference or any corpus
    for counts, size in corpora:
        freq = counts / max(size, 1)
        p_top = np.maximum(p_top, freq)
        covered &= freq <= cfg.ratio * q_best
        f = np.flatnonzero((counts >= cfg.min_count) & (freq > p0))
        tests.append((f, binom.sf(counts[f] - 1, size, p0[f])))
    f_all = np.concatenate([t[0] for t in tests])
    p_all = np.concatenate([t[1] for t in tests])
    p_value = np.ones(d)
    np.minimum.at(p_value, f_all, p_all)
    gap = np.zeros(d, bool)
    gap[f_all[benjamini_hochberg(p_all, cfg.alpha)]] = True
    covered &= ~gap
    mass = characteristic_mass(bf, corpora[1:] or corpora[:1], cfg.min_count)
    unexplained = np.clip(1.0 - np.divide(q_best, p_top, out=np.ones(d), where=p_top > 0), 0.0, 1.0)
    return FeatureCalls(fr.ref_freq, q_best, closest, p_value, gap, covered, mass, mass * unexplained, bf, p_top)


@dataclass(frozen=True)
class GapGroup:
    """Gap features that fire together on reference samples."""

    features: np.ndarray
    """Feature ids, largest excess mass first."""
    excess: float
    """Share of the reference mass these features carry that no benchmark explains."""
    mass: float
    """Share of the reference mass on these features."""
    samples: np.ndarray
    """Reference row indices (into F), most typical first (weighted share of the group's features fired)."""
    sample_scores: np.ndarray
    """The typicality score of `samples`: share of the group's excess mass the sample fires, in [0, 1]."""
    n_samples: int
    """Reference samples firing at least two of the group's features (one for a singleton group)."""
    closest: list[tuple[int, float]]
    """(benchmark index, share of the group's reference frequency that benchmark reaches), best first."""


@dataclass(frozen=True)
class GapResult:
    """Gaps of one suite against one reference, for one encoder."""

    calls: FeatureCalls
    groups: list[GapGroup]
    n_groups_total: int
    """Groups before `max_groups` cut the list."""
    covered_share: float
    """Share of the reference's firing mass on covered features (the headline)."""
    gap_share: float
    """Share on gap features."""
    unresolved_share: float
    """Share on features too rare in the reference to call."""
    gap_excess_share: float
    """Share of the reference mass that gap features carry beyond the best benchmark's rate."""
    n_gap_features: int
    n_tested: int = field(default=0)
    """Features with enough reference support to be tested."""


def jaccard_distance(S: sp.csc_matrix) -> np.ndarray:
    """(k, k) 1 - Jaccard between the columns (sample sets) of a bool (n, k) matrix."""
    S = sp.csc_matrix(S, dtype=np.float64)
    inter = np.asarray((S.T @ S).todense())
    size = np.diag(inter)
    union = size[:, None] + size[None, :] - inter
    jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    dist = 1.0 - jac
    np.fill_diagonal(dist, 0.0)
    return dist


def group_features(S: sp.spmatrix, distance: float) -> np.ndarray:
    """Cluster the columns of S (n_samples, k) by co-firing; returns a 0-based label per column."""
    k = S.shape[1]
    if k <= 1:
        return np.zeros(k, int)
    dist = jaccard_distance(sp.csc_matrix(S))
    Z = linkage(squareform(dist, checks=False), method="average")
    return fcluster(Z, t=distance, criterion="distance") - 1


def find_gaps(F: sp.spmatrix, M: sp.spmatrix, ref: np.ndarray, cfg: GapConfig = GapConfig(),
              parts: sp.spmatrix | None = None) -> GapResult:
    """Gap features of the reference rows `ref` of F against the benchmarks in M, grouped by co-firing.

    F: (n_samples, d) fired (bool or values > 0); M: (n_benchmarks, n_samples) membership; ref: (n_samples,)
    bool; parts: (n_parts, n_samples) the reference's named corpora (call_features). A sample may be in
    both (a reference prompt that a benchmark also holds).
    """
    F = sp.csr_matrix(F, dtype=bool)
    ref = np.asarray(ref, bool)
    calls = call_features(F, M, ref, cfg, parts)
    gap_ids = np.flatnonzero(calls.gap)
    gap_ids = gap_ids[np.argsort(-calls.excess[gap_ids], kind="stable")][: cfg.max_features]
    ref_rows = np.flatnonzero(ref)
    S = F[ref_rows][:, gap_ids].tocsc()  # (N_r, k) which reference samples fire which gap feature
    labels = group_features(S, cfg.group_distance) if gap_ids.size else np.zeros(0, int)
    groups = [_group(S, ref_rows, gap_ids, labels == g, calls, cfg) for g in np.unique(labels)]
    groups.sort(key=lambda g: -g.excess)
    total = float(calls.mass.sum()) or 1.0
    return GapResult(
        calls=calls, groups=groups[: cfg.max_groups], n_groups_total=len(groups),
        covered_share=float(calls.mass[calls.covered].sum() / total),
        gap_share=float(calls.mass[calls.gap].sum() / total),
        unresolved_share=float(calls.mass[~calls.covered & ~calls.gap].sum() / total),
        gap_excess_share=float(calls.excess[calls.gap].sum() / total),
        n_gap_features=int(calls.gap.sum()),
        n_tested=int((calls.p_value < 1).sum()),
    )


def _group(S: sp.csc_matrix, ref_rows: np.ndarray, gap_ids: np.ndarray, member: np.ndarray, calls: FeatureCalls,
           cfg: GapConfig) -> GapGroup:
    """One group's numbers: typical reference samples (by the group's excess weight fired) and closest benchmarks."""
    feats = gap_ids[member]
    order = np.argsort(-calls.excess[feats], kind="stable")
    feats = feats[order]
    w = calls.excess[feats]
    w = w / w.sum() if w.sum() > 0 else np.full(feats.size, 1.0 / feats.size)
    score = np.asarray(S[:, np.flatnonzero(member)[order]] @ w).ravel()  # (N_r,) share of the group fired
    top = np.argsort(-score, kind="stable")
    top = top[score[top] > 0][: cfg.top_samples]
    n_fired = np.asarray(S[:, np.flatnonzero(member)].sum(axis=1)).ravel()  # (N_r,) group features fired
    n_in = int((n_fired >= min(2, feats.size)).sum())
    # closest benchmarks: share of the group's reference frequency each benchmark reaches (capped per feature,
    # so one benchmark firing one feature very often cannot stand for the whole group)
    p_r = calls.p_ref[feats]
    matched = np.minimum(calls.bench_freq[:, feats], p_r[None, :]).sum(axis=1) / max(p_r.sum(), 1e-12)
    best = np.argsort(-matched, kind="stable")[: cfg.top_benchmarks]
    closest = [(int(b), float(matched[b])) for b in best]
    return GapGroup(feats, float(calls.excess[feats].sum()), float(calls.mass[feats].sum()), ref_rows[top],
                    score[top], n_in, closest)


# ---- evidence for one feature (pure parts; jobs/evidence.py adds texts and token-level re-encoding) ----------

class Cofiring(NamedTuple):
    """Features that fire on the same samples as a given one."""

    features: np.ndarray
    """Feature ids, highest Jaccard first."""
    jaccard: np.ndarray
    """|S(f) ∩ S(g)| / |S(f) ∪ S(g)| over the samples."""
    n_both: np.ndarray
    """Samples on which both fire."""


def cofiring(F: sp.spmatrix, feature: int, k: int = 10) -> Cofiring:
    """The k features whose sample sets (columns of F, (n_samples, d) fired) overlap `feature`'s most."""
    F = sp.csc_matrix(F, dtype=np.float64)
    col = F[:, feature]
    both = np.asarray((F.T @ col).todense()).ravel()  # (d,) samples firing each feature and `feature`
    size = np.asarray(F.sum(axis=0)).ravel()
    union = size + size[feature] - both
    jac = np.divide(both, union, out=np.zeros_like(both), where=union > 0)
    jac[feature] = -1.0
    order = np.argsort(-jac, kind="stable")
    order = order[jac[order] > 0][:k]
    return Cofiring(order, jac[order], both[order].astype(np.int64))


def top_by_value(X: sp.spmatrix, feature: int, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, pooled values) of the k samples with the highest pooled value of `feature` (> 0 only)."""
    col = sp.csc_matrix(X)[:, feature].tocoo()
    keep = col.data > 0
    rows, vals = col.row[keep], col.data[keep]
    order = np.lexsort((rows, -vals))[:k]
    return rows[order], vals[order]
