"""Predict dropped benchmarks' scores from kept ones, the error measured on models held out (DESIGN §5c).

Redundancy as predictability: a benchmark can go when a ridge regression on the
kept benchmarks' scores predicts its score for models that played no part in the
fit. Scores are points 0-100; Y is (n_models × n_bench) with NaN for a missing cell.

Two evaluators of the same model family (ridge with an unpenalised intercept on
standardised kept scores; a kept cell missing in a training model filled by a
low-rank fit of the TRAINING fold's known cells (``impute.lowrank_fill``), one
missing in a held-out model at its conditional mean given that model's known kept
scores (``impute.conditional_fill``); the ridge penalty chosen per target inside the training
fold only, from ``alphas``):

- ``report_errors``: scikit-learn itself (``StandardScaler`` →
  ``RidgeCV(alpha_per_target=True)``, efficient leave-one-out for the penalty),
  each dropped benchmark fitted on exactly the training models that have it,
  K-fold over the held-out models repeated ``repeats`` times. It gives the rows
  a user reads: MAE and RMSE in points, an interval (bootstrap over held-out
  models), Kendall τ between predicted and true model ranking, and the kept
  benchmarks that carry the prediction (largest standardised coefficients).
- ``FastCV``: the same fit in closed form from one Gram matrix per fold
  (eigendecomposition of the kept block; penalty by generalised CV, which
  approximates leave-one-out), so a search can try thousands of kept sets. A
  dropped benchmark with missing training cells is fitted on the models that
  have it by a few EM steps (``_beta_missing``). Every figure in a row comes
  from ``report_errors``.

Scoring: a dropped benchmark's error is measured on the held-out models that have every kept
benchmark (a model that runs the kept set has them) when at least MIN_SCORED do; otherwise on every
held-out model that has it, missing kept cells filled as above (conservative). Models lacking
kept cells always help fit, those cells filled from the training block.

Honesty: the models are split once (``split_models``) into a *selection* part,
on which a subset is chosen by FastCV's K-fold CV, and a *report* part never
seen by the search. Every reported error is measured on report models only
(K-fold over them; the ridge trains on the other report folds plus the
selection models, which is legitimate: the test models influenced neither the
choice nor the fit). Reusing the choosing CV to report would be optimistic
(selection bias). This is a held-out split, not nested CV.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from qscope_eval.analysis.impute import conditional_fill, lowrank_fill
from qscope_eval.errors import QScopeError

__all__ = ["PredictError", "PredictConfig", "ModelSplit", "CVErrors", "Prediction", "split_models", "FastCV",
           "report_errors", "kendall", "ALPHAS", "lowrank_fill", "conditional_fill"]

MIN_SCORED = 8  # held-out models with every kept benchmark needed to score only those (see module docstring)
ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))  # on standardised predictors; n ~ 10..1000 models


class PredictError(QScopeError):
    """Score-prediction inputs are out of range or too few."""


@dataclass(frozen=True)
class PredictConfig:
    """How prediction errors are estimated."""

    folds: int = 5
    """K of the K-fold CV over held-out (report) models."""
    repeats: int = 2
    """Repeats of the reporting K-fold with different model shuffles (errors averaged)."""
    search_folds: int = 5
    """K of the K-fold CV over selection models that the subset search uses."""
    search_repeats: int = 1
    """Repeats of the search's K-fold."""
    holdout: float = 0.5
    """Share of models held out from the search; every reported error is measured on them."""
    alphas: tuple[float, ...] = ALPHAS
    """Ridge penalties tried (chosen per dropped benchmark inside each training fold)."""
    level: float = 0.90
    """Two-sided interval level (bootstrap over held-out models)."""
    boot: int = 500
    """Bootstrap replicates for the MAE interval."""
    seed: int = 0
    """Seed of the model split, fold shuffles and bootstrap."""

    def __post_init__(self):
        if self.folds < 2 or self.search_folds < 2:
            raise PredictError(f"folds must be >= 2 (e.g. 5), got {self.folds} / {self.search_folds}")
        if self.repeats < 1 or self.search_repeats < 1:
            raise PredictError("repeats must be >= 1")
        if not 0.1 <= self.holdout <= 0.9:
            raise PredictError(f"holdout must be in [0.1, 0.9] (share of models kept out of the search), got {self.holdout}")
        if not self.alphas or min(self.alphas) <= 0:
            raise PredictError("alphas must be a non-empty list of positive ridge penalties")
        if not 0 < self.level < 1:
            raise PredictError(f"level must be in (0, 1), e.g. 0.9, got {self.level}")
        if self.boot < 50:
            raise PredictError("boot must be >= 50 bootstrap replicates")


