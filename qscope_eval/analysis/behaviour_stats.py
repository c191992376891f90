"""Vectorised statistics behind `analysis.behaviour` (the Table-2 analysis): masked pairwise
correlations under bootstrap weights, the general factor, residualisation, fast ranks, Mantel batches.

Everything here is pure numpy/scipy and works on plain arrays; the user-facing checks, the
result objects and the verdicts live in `behaviour.py`.

Shapes: n models, K benchmarks, P = K(K-1)/2 benchmark pairs (upper triangle, row-major),
Z (n, K) standardised scores with 0.0 in missing cells, M (n, K) bool "scored".

Why it is fast. A pairwise-complete correlation needs, for every pair (a, b), the sums over the
models scored on both: N_ab = Σ w m_a m_b, Sx_ab = Σ w x_a m_b, Sxx_ab = Σ w x_a² m_b and
Sxy_ab = Σ w x_a x_b (x is 0 where missing). Each is a matrix product; the bootstrap weight w
(resample counts) enters as sqrt(w) on both factors, and models drawn zero times are dropped
(about 37 % of them). Only Sxy needs a dense product: with few missing cells the others are
"column total minus the missing cells' share", a product with the sparse missing-cell matrix U.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse as sp
from scipy import stats

DENSE_MISSING = 0.3
"""Above this share of missing cells the corrections are done as dense products (sparse no longer pays)."""
MIN_MODELS = 3
"""A correlation across fewer models is meaningless."""
RANK_STEPS = 32768
"""Bootstrap ranks are taken on correlations rounded to 1/RANK_STEPS of their range [-1, 1]."""


def standardise(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Column-standardise S (n, K; NaN = missing) over its observed cells -> (Z, M, mean, sd).

    Correlations do not change under a per-benchmark shift and scale; standardising first keeps the
    sums of squares small (float32 products stay exact enough) and puts 0-1 and 0-100 columns alike.
    Columns with fewer than 2 cells or no spread get sd = NaN (the caller refuses them).
    """
    M = np.isfinite(S)
    cnt = M.sum(axis=0)
    X = np.where(M, S, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = X.sum(axis=0) / cnt
        dev = np.where(M, S - mean, 0.0)
        sd = np.sqrt((dev * dev).sum(axis=0) / np.maximum(cnt - 1, 1))
    scale = np.maximum(np.abs(mean), 1.0)
    sd = np.where((cnt >= 2) & (sd > 1e-12 * scale), sd, np.nan)
    Z = np.where(M, dev / np.where(np.isfinite(sd), sd, 1.0), 0.0)
    return Z, M, mean, sd


def general_factor(Z: np.ndarray, M: np.ndarray, control: str, reference: int | None) -> np.ndarray | None:
    """Each model's general-ability score g (n,), NaN where undefined; None for control 'none'.

    'mean': the mean of the model's standardised scores over the benchmarks it has (the
    least-squares fit of z_ik = g_i over its observed cells), so a model lacking a hard benchmark
    is not favoured and a 0-100 column does not outweigh a 0-1 one.
    'pc1': the first principal component of the pairwise-complete correlation matrix (undefined
    entries as 0), loadings v signed to sum > 0; a model's score is the least-squares fit of
    z_ik = g_i v_k over its observed cells, Σ_obs v z / Σ_obs v², so missing cells are skipped,
    not imputed.
    'reference': the model's standardised score on the reference benchmark (NaN if it lacks it).
    """
    if control == "none":
        return None
    if control == "reference":
        return np.where(M[:, reference], Z[:, reference], np.nan)
    if control == "mean":
        v = np.ones(Z.shape[1])
    else:
        r, _ = masked_corr(Z, M)
        r = np.where(np.isfinite(r), r, 0.0)
        np.fill_diagonal(r, 1.0)
        _, vecs = np.linalg.eigh(r)
        v = vecs[:, -1]
        v = v if v.sum() >= 0 else -v
    Mf = M.astype(np.float64)
    den = Mf @ (v * v)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = (Z @ v) / den
    return np.where(den > 1e-12, g, np.nan)


def residualise(Z: np.ndarray, M: np.ndarray, g: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of each benchmark's scores on g by (weighted) least squares over the models it has.

    Returns (E, Mg): E (n, K) residuals, 0 outside Mg = M & g finite; a column whose residuals
    are (numerically) all zero, i.e. g explains it exactly (the reference benchmark itself), is
    removed from Mg so its correlations come out undefined instead of as float noise.
    """
    Mg = M & np.isfinite(g)[:, None]
    W = Mg * (np.ones(len(g)) if w is None else w)[:, None]
    g0 = np.where(np.isfinite(g), g, 0.0)
    sw = W.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        gbar = (g0 @ W) / sw
        zbar = (W * Z).sum(axis=0) / sw
        gc = g0[:, None] - gbar
        zc = Z - zbar
        sgg = (W * gc * gc).sum(axis=0)
        beta = (W * gc * zc).sum(axis=0) / sgg
    beta = np.where(sgg > 1e-12 * np.maximum(sw, 1.0), beta, 0.0)
    E = np.where(Mg, zc - gc * beta, 0.0)
    szz = (W * zc * zc).sum(axis=0)
    see = (W * E * E).sum(axis=0)
    exact = see <= 1e-9 * np.maximum(szz, 1e-300)
    Mg = Mg & ~exact
    return np.where(Mg, E, 0.0), Mg


def masked_corr(X: np.ndarray, M: np.ndarray, w: np.ndarray | None = None,
                dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise-complete (weighted) Pearson correlation of the columns of X -> (r (K, K), N (K, K)).

    X (n, K) with 0.0 in missing cells, M (n, K) bool, w (n,) bootstrap counts or None for all 1.
    N is the weight of the models scored on both (their count when w is None). r is NaN where a
    column has no spread over the common models; the diagonal is 1 where defined.
    """
    if w is not None:
        keep = w > 0
        X, M, w = X[keep], M[keep], w[keep].astype(dtype)
    Xd = X.astype(dtype)
    if w is not None:
        s = np.sqrt(w)[:, None]
        Xw = Xd * s
    else:
        s, Xw = None, Xd
    Sxy = Xw.T @ Xw
    missing = ~M
    share = missing.mean() if missing.size else 0.0
    wt = np.ones(len(X), dtype) if w is None else w
    if share == 0:
        tot = wt.sum()
        sx = wt @ Xd
        sxx = wt @ (Xd * Xd)
        N = np.full(Sxy.shape, tot, dtype)
        Sx = np.broadcast_to(sx[:, None], Sxy.shape)
        Sxx = np.broadcast_to(sxx[:, None], Sxy.shape)
    elif share > DENSE_MISSING or dtype == np.float64:
        Mw = M.astype(dtype) if s is None else M.astype(dtype) * s
        N = Mw.T @ Mw
        Sx = Xw.T @ Mw
        Sxx = (Xw * Xd).T @ Mw
    else:
        # totals over each column's own models minus the part that falls on b's missing cells
        U = sp.csr_matrix(missing.astype(dtype))
        UtW = (U.T.multiply(wt[None, :])).tocsr()                      # (K, n)
        tot, sx, sxx = wt @ M.astype(dtype), wt @ Xd, wt @ (Xd * Xd)
        C = UtW @ np.hstack([Xd, Xd * Xd])                              # (K, 2K): row b = Σ over b's missing
        N = tot[:, None] + tot[None, :] - wt.sum() + (UtW @ U).toarray()   # inclusion-exclusion
        K = X.shape[1]
        Sx = sx[:, None] - C[:, :K].T
        Sxx = sxx[:, None] - C[:, K:].T
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = Sxy - Sx * Sx.T / N
        va = Sxx - Sx * Sx / N
        vb = va.T
        tol = (1e-9 if dtype == np.float64 else 1e-4) * np.maximum(Sxx, 1e-30)
        bad = (va <= tol) | (vb <= tol.T) | (N <= 0)
        r = cov / np.sqrt(np.where(bad, 1.0, va * vb))
    r = np.where(bad, np.nan, np.clip(r, -1.0, 1.0))
    d = np.diag(r).copy()
    np.fill_diagonal(r, np.where(np.isfinite(d), 1.0, np.nan))
    return r, N


def quick_ranks(x: np.ndarray) -> np.ndarray:
    """Mid-ranks of x (values in [-1, 1], no NaN) after rounding to 1/RANK_STEPS: a counting sort, O(n).

    Rounding moves a correlation by at most 3e-5 and only merges values closer than that into a
    tie; Spearman's ρ changes by far less than its bootstrap spread (the tests check it).
    """
    half = RANK_STEPS // 2
    q = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * half).astype(np.intp)
    c = np.bincount(q, minlength=RANK_STEPS + 1)
    cum = np.cumsum(c)
    mid = (cum - c) + (c + 1) / 2.0
    return mid[q]


def exact_ranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the entries finite in both; NaN with fewer than 3 or no spread (no warning)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.pearsonr(x[ok], y[ok]).statistic)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x[ok], y[ok]).statistic)


