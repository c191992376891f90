"""Coverage, overlap and redundancy metrics on per-sample SAE feature sets.

Pure functions on scipy.sparse matrices (DESIGN §4, Qwen-Scope report §4):

- ``X``  (n_samples × d_sae) CSR, pooled activation per (sample, feature);
- ``F``  = ``fired(X, threshold)``, the boolean incidence "feature f fires on x";
- ``M``  (n_benchmarks × n_samples) boolean membership. A content-addressed
  sample may belong to several benchmarks, so this is a matrix, not a label
  array; ``membership`` / ``membership_from_pairs`` build it.

Everything per benchmark reduces to ``M @ F`` (how many samples of D fire f),
so the whole pass is a few sparse products plus closed forms. The null
baseline needs nothing special: run the same functions on the null encoder's
``X`` and compare with ``overlap_excess`` (``summarize`` does both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from .errors import QScopeError

__all__ = [
    "MetricsError", "membership", "membership_from_pairs", "fired", "feature_frequency",
    "benchmark_features", "Coverage", "coverage", "Overlap", "overlap_matrices",
    "OverlapExcess", "overlap_excess", "expected_coverage_curve", "Redundancy", "redundancy",
    "rarefied_coverage", "chao1", "BootstrapIntervals", "bootstrap", "Novelty", "novelty",
    "NearDuplicates", "near_duplicates", "SuiteMetrics", "summarize",
]

# r_k(n) = C(N-k, n)/C(N, n) <= exp(-k n / N); below exp(-42) ~ 6e-19 a term
# cannot change 1 - r in float64, so the curve skips those (k, n) pairs. This
# is what keeps the all-n curve near-linear in N instead of (#distinct k) × N.
_NEGLIGIBLE_EXPONENT = 42.0
_CHUNK = 1 << 22  # (k, n) pairs evaluated per vectorised step (~100 MB peak)
CURVE_POINTS = 200
SATURATION_SHARE = 0.9  # a footprint above this share of d_sae means "saturated" (DESIGN §3)


class MetricsError(QScopeError):
    """Inputs to a metric have the wrong shape, type or range."""


# ----------------------------------------------------------------------------- inputs
def _as_csr(A: Any, name: str) -> sp.csr_matrix:
    if sp.issparse(A):
        A = sp.csr_matrix(A)
    else:
        arr = np.asarray(A)
        if arr.ndim != 2:
            raise MetricsError(f"{name} must be a 2-D scipy.sparse matrix or array, got shape {arr.shape}")
        A = sp.csr_matrix(arr)
    if not A.has_canonical_format:  # duplicates/unsorted: fix on a copy, never the caller's arrays
        A = A.copy()
        A.sum_duplicates()
    return A


def _keep(A: sp.csr_matrix, mask: np.ndarray) -> sp.csr_matrix:
    """Boolean CSR of A's stored entries where mask holds (new arrays; A untouched)."""
    if mask.all():
        return sp.csr_matrix((np.ones(A.nnz, bool), A.indices, A.indptr), shape=A.shape)
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))[mask]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=A.shape[0]))])
    return sp.csr_matrix((np.ones(rows.size, bool), A.indices[mask], indptr), shape=A.shape)


def _as_bool(A: Any, name: str) -> sp.csr_matrix:
    A = _as_csr(A, name)
    return _keep(A, A.data != 0)


def _check_mf(M: Any, F: Any) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    M, F = _as_bool(M, "M"), _as_bool(F, "F")
    if M.shape[1] != F.shape[0]:
        raise MetricsError(
            f"M has {M.shape[1]} sample columns but F has {F.shape[0]} sample rows; "
            "M must be (n_benchmarks × n_samples) and F (n_samples × d_sae) over the same samples")
    return M, F