@dataclass(frozen=True)
class ModelSplit:
    """Row indices of the models that choose the subset and of those that report its error."""

    select: np.ndarray  # (n_select,) sorted
    report: np.ndarray  # (n_report,) sorted


@dataclass(frozen=True)
class CVErrors:
    """Out-of-fold errors per benchmark (NaN for kept ones and those no test model has)."""

    mae: np.ndarray       # (p,) mean absolute error, points
    rmse: np.ndarray      # (p,) root mean squared error, points
    n: np.ndarray         # (p,) test cells behind each error (models × repeats)
    se: np.ndarray        # (p,) standard error of the MAE: sd of |error| over the test cells / sqrt(n)
    pred: np.ndarray | None  # (n_models, p) out-of-fold prediction averaged over repeats (NaN elsewhere)


@dataclass(frozen=True)
class Prediction:
    """One dropped benchmark's reported error, from held-out models (``report_errors``)."""

    index: int            # column of Y
    mae: float            # points
    rmse: float           # points
    lo: float             # interval of the MAE (bootstrap over held-out models)
    hi: float
    tau: float            # Kendall τ-b, predicted vs true, held-out models (NaN: fewer than 3 or constant)
    n_models: int         # held-out models that have this benchmark
    weights: np.ndarray   # (k,) mean |standardised coefficient| of each kept benchmark, summing to 1 (0s if none)


def _check(Y) -> np.ndarray:
    Y = np.asarray(Y, float)
    if Y.ndim != 2:
        raise PredictError("scores must be a 2-D table: one row per model, one column per benchmark")
    if np.isinf(Y).any():
        raise PredictError("scores contain infinite values; give points 0-100 with NaN for a missing cell")
    return Y


def split_models(Y, holdout: float = 0.5, seed: int = 0, min_each: int = 5) -> ModelSplit:
    """Random split of the models into selection and report parts (report share ``holdout``)."""
    n = _check(Y).shape[0]
    n_rep = int(round(n * holdout))
    if min(n_rep, n - n_rep) < min_each:
        raise PredictError(f"{n} models are too few to choose a subset on some and measure it on others "
                           f"(need {min_each} in each part, i.e. about {int(np.ceil(min_each / min(holdout, 1 - holdout)))} "
                           "models); add models to the score table or let the feature evidence decide")
    perm = np.random.default_rng(seed).permutation(n)
    return ModelSplit(np.sort(perm[n_rep:]), np.sort(perm[:n_rep]))


def _folds(pool: np.ndarray, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(f) for f in np.array_split(rng.permutation(pool), min(folds, pool.size)) if f.size]


@dataclass(frozen=True)
class _Split:
    test: np.ndarray   # (n_te,) rows
    mu: np.ndarray     # (p,) training means
    sd: np.ndarray     # (p,) training sd after mean imputation (1 where constant)
    G: np.ndarray      # (p, p) Gram of the centred, imputed training block
    Zte: np.ndarray    # (n_te, p) test rows centred and scaled by training stats, missing -> 0
    Yte: np.ndarray    # (n_te, p) raw test scores, NaN missing
    n: int             # training rows
    yy: np.ndarray     # (p,) diag(G): centred training sum of squares per column
    Y0: np.ndarray     # (n_te, p) test scores with 0 where missing
    obs: np.ndarray    # (n_te, p) 1.0 where the test score is known
    nobs: np.ndarray   # (p,) training rows that have each column
    Xtr: np.ndarray    # (n, p) training block (missing cells filled, lowrank_fill) centred, scaled by sd
    obs_tr: np.ndarray  # (n, p) bool: the training cell is known
    Gxy: np.ndarray    # (p, p) filled-and-centred training block (rows) x centred known cells (0 elsewhere)
    Ztr: np.ndarray    # (n, p) centred known training cells, 0 where missing (targets)


