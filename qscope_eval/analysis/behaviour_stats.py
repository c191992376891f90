"""Vectorised statistics behind `analysis.behaviour` (the Table-2 analysis): masked pairwise
correlations under bootstrap weights, the general factor, residualisation, fast ranks, Mantel batches.

Everything here is pure numpy/scipy and works on plain arrays; the user-facing checks, the
result objects and the verdicts live in `behaviour.py`.

Shapes: n models, K benchmarks, P = K(K-1)/2 benchmark pairs (upper triangle, row-major),
Z (n, K) standardised scores with 0.0 in missing cells, M (n, K) bool "scored".

Why it is fast. A pairwise-complete correlation needs, for every pair (a, b), sums over the
models scored on both, and each such sum is a matrix product over the models. A bootstrap
replicate enters as weights (resample counts, sqrt(w) on both factors; models drawn zero times
are dropped, about 37 % of them), so a replicate's whole K × K correlation matrix is one product
AᵀA (plus one for the common-model counts when cells are missing; see Replicator for the one
approximation this takes then), the residualisation on the general factor one (3K × n) @ (n × 3)
product, and a Mantel permutation an index gather.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

MIN_MODELS = 3
"""A correlation across fewer models is meaningless."""
RANK_STEPS = 32768
"""Bootstrap ranks are taken on correlations rounded to 1/RANK_STEPS of their range [-1, 1]."""


def standardise(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Column-standardise S (n, K; NaN = missing) over its observed cells -> (Z, M, mean, sd).

    Correlations do not change under a per-benchmark shift and scale; standardising first keeps the
    sums of squares small (float32 products stay exact enough) and puts 0-1 and 0-100 columns alike.
    Columns with two or more cells but no spread get sd = NaN (the caller refuses them); a column
    with one cell gets z = 0 there (every pair with it has too few models anyway).
    """
    M = np.isfinite(S)
    cnt = M.sum(axis=0)
    X = np.where(M, S, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = X.sum(axis=0) / cnt
        dev = np.where(M, S - mean, 0.0)
        sd = np.sqrt((dev * dev).sum(axis=0) / np.maximum(cnt - 1, 1))
    scale = np.maximum(np.abs(mean), 1.0)
    sd = np.where(cnt < 2, 1.0, np.where(sd > 1e-12 * scale, sd, np.nan))   # one cell: z = 0, no pair uses it
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

    Returns (E, Mg): E (n, K) residuals, 0 outside Mg = M & g finite. A column that g explains
    exactly (the reference benchmark itself) gets NaN residuals, so its correlations come out
    undefined instead of as float noise. All sums are matrix-vector products over the models.
    """
    fin = np.isfinite(g)
    Mg = M & fin[:, None]
    g0 = np.where(fin, g, 0.0)
    w = np.ones(len(g)) if w is None else w
    Zg = Z if fin.all() else np.where(Mg, Z, 0.0)
    Mf = Mg.astype(np.float64)
    wg = w * g0
    sw, sg, sgg = w @ Mf, wg @ Mf, (wg * g0) @ Mf
    sz, sgz, szz = w @ Zg, wg @ Zg, w @ (Zg * Zg)
    with np.errstate(invalid="ignore", divide="ignore"):
        gbar, zbar = sg / sw, sz / sw
        vgg = sgg - sg * gbar                 # Σ w (g − ḡ)² over the column's models
        vzz = szz - sz * zbar
        beta = np.where(vgg > 1e-12 * np.maximum(sw, 1.0), (sgz - sg * zbar) / vgg, 0.0)
        see = vzz - beta * beta * vgg
    exact = ~(see > 1e-9 * np.maximum(vzz, 1e-300))
    E = np.where(Mg, Zg - zbar - (g0[:, None] - gbar) * beta, 0.0)
    E[:, exact] = np.nan
    return E, Mg


def masked_corr(X: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise-complete Pearson correlation of the columns of X -> (r (K, K), N (K, K)), float64.

    X (n, K) with 0.0 in missing cells (NaN in a column makes all its pairs undefined), M (n, K)
    bool. N counts the models scored on both. r is NaN where a column has no spread over the
    common models; the diagonal is 1 where defined. Exactly pandas' DataFrame.corr on the same cells.
    """
    Mf = M.astype(np.float64)
    N = Mf.T @ Mf
    Sx = X.T @ Mf                        # Sx[a, b] = Σ x_a over the models that have b
    Sxx = (X * X).T @ Mf
    Sxy = X.T @ X
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = Sxy - Sx * Sx.T / N
        va = Sxx - Sx * Sx / N           # var of a over the common models (times N)
        vb = va.T
        tol = 1e-9 * np.maximum(Sxx, 1e-30)
        bad = ~(va > tol) | ~(vb > tol.T) | (N <= 0)
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
    return _ranks_ss(x)[0]


def _unit(v: np.ndarray) -> np.ndarray:
    """Centre and scale to unit length (columns of a 2-D array); zero-spread columns become NaN."""
    c = v - v.mean(axis=0)
    nrm = np.sqrt((c * c).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / np.where(nrm > 0, nrm, np.nan)


class PairGroup:
    """Proxies evaluated on one fixed set of pairs: the point of reuse for every bootstrap replicate.

    idx (m,) positions in the pair vector; P (m, U) proxy values there. Pearson and Spearman of
    each column with a behaviour vector r come out as dot products of unit vectors. Per replicate
    (agree) the proxies' unit vectors are fixed, so only Σx, Σx² and one (U, m) @ (m,) product are
    needed for Pearson; Spearman's rank vector has a known mean ((m + 1) / 2) and its sum of squares
    follows from the counting sort's bin counts, so it too is one product.
    """

    def __init__(self, idx: np.ndarray, P: np.ndarray, n_pairs: int | None = None):
        self.idx = idx
        self.all = n_pairs is not None and idx.size == n_pairs     # idx = every pair, in order: no gather
        self.P = P
        self.Pu = _unit(P)
        self.Ru = _unit(np.column_stack([stats.rankdata(P[:, u]) for u in range(P.shape[1])]))
        self.PuT = np.ascontiguousarray(self.Pu.T)
        self.RuT = np.ascontiguousarray(self.Ru.T)

    def exact(self, r: np.ndarray) -> np.ndarray:
        """(2, U): Pearson and Spearman (exact ranks) of each proxy column with r on the group's pairs."""
        x = r[self.idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.stack([self.Pu.T @ _unit(x), self.Ru.T @ _unit(stats.rankdata(x))])

    def agree(self, r: np.ndarray) -> np.ndarray:
        """(2, U): Pearson and Spearman (counting-sort ranks) with a replicate's r (NaN allowed)."""
        xr = r if self.all else r[self.idx]
        x = xr.astype(np.float64)
        s1 = x.sum()
        if math.isfinite(s1):
            m = x.size
            with np.errstate(invalid="ignore", divide="ignore"):
                pe = (self.PuT @ x) / math.sqrt(max(x @ x - s1 * s1 / m, 0.0))
                rk, ss = _ranks_ss(xr)                                  # float32 in: half the memory traffic
                sr = (self.RuT @ rk) / math.sqrt(max(ss - m * ((m + 1) / 2.0) ** 2, 0.0))
            return np.stack([pe, sr])
        # a resample left some pairs undefined (a benchmark with few models lost its spread): drop them;
        # Pearson is exact on the rest, Spearman keeps the proxies' ranks over the group's pairs
        # (a monotone stand-in for re-ranking them on the subset; the dropped pairs are few)
        ok = np.isfinite(x)
        if ok.sum() < 3:
            return np.full((2, self.P.shape[1]), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            pe = _unit(self.P[ok]).T @ _unit(x[ok])
            sr = _unit(self.Ru[ok]).T @ _unit(quick_ranks(x[ok]))
        return np.stack([pe, sr])


def _ranks_ss(x: np.ndarray) -> tuple[np.ndarray, float]:
    """quick_ranks(x) and the sum of their squares (from the bin counts: O(RANK_STEPS), not O(m))."""
    half = RANK_STEPS // 2
    q = np.clip(x, -1.0, 1.0)
    q += 1
    q *= half                                  # exact in float32 too (bins 2^-14 wide, far above its precision)
    q = np.rint(q, out=q).astype(np.intp)
    c = np.bincount(q, minlength=RANK_STEPS + 1)
    cum = np.cumsum(c)
    mid = (cum - c) + (c + 1) / 2.0
    return mid.take(q), float(c @ (mid * mid))


def mantel_null(Pmats: np.ndarray, rvecs: np.ndarray, permutations: int, rng, batch: int = 32) -> np.ndarray:
    """Pearson r of permuted matrices with fixed pair vectors -> (permutations, J, V).

    Pmats (J, K, K) symmetric matrices to relabel (NaN allowed), rvecs (P, V) fixed pair vectors
    (NaN allowed). A permutation relabels the benchmarks of every matrix at once (rows and
    columns together): its pair values are one index gather on the upper triangle, and the sums
    behind r are products of the gathered (J·b, P) block with the fixed columns (float32).
    With every entry defined on both sides (the usual case) only Σp·r changes.
    """
    J, K, _ = Pmats.shape
    iu, ju = np.triu_indices(K, 1)
    V = rvecs.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shift = np.nanmean(Pmats[:, iu, ju], axis=1)
    flat = (Pmats - np.nan_to_num(shift)[:, None, None]).reshape(J, K * K).astype(np.float32)
    full = bool(np.isfinite(Pmats[:, iu, ju]).all())
    m = np.isfinite(rvecs)
    r0 = np.where(m, rvecs, 0.0)
    r0 = np.where(m, r0 - r0.sum(axis=0) / np.maximum(m.sum(axis=0), 1), 0.0)   # centred on its own pairs
    mf, r0f, r2f = m.astype(np.float32), r0.astype(np.float32), (r0 * r0).astype(np.float32)
    P = iu.size
    iu32, ju32 = iu.astype(np.int32), ju.astype(np.int32)
    allm = bool(m.all())
    if full and allm:                                      # Σp, Σp² do not change under relabelling
        base = flat[:, iu * K + ju]
        sp_c, spp_c = base.sum(axis=1, dtype=np.float64), (base.astype(np.float64) ** 2).sum(axis=1)
    out = np.empty((permutations, J, V))
    X = np.empty((J, batch, P), np.float32)
    for start in range(0, permutations, batch):
        b = min(batch, permutations - start)
        pi = np.argsort(rng.random((b, K)), axis=1).astype(np.int32)
        idx = np.take(pi * K, iu32, axis=1)                # (b, P) flat index of each permuted pair
        idx += np.take(pi, ju32, axis=1)
        for j in range(J):
            np.take(flat[j], idx, out=X[j, :b])
        Xb = X[:, :b].reshape(J * b, P)
        if full:
            n, sr, srr = mf.sum(axis=0), r0f.sum(axis=0), r2f.sum(axis=0)
            spr = (Xb @ r0f).astype(np.float64)
            if allm:
                sp_ = np.repeat(sp_c, b)[:, None]
                spp = np.repeat(spp_c, b)[:, None]
            else:
                sp_, spp = Xb @ mf, (Xb * Xb) @ mf
        else:
            fin = np.isfinite(Xb)
            Xb = np.where(fin, Xb, 0.0).astype(np.float32)
            F = fin.astype(np.float32)
            n, sr, srr = F @ mf, F @ r0f, F @ r2f
            sp_, spr, spp = Xb @ mf, Xb @ r0f, (Xb * Xb) @ mf
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = spr - sp_ * sr / n
            vp = spp - sp_ * sp_ / n
            vr = srr - sr * sr / n
            r = cov / np.sqrt(vp * vr)
        out[start:start + b] = r.reshape(J, b, V).transpose(1, 0, 2)
    return out


# ----------------------------------------------------------------------------- replicates and reliability
class _Pairs:
    """The upper triangle of a (K, K) matrix as flat positions, for cheap gathers (np.take beats C[iu, ju] 4x)."""

    def __init__(self, iu: np.ndarray, ju: np.ndarray, K: int):
        self.iu, self.ju = iu, ju
        self.flat = iu.astype(np.intp) * K + ju

    def corr(self, C: np.ndarray, N, sw) -> np.ndarray:
        """(P,) float32 correlations of the pairs from co-moments C (K, K), common weights N ((K, K) or a
        scalar) and each column's weight sw (K,) or scalar: C_ab / N_ab / (sd_a sd_b), sd² = C_aa / sw_a."""
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.diag(C) / sw
            inv = np.where(var > 1e-6, 1.0 / np.sqrt(var), np.nan).astype(np.float32)
            r = C.ravel().take(self.flat)
            r /= N.ravel().take(self.flat) if np.ndim(N) else N
            r *= inv.take(self.iu)
            r *= inv.take(self.ju)
        return np.clip(r, -1.0, 1.0, out=r)


class Replicator:
    """Raw and partial pair vectors for any weighting of the models (bootstrap counts, half splits).

    Holds what does not change between replicates: float32 scores and masks, the general factor,
    the benchmarks it explains exactly (their partial pairs stay undefined), and one (3K, n) block
    [m | z | z²]ᵀ whose weighted row sums give every residualisation sum in one product. Only
    models with weight > 0 enter the correlation products.

    The replicate correlation is the weighted available-case form: each column is centred and scaled
    by its own models' weighted mean and SD, the covariance averaged over the models scored on both
    (N_ab = Σ w m_a m_b). With no missing cell this is exactly the pairwise-complete Pearson; with
    missing cells it differs from it only by the gap between a benchmark's mean/SD over its own
    models and over the pair's common models, and it needs one product (Σ w x_a x_b) where the exact
    form needs four. Per replicate with missing cells: three
    (n' × K)ᵀ(n' × K) float32 products (raw co-moments, common weights, partial co-moments; two
    without missing cells), everything else is O(n'K) or O(P). Call it under one BLAS thread
    (score_agreement does): products this small only contend with a second thread.
    """

    def __init__(self, Z: np.ndarray, M: np.ndarray, g: np.ndarray | None):
        self.K = Z.shape[1]
        self.complete = bool(M.all())
        self.Mf = M.astype(np.float32)
        self.Z32 = Z.astype(np.float32)
        self.g = g
        self._pairs: _Pairs | None = None
        if g is not None:
            fin = np.isfinite(g)
            self.same = bool(fin.all())
            Mg = M & fin[:, None]
            self.Mgf = Mg.astype(np.float32)
            self.g0 = np.where(fin, g, 0.0)
            Zg = Z if self.same else np.where(Mg, Z, 0.0)
            self.Zg32 = Zg.astype(np.float32)
            self.blockT = np.ascontiguousarray(np.hstack([Mg, Zg, Zg * Zg]).T, dtype=np.float32)  # (3K, n)
            self.exact = np.isnan(residualise(Z, M, g)[0]).any(axis=0)

    def pairs(self, iu: np.ndarray, ju: np.ndarray) -> _Pairs:
        p = self._pairs
        if p is None or not (p.iu is iu or np.array_equal(p.iu, iu)) or not (p.ju is ju or np.array_equal(p.ju, ju)):
            self._pairs = p = _Pairs(iu, ju, self.K)
        return p

    def __call__(self, w: np.ndarray, iu: np.ndarray, ju: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pp = self.pairs(iu, ju)
        keep = np.flatnonzero(w > 0)
        wk = w[keep].astype(np.float32)
        s = np.sqrt(wk)[:, None]
        X = self.Z32[keep]                                              # (n', K), 0 in missing cells
        if self.complete:
            sw = np.float32(wk.sum())
            A = X - (wk @ X) / sw
            A *= s
            C = A.T @ A
            raw = pp.corr(C, sw, sw)
            N = Ms = None
        else:
            Ms = self.Mf[keep]
            sw = wk @ Ms                                                # Σ w m per benchmark
            Ms *= s                                                     # sqrt(w) · m
            with np.errstate(invalid="ignore", divide="ignore"):
                A = X - (wk @ X) / sw                                   # X is 0 where missing: Σ w m x = Σ w x
            A *= Ms
            C = A.T @ A
            N = Ms.T @ Ms
            raw = pp.corr(C, N, sw)
        if self.g is None:
            return raw, raw
        if self.complete and self.same:
            # no missing cell: the partial co-moments follow from the raw ones, C - c cᵀ / c_gg
            gk = self.g0[keep].astype(np.float32)
            gc = gk - (wk @ gk) / sw
            c = (wk * gc) @ X                                           # Σ w (g − ḡ) x per benchmark
            Cp = C - np.outer(c, c) / (wk @ (gc * gc))
            Cp[:, self.exact] = np.nan
            Cp[self.exact, :] = np.nan
            return raw, pp.corr(Cp, sw, sw)
        K, g0 = self.K, self.g0
        wg = w * g0
        T = (self.blockT @ np.stack([w, wg, wg * g0], axis=1).astype(np.float32)).T.astype(np.float64)  # (3, 3K) sums
        swg, sg, sgg = T[0, :K], T[1, :K], T[2, :K]
        sz, sgz = T[0, K:2 * K], T[1, K:2 * K]
        with np.errstate(invalid="ignore", divide="ignore"):
            gbar, zbar = sg / swg, sz / swg
            vgg = sgg - sg * gbar
            beta = np.where(vgg > 1e-12 * np.maximum(swg, 1.0), (sgz - sg * zbar) / vgg, 0.0)
        if self.same and not self.complete:
            # residual e = z − β g, centred over the column's own models: (z − z̄) − β (g − ḡ); the first
            # part, times sqrt(w)·m, is A already, so only the g part is new (same models, same weights)
            gk = g0[keep].astype(np.float32)[:, None]
            G = gk * beta.astype(np.float32) - (gbar * beta).astype(np.float32)
            G *= Ms
            A -= G
            A[:, self.exact] = np.nan
            return raw, pp.corr(A.T @ A, N, sw)
        # some models lack g (control 'reference', the reference unscored): the partial runs over Mg ⊂ M
        Mgk = self.Mgf[keep]
        E = self.Zg32[keep] - g0[keep, None].astype(np.float32) * beta.astype(np.float32)   # intercepts cancel
        E *= Mgk
        swg = wk @ Mgk
        Mgk *= s
        with np.errstate(invalid="ignore", divide="ignore"):
            E -= (wk @ E) / swg
        E *= Mgk
        E[:, self.exact] = np.nan
        return raw, pp.corr(E.T @ E, Mgk.T @ Mgk, swg)


def _fast_corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    a, b = _unit(x[ok]), _unit(y[ok])
    return float(a @ b)


def reliability(rep: Replicator, n: int, cfg, enough, iu, ju, headline: str) -> dict:
    """Split-half reliability of the pair vector of score correlations (raw and partial)."""
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
            raw, par = rep(w, iu, ju)
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