def membership(labels: Sequence[int], n_benchmarks: int | None = None) -> sp.csr_matrix:
    """Boolean (n_benchmarks × n_samples) membership from one benchmark index per sample."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
        raise MetricsError("labels must be a 1-D integer array: the benchmark index of each sample")
    n = len(lab)
    return membership_from_pairs(lab, np.arange(n), n_benchmarks, n)


def membership_from_pairs(bench_idx: Sequence[int], sample_idx: Sequence[int],
                          n_benchmarks: int | None, n_samples: int) -> sp.csr_matrix:
    """Boolean membership from (benchmark, sample) pairs, e.g. the store's membership table."""
    b = np.asarray(bench_idx, dtype=np.int64)
    s = np.asarray(sample_idx, dtype=np.int64)
    if b.shape != s.shape or b.ndim != 1:
        raise MetricsError("bench_idx and sample_idx must be 1-D arrays of equal length")
    nb = int(b.max()) + 1 if n_benchmarks is None and b.size else int(n_benchmarks or 0)
    if b.size and (b.min() < 0 or b.max() >= nb):
        raise MetricsError(f"benchmark indices must lie in [0, {nb}); pass n_benchmarks or fix the labels")
    if s.size and (s.min() < 0 or s.max() >= n_samples):
        raise MetricsError(f"sample indices must lie in [0, {n_samples})")
    M = sp.csr_matrix((np.ones(b.size, bool), (b, s)), shape=(nb, n_samples))
    M.sum_duplicates()
    return M.astype(bool)


def fired(X: Any, threshold: float = 0.0) -> sp.csr_matrix:
    """Boolean incidence: feature f fires on sample x iff X[x, f] > threshold."""
    X = _as_csr(X, "X")
    if not np.isfinite(threshold):
        raise MetricsError(f"threshold must be a finite number, got {threshold}")
    if threshold < 0:
        # implicit zeros would then count as firing: the result would be dense
        raise MetricsError("threshold must be >= 0 (values <= threshold do not fire)")
    return _keep(X, X.data > threshold)


def feature_frequency(F: Any) -> np.ndarray:
    """Per feature, the number of samples on which it fires."""
    F = _as_bool(F, "F")
    return np.bincount(F.indices, minlength=F.shape[1]).astype(np.int64)


def benchmark_features(M: Any, F: Any, min_support: int = 1) -> sp.csr_matrix:
    """(n_benchmarks × d_sae) counts n_f: samples of D on which f fires, kept where n_f >= min_support.

    A row's nonzeros are exactly F(D) under that support rule.
    """
    if int(min_support) < 1:
        raise MetricsError("min_support must be >= 1 (1 = the report's definition)")
    M, F = _check_mf(M, F)
    C = (M.astype(np.int32) @ F.astype(np.int32)).tocsr()
    if min_support > 1:
        C.data[C.data < min_support] = 0
        C.eliminate_zeros()
    return C


# ----------------------------------------------------------------------------- coverage
@dataclass(frozen=True)
class Coverage:
    """Per-benchmark footprint |F(D)| and its shares (arrays indexed by benchmark)."""
    n_samples: np.ndarray
    n_features: np.ndarray
    share_of_dsae: np.ndarray
    share_of_union: np.ndarray
    union: int            # |∪_D F(D)| over the suite
    d_sae: int
    saturated: np.ndarray  # footprint > SATURATION_SHARE of d_sae: coverage stops meaning much


def coverage(M: Any, F: Any, d_sae: int | None = None, min_support: int = 1) -> Coverage:
    """|F(D)| per benchmark, as a share of d_sae and of the suite's union."""
    C = benchmark_features(M, F, min_support)
    d = int(d_sae if d_sae is not None else C.shape[1])
    if d < C.shape[1]:
        raise MetricsError(f"d_sae={d} is smaller than F's {C.shape[1]} columns")
    nf = np.diff(C.indptr).astype(np.int64)
    union = int(np.unique(C.indices).size)
    with np.errstate(invalid="ignore", divide="ignore"):
        sou = nf / union if union else np.full(nf.shape, np.nan)
    n_samples = np.diff(_as_bool(M, "M").indptr).astype(np.int64)
    return Coverage(n_samples, nf, nf / d, sou, union, d, nf / d > SATURATION_SHARE)