class FastCV:
    """K-fold ridge CV for many kept sets at once-per-set cost O(k³ + n_te·k·p) (see module docstring).

    ``test_pool``: the models whose out-of-fold predictions are scored (folds are
    drawn among them); ``train_extra``: models that only ever train.
    """

    def __init__(self, Y, test_pool, train_extra=(), folds: int = 5, repeats: int = 1,
                 alphas=ALPHAS, seed: int = 0):
        self.Y = _check(Y)
        self.p = self.Y.shape[1]
        self.alphas = np.asarray(alphas, float)
        self.test_pool = np.asarray(test_pool, np.int64)
        extra = np.asarray(train_extra, np.int64)
        rng = np.random.default_rng(seed)
        self.repeats = repeats
        self.splits: list[_Split] = []
        for _ in range(repeats):
            for te in _folds(self.test_pool, folds, rng):
                tr = np.concatenate([np.setdiff1d(self.test_pool, te), extra])
                self.splits.append(self._prepare(tr, te))

    def _prepare(self, tr: np.ndarray, te: np.ndarray) -> _Split:
        Ytr = self.Y[tr]
        obs = ~np.isnan(Ytr)
        cnt = obs.sum(axis=0)
        mu = np.where(cnt > 0, np.nansum(Ytr, axis=0) / np.maximum(cnt, 1), 0.0)
        Zc = np.where(obs, Ytr - mu, 0.0)             # targets: known cells only
        Zx = lowrank_fill(Ytr) - mu                    # predictors: missing training cells filled (low rank)
        G = Zx.T @ Zx
        sd = np.sqrt(np.diag(G) / len(tr))
        sd = np.where(sd > 1e-12, sd, 1.0)
        Yte = self.Y[te]
        Zte = np.where(np.isnan(Yte), 0.0, (Yte - mu) / sd)
        obs_te = ~np.isnan(Yte)
        return _Split(te, mu, sd, G, Zte, Yte, len(tr), (Zc ** 2).sum(axis=0), np.where(obs_te, Yte, 0.0),
                      obs_te.astype(float), cnt.astype(float), Zx / sd, obs, Zx.T @ Zc, Zc)

    def _predict(self, s: _Split, K: np.ndarray, T: np.ndarray) -> np.ndarray:
        """(n_te, |T|) predictions of targets T from kept columns K on one split."""
        if K.size == 0:
            return np.broadcast_to(s.mu[T], (s.test.size, T.size))
        sdK = s.sd[K]
        A = s.G[np.ix_(K, K)] / np.outer(sdK, sdK)
        C = s.Gxy[np.ix_(K, T)] / sdK[:, None]
        lam, V = np.linalg.eigh(A)
        lam = np.clip(lam, 0.0, None)
        c = V.T @ C                                   # (k, m) cross-products in eigen-coordinates
        Zk = s.Zte[:, K]
        hole = s.obs[:, K] == 0
        if hole.any():  # a test model's missing kept scores: conditional mean from its known kept scores
            Zk = conditional_fill(np.where(hole, np.nan, Zk), np.zeros(K.size), A / s.n)
        if np.any(s.nobs[T] < s.n):
            return s.mu[T] + Zk @ self._beta_missing(s, K, lam, V, c, T)
        a = self.alphas[:, None]
        w = 2.0 / (lam + a) - lam / (lam + a) ** 2     # (n_alpha, k): RSS(a) = yy - w @ c²
        rss = np.clip(s.yy[T][None, :] - w @ c ** 2, 0.0, None)
        df = 1.0 + (lam / (lam + a)).sum(axis=1)       # intercept + effective ridge dof
        den = np.where(df < s.n - 0.5, (1 - df / s.n) ** 2, 0.0)
        gcv = np.where(den[:, None] > 0, rss / np.where(den > 0, den, 1.0)[:, None], np.inf)
        best = np.argmin(gcv, axis=0)
        beta = V @ (c / (lam[:, None] + self.alphas[best][None, :]))  # (k, m) on standardised predictors
        return s.mu[T] + Zk @ beta

    def _beta_missing(self, s: _Split, K, lam, V, c, T, iters: int = 4) -> np.ndarray:
        """(k, m) coefficients when targets miss training cells: the ridge on the rows that have each target.

        The penalty is chosen by GCV with the kept block's Gram over those rows taken as f·A (f: their
        share, as if missing at random). The coefficients then come from a few EM steps: fill each
        target's missing training cells with the current prediction and refit on every row; the
        fixed point is exactly the ridge fit on the rows that have the target (filled rows have zero
        residual), and the gap shrinks by about the missing share per step.
        """
        nT = s.nobs[T]
        lamT = lam[:, None] * (nT / s.n)[None, :]      # (k, m)
        c2, yy = c ** 2, s.yy[T]
        best, best_a = np.full(T.size, np.inf), np.full(T.size, self.alphas[-1])
        for a in self.alphas:
            den = lamT + a
            rss = np.clip(yy - (c2 * (2.0 / den - lamT / den ** 2)).sum(axis=0), 0.0, None)
            df = 1.0 + (lamT / den).sum(axis=0)
            gden = np.where(df < nT - 0.5, (1 - df / np.maximum(nT, 1)) ** 2, 0.0)
            g = np.where(gden > 0, rss / np.where(gden > 0, gden, 1.0), np.inf)
            upd = g < best
            best[upd], best_a[upd] = g[upd], a
        beta = V @ (c / (lamT + best_a[None, :]))
        Xk, obs = s.Xtr[:, K], s.obs_tr[:, T]
        y0 = s.Ztr[:, T]                              # centred targets, 0 where missing
        for _ in range(iters):
            y = np.where(obs, y0, Xk @ beta)
            beta = V @ ((V.T @ (Xk.T @ y)) / (lam[:, None] + best_a[None, :]))
        return beta

    def errors(self, kept, with_pred: bool = False) -> CVErrors:
        """Out-of-fold MAE/RMSE of every benchmark not in ``kept`` (NaN for kept ones)."""
        K = np.unique(np.asarray(kept, np.int64))
        T = np.setdiff1d(np.arange(self.p), K)
        acc = np.zeros((2, 3, self.p))  # [all rows | complete rows] x [|e|, e², cells]
        psum = np.zeros((self.Y.shape[0], self.p)) if with_pred else None
        pcnt = np.zeros((self.Y.shape[0], self.p)) if with_pred else None
        for s in self.splits:
            P = self._predict(s, K, T)
            ok = s.obs[:, T]
            E0 = (P - s.Y0[:, T]) * ok                  # 0 where the test score is missing
            full = s.obs[:, K].min(axis=1) if K.size else np.ones(s.test.size)  # has every kept benchmark
            for r, w in ((0, ok), (1, ok * full[:, None])):
                Ew = E0 * (w > 0)
                acc[r, 0, T] += np.abs(Ew).sum(axis=0)
                acc[r, 1, T] += np.einsum("ij,ij->j", Ew, Ew)
                acc[r, 2, T] += w.sum(axis=0)
            if with_pred:
                psum[np.ix_(s.test, T)] += P * ok
                pcnt[np.ix_(s.test, T)] += ok
        use = acc[1, 2] >= MIN_SCORED * self.repeats  # enough complete models: score only those
        ab, sq, cnt = (np.where(use, acc[1, i], acc[0, i]) for i in range(3))
        with np.errstate(invalid="ignore", divide="ignore"):
            mae, rmse = ab / cnt, np.sqrt(sq / cnt)
            se = np.sqrt(np.clip(sq / cnt - mae ** 2, 0.0, None) / cnt)
        mae[K], rmse[K], se[K] = np.nan, np.nan, np.nan
        pred = None
        if with_pred:
            with np.errstate(invalid="ignore", divide="ignore"):
                pred = np.where(pcnt > 0, psum / pcnt, np.nan)
        return CVErrors(mae, rmse, cnt.astype(int), se, pred)

    def taus(self, pred: np.ndarray) -> np.ndarray:
        """(p,) Kendall τ between ``pred`` and the true scores over the test pool (NaN where undefined)."""
        return np.array([kendall(pred[self.test_pool, j], self.Y[self.test_pool, j]) for j in range(self.p)])


