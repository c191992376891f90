"""Tests for qscope_eval.jobs.summary.select: brute-force optima, irredundancy, a reference greedy, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from qscope_eval.analysis import select as s
from qscope_eval.errors import QScopeError


def instance(rng, n_rows, n_cols, density):
    A = rng.random((n_rows, n_cols)) < density
    A[rng.integers(n_rows, size=2), :] |= rng.random((2, n_cols)) < 0.3  # a couple of big rows
    return sp.csr_matrix(A)


def covered_weight(A, rows, w=None):
    cols = np.asarray(A[list(rows)].sum(axis=0)).ravel() > 0 if len(rows) else np.zeros(A.shape[1], bool)
    return float(cols.sum() if w is None else w[cols].sum())


def union_weight(A, w=None):
    return covered_weight(A, range(A.shape[0]), w)


def need_of(A, target, w=None):
    return math.ceil(target * union_weight(A, w) - 1e-9)


def brute_force(A, costs, target, w=None):
    """Cheapest subset reaching the target, by enumerating all 2^n subsets with bitmasks."""
    n = A.shape[0]
    wv = np.ones(A.shape[1]) if w is None else w
    masks = [sum(1 << int(j) for j in A[i].indices) for i in range(n)]
    need = need_of(A, target, w)
    cover = [0] * (1 << n)
    cost = [0.0] * (1 << n)
    best = math.inf
    for sub in range(1, 1 << n):
        low = (sub & -sub).bit_length() - 1
        cover[sub] = cover[sub & (sub - 1)] | masks[low]
        cost[sub] = cost[sub & (sub - 1)] + costs[low]
        if cost[sub] < best - 1e-9:
            got = sum(wv[j] for j in range(A.shape[1]) if cover[sub] >> j & 1) if w is not None \
                else bin(cover[sub]).count("1")
            if got >= need:
                best = cost[sub]
    return best


def reference_greedy(A, costs, need):
    """Plain (non-lazy) greedy: best gain/cost, ties to the lowest row index."""
    sets = [set(A[i].indices.tolist()) for i in range(A.shape[0])]
    covered, order = set(), []
    while len(covered) < need:
        ratios = [len(st - covered) / c for st, c in zip(sets, costs)]
        r = int(np.argmax(ratios))
        covered |= sets[r]
        order.append(r)
    return order


# ----------------------------------------------------------------------------- greedy
def test_greedy_hand_example_and_curve():
    # rows: 0={0,1,2,3}, 1={0,1}, 2={2,3}, 3={4}, 4={3,4}
    A = sp.csr_matrix(np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0],
                                [0, 0, 0, 0, 1], [0, 0, 0, 1, 1]], bool))
    sel = s.greedy_cover(A)
    assert sel.order.tolist() == [0, 3] and sorted(sel.rows.tolist()) == [0, 3]
    assert sel.cost == 2 and sel.covered == 5 and sel.coverage == 1.0
    assert sel.curve_cost.tolist() == [1.0, 2.0] and np.allclose(sel.curve_coverage, [0.8, 1.0])
    # row 0 made expensive: the two cheap halves win on cost-effectiveness
    sel = s.greedy_cover(A, costs=[10, 1, 1, 1, 1])
    assert sorted(sel.rows.tolist()) == [1, 2, 3] and sel.cost == 3
    # target < 1: 4 of 5 elements suffice
    assert s.greedy_cover(A, target=0.8).rows.tolist() == [0]


def test_greedy_matches_plain_greedy_order():
    rng = np.random.default_rng(0)
    for _ in range(30):
        A = instance(rng, int(rng.integers(5, 40)), int(rng.integers(5, 60)), 0.15)
        costs = rng.integers(1, 5, A.shape[0]).astype(float)
        target = float(rng.choice([1.0, 0.9, 0.6]))
        sel = s.greedy_cover(A, costs=costs, target=target)
        assert sel.order.tolist() == reference_greedy(A, costs, need_of(A, target))


def test_greedy_is_irredundant_and_reaches_target():
    rng = np.random.default_rng(1)
    for trial in range(150):
        A = instance(rng, int(rng.integers(3, 30)), int(rng.integers(3, 50)), rng.uniform(0.05, 0.4))
        costs = rng.uniform(0.5, 5, A.shape[0]) if trial % 2 else None
        target = float(rng.choice([1.0, 0.95, 0.8, 0.5, 0.3]))
        sel = s.greedy_cover(A, costs=costs, target=target)
        need = need_of(A, target)
        assert covered_weight(A, sel.rows) >= need and sel.coverage >= target - 1e-12
        for r in sel.rows:
            rest = [x for x in sel.rows if x != r]
            assert covered_weight(A, rest) < need, f"row {r} is redundant (trial {trial})"
        assert set(sel.rows.tolist()) <= set(sel.order.tolist())
        assert np.all(np.diff(sel.curve_coverage) > 0) and sel.curve_coverage[-1] >= target - 1e-12


def test_weighted_elements():
    A = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], bool))
    assert s.greedy_cover(A, target=0.5, weights=[1, 1, 5]).rows.tolist() == [1]
    assert s.exact_cover(A, target=0.5, weights=[1, 1, 5]).rows.tolist() == [1]
    assert s.greedy_cover(A, target=0.5).rows.tolist() == [0]


# ----------------------------------------------------------------------------- exact
def test_exact_reaches_brute_force_optimum_and_beats_greedy():
    rng = np.random.default_rng(2)
    gaps = 0
    for trial in range(40):
        n = int(rng.integers(4, 13))
        A = instance(rng, n, int(rng.integers(6, 30)), rng.uniform(0.1, 0.35))
        costs = rng.integers(1, 9, n).astype(float) if trial % 3 else np.ones(n)
        w = rng.integers(1, 4, A.shape[1]).astype(float) if trial % 4 == 0 else None
        target = float(rng.choice([1.0, 0.9, 0.75, 0.5]))
        ex = s.exact_cover(A, costs=costs, target=target, weights=w)
        gr = s.greedy_cover(A, costs=costs, target=target, weights=w)
        opt = brute_force(A, costs, target, w)
        assert ex.optimal and ex.status == "optimal"
        assert ex.cost == pytest.approx(opt)
        assert ex.cost <= gr.cost + 1e-9
        assert covered_weight(A, ex.rows, w) >= need_of(A, target, w)
        assert ex.gap == pytest.approx(0.0, abs=1e-6) and ex.bound <= ex.cost + 1e-6
        gaps += gr.cost > ex.cost + 1e-9
    assert gaps > 0  # the instances are hard enough for greedy to miss sometimes


def test_exact_time_limit_reports_honestly():
    rng = np.random.default_rng(3)
    A = instance(rng, 400, 300, 0.03)
    costs = rng.uniform(1, 3, 400)
    ex = s.exact_cover(A, costs=costs, target=0.97, time_limit=0.05)
    assert covered_weight(A, ex.rows) >= need_of(A, 0.97)
    if not ex.optimal:
        assert "time limit" in ex.status or "fallback" in ex.status
        assert math.isnan(ex.bound) or ex.bound <= ex.cost + 1e-6
        assert math.isnan(ex.gap) or 0 <= ex.gap <= 1
    else:
        assert ex.gap <= 1e-6
    assert ex.cost <= s.greedy_cover(A, costs=costs, target=0.97).cost + 1e-9


# ----------------------------------------------------------------------------- budgets / baseline
def test_max_coverage_cardinality_and_cost_budget():
    rng = np.random.default_rng(4)
    for _ in range(20):
        A = instance(rng, 10, 25, 0.2)
        k = int(rng.integers(1, 5))
        sel = s.max_coverage(A, k)
        assert sel.rows.size <= k
        masks = [sum(1 << int(j) for j in A[i].indices) for i in range(10)]
        cover = [0] * (1 << 10)
        for sub in range(1, 1 << 10):
            cover[sub] = cover[sub & (sub - 1)] | masks[(sub & -sub).bit_length() - 1]
        best = max(bin(cover[sub]).count("1") for sub in range(1 << 10) if bin(sub).count("1") <= k)
        assert sel.covered >= (1 - 1 / math.e) * best - 1e-9
        costs = rng.uniform(1, 4, 10)
        cb = s.max_coverage(A, 5.0, costs=costs)
        assert cb.cost <= 5.0 + 1e-9 and cb.covered > 0


def test_cost_budget_falls_back_to_best_single_row():
    # ratio greedy takes the cheap singleton, then the big row no longer fits the budget
    A = sp.csr_matrix(np.array([[1] + [0] * 9, [0] + [1] * 9], bool))
    sel = s.max_coverage(A, 10.0, costs=[1.0, 10.0])
    assert sel.rows.tolist() == [1] and sel.covered == 9 and sel.cost == 10.0
    assert s.max_coverage(A, 11.0, costs=[1.0, 10.0]).covered == 10


def test_random_baseline():
    rng = np.random.default_rng(5)
    A = instance(rng, 30, 40, 0.1)
    full = s.random_baseline(A, k=30)
    assert full.mean == 1.0 and full.std == 0.0
    a, b = s.random_baseline(A, k=3, seed=7), s.random_baseline(A, k=3, seed=7)
    assert a == b and 0 < a.mean < 1
    greedy = s.max_coverage(A, 3)
    assert greedy.coverage > a.mean  # greedy beats random at equal size
    costs = rng.uniform(1, 2, 30)
    rb = s.random_baseline(A, cost=4.0, costs=costs, trials=5)
    assert 0 < rb.mean < 1 and rb.budget == 4.0 and rb.k is None


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(target=0.0), "target"), (dict(target=1.5), "target"), (dict(target=float("nan")), "target"),
    (dict(costs=[1, 2]), "one entry per row"), (dict(costs=[1, 0, 1]), "> 0"),
    (dict(costs=[1, -2, 1]), "> 0"), (dict(costs=[1, float("nan"), 1]), "finite"),
    (dict(weights=[1, 1]), "one entry per column"), (dict(costs=["a", "b", "c"]), "numbers"),
])
def test_bad_inputs_raise_selection_error(kwargs, match):
    A = sp.csr_matrix(np.eye(3, dtype=bool))
    with pytest.raises(s.SelectionError, match=match):
        s.greedy_cover(A, **kwargs)
    with pytest.raises(QScopeError):
        s.exact_cover(A, **kwargs)


def test_empty_and_other_bad_inputs():
    with pytest.raises(s.SelectionError, match="empty incidence"):
        s.greedy_cover(sp.csr_matrix((3, 4), dtype=bool))
    with pytest.raises(s.SelectionError, match="empty incidence"):
        s.exact_cover(np.zeros((0, 5)))
    with pytest.raises(s.SelectionError, match="2-D"):
        s.greedy_cover(np.ones(4))
    A = sp.csr_matrix(np.eye(3, dtype=bool))
    with pytest.raises(s.SelectionError, match="budget"):
        s.max_coverage(A, 0)
    with pytest.raises(s.SelectionError, match="integer"):
        s.max_coverage(A, 1.5)
    with pytest.raises(s.SelectionError, match="exactly one"):
        s.random_baseline(A, k=1, cost=1.0)
    with pytest.raises(s.SelectionError, match="time_limit"):
        s.exact_cover(A, time_limit=0)