@dataclass(frozen=True)
class Overlap:
    """Pairwise overlaps of benchmark footprints (n_bench × n_bench; NaN where a footprint is empty)."""
    intersection: np.ndarray  # |F(Di) ∩ F(Dj)|
    asym: np.ndarray          # |F(Di) ∩ F(Dj)| / |F(Di)|: how much of Di Dj already covers (Eq. 10)
    sym: np.ndarray           # ... / min(|F(Di)|, |F(Dj)|) (Eq. 11)
    jaccard: np.ndarray


def overlap_matrices(M: Any, F: Any, min_support: int = 1) -> Overlap:
    """All pairwise overlaps from one product B @ B.T of the binary benchmark × feature matrix."""
    C = benchmark_features(M, F, min_support)
    B = sp.csr_matrix((np.ones(C.nnz, np.int64), C.indices, C.indptr), shape=C.shape)
    inter = np.asarray((B @ B.T).todense(), dtype=np.int64)
    size = np.diag(inter).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        asym = inter / size[:, None]
        sym = inter / np.minimum(size[:, None], size[None, :])
        jac = inter / (size[:, None] + size[None, :] - inter)
    return Overlap(inter, asym, sym, jac)


@dataclass(frozen=True)
class OverlapExcess:
    """Real-SAE overlap minus null-encoder overlap: what the SAE adds over residual geometry."""
    asym: np.ndarray
    sym: np.ndarray
    jaccard: np.ndarray


def overlap_excess(real: Overlap, null: Overlap) -> OverlapExcess:
    """Elementwise real − null for each overlap matrix (same benchmarks, same order)."""
    if real.asym.shape != null.asym.shape:
        raise MetricsError("real and null overlaps cover different benchmark sets; compute both on the same M")
    return OverlapExcess(real.asym - null.asym, real.sym - null.sym, real.jaccard - null.jaccard)


# ----------------------------------------------------------------------------- rarefaction
def _counts(n_f: Any, N: int, min_support: int = 1) -> np.ndarray:
    k = np.asarray(n_f)
    if k.ndim != 1 or (k.size and not np.issubdtype(k.dtype, np.integer)):
        raise MetricsError("n_f must be a 1-D integer array of per-feature sample counts")
    if int(N) != N or N < 0:
        raise MetricsError(f"N (number of samples) must be a non-negative integer, got {N}")
    if k.size and (k.min() < 0 or k.max() > N):
        raise MetricsError(f"every n_f must lie in [0, N={N}]: a feature cannot fire on more samples than exist")
    return k[k >= max(1, int(min_support))].astype(np.int64)


def _sum_ratios(k: np.ndarray, N: int, ns: np.ndarray) -> np.ndarray:
    """S(n) = Σ_f C(N−n_f, n)/C(N, n) for each n in sorted ``ns``.

    log C(N−k, n)/C(N, n) = G[N−k] − G[N−k−n] − G[N] + G[N−n] with G[m] = log m!
    (gammaln; absolute error ~1e-16·log N! , i.e. ≲1e-8 even at N = 10^6).
    Features are grouped by distinct k, and for each k only n <= min(N−k, 42N/k)
    is evaluated (beyond, the term is 0 exactly or < 6e-19).
    """
    kv, kc = np.unique(k, return_counts=True)
    out = np.zeros(ns.size)
    if not kv.size or not ns.size:
        return out
    G = gammaln(np.arange(N + 1, dtype=np.float64) + 1.0)
    lim = np.minimum(N - kv, np.floor(_NEGLIGIBLE_EXPONENT * N / kv)).astype(np.int64)
    m = np.searchsorted(ns, lim, side="right")  # ns sorted: valid n form a prefix per k
    ends = np.cumsum(m)
    start = 0
    while start < kv.size:  # chunk over k groups to bound memory
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - m[start] + _CHUNK, "right")))
        mm = m[start:stop]
        tot = int(mm.sum())
        if tot:
            grp = np.repeat(np.arange(start, stop), mm)
            pos = np.arange(tot) - np.repeat(np.cumsum(mm) - mm, mm)
            kk, n = kv[grp], ns[pos]
            val = np.exp(G[N - kk] - G[N - kk - n] - G[N] + G[N - n]) * kc[grp]
            out += np.bincount(pos, val, minlength=ns.size)
        start = stop
    return out


