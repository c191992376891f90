"""Coverage, overlap and redundancy metrics on per-sample SAE feature sets.

Pure functions on scipy.sparse matrices (DESIGN §4, Qwen-Scope report §4): ``X``
(n_samples × d_sae) pooled activations; ``F = fired(X, threshold)`` the boolean
incidence; ``M`` (n_benchmarks × n_samples) boolean membership, a matrix because
a content-addressed sample may belong to several benchmarks (``membership`` /
``membership_from_pairs`` build it). Per benchmark everything reduces to
``M @ F`` (samples of D firing f) plus closed forms. The null baseline is the
same functions on the null encoder's X; ``overlap_excess`` (and ``summarize``) compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from qscope_eval.errors import QScopeError

__all__ = ["MetricsError", "membership", "membership_from_pairs", "fired", "feature_frequency",
           "benchmark_features", "Coverage", "coverage", "Overlap", "overlap_matrices", "overlap_excess",
           "expected_coverage_curve", "curve_points", "Redundancy", "redundancy",
           "rarefied_coverage", "chao1", "BootstrapIntervals", "bootstrap",
           "SuiteMetrics", "summarize"]

# r_k(n) = C(N-k, n)/C(N, n) <= exp(-k n / N); below exp(-42) ~ 6e-19 a term cannot
# change 1 - r in float64, so the curve skips those (k, n): near-linear in N, not (#k) × N.
_NEGLIGIBLE_EXPONENT = 42.0
CURVE_POINTS = 200
SATURATION_SHARE = 0.9  # a footprint of at least this share of d_sae means "saturated" (DESIGN §3)


def is_saturated(n_features: Any, d_sae: int, share: float = SATURATION_SHARE) -> Any:
    """The one saturation rule: a footprint of at least `share` x d_sae (coverage stops discriminating).

    Works on a count or an array of counts; the encode job's warning and the report's badge both use it.
    """
    return np.asarray(n_features) >= share * d_sae


def saturation_warning(name: str, n_features: int, d_sae: int, where: str = "") -> str:
    """The one message for a saturated benchmark (see is_saturated)."""
    return (f"benchmark {name} fires {n_features}/{d_sae} features ({n_features / d_sae:.0%}){where}: coverage is "
            f"saturated and stops discriminating; use `pooling: top` or `last`, or a wider SAE")


class MetricsError(QScopeError):
    """Inputs to a metric have the wrong shape, type or range."""


# ----------------------------------------------------------------------------- inputs
def _as_csr(A: Any, name: str) -> sp.csr_matrix:
    if not sp.issparse(A) and np.ndim(A) != 2:
        raise MetricsError(f"{name} must be a 2-D scipy.sparse matrix or array, got shape {np.shape(A)}")
    A = sp.csr_matrix(A)
    if not A.has_canonical_format:  # duplicates/unsorted: fix on a copy, never the caller's arrays
        A = A.copy()
        A.sum_duplicates()
    return A


def _keep(A: sp.csr_matrix, mask: np.ndarray) -> sp.csr_matrix:
    """Boolean CSR of A's stored entries where mask holds (on copies: A is the caller's)."""
    B = sp.csr_matrix((mask, A.indices.copy(), A.indptr.copy()), shape=A.shape)
    B.eliminate_zeros()
    return B


def _as_bool(A: Any, name: str) -> sp.csr_matrix:
    A = _as_csr(A, name)
    return _keep(A, A.data != 0)


def _check_mf(M: Any, F: Any) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    M, F = _as_bool(M, "M"), _as_bool(F, "F")
    if M.shape[1] != F.shape[0]:
        raise MetricsError(f"M has {M.shape[1]} sample columns but F has {F.shape[0]} rows; M must be "
                           "(n_benchmarks × n_samples) and F (n_samples × d_sae) over the same samples")
    return M, F


def membership(labels: Sequence[int], n_benchmarks: int | None = None) -> sp.csr_matrix:
    """Boolean (n_benchmarks × n_samples) membership from one benchmark index per sample."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
        raise MetricsError("labels must be a 1-D integer array: the benchmark index of each sample")
    return membership_from_pairs(lab, np.arange(lab.size), n_benchmarks, lab.size)