def kendall(pred: np.ndarray, true: np.ndarray) -> float:
    """Kendall τ-b over the models where both are known; NaN with fewer than 3 or a constant side."""
    ok = ~(np.isnan(pred) | np.isnan(true))
    if ok.sum() < 3 or np.ptp(pred[ok]) <= 1e-12 or np.ptp(true[ok]) <= 1e-12:
        return float("nan")
    with warnings.catch_warnings():  # constant input is excluded above; nothing else is expected
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(pred[ok], true[ok]).statistic)


def _pipeline(alphas):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(),
                         RidgeCV(alphas=alphas, alpha_per_target=True))


def report_errors(Y, kept, split: ModelSplit, cfg: PredictConfig | None = None,
                  targets=None) -> list[Prediction]:
    """The reported error of predicting each target from ``kept``, on held-out models (scikit-learn).

    For each repeat, KFold over ``split.report``; the training set is the other
    report folds plus ``split.select``; each target is fitted on the training
    models that have it (targets sharing a pattern of missing cells share one
    multi-output fit). Missing kept cells: training models' filled by
    ``lowrank_fill``, held-out models' by ``conditional_fill``. Per target: MAE/RMSE over held-out models (their error averaged over
    repeats), a bootstrap interval of the MAE over those models, Kendall τ-b of
    the repeat-averaged prediction, and the mean |standardised coefficient|. Scored: the held-out
    models that have every kept benchmark, when at least MIN_SCORED do (a model that runs the kept set
    has them all; a missing kept cell would charge the prediction for a gap of the table); otherwise
    every held-out model with the target, its missing kept cells filled (``impute.conditional_fill``).
    """
    from sklearn.model_selection import KFold

    cfg = cfg or PredictConfig()
    Y = _check(Y)
    p = Y.shape[1]
    K = np.unique(np.asarray(kept, np.int64))
    T = np.setdiff1d(np.arange(p), K) if targets is None else np.asarray(targets, np.int64)
    n = Y.shape[0]
    err_sum, err_cnt = np.zeros((n, p)), np.zeros((n, p))
    sq_sum = np.zeros((n, p))
    pred_sum = np.zeros((n, p))
    wsum = np.zeros((p, K.size))
    rep = split.report
    for r in range(cfg.repeats):
        kf = KFold(n_splits=min(cfg.folds, rep.size), shuffle=True, random_state=cfg.seed + r)
        for tr_i, te_i in kf.split(rep):
            tr, te = np.concatenate([rep[tr_i], split.select]), rep[te_i]
            _fit_fold(Y, K, T, tr, te, cfg.alphas, err_sum, sq_sum, err_cnt, pred_sum, wsum)
    rng = np.random.default_rng(cfg.seed + 7)
    q = (1 - cfg.level) / 2
    out = []
    full = ~np.isnan(Y[:, K]).any(axis=1)  # models with every kept benchmark
    for j in T:
        have = np.flatnonzero(err_cnt[:, j] > 0)
        if np.sum(full[have]) >= MIN_SCORED:
            have = have[full[have]]
        if have.size == 0:
            out.append(Prediction(int(j), np.nan, np.nan, np.nan, np.nan, np.nan, 0, np.zeros(K.size)))
            continue
        e = err_sum[have, j] / err_cnt[have, j]            # per model: mean |error| over repeats
        mae = float(e.mean())
        rmse = float(np.sqrt(sq_sum[have, j].sum() / err_cnt[have, j].sum()))
        means = e[rng.integers(0, e.size, (cfg.boot, e.size))].mean(axis=1)
        lo, hi = np.quantile(means, [q, 1 - q])
        tau = kendall(pred_sum[have, j] / err_cnt[have, j], Y[have, j])
        w = wsum[j] / wsum[j].sum() if wsum[j].sum() > 0 else np.zeros(K.size)
        out.append(Prediction(int(j), mae, rmse, float(lo), float(hi), tau, int(have.size), w))
    return out