def _ns(ns: Any, N: int) -> np.ndarray:
    n = np.arange(1, N + 1, dtype=np.int64) if ns is None else np.asarray(ns)
    if n.ndim != 1 or (n.size and (not np.issubdtype(n.dtype, np.integer) or n.min() < 0 or n.max() > N)):
        raise MetricsError(f"ns must be a 1-D array of subset sizes in [0, N={N}]")
    return n.astype(np.int64)


def expected_coverage_curve(n_f: Any, N: int, ns: Any = None, min_support: int = 1) -> np.ndarray:
    """c_n = E|F(S)|/|F(D)| over random S ⊂ D, |S| = n (Eq. 7, exact closed form).

    ``n_f``: per-feature sample counts in D (zeros and counts < min_support are
    not in F(D)); ``ns``: subset sizes (default all of 1..N). NaN if F(D) is empty.
    """
    k = _counts(n_f, N, min_support)
    n = _ns(ns, N)
    if not k.size:
        return np.full(n.size, np.nan)
    order = np.argsort(n, kind="stable")
    c = np.empty(n.size)
    c[order] = 1.0 - _sum_ratios(k, int(N), n[order]) / k.size
    return c


def rarefied_coverage(n_f: Any, N: int, n: int, min_support: int = 1) -> float:
    """Expected |F(S)| at |S| = n: compares benchmarks of different sizes at a common n."""
    k = _counts(n_f, N, min_support)
    if int(n) != n or not 0 <= n <= N:
        raise MetricsError(f"n must be an integer in [0, N={N}], got {n}")
    return float(k.size - _sum_ratios(k, int(N), np.array([int(n)]))[0])


@dataclass(frozen=True)
class Redundancy:
    """Redundancy proxy of one benchmark (Eqs. 8–9) and its coverage curve for plotting."""
    r_hat: float       # Σ_{n=1..N} c_n / |F(D)| = N·AUC/|F(D)| (the report's definition)
    auc: float         # mean_n c_n: 1.0 when one prompt already shows everything
    n_samples: int
    n_features: int
    ns: np.ndarray     # <= CURVE_POINTS log-spaced subset sizes, always with 1 and N
    c: np.ndarray      # c_n at those sizes


def curve_points(N: int, points: int = CURVE_POINTS) -> np.ndarray:
    """Log-spaced integer subset sizes in [1, N], always including 1 and N."""
    if N < 1:
        return np.zeros(0, np.int64)
    return np.unique(np.concatenate([[1, N], np.geomspace(1, N, points).round()]).astype(np.int64))


def redundancy(n_f: Any, N: int, min_support: int = 1, points: int = CURVE_POINTS) -> Redundancy:
    """R̂ and AUC exactly, without evaluating all N points of the curve.

    Hockey-stick identity: Σ_{n=1..N} C(N−k, n)/C(N, n) = (N−k)/(k+1), so
    Σ_n c_n = (1/|F|) Σ_f [N − (N−n_f)/(n_f+1)] in O(|F|). NaN fields if F(D) or D is empty.
    """
    k = _counts(n_f, N, min_support)
    N = int(N)
    if not k.size or N == 0:
        return Redundancy(math.nan, math.nan, N, int(k.size), np.zeros(0, np.int64), np.zeros(0))
    total = float(np.sum(N - (N - k) / (k + 1.0))) / k.size  # Σ_n c_n
    ns = curve_points(N, points)
    return Redundancy(total / k.size, total / N, N, int(k.size), ns,
                      expected_coverage_curve(k, N, ns))


def chao1(n_f: Any) -> float:
    """Richness estimate: F_obs + f1²/(2·f2), or F_obs + f1(f1−1)/2 when f2 = 0.

    f1 / f2 = features seen in exactly one / two samples; counts are per sample
    (incidence), so this is Chao's estimator applied to sample incidence.
    """
    k = np.asarray(n_f)
    if k.ndim != 1 or (k.size and (not np.issubdtype(k.dtype, np.integer) or k.min() < 0)):
        raise MetricsError("n_f must be a 1-D array of non-negative integer counts")
    obs, f1, f2 = int((k > 0).sum()), int((k == 1).sum()), int((k == 2).sum())
    return obs + (f1 * f1 / (2.0 * f2) if f2 else f1 * (f1 - 1) / 2.0)