def membership_from_pairs(bench_idx: Sequence[int], sample_idx: Sequence[int],
                          n_benchmarks: int | None, n_samples: int) -> sp.csr_matrix:
    """Boolean membership from (benchmark, sample) pairs, e.g. the store's membership table."""
    b, s = np.asarray(bench_idx, dtype=np.int64), np.asarray(sample_idx, dtype=np.int64)
    if b.shape != s.shape or b.ndim != 1:
        raise MetricsError("bench_idx and sample_idx must be 1-D arrays of equal length")
    nb = (int(b.max()) + 1 if b.size else 0) if n_benchmarks is None else int(n_benchmarks)
    if b.size and (b.min() < 0 or b.max() >= nb or s.min() < 0 or s.max() >= n_samples):
        raise MetricsError(f"benchmark indices must lie in [0, {nb}) and sample indices in [0, {n_samples}); "
                           "pass n_benchmarks / n_samples that match the labels")
    M = sp.csr_matrix((np.ones(b.size, np.int32), (b, s)), shape=(nb, n_samples))
    return sp.csr_matrix((np.ones(M.nnz, bool), M.indices, M.indptr), shape=M.shape)  # repeats -> True


def fired(X: Any, threshold: float = 0.0) -> sp.csr_matrix:
    """Boolean incidence: feature f fires on sample x iff X[x, f] > threshold."""
    X = _as_csr(X, "X")
    if not 0 <= threshold < math.inf:  # < 0 would make every implicit zero fire: a dense result
        raise MetricsError(f"threshold must be a finite number >= 0 (values <= it do not fire), got {threshold}")
    return _keep(X, X.data > threshold)


def feature_frequency(F: Any) -> np.ndarray:
    """Per feature, the number of samples on which it fires."""
    F = _as_bool(F, "F")
    return np.bincount(F.indices, minlength=F.shape[1]).astype(np.int64)


def benchmark_features(M: Any, F: Any, min_support: int = 1) -> sp.csr_matrix:
    """(n_benchmarks × d_sae) counts n_f (samples of D firing f) where n_f >= min_support: row nonzeros = F(D)."""
    if int(min_support) < 1:
        raise MetricsError("min_support must be >= 1 (1 = the report's definition)")
    M, F = _check_mf(M, F)
    return _supported((M.astype(np.int32) @ F.astype(np.int32)).tocsr(), min_support)


def _supported(C: sp.csr_matrix, min_support: int) -> sp.csr_matrix:
    if min_support > 1:
        C = C.copy()
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
    saturated: np.ndarray  # is_saturated(footprint, d_sae): coverage stops meaning much


def coverage(M: Any, F: Any, d_sae: int | None = None, min_support: int = 1) -> Coverage:
    """|F(D)| per benchmark, as a share of d_sae and of the suite's union."""
    return _coverage(benchmark_features(M, F, min_support), _as_bool(M, "M"), d_sae)


def _coverage(C: sp.csr_matrix, M: sp.csr_matrix, d_sae: int | None) -> Coverage:
    d = int(d_sae if d_sae is not None else C.shape[1])
    if d < C.shape[1]:
        raise MetricsError(f"d_sae={d} is smaller than F's {C.shape[1]} columns; pass the SAE width")
    nf = np.diff(C.indptr).astype(np.int64)
    union = int(np.unique(C.indices).size)
    sou = nf / union if union else np.full(nf.shape, np.nan)
    return Coverage(np.diff(M.indptr).astype(np.int64), nf, nf / d, sou, union, d, is_saturated(nf, d))


@dataclass(frozen=True)
class Overlap:
    """Pairwise overlaps of benchmark footprints (n_bench × n_bench; NaN where a footprint is empty)."""
    intersection: np.ndarray  # |F(Di) ∩ F(Dj)|
    asym: np.ndarray          # |F(Di) ∩ F(Dj)| / |F(Di)|: how much of Di Dj already covers (Eq. 10)
    sym: np.ndarray           # ... / min(|F(Di)|, |F(Dj)|) (Eq. 11)
    jaccard: np.ndarray


def overlap_matrices(M: Any, F: Any, min_support: int = 1) -> Overlap:
    """All pairwise overlaps from one product B @ B.T of the binary benchmark × feature matrix."""
    return _overlap(benchmark_features(M, F, min_support))


def _overlap(C: sp.csr_matrix) -> Overlap:
    B = sp.csr_matrix((np.ones(C.nnz, np.int64), C.indices, C.indptr), shape=C.shape)
    inter = np.asarray((B @ B.T).todense(), dtype=np.int64)
    size = np.diag(inter).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return Overlap(inter, inter / size[:, None], inter / np.minimum(size[:, None], size[None, :]),
                       inter / (size[:, None] + size[None, :] - inter))


