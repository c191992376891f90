"""Item response theory for anchor estimates: a 2PL (or 1PL/Rasch) fitted on training models, and a new
model's expected full-benchmark score from its responses on a few items.

Model (Lord 1980; as used by tinyBenchmarks, Polo et al. 2024, and metabench, Kipnis et al. 2024):
P(model i solves item j) = sigmoid(a_j · (θ_i − b_j)), θ_i ~ N(0, 1) (the prior fixes the scale),
discrimination a_j > 0 (1PL: a_j = 1), difficulty b_j. Responses may be fractional (a metric in [0, 1]):
the likelihood is then the cross-entropy, which is what a 0/1 response gives as a special case.

Fit: joint MAP over (θ, log a, b) with L-BFGS (scipy.optimize), one vectorised gradient per step:
with Z = a_j (θ_i − b_j) and R = sigmoid(Z) − Y (models × items), dL/dθ_i = Σ_j R_ij a_j,
dL/db_j = −a_j Σ_i R_ij, dL/dlog a_j = Σ_i R_ij a_j (θ_i − b_j); plus the Gaussian priors' terms.
Weak priors on log a and b keep items that every training model solves (or none does) finite.

Scoring a new model: the posterior of θ on a fixed grid given its anchor responses (EAP), and from it
the expected share of ALL items solved — the observed anchors counted as observed, the others as their
expected probability (tinyBenchmarks' p-IRT estimator); items every training model failed (or solved)
are predicted as failed (solved).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy.special import expit, log_expit
from threadpoolctl import threadpool_limits

GRID = np.linspace(-5.0, 5.0, 201)   # θ grid for the posterior (the prior N(0, 1) puts ~0 mass beyond ±5)
PRIOR_LOG_A_SD = 0.5                 # log discrimination ~ N(0, 0.5²): a within ~[0.4, 2.7]
PRIOR_B_SD = 2.0                     # difficulty ~ N(0, 2²)


@dataclass
class IRTFit:
    """A fitted 2PL/1PL model."""

    a: np.ndarray
    """(items,) discrimination (all 1 for 1PL)."""
    b: np.ndarray
    """(items,) difficulty."""
    theta: np.ndarray
    """(models,) training models' abilities (MAP)."""
    converged: bool
    """Whether L-BFGS met its tolerance (a fit stopped at max_iter is still usable, only less exact)."""
    constant: np.ndarray | None = None
    """(items,) 0 or 1 where every training model failed / solved the item, NaN elsewhere: p-IRT predicts
    those as the training models did (the priors would otherwise keep their probability away from 0 and 1:
    measured, 8.5 points of error on a benchmark no model solves)."""


def fit_irt(Y: np.ndarray, model: str = "2pl", max_iter: int = 200) -> IRTFit:
    """MAP fit of a 2PL/1PL model to Y (models × items, values in [0, 1])."""
    Y = np.asarray(Y, np.float64)
    m, n = Y.shape
    two = model == "2pl"
    if model not in ("2pl", "1pl"):
        raise ValueError(f"unknown IRT model {model!r}")
    # start: abilities from standardised totals, difficulties from item means (logit scale)
    tot = Y.mean(axis=1)
    th0 = (tot - tot.mean()) / (tot.std() + 1e-9)
    p = np.clip(Y.mean(axis=0), 0.02, 0.98)
    b0 = -np.log(p / (1 - p))
    x0 = np.concatenate([th0, np.zeros(n if two else 0), b0])

    def unpack(x):
        th = x[:m]
        la = x[m:m + n] if two else np.zeros(n)
        return th, la, x[m + (n if two else 0):]

    def loss(x):
        th, la, b = unpack(x)
        a = np.exp(la)
        D = th[:, None] - b[None, :]
        Z = a[None, :] * D
        L = log_expit(Z)                                   # log σ(−Z) = log σ(Z) − Z: one log pass, one exp
        nll = -(L - (1 - Y) * Z).sum()
        nll += 0.5 * (th ** 2).sum() + 0.5 * ((b / PRIOR_B_SD) ** 2).sum()
        R = np.exp(L) - Y
        g_th = (R * a[None, :]).sum(axis=1) + th
        g_b = -a * R.sum(axis=0) + b / PRIOR_B_SD ** 2
        parts = [g_th]
        if two:
            nll += 0.5 * ((la / PRIOR_LOG_A_SD) ** 2).sum()
            parts.append((R * Z).sum(axis=0) + la / PRIOR_LOG_A_SD ** 2)
        parts.append(g_b)
        return nll, np.concatenate(parts)

    # the tolerance is far below what moves an estimate (measured: abilities and difficulties agree with a
    # 1e-9 fit to the 5th decimal); the default ftol spent twice the iterations for nothing visible
    # one BLAS thread: L-BFGS-B's small matrix products ran 10x slower with OpenBLAS's threads (measured,
    # 110 × 240: 1.4 s -> 0.14 s), most of all on a busy machine
    with threadpool_limits(limits=1, user_api="blas"):
        res = optimize.minimize(loss, x0, jac=True, method="L-BFGS-B",
                                options={"maxiter": max_iter, "ftol": 1e-7, "gtol": 1e-4})
    th, la, b = unpack(res.x)
    mean = Y.mean(axis=0)
    constant = np.where((mean == 0) | (mean == 1), mean, np.nan)
    return IRTFit(np.exp(la), b.copy(), th.copy(), bool(res.success), constant)


def posterior(Y_anchor: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(models × GRID) posterior of θ given responses on items with parameters (a, b); rows sum to 1."""
    Z = a[:, None] * (GRID[None, :] - b[:, None])              # (anchors, grid)
    ll = np.asarray(Y_anchor, np.float64) @ log_expit(Z) + (1 - np.asarray(Y_anchor, np.float64)) @ log_expit(-Z)
    ll += -0.5 * GRID[None, :] ** 2
    ll -= ll.max(axis=1, keepdims=True)
    w = np.exp(ll)
    return w / w.sum(axis=1, keepdims=True)


def p_irt(Y_anchor: np.ndarray, anchors: np.ndarray, fit: IRTFit) -> np.ndarray:
    """Expected share of all items solved (p-IRT): observed anchors + posterior-expected rest; (models,)."""
    n_items = len(fit.a)
    const = fit.constant if fit.constant is not None else np.full(n_items, np.nan)
    rest = np.ones(n_items, bool)
    rest[anchors] = False
    fixed = rest & ~np.isnan(const)            # items every training model failed (solved): predicted so
    rest &= np.isnan(const)
    post = posterior(Y_anchor, fit.a[anchors], fit.b[anchors])
    P_rest = expit(fit.a[rest][:, None] * (GRID[None, :] - fit.b[rest][:, None])).sum(axis=0)   # (grid,)
    return (np.asarray(Y_anchor, np.float64).sum(axis=1) + post @ P_rest + const[fixed].sum()) / n_items


def information(fit: IRTFit, theta: np.ndarray) -> np.ndarray:
    """(abilities × items) Fisher information a² p (1 − p) of each item at each ability (metabench's item score)."""
    P = expit(fit.a[None, :] * (np.asarray(theta)[:, None] - fit.b[None, :]))
    return fit.a[None, :] ** 2 * P * (1 - P)