# ----------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class BootstrapIntervals:
    """Percentile intervals from resampling samples within each benchmark.

    Resampling can only repeat samples, so |F(D)| intervals sit at or below the
    observed value (richness is biased down under the bootstrap); read them as
    "how much the footprint depends on which prompts were drawn".
    """
    n_features_lo: np.ndarray
    n_features_hi: np.ndarray
    asym_lo: np.ndarray
    asym_hi: np.ndarray
    level: float
    replicates: int


def bootstrap(M: Any, F: Any, replicates: int = 200, level: float = 0.95, seed: int = 0,
              min_support: int = 1) -> BootstrapIntervals:
    """Bootstrap intervals for per-benchmark |F(D)| and the asymmetric overlap matrix."""
    if int(replicates) < 2 or not 0 < level < 1:
        raise MetricsError("need replicates >= 2 and 0 < level < 1 (e.g. replicates=200, level=0.95)")
    M, F = _check_mf(M, F)
    Fi = F.astype(np.int32)
    rng = np.random.default_rng(seed)
    nb = M.shape[0]
    sizes = np.zeros((replicates, nb))
    asym = np.zeros((replicates, nb, nb))
    for b in range(replicates):
        rows, cols, vals = [], [], []
        for i in range(nb):
            members = M.indices[M.indptr[i]:M.indptr[i + 1]]
            if not members.size:
                continue
            cnt = np.bincount(rng.integers(0, members.size, members.size), minlength=members.size)
            nz = np.flatnonzero(cnt)
            rows.append(np.full(nz.size, i)), cols.append(members[nz]), vals.append(cnt[nz])
        Mb = sp.csr_matrix((np.concatenate(vals or [np.zeros(0, int)]).astype(np.int32),
                            (np.concatenate(rows or [np.zeros(0, int)]),
                             np.concatenate(cols or [np.zeros(0, int)]))), shape=M.shape)
        C = (Mb @ Fi).tocsr()
        Bm = (C >= min_support).astype(np.int64)
        inter = np.asarray((Bm @ Bm.T).todense(), dtype=float)
        sizes[b] = np.diag(inter)
        with np.errstate(invalid="ignore", divide="ignore"):
            asym[b] = inter / sizes[b][:, None]
    q = [50 * (1 - level), 50 * (1 + level)]
    lo, hi = np.percentile(sizes, q, axis=0)
    alo, ahi = np.percentile(asym, q, axis=0)
    return BootstrapIntervals(lo, hi, alo, ahi, float(level), int(replicates))


# ----------------------------------------------------------------------------- per sample
@dataclass(frozen=True)
class Novelty:
    """Per-sample count of features that no other sample fires."""
    suite: np.ndarray            # (n_samples,) among all samples that belong to some benchmark
    within: sp.csr_matrix        # (n_bench × n_samples) among the other samples of that benchmark


def novelty(M: Any, F: Any) -> Novelty:
    """Features unique to a sample, suite-wide and within each of its benchmarks."""
    M, F = _check_mf(M, F)
    in_suite = (np.asarray(M.sum(axis=0)).ravel() > 0).astype(np.int32)
    Fi = F.astype(np.int32)
    single = ((Fi.T @ in_suite) == 1).astype(np.int32)  # samples outside the suite don't count
    suite = (Fi @ single).astype(np.int64) * in_suite
    C = (M.astype(np.int32) @ F.astype(np.int32)).tocsr()
    C.data = (C.data == 1).astype(np.int32)
    within = sp.csr_matrix(M.astype(np.int64).multiply(sp.csr_matrix(C @ F.T.astype(np.int32))))
    within.eliminate_zeros()
    return Novelty(suite, within.astype(np.int64))