def overlap_excess(real: Overlap, null: Overlap) -> Overlap:
    """Real-SAE minus null-encoder overlaps, elementwise: what the SAE adds over residual geometry."""
    if real.asym.shape != null.asym.shape:
        raise MetricsError("real and null overlaps cover different benchmark sets; compute both on the same M")
    return Overlap(real.intersection - null.intersection, real.asym - null.asym, real.sym - null.sym,
                   real.jaccard - null.jaccard)


# ----------------------------------------------------------------------------- rarefaction
def _counts(n_f: Any, N: int, min_support: int = 1) -> np.ndarray:
    k = np.asarray(n_f)
    if int(N) != N or N < 0 or k.ndim != 1 or (k.size and not np.issubdtype(k.dtype, np.integer)):
        raise MetricsError(f"need n_f a 1-D integer array of per-feature sample counts and N >= 0 an integer "
                           f"(got n_f of shape {k.shape}, dtype {k.dtype}; N = {N})")
    if k.size and (k.min() < 0 or k.max() > N):
        raise MetricsError(f"every n_f must lie in [0, N={N}]: a feature cannot fire on more samples than exist")
    return k[k >= max(1, int(min_support))].astype(np.int64)


def _sum_ratios(k: np.ndarray, N: int, ns: np.ndarray) -> np.ndarray:
    """S(n) = Σ_f r(n_f, n), r(k, n) = C(N−k, n)/C(N, n), for each n in sorted ``ns``.

    Grouped by distinct k, each k only over n <= min(N−k, 42N/k) (beyond, r is 0
    or < 6e-19). Two exact routes, whichever is cheaper (~8 vs ~40 ns per (k, n)):
    dense ns: r(k, n) = Π_{m<n} (N−m−k)/(N−m) as a cumprod along n (relative error
    ~1e-11 at N = 10^6); sparse ns (plot points at large N): log r = G[N−k] −
    G[N−k−n] − G[N] + G[N−n] with G = gammaln (~1e-9 at N = 10^6, ~1e-11 at 10^4).
    """
    kv, kc = np.unique(k, return_counts=True)
    if not kv.size or not ns.size:
        return np.zeros(ns.size)
    lim = np.minimum(N - kv, np.floor(_NEGLIGIBLE_EXPONENT * N / kv)).astype(np.int64)
    m = np.searchsorted(ns, lim, side="right")  # ns sorted: the valid n of each k form a prefix
    L = np.minimum(lim, ns[-1])
    if 8 * L.sum() < 40 * m.sum():
        base = N - np.arange(max(int(ns[-1]), 1), dtype=np.float64)
        inv, tmp, S = 1.0 / base, np.empty(base.size), np.zeros(base.size + 1)
        S[0] = kc.sum()  # n = 0: r = 1
        for kk, cc, ll in zip(kv.tolist(), kc.tolist(), L.tolist()):
            v = tmp[:ll]  # in place: this loop is the whole cost of a dense curve
            np.cumprod(np.multiply(np.subtract(base[:ll], kk, out=v), inv[:ll], out=v), out=v)
            S[1:ll + 1] += v if cc == 1 else cc * v
        return S[ns]
    G = gammaln(np.arange(N + 1, dtype=np.float64) + 1.0)
    out = np.zeros(ns.size)
    for kk, cc, mm in zip(kv.tolist(), kc.tolist(), m.tolist()):
        n = ns[:mm]
        out[:mm] += cc * np.exp(G[N - kk] - G[N - kk - n] - G[N] + G[N - n])
    return out


def expected_coverage_curve(n_f: Any, N: int, ns: Any = None, min_support: int = 1) -> np.ndarray:
    """c_n = E|F(S)|/|F(D)| over random S ⊂ D, |S| = n (Eq. 7, exact closed form).

    ``n_f``: per-feature sample counts in D (zeros and counts < min_support are
    not in F(D)); ``ns``: subset sizes (default all of 1..N). NaN if F(D) is empty.
    """
    k = _counts(n_f, N, min_support)
    n = np.arange(1, N + 1, dtype=np.int64) if ns is None else np.asarray(ns)
    if n.ndim != 1 or (n.size and (not np.issubdtype(n.dtype, np.integer) or n.min() < 0 or n.max() > N)):
        raise MetricsError(f"ns must be a 1-D array of integer subset sizes in [0, N={N}]")
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
    """Log-spaced integer subset sizes in [1, N], always including 1 and N (empty if N < 1)."""
    return np.unique(np.geomspace(1, N, points).round().astype(np.int64)) if N >= 1 else np.zeros(0, np.int64)