def _unit(v: np.ndarray) -> np.ndarray:
    """Centre and scale to unit length (columns of a 2-D array); zero-spread columns become NaN."""
    c = v - v.mean(axis=0)
    nrm = np.sqrt((c * c).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / np.where(nrm > 0, nrm, np.nan)


class PairGroup:
    """Proxies evaluated on one fixed set of pairs: the point of reuse for every bootstrap replicate.

    idx (m,) positions in the pair vector; P (m, U) proxy values there. Pearson and Spearman of
    each column with a behaviour vector r come out as dot products of unit vectors.
    """

    def __init__(self, idx: np.ndarray, P: np.ndarray):
        self.idx = idx
        self.P = P
        self.Pu = _unit(P)
        self.Ru = _unit(np.column_stack([exact_ranks(P[:, u]) for u in range(P.shape[1])]))

    def agree(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pearson (U,), spearman (U,)) of each proxy column with r (full pair vector, NaN allowed)."""
        x = r[self.idx]
        ok = np.isfinite(x)
        if ok.all():
            xu, ru = _unit(x), _unit(quick_ranks(x))
            return self.Pu.T @ xu, self.Ru.T @ ru
        # rare (a resample leaves a pair undefined): the slow exact way on what is left
        pe = np.array([pearson(self.P[ok, u], x[ok]) for u in range(self.P.shape[1])])
        rs = np.array([spearman(self.P[ok, u], x[ok]) for u in range(self.P.shape[1])])
        return pe, rs


def mantel_null(Pmats: np.ndarray, rvecs: np.ndarray, permutations: int, rng: np.random.Generator,
                batch: int = 64) -> np.ndarray:
    """Pearson r of permuted proxies with behaviour vectors -> (permutations, J, V).

    Pmats (J, K, K) proxy matrices (NaN allowed), rvecs (P, V) behaviour pair vectors (NaN
    allowed). A permutation relabels the benchmarks of every proxy at once (rows and columns
    together): its pair values are an index gather on the upper triangle. The sums behind r over
    the pairs finite on both sides are one product of [I; p; p²] with [m, r, r²] per batch.
    """
    J, K, _ = Pmats.shape
    iu, ju = np.triu_indices(K, 1)
    flat = Pmats.reshape(J, K * K)
    shift = np.nanmean(flat[:, iu * K + ju], axis=1)[:, None] if iu.size else np.zeros((J, 1))
    flat = flat - shift                              # centring first keeps the sums well conditioned
    m = np.isfinite(rvecs)
    r0 = np.where(m, rvecs, 0.0)
    r0 = r0 - np.where(m, r0, 0.0).sum(axis=0) / np.maximum(m.sum(axis=0), 1)
    r0 = np.where(m, r0, 0.0)
    R = np.hstack([m.astype(np.float64), r0, r0 * r0])  # (P, 3V)
    V = rvecs.shape[1]
    out = np.empty((permutations, J, V))
    for start in range(0, permutations, batch):
        b = min(batch, permutations - start)
        pi = np.argsort(rng.random((b, K)), axis=1).astype(np.int32)
        idx = (pi * K)[:, iu] + pi[:, ju]            # (b, P) flat index of each permuted pair
        for j in range(J):
            pv = flat[j][idx]
            fin = np.isfinite(pv)
            p0 = np.where(fin, pv, 0.0)
            A = np.vstack([fin.astype(np.float64), p0, p0 * p0])    # (3b, P)
            T = (A @ R).reshape(3, b, 3, V)           # T[x, perm, y, v] = Σ x·y over pairs
            n, sr, srr = T[0, :, 0], T[0, :, 1], T[0, :, 2]
            sp_, spr, spp = T[1, :, 0], T[1, :, 1], T[2, :, 0]
            with np.errstate(invalid="ignore", divide="ignore"):
                cov = spr - sp_ * sr / n
                vp = spp - sp_ * sp_ / n
                vr = srr - sr * sr / n
                out[start:start + b, j] = cov / np.sqrt(vp * vr)
    return out


# ----------------------------------------------------------------------------- replicates and reliability
def replicate(Z, M, g, w, iu, ju) -> tuple[np.ndarray, np.ndarray]:
    """Raw and partial pair vectors (P,) for one weighting of the models (float32 products)."""
    raw = masked_corr(Z, M, w, np.float32)[0][iu, ju].astype(np.float64)
    if g is None:
        return raw, raw
    E, Mg = residualise(Z, M, g, w)
    return raw, masked_corr(E, Mg, w, np.float32)[0][iu, ju].astype(np.float64)


def _fast_corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    a, b = _unit(x[ok]), _unit(y[ok])
    return float(a @ b)


def reliability(Z, M, g, cfg, enough, iu, ju, headline: str) -> dict:
    """Split-half reliability of the pair vector of score correlations (raw and partial)."""
    n = Z.shape[0]
    out = {"statistic": headline, "splits": cfg.splits}
    if cfg.splits == 0 or n < 2 * MIN_MODELS:
        return {**out, "split_half": None, "spearman_brown": None, "lo": None, "hi": None,
                "replicates": 0, "ceiling": None, "raw_split_half": None, "raw_spearman_brown": None}
    rng = np.random.default_rng([cfg.seed, 2])
    vals = np.full((cfg.splits, 2), np.nan)
    for s in range(cfg.splits):
        perm = rng.permutation(n)
        halves = []
        for part in (perm[: n // 2], perm[n // 2: 2 * (n // 2)]):
            w = np.zeros(n)
            w[part] = 1.0
            raw, par = replicate(Z, M, g, w, iu, ju)
            halves.append((np.where(enough, raw, np.nan), np.where(enough, par, np.nan)))
        vals[s, 0] = _fast_corr(halves[0][0], halves[1][0])
        vals[s, 1] = _fast_corr(halves[0][1], halves[1][1])
    ok = np.isfinite(vals)
    sh = np.array([vals[ok[:, c], c].mean() if ok[:, c].any() else np.nan for c in range(2)])
    sb = 2 * sh / (1 + sh)
    col = 1 if headline == "partial" else 0
    per = vals[ok[:, col], col]
    per_sb = 2 * per / (1 + per)
    q = (1 - cfg.level) / 2
    lo, hi = (np.quantile(per_sb, [q, 1 - q]) if per_sb.size >= 20 else (np.nan, np.nan))
    return {**out, "split_half": sh[col], "spearman_brown": sb[col], "lo": lo, "hi": hi,
            "replicates": int(per.size), "ceiling": math.sqrt(sb[col]) if sb[col] > 0 else np.nan,
            "raw_split_half": sh[0], "raw_spearman_brown": sb[0]}