@dataclass(frozen=True)
class NearDuplicates:
    """Sample pairs (i < j) whose feature sets have Jaccard >= threshold."""
    i: np.ndarray
    j: np.ndarray
    jaccard: np.ndarray
    same_benchmark: np.ndarray  # the two samples share at least one benchmark
    threshold: float


def near_duplicates(F: Any, M: Any = None, threshold: float = 0.9,
                    block_rows: int = 8192) -> NearDuplicates:
    """All pairs with Jaccard >= threshold, by prefix filtering (exact, no misses).

    Features are ranked rarest first; two sets with Jaccard >= t must share one of
    the first |x| − ceil(t·|x|) + 1 features of x, so candidates come from a
    sparse product of these short prefixes, not of the full sets; candidates are
    then verified exactly. Cost grows with the number of candidate pairs: fine
    for ~10^5 samples with t >= 0.5; at low t prefixes approach whole sets and it
    degrades to F @ F.T (quadratic in samples sharing popular features).
    Samples with no fired features are never reported.
    """
    if not 0 < threshold <= 1:
        raise MetricsError(f"threshold must be in (0, 1], got {threshold}")
    F = _as_bool(F, "F")
    n, d = F.shape
    if M is not None:
        M, F = _check_mf(M, F)
    size = np.diff(F.indptr)
    order = np.lexsort((np.arange(d), feature_frequency(F)))  # rarest first
    rank = np.empty(d, np.int64)
    rank[order] = np.arange(d)
    R = sp.csr_matrix((np.ones(F.nnz, bool), rank[F.indices], F.indptr), shape=F.shape)
    R.sort_indices()
    plen = size - np.ceil(threshold * size - 1e-9).astype(np.int64) + 1
    pos = np.arange(R.nnz) - np.repeat(R.indptr[:-1], size)
    keep = pos < np.repeat(plen, size)
    rowp = np.repeat(np.arange(n), size)[keep]
    P = sp.csr_matrix((np.ones(int(keep.sum()), np.int32), (rowp, R.indices[keep])), shape=F.shape)
    PT = P.T.tocsr()
    Fi = F.astype(np.int32)
    I, J, S = [], [], []
    for a in range(0, n, block_rows):
        cand = (P[a:a + block_rows] @ PT).tocoo()
        ci, cj = cand.row + a, cand.col
        ok = (cj > ci)
        ci, cj = ci[ok], cj[ok]
        lo, hi = np.minimum(size[ci], size[cj]), np.maximum(size[ci], size[cj])
        ok = lo >= threshold * hi - 1e-9  # size filter: J <= min/max
        ci, cj = ci[ok], cj[ok]
        if not ci.size:
            continue
        inter = np.asarray(Fi[ci].multiply(Fi[cj]).sum(axis=1)).ravel()
        jac = inter / (size[ci] + size[cj] - inter)
        ok = jac >= threshold - 1e-12
        I.append(ci[ok]), J.append(cj[ok]), S.append(jac[ok])
    i = np.concatenate(I) if I else np.zeros(0, np.int64)
    j = np.concatenate(J) if J else np.zeros(0, np.int64)
    s = np.concatenate(S) if S else np.zeros(0)
    o = np.lexsort((j, i))
    i, j, s = i[o], j[o], s[o]
    if M is not None and i.size:
        MT = M.T.tocsr().astype(np.int32)
        same = np.asarray(MT[i].multiply(MT[j]).sum(axis=1)).ravel() > 0
    else:
        same = np.zeros(i.size, bool)
    return NearDuplicates(i.astype(np.int64), j.astype(np.int64), s, same, float(threshold))


# ----------------------------------------------------------------------------- summary
def _plain(x: Any) -> Any:
    """numpy -> JSON-safe plain Python (NaN/inf -> None)."""
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()] if x.ndim else _plain(x.item())
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _overlap_dict(o: Overlap | OverlapExcess) -> dict:
    d = {"asym": _plain(o.asym), "sym": _plain(o.sym), "jaccard": _plain(o.jaccard)}
    if isinstance(o, Overlap):
        d["intersection"] = _plain(o.intersection)
    return d