def redundancy(n_f: Any, N: int, min_support: int = 1, points: int = CURVE_POINTS) -> Redundancy:
    """R̂ and AUC exactly, without evaluating all N points of the curve.

    Hockey-stick identity: Σ_{n=1..N} C(N−k, n)/C(N, n) = (N−k)/(k+1), so
    Σ_n c_n = (1/|F|) Σ_f [N − (N−n_f)/(n_f+1)] in O(|F|). NaN fields if F(D) or D is empty.
    """
    k, N = _counts(n_f, N, min_support), int(N)
    if not k.size or N == 0:
        return Redundancy(math.nan, math.nan, N, int(k.size), np.zeros(0, np.int64), np.zeros(0))
    total = float(np.sum(N - (N - k) / (k + 1.0))) / k.size  # Σ_n c_n
    ns = curve_points(N, points)
    return Redundancy(total / k.size, total / N, N, int(k.size), ns, expected_coverage_curve(k, N, ns))


def chao1(n_f: Any) -> float:
    """Richness estimate F_obs + f1²/(2·f2) (f1(f1−1)/2 when f2 = 0); f1, f2 = features in exactly 1, 2 samples."""
    k = np.asarray(n_f)
    if k.ndim != 1 or (k.size and (not np.issubdtype(k.dtype, np.integer) or k.min() < 0)):
        raise MetricsError("n_f must be a 1-D array of non-negative integer counts")
    obs, f1, f2 = int((k > 0).sum()), int((k == 1).sum()), int((k == 2).sum())
    return obs + (f1 * f1 / (2.0 * f2) if f2 else f1 * (f1 - 1) / 2.0)


# ----------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class BootstrapIntervals:
    """Percentile intervals from resampling samples within each benchmark. Resamples only repeat
    prompts, so |F(D)| intervals sit at or below the observed value: read them as "how much the
    footprint depends on which prompts were drawn"."""
    n_features_lo: np.ndarray
    n_features_hi: np.ndarray
    asym_lo: np.ndarray
    asym_hi: np.ndarray
    level: float
    replicates: int


def bootstrap(M: Any, F: Any, replicates: int = 200, level: float = 0.95, seed: int = 0,
              min_support: int = 1) -> BootstrapIntervals:
    """Bootstrap intervals for per-benchmark |F(D)| and the asymmetric overlap matrix
    (one M @ F per replicate: ~40 ms each at 10^5 samples × 45 features)."""
    if int(replicates) < 2 or not 0 < level < 1:
        raise MetricsError("need replicates >= 2 and 0 < level < 1 (e.g. replicates=200, level=0.95)")
    M, F = _check_mf(M, F)
    Fi, rng = F.astype(np.int32), np.random.default_rng(seed)
    row = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))  # benchmark of each membership entry
    lens = np.diff(M.indptr)[row]
    sizes = np.zeros((replicates, M.shape[0]))
    asym = np.zeros((replicates, M.shape[0], M.shape[0]))
    for b in range(replicates):
        # each benchmark draws |D| of its own members with replacement; repeats count as extra samples
        pick = M.indices[M.indptr[row] + (rng.random(row.size) * lens).astype(np.int64)]
        Mb = sp.csr_matrix((np.ones(row.size, np.int32), (row, pick)), shape=M.shape)
        o = _overlap(_supported((Mb @ Fi).tocsr(), min_support))
        sizes[b], asym[b] = np.diag(o.intersection), o.asym
    q = [50 * (1 - level), 50 * (1 + level)]
    (lo, hi), (alo, ahi) = np.percentile(sizes, q, axis=0), np.percentile(asym, q, axis=0)
    return BootstrapIntervals(lo, hi, alo, ahi, float(level), int(replicates))


# ----------------------------------------------------------------------------- summary
def finite(x: Any, digits: int | None = None) -> float | None:
    """A number as a plain float for JSON (rounded to `digits` if given), or None when missing or not finite."""
    if x is None or not math.isfinite(float(x)):
        return None
    return float(x) if digits is None else round(float(x), digits)


