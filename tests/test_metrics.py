"""Tests for qscope_eval.jobs.summary.metrics: hand-checked examples, brute force and Monte Carlo."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from qscope_eval.analysis import metrics as m
from qscope_eval.analysis import samples
from qscope_eval.errors import QScopeError


def sets_to_F(sets, d):
    rows = [list(s) for s in sets]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    idx = np.array([i for r in rows for i in sorted(r)], dtype=np.int64)
    return sp.csr_matrix((np.ones(idx.size, bool), idx, indptr), shape=(len(rows), d))


def random_F(rng, n, d, density):
    return sp.csr_matrix(rng.random((n, d)) < density)


# ----------------------------------------------------------------------------- inputs
def test_fired_threshold_and_leaves_input_alone():
    X = sp.csr_matrix(np.array([[0.0, 0.5, 2.0], [0.1, 0.0, -1.0]], np.float32))
    before = X.toarray().copy()
    assert m.fired(X).toarray().tolist() == [[False, True, True], [True, False, False]]
    assert m.fired(X, 0.4).toarray().tolist() == [[False, True, True], [False, False, False]]
    assert np.array_equal(X.toarray(), before)
    with pytest.raises(m.MetricsError, match=">= 0"):
        m.fired(X, -0.1)


def test_membership_helpers():
    M = m.membership(np.array([0, 2, 2, 1]))
    assert M.shape == (3, 4) and M.toarray().tolist() == [
        [True, False, False, False], [False, False, False, True], [False, True, True, False]]
    P = m.membership_from_pairs([0, 1, 1], [0, 0, 2], 2, 3)  # sample 0 in two benchmarks
    assert P.toarray().tolist() == [[True, False, False], [True, False, True]]
    with pytest.raises(m.MetricsError, match="n_benchmarks"):
        m.membership(np.array([0, 3]), n_benchmarks=2)
    with pytest.raises(m.MetricsError):
        m.membership(np.array([0.5, 1.0]))


# ----------------------------------------------------------------------------- coverage / overlap
def test_coverage_and_overlap_hand_example():
    # D0 = samples {0,1}: features {0,1,2,3}; D1 = {2,3}: {2,3,4}
    F = sets_to_F([{0, 1}, {2, 3}, {2, 3}, {4}], 10)
    M = m.membership([0, 0, 1, 1])
    cov = m.coverage(M, F, d_sae=10)
    assert cov.n_features.tolist() == [4, 3] and cov.union == 5 and cov.n_samples.tolist() == [2, 2]
    assert np.allclose(cov.share_of_dsae, [0.4, 0.3]) and np.allclose(cov.share_of_union, [0.8, 0.6])
    ov = m.overlap_matrices(M, F)
    assert ov.intersection.tolist() == [[4, 2], [2, 3]]
    assert ov.asym[0, 1] == pytest.approx(0.5) and ov.asym[1, 0] == pytest.approx(2 / 3)
    assert ov.sym[0, 1] == pytest.approx(2 / 3) == ov.sym[1, 0]
    assert ov.jaccard[0, 1] == pytest.approx(2 / 5)
    assert m.feature_frequency(F).tolist() == [1, 1, 2, 2, 1, 0, 0, 0, 0, 0]


def test_subset_benchmark_is_fully_covered_by_its_superset():
    rng = np.random.default_rng(1)
    F = random_F(rng, 30, 40, 0.15)
    # benchmark 0 = samples 0..9, benchmark 1 = samples 0..29 (a superset)
    M = m.membership_from_pairs([0] * 10 + [1] * 30, list(range(10)) + list(range(30)), 2, 30)
    ov = m.overlap_matrices(M, F)
    assert ov.asym[0, 1] == 1.0
    assert ov.asym[1, 0] < 1.0  # the superset has features the subset lacks
    assert ov.sym[0, 1] == 1.0


def test_identical_benchmarks_overlap_one_both_ways():
    rng = np.random.default_rng(2)
    F = random_F(rng, 20, 30, 0.2)
    M = m.membership_from_pairs([0] * 20 + [1] * 20 + [2] * 5, list(range(20)) * 2 + list(range(5)), 3, 20)
    ov = m.overlap_matrices(M, F)
    for mat in (ov.asym, ov.sym, ov.jaccard):
        assert mat[0, 1] == 1.0 and mat[1, 0] == 1.0
        assert np.allclose(np.diag(mat), 1.0)


def test_min_support_drops_one_off_features():
    F = sets_to_F([{0, 1}, {0, 2}, {0, 1, 3}], 5)
    M = m.membership([0, 0, 0])
    assert m.benchmark_features(M, F).toarray().tolist() == [[3, 2, 1, 1, 0]]
    assert m.benchmark_features(M, F, min_support=2).toarray().tolist() == [[3, 2, 0, 0, 0]]
    assert m.coverage(M, F, 5, min_support=2).n_features.tolist() == [2]
    # the curve over the supported features only: c_N = 1, c_1 = mean |F(x) ∩ F(D)| / |F(D)|
    c = m.expected_coverage_curve(np.array([3, 2, 1, 1]), 3, min_support=2)
    assert c[-1] == pytest.approx(1.0) and c[0] == pytest.approx((2 + 1 + 2) / 3 / 2)
    with pytest.raises(m.MetricsError, match="min_support"):
        m.benchmark_features(M, F, min_support=0)


def test_shape_errors_name_the_fix():
    with pytest.raises(m.MetricsError, match="same samples"):
        m.coverage(m.membership([0, 1]), sp.csr_matrix((3, 4), dtype=bool))
    with pytest.raises(QScopeError):
        m.overlap_matrices(np.zeros(3), np.zeros((3, 2)))
    with pytest.raises(m.MetricsError, match="n_f"):
        m.expected_coverage_curve(np.array([5]), 3)


# ----------------------------------------------------------------------------- curve / R̂
def brute_curve(sets):
    """Exact E|F(S)| / |F(D)| by enumerating every subset."""
    N = len(sets)
    FD = set().union(*sets)
    out = []
    for n in range(1, N + 1):
        tot = cnt = 0
        for S in itertools.combinations(range(N), n):
            tot += len(set().union(*(sets[i] for i in S)))
            cnt += 1
        out.append(tot / cnt / len(FD))
    return np.array(out)


def counts_of(sets):
    F = sets_to_F(sets, 1 + max(max(s) for s in sets if s))
    return m.feature_frequency(F)


def test_curve_equals_enumeration_and_monte_carlo():
    rng = np.random.default_rng(3)
    sets = [set(rng.choice(25, rng.integers(1, 8), replace=False).tolist()) for _ in range(10)]
    k, N = counts_of(sets), len(sets)
    c = m.expected_coverage_curve(k, N)
    assert np.allclose(c, brute_curve(sets), atol=1e-12)
    # Monte Carlo on a larger instance, where enumeration is out of reach
    big = [set(rng.choice(60, rng.integers(1, 10), replace=False).tolist()) for _ in range(40)]
    kb = counts_of(big)
    nf = (kb > 0).sum()
    for n in (1, 3, 10, 25):
        draws = [len(set().union(*(big[i] for i in rng.choice(40, n, replace=False)))) / nf
                 for _ in range(3000)]
        se = np.std(draws) / math.sqrt(len(draws))
        assert abs(np.mean(draws) - m.expected_coverage_curve(kb, 40, [n])[0]) < 4 * se + 1e-9


def test_curve_endpoints_and_both_evaluation_routes_agree():
    rng = np.random.default_rng(4)
    F = random_F(rng, 300, 200, 0.03)
    k = m.feature_frequency(F)
    c = m.expected_coverage_curve(k, 300)  # dense route (cumprod)
    sizes = np.diff(F.indptr)
    assert c[0] == pytest.approx(sizes.mean() / (k > 0).sum(), rel=1e-12)
    assert c[-1] == 1.0 and np.all(np.diff(c) >= -1e-15)
    ns = np.array([1, 7, 50, 299, 300])
    assert np.allclose(m.expected_coverage_curve(k, 300, ns), c[ns - 1], atol=1e-11)  # sparse route
    # large N, Zipf-like counts: sparse (gammaln) and dense (cumprod) routes agree
    kb = np.minimum(20_000, (rng.pareto(0.8, 3000) * 5 + 1).astype(np.int64))
    full = m.expected_coverage_curve(kb, 20_000)
    pts = m.curve_points(20_000)
    assert pts[0] == 1 and pts[-1] == 20_000 and pts.size <= 202
    assert np.allclose(m.expected_coverage_curve(kb, 20_000, pts), full[pts - 1], atol=1e-9)


def test_redundancy_r_hat_and_auc():
    rng = np.random.default_rng(5)
    F = random_F(rng, 80, 120, 0.05)
    k = m.feature_frequency(F)
    nf = int((k > 0).sum())
    r = m.redundancy(k, 80)
    c = m.expected_coverage_curve(k, 80)
    assert r.auc == pytest.approx(c.mean(), rel=1e-12)
    assert r.r_hat == pytest.approx(c.sum() / nf, rel=1e-12)
    assert r.r_hat == pytest.approx(80 * r.auc / nf, rel=1e-12)
    assert r.n_features == nf and r.ns[0] == 1 and r.ns[-1] == 80 and r.c[-1] == pytest.approx(1.0)
    # one prompt shows everything -> AUC = 1 (every sample fires the same set)
    same = m.redundancy(np.array([50, 50, 50]), 50)
    assert same.auc == pytest.approx(1.0) and same.r_hat == pytest.approx(50 / 3)
    assert math.isnan(m.redundancy(np.array([0, 0]), 5).r_hat)


def test_rarefied_coverage():
    rng = np.random.default_rng(6)
    sets = [set(rng.choice(20, rng.integers(1, 6), replace=False).tolist()) for _ in range(9)]
    k = counts_of(sets)
    nf = int((k > 0).sum())
    assert m.rarefied_coverage(k, 9, 9) == pytest.approx(nf)
    assert m.rarefied_coverage(k, 9, 0) == pytest.approx(0.0)
    assert m.rarefied_coverage(k, 9, 4) == pytest.approx(brute_curve(sets)[3] * nf, rel=1e-12)
    with pytest.raises(m.MetricsError, match="n must be"):
        m.rarefied_coverage(k, 9, 10)


def test_chao1_hand_examples():
    assert m.chao1(np.array([1, 1, 1, 2, 3, 0])) == pytest.approx(5 + 9 / 2)
    assert m.chao1(np.array([1, 1, 3])) == pytest.approx(3 + 1.0)  # f2 = 0: f1(f1-1)/2
    assert m.chao1(np.array([4, 5])) == 2.0


# ----------------------------------------------------------------------------- per sample
def test_novelty_suite_and_within():
    F = sets_to_F([{0, 1}, {1, 2}, {3}, {2, 4}, {5}], 6)
    M = m.membership_from_pairs([0, 0, 1, 1, 1], [0, 1, 1, 2, 3], 2, 5)  # sample 4 outside the suite
    nov = samples.novelty(M, F)
    assert nov.suite.tolist() == [1, 0, 1, 1, 0]  # 0: f0; 2: f3; 3: f4 (f5's sample is outside)
    W = nov.within.toarray()
    assert W[0].tolist() == [1, 1, 0, 0, 0]  # within D0 = {0,1}: f0 for 0, f2 for 1
    assert W[1].tolist() == [0, 1, 1, 1, 0]  # within D1 = {1,2,3}: 1 has f1, 2 has f3, 3 has f4


def brute_pairs(sets, t):
    out = {}
    for i, j in itertools.combinations(range(len(sets)), 2):
        u = len(sets[i] | sets[j])
        if u and len(sets[i] & sets[j]) / u >= t - 1e-12:
            out[(i, j)] = len(sets[i] & sets[j]) / u
    return out


@pytest.mark.parametrize("t", [0.3, 0.5, 0.75, 0.9, 1.0])
def test_near_duplicates_exact_against_all_pairs(t):
    rng = np.random.default_rng(7)
    sets = []
    for _ in range(150):  # families of perturbed copies of varied sizes, plus noise
        if sets and rng.random() < 0.5:
            s = set(sets[rng.integers(len(sets))])
            for _ in range(rng.integers(0, 3)):
                (s.discard if rng.random() < 0.5 and len(s) > 1 else s.add)(int(rng.integers(80)))
        else:
            s = set(rng.choice(80, rng.integers(1, 15), replace=False).tolist())
        sets.append(s)
    F = sets_to_F(sets, 80)
    nd = samples.near_duplicates(F, threshold=t, block_rows=37)
    got = dict(zip(zip(nd.i.tolist(), nd.j.tolist()), nd.jaccard.tolist()))
    want = brute_pairs(sets, t)
    assert got.keys() == want.keys() and len(want) > 0
    assert all(abs(got[p] - want[p]) < 1e-12 for p in want)


def test_near_duplicates_finds_planted_pairs_and_flags_benchmarks():
    rng = np.random.default_rng(8)
    sets = [set(rng.choice(2000, 40, replace=False).tolist()) for _ in range(400)]
    planted = {(3, 250), (10, 11), (120, 399)}
    for a, b in planted:
        s = set(sets[a])
        s.remove(next(iter(s)))
        sets[b] = s | {1999}
    F = sets_to_F(sets, 2000)
    M = m.membership(np.repeat([0, 1], 200))
    nd = samples.near_duplicates(F, M, threshold=0.9)
    assert set(zip(nd.i.tolist(), nd.j.tolist())) == planted
    assert dict(zip(zip(nd.i.tolist(), nd.j.tolist()), nd.same_benchmark.tolist())) == {
        (3, 250): False, (10, 11): True, (120, 399): False}
    with pytest.raises(m.MetricsError, match="threshold"):
        samples.near_duplicates(F, threshold=0)


# ----------------------------------------------------------------------------- bootstrap / summary
def test_bootstrap_intervals():
    rng = np.random.default_rng(9)
    F = sp.vstack([sets_to_F([{0, 1, 2}] * 15, 40), random_F(rng, 30, 40, 0.1)]).tocsr()
    M = m.membership(np.repeat([0, 1], [15, 30]))
    b = m.bootstrap(M, F, replicates=60, seed=1)
    assert b.n_features_lo[0] == b.n_features_hi[0] == 3  # identical samples: no spread
    obs = m.coverage(M, F).n_features[1]
    assert b.n_features_lo[1] < b.n_features_hi[1] <= obs  # resampling cannot add features
    assert np.all(b.asym_lo <= b.asym_hi + 1e-12)
    again = m.bootstrap(M, F, replicates=60, seed=1)
    assert np.array_equal(again.asym_lo, b.asym_lo)


def test_summarize_with_null_and_to_dict():
    rng = np.random.default_rng(10)
    X = sp.random(60, 50, density=0.1, random_state=3, format="csr", dtype=np.float32)
    null = sp.random(60, 50, density=0.3, random_state=4, format="csr", dtype=np.float32)
    M = m.membership(rng.integers(0, 3, 60), 3)
    s = m.summarize(X, M, ["a", "b", "c"], d_sae=50, null=null)
    assert np.allclose(s.excess.asym, s.overlap.asym - s.null_overlap.asym, equal_nan=True)
    assert s.rarefied_n == int(s.coverage.n_samples.min())
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["names"] == ["a", "b", "c"] and d["suite_union"] == s.coverage.union
    b0 = d["benchmarks"][0]
    assert set(b0) >= {"name", "n_samples", "n_features", "share_of_dsae", "share_of_union", "r_hat",
                       "auc", "rarefied_coverage", "chao1", "curve", "null_n_features", "saturated"}
    assert b0["curve"]["n"][0] == 1 and b0["curve"]["n"][-1] == b0["n_samples"]
    assert len(d["overlap"]["asym"]) == 3 and d["overlap_excess"] is not None
    with pytest.raises(m.MetricsError, match="one name per row"):
        m.summarize(X, M, ["a", "b"])