@dataclass(frozen=True)
class SuiteMetrics:
    """Everything ``summarize`` computes for one encoder over one suite."""
    names: tuple[str, ...]
    d_sae: int
    threshold: float
    min_support: int
    coverage: Coverage
    overlap: Overlap
    redundancy: tuple[Redundancy, ...]
    rarefied_n: int            # common subset size: the smallest non-empty benchmark
    rarefied: np.ndarray       # expected |F(S)| at |S| = rarefied_n, per benchmark
    chao1: np.ndarray          # per benchmark, on raw counts (min_support does not apply)
    null_coverage: Coverage | None = None
    null_overlap: Overlap | None = None
    excess: OverlapExcess | None = field(default=None)

    def to_dict(self) -> dict:
        """Plain lists / floats / None, stable snake_case keys (summary.json, --json)."""
        cov = self.coverage
        benches = []
        for b, name in enumerate(self.names):
            r = self.redundancy[b]
            benches.append({
                "name": name, "n_samples": int(cov.n_samples[b]), "n_features": int(cov.n_features[b]),
                "share_of_dsae": _plain(cov.share_of_dsae[b]), "share_of_union": _plain(cov.share_of_union[b]),
                "saturated": bool(cov.saturated[b]), "r_hat": _plain(r.r_hat), "auc": _plain(r.auc),
                "rarefied_coverage": _plain(self.rarefied[b]), "chao1": _plain(self.chao1[b]),
                "curve": {"n": _plain(r.ns), "c": _plain(r.c)},
                "null_n_features": None if self.null_coverage is None
                else int(self.null_coverage.n_features[b]),
            })
        return {
            "names": list(self.names), "d_sae": self.d_sae, "threshold": float(self.threshold),
            "min_support": self.min_support, "suite_union": cov.union, "rarefied_n": self.rarefied_n,
            "benchmarks": benches, "overlap": _overlap_dict(self.overlap),
            "null_overlap": None if self.null_overlap is None else _overlap_dict(self.null_overlap),
            "overlap_excess": None if self.excess is None else _overlap_dict(self.excess),
        }


def summarize(X: Any, M: Any, names: Sequence[str], d_sae: int | None = None, threshold: float = 0.0,
              min_support: int = 1, null: Any = None) -> SuiteMetrics:
    """Coverage, overlaps, R̂/curves, rarefied coverage and Chao1 for every benchmark.

    ``null``: the null encoder's X over the same samples (optional); its coverage
    and overlaps ride along, with real − null as ``excess``.
    """
    F = fired(X, threshold)
    M = _as_bool(M, "M")
    names = tuple(str(n) for n in names)
    if len(names) != M.shape[0]:
        raise MetricsError(f"{len(names)} names for {M.shape[0]} benchmark rows of M; pass one name per row")
    d = int(d_sae if d_sae is not None else F.shape[1])
    cov = coverage(M, F, d, min_support)
    ov = overlap_matrices(M, F, min_support)
    raw = benchmark_features(M, F, 1)  # raw n_f; support applied per metric below
    per = [raw.data[raw.indptr[b]:raw.indptr[b + 1]].astype(np.int64) for b in range(M.shape[0])]
    Ns = cov.n_samples
    red = tuple(redundancy(k, int(N), min_support) for k, N in zip(per, Ns))
    nonempty = Ns[Ns > 0]
    rn = int(nonempty.min()) if nonempty.size else 0
    rare = np.array([rarefied_coverage(k, int(N), min(rn, int(N)), min_support) for k, N in zip(per, Ns)])
    ch = np.array([chao1(k) for k in per], dtype=float)
    ncov = nov = exc = None
    if null is not None:
        Fn = fired(null, threshold)
        if Fn.shape[0] != F.shape[0]:
            raise MetricsError("the null encoder's X must have one row per sample, like X")
        ncov = coverage(M, Fn, Fn.shape[1], min_support)
        nov = overlap_matrices(M, Fn, min_support)
        exc = overlap_excess(ov, nov)
    return SuiteMetrics(names, d, float(threshold), int(min_support), cov, ov, red, rn, rare, ch,
                        ncov, nov, exc)
