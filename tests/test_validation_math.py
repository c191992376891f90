"""analysis/validation.py on small hand-made matrices: R(D) (Eqs. 4–6), τ-b, the model bootstrap, score correlations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from qscope_eval.analysis import validation as V


def test_identical_ranking_on_every_subset_gives_r_one():
    C = np.tile(np.array([0.1, 0.4, 0.5, 0.9])[:, None], (1, 25))  # each model scores the same on every item
    pr = V.performance_redundancy(C, draws=400)
    assert pr.r == 1.0 and pr.se == 0.0 and pr.draws == 400 and (pr.n_models, pr.n_items) == (4, 25)


def test_reversed_items_pull_r_down_and_all_ties_are_undefined():
    # half the items rank the models one way, half the other way: the full ranking is a tie for every pair
    C = np.hstack([np.tile(np.arange(4.0)[:, None], (1, 10)), np.tile(np.arange(4.0)[::-1, None], (1, 10))])
    assert math.isnan(V.performance_redundancy(C, 300).r)
    # a ranking that one item decides has subsets that contradict it
    D = np.zeros((3, 20))
    D[0, 0] = 1.0
    r = V.performance_redundancy(D, 2000).r
    assert 0 < r < 0.6


def _signs_for(C, masks):
    iu, ju = np.triu_indices(C.shape[0], 1)
    sums = masks.astype(float) @ C.T
    full = C.sum(axis=1)
    sub = np.sign(sums[:, iu] - sums[:, ju]).astype(np.int8)
    return V.PairSigns(masks.sum(axis=1), sub, np.sign(full[iu] - full[ju]).astype(np.int8), C.shape[0], C.shape[1]), sums, full


def test_weighted_tau_is_scipys_tau_b_with_ties():
    rng = np.random.default_rng(3)
    C = (rng.random((7, 15)) < 0.5).astype(float)
    masks = rng.random((200, 15)) < rng.random((200, 1))
    masks[:, 0] |= ~masks.any(axis=1)  # no empty subsets
    ps, sums, full = _signs_for(C, masks)
    ours = V.weighted_tau(ps)[:, 0]
    for d in range(200):
        ref = stats.kendalltau(sums[d], full).statistic  # tau-b
        assert ours[d] == pytest.approx(0.0 if np.isnan(ref) else ref, abs=1e-12)


def test_monte_carlo_matches_exact_enumeration():
    rng = np.random.default_rng(0)
    C = (rng.random((5, 7)) < rng.random((5, 1))).astype(float)
    N, taus = C.shape[1], []
    full = C.sum(axis=1)
    for n in range(1, N + 1):  # exact R: mean over n of the mean τ over all n-subsets
        vals = []
        for S in itertools.combinations(range(N), n):
            t = stats.kendalltau(C[:, S].sum(axis=1), full).statistic
            vals.append(0.0 if np.isnan(t) else t)
        taus.append(np.mean(vals))
    exact = float(np.mean(taus))
    pr = V.performance_redundancy(C, draws=4000, seed=1)
    assert abs(pr.r - exact) < 4 * pr.se + 1e-3, (pr.r, exact, pr.se)


def test_model_bootstrap_weights_equal_dropping_models_on_the_same_draws():
    rng = np.random.default_rng(5)
    C = (rng.random((6, 30)) < np.linspace(0.2, 0.8, 6)[:, None]).astype(float)
    ps = V.draw_pair_signs(C, 500, seed=9)
    keep = np.array([0, 2, 3, 5])
    counts = np.zeros((1, 6))
    counts[0, keep] = 1
    # the draws depend only on (N, seed), so the reduced matrix sees the same subsets
    assert V.bootstrap_redundancy(ps, counts)[0] == pytest.approx(V.performance_redundancy(C[keep], 500, seed=9).r)
    assert V.bootstrap_redundancy(ps, np.ones((1, 6)))[0] == pytest.approx(V.performance_redundancy(C, signs=ps).r)


def test_partial_correlation_equals_correlation_of_residuals():
    rng = np.random.default_rng(2)
    g = rng.normal(size=40)
    S = np.vstack([g + rng.normal(size=40), g + rng.normal(size=40), g + 0.3 * rng.normal(size=40)])
    sc = V.score_correlation(S, reference=2)
    assert sc.pearson == pytest.approx(np.corrcoef(S))
    resid = [S[k] - np.polyval(np.polyfit(S[2], S[k], 1), S[2]) for k in (0, 1)]
    assert sc.partial_pearson[0, 1] == pytest.approx(np.corrcoef(resid)[0, 1])
    assert abs(sc.partial_pearson[0, 1]) < sc.pearson[0, 1]  # the shared general factor is taken out
    assert np.isnan(sc.partial_pearson[0, 2])


def test_score_correlation_is_pairwise_complete():
    rng = np.random.default_rng(4)
    S = rng.normal(size=(3, 10))
    S[1, :4] = np.nan
    sc = V.score_correlation(S)
    ok = ~np.isnan(S[1])
    assert sc.pearson[0, 1] == pytest.approx(np.corrcoef(S[0, ok], S[1, ok])[0, 1])
    assert sc.spearman[0, 2] == pytest.approx(stats.spearmanr(S[0], S[2]).statistic)
    assert sc.n_models[0, 1] == 6 and sc.n_models[0, 2] == 10


def test_frequency_weighted_overlap():
    counts = np.array([[4, 4, 0, 0], [2, 2, 0, 0], [0, 0, 5, 0], [1, 0, 1, 0]])
    ov = V.frequency_weighted_overlap(counts)
    assert ov[0, 1] == pytest.approx(1.0)   # same distribution, different sizes
    assert ov[0, 2] == pytest.approx(0.0)   # disjoint
    assert ov[0, 3] == pytest.approx(0.5)
    assert ov == pytest.approx(ov.T)


def _inp(n_models=8, K=5, seed=0):
    rng = np.random.default_rng(seed)
    ability = rng.normal(size=n_models)
    Cs = [(rng.random((n_models, 30)) < 1 / (1 + np.exp(-(ability[:, None] * (k + 1) - rng.normal(size=30))))).astype(float)
          for k in range(K)]
    S = np.array([C.mean(axis=1) for C in Cs])
    corr = V.score_correlation(S).pearson
    return V.ValidationInput([f"b{k}" for k in range(K)], [f"m{j}" for j in range(n_models)],
                             [V.draw_pair_signs(C, 300, k) for k, C in enumerate(Cs)],
                             [np.arange(n_models)] * K, S, {"r_hat": np.arange(K, dtype=float)},
                             {"copy": corr.copy(), "anti": -corr}, None)


def test_agreement_recovers_a_perfect_and_a_reversed_proxy():
    res = V.validate(_inp(), replicates=100, seed=1)
    by = {(a.name, a.method): a for a in res.agreements}
    assert by[("copy~score_pearson", "spearman")].value == pytest.approx(1.0)
    assert by[("anti~score_pearson", "spearman")].value == pytest.approx(-1.0)
    assert by[("copy~score_pearson", "spearman")].n_units == 10 and by[("copy~score_pearson", "spearman")].n_models == 8
    assert "tracks" in V.verdict(by[("copy~score_pearson", "spearman")], "overlap", "score correlation", 8)
    assert "runs opposite to" in V.verdict(by[("anti~score_pearson", "spearman")], "overlap", "score correlation", 8)
    # discriminating items (larger k) give a more stable ranking: R rises along the planted order
    R = np.array([r.r for r in res.redundancy])
    assert R[-1] > R[0]
    assert all(lo <= r <= hi for lo, r, hi in zip(res.r_lo, R, res.r_hi))


def test_fewer_than_three_models_is_refused():
    inp = _inp(n_models=2, K=3)
    with pytest.raises(V.ValidationError, match="at least 3 models"):
        V.validate(inp, replicates=50)


def test_constant_scores_have_no_correlation():
    S = np.vstack([np.full(6, 0.25), np.linspace(0, 1, 6), np.linspace(1, 0, 6) ** 2])
    sc = V.score_correlation(S)
    assert np.isnan(sc.pearson[0, 1]) and np.isnan(sc.spearman[0, 2]) and sc.pearson[1, 2] < -0.9


def test_validate_agreement_stays_quiet_on_near_constant_input():
    """scipy warns on near-constant input (a bootstrap replicate can be); the user sees a number, not the warning."""
    import warnings

    from qscope_eval.analysis import validation as V

    x, y = np.array([1.0, 1.0, 1.0, 1.0 + 1e-12, 1.0]), np.arange(5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(V._pearson(x, y)) and np.isfinite(V._spearman(x, y))
