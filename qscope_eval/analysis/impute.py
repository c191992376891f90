"""Filling missing scores without leakage, for score prediction (analysis/predict.py).

- ``lowrank_fill(Y)``: a TRAINING block's missing cells from a low-rank fit of its known cells;
- ``conditional_fill(X, mean, cov)``: a held-out model's missing kept scores at their Gaussian
  conditional mean given the kept scores it has, with moments fitted on training models.

Neither ever uses a held-out model's score on a benchmark being predicted.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lowrank_fill", "conditional_fill"]


def lowrank_fill(Y, rank: int | None = None, iters: int = 15) -> np.ndarray:
    """Y with its missing cells filled from a low-rank fit of the known ones (iterative SVD, "hard impute").

    Columns standardised on their known cells; start from the column means; each step replaces the
    missing cells by the rank-r reconstruction (r default min(10, min(n, p) // 4), at least 1). Used
    on TRAINING models only, so a missing kept score does not blur the fit the way a mean does.
    """
    Y = np.asarray(Y, float)
    obs = ~np.isnan(Y)
    if obs.all():
        return Y.copy()
    cnt = obs.sum(axis=0)
    mu = np.where(cnt > 0, np.nansum(Y, axis=0) / np.maximum(cnt, 1), 0.0)
    sd = np.sqrt((np.where(obs, Y - mu, 0.0) ** 2).sum(axis=0) / np.maximum(cnt, 1))
    sd = np.where(sd > 1e-12, sd, 1.0)
    known = np.where(obs, (Y - mu) / sd, 0.0)
    r = rank or max(1, min(10, min(Y.shape) // 4))
    Z = known
    for _ in range(iters):
        U, sv, Vt = np.linalg.svd(Z, full_matrices=False)
        Z = np.where(obs, known, (U[:, :r] * sv[:r]) @ Vt[:r])
    return np.where(obs, Y, mu + sd * Z)


def conditional_fill(X, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """X (rows × k kept scores, NaN missing) with each row's missing cells at their conditional mean given its
    known ones under a Gaussian with ``mean``/``cov`` fitted on TRAINING models: a test model's missing kept
    score guessed from the kept scores it has, never from a benchmark being predicted."""
    X = np.array(X, float)
    miss = np.isnan(X)
    pats: dict[bytes, list[int]] = {}
    for i in np.flatnonzero(miss.any(axis=1)):
        pats.setdefault(np.packbits(miss[i]).tobytes(), []).append(i)
    ridge = 1e-6 * max(float(np.trace(cov)) / max(cov.shape[0], 1), 1e-12)
    for rows in pats.values():
        m = miss[rows[0]]
        o = ~m
        X[np.ix_(rows, np.flatnonzero(m))] = mean[m]
        if o.any():
            W = np.linalg.solve(cov[np.ix_(o, o)] + ridge * np.eye(int(o.sum())), cov[np.ix_(o, m)])  # (k_o, k_m)
            X[np.ix_(rows, np.flatnonzero(m))] += (X[np.ix_(rows, np.flatnonzero(o))] - mean[o]) @ W
    return X