def _plain(x: Any) -> Any:
    """numpy -> JSON-safe plain Python (NaN/inf -> None)."""
    if isinstance(x, (np.ndarray, np.generic)):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _overlap_dict(o: Overlap | None) -> dict | None:
    return None if o is None else {k: _plain(getattr(o, k)) for k in ("asym", "sym", "jaccard", "intersection")}


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
    excess: Overlap | None = None  # real − null
    lexical_coverage: Coverage | None = None  # the same on the lexical baseline (the prompts' words)
    lexical_overlap: Overlap | None = None

    def to_dict(self) -> dict:
        """Plain lists / floats / None, stable snake_case keys (summary.json, --json)."""
        cov, nul, lex = self.coverage, self.null_coverage, self.lexical_coverage
        benches = [{
            "name": name, "n_samples": int(cov.n_samples[b]), "n_features": int(cov.n_features[b]),
            "share_of_dsae": _plain(cov.share_of_dsae[b]), "share_of_union": _plain(cov.share_of_union[b]),
            "saturated": bool(cov.saturated[b]), "r_hat": _plain(r.r_hat), "auc": _plain(r.auc),
            "rarefied_coverage": _plain(self.rarefied[b]), "chao1": _plain(self.chao1[b]),
            "curve": {"n": _plain(r.ns), "c": _plain(r.c)},
            "null_n_features": None if nul is None else int(nul.n_features[b]),
            "lexical_n_features": None if lex is None else int(lex.n_features[b]),
        } for b, (name, r) in enumerate(zip(self.names, self.redundancy))]
        return {
            "names": list(self.names), "d_sae": self.d_sae, "threshold": float(self.threshold),
            "min_support": self.min_support, "suite_union": cov.union, "rarefied_n": self.rarefied_n,
            "benchmarks": benches, "overlap": _overlap_dict(self.overlap),
            "null_overlap": _overlap_dict(self.null_overlap), "overlap_excess": _overlap_dict(self.excess),
            "lexical_overlap": _overlap_dict(self.lexical_overlap),
        }


def summarize(X: Any, M: Any, names: Sequence[str], d_sae: int | None = None, threshold: float = 0.0,
              min_support: int = 1, null: Any = None, lexical: Any = None) -> SuiteMetrics:
    """Coverage, overlaps, R̂/curves, rarefied coverage and Chao1 for every benchmark.

    ``null``: the null encoder's X over the same samples (optional); its coverage
    and overlaps ride along, with real − null as ``excess``; ``lexical``: the lexical
    baseline's X over the same samples (analysis/lexical.py), likewise.
    """
    M, F = _check_mf(M, fired(X, threshold))
    names = tuple(str(n) for n in names)
    if len(names) != M.shape[0]:
        raise MetricsError(f"{len(names)} names for {M.shape[0]} benchmark rows of M; pass one name per row")
    raw = benchmark_features(M, F, 1)  # one M @ F for everything; support applied per metric
    cov = _coverage(_supported(raw, min_support), M, d_sae)
    ov = _overlap(_supported(raw, min_support))
    per = [raw.data[raw.indptr[b]:raw.indptr[b + 1]].astype(np.int64) for b in range(M.shape[0])]
    Ns = cov.n_samples
    red = tuple(redundancy(k, int(N), min_support) for k, N in zip(per, Ns))
    rn = int(Ns[Ns > 0].min()) if (Ns > 0).any() else 0
    rare = np.array([rarefied_coverage(k, int(N), min(rn, int(N)), min_support) for k, N in zip(per, Ns)])
    ch = np.array([chao1(k) for k in per], dtype=float)
    ncov = nov = exc = None
    if null is not None:
        Fn = fired(null, threshold)
        if Fn.shape[0] != F.shape[0]:
            raise MetricsError("the null encoder's X must have one row per sample, like X")
        ncov, nov = coverage(M, Fn, Fn.shape[1], min_support), overlap_matrices(M, Fn, min_support)
        exc = overlap_excess(ov, nov)
    lcov = lov = None
    if lexical is not None:
        Fl = fired(lexical, threshold)
        if Fl.shape[0] != F.shape[0]:
            raise MetricsError("the lexical baseline's X must have one row per sample, like X")
        lcov, lov = coverage(M, Fl, Fl.shape[1], min_support), overlap_matrices(M, Fl, min_support)
    return SuiteMetrics(names, cov.d_sae, float(threshold), int(min_support), cov, ov, red, rn, rare, ch,
                        ncov, nov, exc, lcov, lov)
