"""Selection from behaviour (analysis/predict, behaviour_select, behaviour_decide) on planted score structure.

Scores of ~100 models = 60 + general ability + group ability + benchmark noise. A near copy of one
benchmark (same group, tiny noise) is planted redundant; a benchmark with its own factor only is
planted unique. Error estimates are checked against slow, obvious scikit-learn loops written here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from qscope_eval.analysis import behaviour_decide as bd
from qscope_eval.analysis import behaviour_select as bsel
from qscope_eval.analysis import predict as pr

GROUPS, PER = 4, 5


def planted(n=100, seed=0, noise=1.0, missing=0.0):
    """(n × 22) scores: 4 groups of 5, then a near copy of column 0 (index 20) and a unique one (21)."""
    rng = np.random.default_rng(seed)
    g, G = rng.normal(size=n), rng.normal(size=(n, GROUPS))
    cols = [60 + 6 * g + 4 * G[:, k] + noise * rng.normal(size=n) for k in range(GROUPS) for _ in range(PER)]
    Y = np.column_stack(cols + [cols[0] + 0.2 * rng.normal(size=n), 60 + 6 * rng.normal(size=n)])
    if missing:
        Y[rng.random(Y.shape) < missing] = np.nan
    return Y


COPY, UNIQUE = GROUPS * PER, GROUPS * PER + 1


def test_fastcv_equals_sklearn_ridge_loop():
    """FastCV with one penalty = StandardScaler + Ridge fitted fold by fold (complete data: exact)."""
    Y = planted()
    ev = pr.FastCV(Y, np.arange(60), np.arange(60, 100), folds=5, repeats=1, alphas=(3.0,), seed=4)
    K = [0, 5, 10, COPY]
    e = ev.errors(K, with_pred=True)
    T = [j for j in range(Y.shape[1]) if j not in K]
    err = np.zeros((100, Y.shape[1]))
    for s in ev.splits:
        tr = np.concatenate([np.setdiff1d(np.arange(60), s.test), np.arange(60, 100)])
        m = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(Y[np.ix_(tr, K)], Y[np.ix_(tr, T)])
        err[np.ix_(s.test, T)] = m.predict(Y[np.ix_(s.test, K)]) - Y[np.ix_(s.test, T)]
    np.testing.assert_allclose(e.mae[T], np.abs(err[:60, T]).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(e.rmse[T], np.sqrt((err[:60, T] ** 2).mean(axis=0)), rtol=1e-9)
    assert np.isnan(e.mae[K]).all()


def test_report_errors_equal_an_obvious_loop_with_missing_cells():
    """report_errors = per target, per fold: impute/scale/RidgeCV on the training models that have it."""
    Y = planted(n=80, seed=1, missing=0.1)
    cfg = pr.PredictConfig(folds=4, repeats=2, seed=3)
    split = pr.split_models(Y, 0.5, seed=2)
    K = [0, 6, 12, 18]
    got = {p.index: p for p in pr.report_errors(Y, K, split, cfg)}
    rep, n = split.report, Y.shape[0]
    for j in [1, 7, COPY, UNIQUE]:
        abs_e, cnt, pred, sq = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        for r in range(cfg.repeats):
            for tr_i, te_i in KFold(cfg.folds, shuffle=True, random_state=cfg.seed + r).split(rep):
                tr = np.concatenate([rep[tr_i], split.select])
                X = pr.lowrank_fill(Y[tr])[:, K]  # training kept cells filled from the training block
                has = ~np.isnan(Y[tr, j])
                m = make_pipeline(SimpleImputer(keep_empty_features=True), StandardScaler(),
                                  RidgeCV(alphas=cfg.alphas)).fit(X[has], Y[tr[has], j])
                te = rep[te_i][~np.isnan(Y[rep[te_i], j])]
                Xt = Y[np.ix_(te, K)].copy()  # a missing kept score: Gaussian conditional mean given the known ones
                for i in range(te.size):
                    mi = np.isnan(Xt[i])
                    if mi.any():
                        C = np.cov(X.T, bias=True)
                        o = ~mi
                        Xt[i, mi] = X.mean(0)[mi] + (Xt[i, o] - X.mean(0)[o]) @ np.linalg.solve(
                            C[np.ix_(o, o)], C[np.ix_(o, mi)])
                p = m.predict(Xt)
                abs_e[te] += np.abs(p - Y[te, j])
                sq[te] += (p - Y[te, j]) ** 2
                cnt[te] += 1
                pred[te] += p
        have = (cnt > 0) & ~np.isnan(Y[:, K]).any(axis=1)  # scored: held-out models with every kept benchmark
        assert have.sum() >= pr.MIN_SCORED
        per_model = abs_e[have] / cnt[have]
        assert got[j].mae == pytest.approx(per_model.mean(), rel=1e-8)
        assert got[j].rmse == pytest.approx(np.sqrt(sq[have].sum() / cnt[have].sum()), rel=1e-8)
        assert got[j].n_models == have.sum()
        tau = stats.kendalltau(pred[have] / cnt[have], Y[have, j]).statistic
        assert got[j].tau == pytest.approx(tau, rel=1e-8)
        assert got[j].lo < got[j].mae < got[j].hi


def test_lowrank_fill_recovers_planted_cells_better_than_means():
    Y = planted(n=120, seed=3)
    M = Y.copy()
    M[np.random.default_rng(0).random(Y.shape) < 0.15] = np.nan
    miss = np.isnan(M)
    filled = pr.lowrank_fill(M)
    means = np.where(miss, np.nanmean(M, axis=0), M)
    assert np.array_equal(filled[~miss], M[~miss])
    err_fill, err_mean = np.abs(filled - Y)[miss].mean(), np.abs(means - Y)[miss].mean()
    assert err_fill < 0.5 * err_mean, (err_fill, err_mean)


def _decided(Y, costs, **kw):
    cfg = bsel.SelectConfig(max_error=2.0, trials=20, predict=pr.PredictConfig(repeats=1, seed=0))
    return bd.decide(Y, costs, cfg, **kw)


def test_planted_structure_search():
    """Redundant copy dropped, unique kept, cost well under half, every drop better than random equal-cost sets."""
    Y = planted()
    costs = np.ones(Y.shape[1])
    costs[COPY] = 2.0  # the copy costs more than its original: keep the original
    d = _decided(Y, costs)
    kept = set(d.kept.tolist())
    assert COPY not in kept and UNIQUE in kept
    assert costs[d.kept].sum() / costs.sum() < 0.4
    # every group keeps at least one member (what a group measures stays measured)
    assert all(kept & set(range(k * PER, (k + 1) * PER)) for k in range(GROUPS))
    b = d.baseline
    assert b.cost_mean == pytest.approx(costs[d.kept].sum(), rel=0.06)
    # every dropped benchmark is predicted better than random equal-cost sets predict their worst one
    # (a random set that happens to keep the copy's original predicts the copy well: the guarantee is the bound)
    for i, p in d.predictions.items():
        assert p.mae < np.quantile(b.max_error, 0.1), (i, p.mae)
        assert p.mae < 2.0 * 1.25  # within tolerance up to estimation noise on the held-out models
    assert d.chosen_errors[1] < b.max_error.mean() - 2 * b.max_error.std(ddof=1)
    assert d.chosen_errors[0] < b.mean_error.mean()
    # the copy is carried by a kept member of its own group
    w = d.predictions[COPY].weights
    assert d.search.kept[int(np.argmax(w))] < PER
    # frontier: the greedy set beats the random mean at every proper budget with something dropped
    inner = [f for f in d.frontier if 0 < f.cost_share < 1]
    assert inner and all(f.error_chosen <= f.error_random_mean + 1e-9 for f in inner)


def test_search_alone_lazy_equals_full_and_cleanup_irredundant():
    Y = planted(seed=5)
    ev = pr.FastCV(Y, np.arange(100), folds=5, seed=0)
    costs = np.ones(Y.shape[1])
    cfg = bsel.SelectConfig(max_error=2.0, cluster_start=False)
    a = bsel.search(ev, costs, cfg)
    full = bsel.search(ev, costs, bsel.SelectConfig(max_error=2.0, cluster_start=False, lazy=False))
    assert a.feasible and full.feasible
    assert abs(a.cost - full.cost) <= 1
    for k in a.kept:  # irredundant: dropping any kept benchmark breaks the tolerance
        rest = [int(j) for j in a.kept if j != k]
        assert bsel.violations(ev.errors(rest), None, cfg, rest).sum() > 0


def test_min_tau_constraint_and_random_sets_cost():
    Y = planted(seed=2)
    ev = pr.FastCV(Y, np.arange(100), folds=5, seed=0)
    s = bsel.search(ev, np.ones(Y.shape[1]), bsel.SelectConfig(max_error=None, min_tau=0.8), Y_select=Y)
    e = ev.errors(s.kept, with_pred=True)
    taus = ev.taus(e.pred)
    dropped = np.setdiff1d(np.arange(Y.shape[1]), s.kept)
    assert dropped.size and np.all(taus[dropped] >= 0.8)
    costs = np.random.default_rng(0).uniform(1, 5, 30)
    sets = bsel.random_sets(costs, 20.0, 25, np.random.default_rng(1), tolerance=0.05, forced=[3])
    assert all(3 in K and abs(costs[K].sum() - 20) <= 1.0 for K in sets)


def test_features_decide_benchmarks_without_scores_and_disagreements():
    Y = planted()
    n = Y.shape[1]
    Y = np.column_stack([Y, np.full((100, 2), np.nan)])  # 22: group 0 (no scores), 23: its own kind (no scores)
    Y[:5, 22] = 60.0  # 5 models: fewer than min_models
    grp = [k for k in range(GROUPS) for _ in range(PER)] + [0, 99, 0, 98]
    N = Y.shape[1]
    stand = np.array([[grp[i] == grp[j] for j in range(N)] for i in range(N)])
    ratio = stand * 0.9 + np.eye(N) * 0.1
    stand[UNIQUE, 1] = True  # features wrongly say benchmark 1 stands in for the unique one
    ratio[UNIQUE, 1] = 0.85
    for i in range(PER, 2 * PER):  # features see group 1's members as all different
        stand[i, PER:2 * PER] = False
        stand[i, i] = True
    d = _decided(Y, np.ones(N), stand_in=stand, ratio=ratio, feature_kept=[0, 5, 10, 15, 21, 23])
    kept = set(d.kept.tolist())
    assert not d.scored[22] and not d.scored[23] and d.scored[:n].all()
    assert 23 in kept  # only one of its kind by the features: stays
    assert 22 not in kept and d.feature_cover[22] in kept and grp[d.feature_cover[22]] == 0
    assert UNIQUE in kept  # scores decide it: not predicted by benchmark 1
    dis = {(x.benchmark, x.other, x.kind) for x in d.disagreements}
    assert (UNIQUE, 1, "features_redundant_scores_not") in dis
    g1_dropped = [i for i in range(PER, 2 * PER) if i not in kept]
    assert g1_dropped and all(any(b == i and k == "scores_redundant_features_not" for b, _, k in dis)
                              for i in g1_dropped)
    # without feature evidence nothing unscored may go
    d2 = _decided(Y, np.ones(N))
    assert {22, 23} <= set(d2.kept.tolist()) and any("no feature evidence" in x for x in d2.notes)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(pr.PredictError, match="too few"):
        pr.split_models(np.zeros((6, 3)))
    with pytest.raises(pr.PredictError, match="max_error"):
        bsel.SelectConfig(max_error=0)
    with pytest.raises(pr.PredictError, match="tolerance"):
        bsel.SelectConfig(max_error=None, min_tau=None)
    with pytest.raises(pr.PredictError, match="costs"):
        bd.decide(planted(), np.zeros(22))
    d = bd.decide(np.column_stack([planted()[:, :1], np.full((100, 2), np.nan)]), np.ones(3))
    assert np.array_equal(d.kept, [0, 1, 2]) and "fewer than 2 benchmarks" in d.notes[0]