def _fit_fold(Y, K, T, tr, te, alphas, err_sum, sq_sum, err_cnt, pred_sum, wsum) -> None:
    """One training/test split: fit each group of targets with the same observed training models."""
    from sklearn.exceptions import ConvergenceWarning

    obs = ~np.isnan(Y[np.ix_(tr, T)])
    Xf = lowrank_fill(Y[tr])[:, K]  # predictors: missing training cells filled from the training block only
    Xte = conditional_fill(Y[np.ix_(te, K)], Xf.mean(axis=0), np.cov(Xf.T, bias=True).reshape(K.size, K.size)) \
        if K.size else None
    groups: dict[bytes, list[int]] = {}
    for t in range(T.size):
        groups.setdefault(np.packbits(obs[:, t]).tobytes(), []).append(t)
    for cols in groups.values():
        rows = tr[obs[:, cols[0]]]
        tgt = T[cols]
        if rows.size < 3:
            continue  # too few training models for this target in this fold: no prediction
        y = Y[np.ix_(rows, tgt)]
        if K.size == 0:
            P = np.broadcast_to(y.mean(axis=0), (te.size, tgt.size))
        else:
            model = _pipeline(alphas)
            with warnings.catch_warnings():  # ill-conditioned fits are expected with near-copies; nothing to tell
                warnings.simplefilter("ignore", (RuntimeWarning, UserWarning, ConvergenceWarning))
                model.fit(Xf[obs[:, cols[0]]], y)
                P = model.predict(Xte).reshape(te.size, tgt.size)
            coef = np.abs(np.atleast_2d(model[-1].coef_))   # (m, k) on standardised predictors
            wsum[tgt] += coef
        E = P - Y[np.ix_(te, tgt)]
        ok = ~np.isnan(E)
        ix = np.ix_(te, tgt)
        err_sum[ix] += np.where(ok, np.abs(E), 0.0)
        sq_sum[ix] += np.where(ok, E ** 2, 0.0)
        err_cnt[ix] += ok
        pred_sum[ix] += np.where(ok, P, 0.0)
