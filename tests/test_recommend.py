"""Tests for qscope_eval.recommend: hand-computed profiles and shares, and the keep/drop rules on topic data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from qscope_eval.analysis import recommend as rc


def test_hand_computed_profiles_characteristic_and_shares():
    # samples: s0 {0,1}, s1 {0}, s2 {0,1}, s3 {2}, s4 {3}, s5 {3}; A = {s0,s1}, B = {s2,s3}, C = {s4,s5}
    F = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1]]))
    M = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]))
    P = rc.benchmark_profiles(M, F)
    np.testing.assert_allclose(P, [[1, .5, 0, 0], [.5, .5, .5, 0], [0, 0, 0, 1]])
    b = rc.background(P)
    np.testing.assert_allclose(b, [.5, 1 / 3, 1 / 6, 1 / 3])
    E = rc.characteristic(P, b)
    np.testing.assert_allclose(E, [[.5, 1 / 6, 0, 0], [0, 1 / 6, 1 / 3, 0], [0, 0, 0, 2 / 3]])
    C = rc.covered_share(E)
    # A by B: min(1/6, 1/6) / (1/2 + 1/6) = 1/4; B by A: (1/6) / (1/6 + 1/3) = 1/3; C shares nothing
    np.testing.assert_allclose(C, [[1, .25, 0], [1 / 3, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(rc.containment(M), np.eye(3, dtype=bool))


def test_characteristic_of_a_row_with_no_mass_falls_back_to_its_frequencies():
    P = np.array([[.5, .5], [.5, .5]])  # two identical benchmarks: nothing above the background
    np.testing.assert_allclose(rc.characteristic(P, rc.background(P)), P)
    np.testing.assert_allclose(rc.covered_share(rc.characteristic(P, rc.background(P))), np.ones((2, 2)))


def topic_data(seed=0, d=300, sizes=(("a", 0, 80), ("b", 1, 80), ("c", 2, 80), ("a2", 0, 60))):
    """Prompts of 3 topics: each fires 8 of its topic's 40 features (Zipf-weighted) and 2 random ones.

    Returns F (n_samples × d) and M with one row per (name, topic, n) in ``sizes``.
    """
    rng = np.random.default_rng(seed)
    pools = [rng.choice(d, 40, replace=False) for _ in range(3)]
    pz = 1 / np.arange(1, 41)
    pz /= pz.sum()
    rows, members = [], []
    for _, t, n in sizes:
        start = len(rows)
        for _ in range(n):
            f = np.unique(np.r_[rng.choice(pools[t], 8, replace=False, p=pz), rng.choice(d, 2)])
            rows.append(f)
        members.append(np.arange(start, start + n))
    F = sp.csr_matrix((np.ones(sum(r.size for r in rows)), np.concatenate(rows),
                       np.r_[0, np.cumsum([r.size for r in rows])]), shape=(len(rows), d))
    return F, members


def membership(members, n_samples):
    r = np.concatenate([np.full(m.size, i) for i, m in enumerate(members)])
    return sp.csr_matrix((np.ones(r.size), (r, np.concatenate(members))), shape=(len(members), n_samples))


def random_null(F, seed=1):
    """A null encoder on the same samples: 10 features at random per prompt (no topic structure)."""
    rng = np.random.default_rng(seed)
    n, d = F.shape
    cols = np.concatenate([rng.choice(d, 10, replace=False) for _ in range(n)])
    return sp.csr_matrix((np.ones(cols.size), cols, np.arange(0, 10 * n + 1, 10)), shape=(n, d))


CFG = rc.RecommendConfig(replicates=40)


def test_strict_subset_and_exact_duplicate_are_dropped_and_other_topics_kept():
    F, (a, b, c, a2) = topic_data()
    names = ["a", "b", "c", "a_same_topic", "a_subset", "a_duplicate"]
    members = [a, b, c, a2, a[:30], a.copy()]
    M = membership(members, F.shape[0])
    asm = rc.assess(M, F, random_null(F), CFG)
    r = rc.recommend(asm)
    kept = {names[k] for k in r.kept}
    assert {"b", "c"} <= kept  # the other topics stay
    assert "a_subset" not in kept and names[r.covered_by[4]] in {"a", "a_duplicate"}
    assert asm.contained[4, 0] and asm.contained[5, 0] and asm.contained[0, 5]
    assert len(kept & {"a", "a_duplicate"}) == 1  # an exact duplicate is dropped, one copy kept
    # a different draw of the same topic is covered by the statistics, not by containment
    assert "a_same_topic" not in kept and asm.contained[3].sum() == 1  # only itself
    assert asm.ratio[3, 0] >= CFG.tau and asm.above_null[3, 0]
    # across topics the share is small and nothing covers
    assert asm.ratio[1, 0] < 0.3 and not asm.covers[1, 0] and not asm.covers[0, 2]


def test_a_benchmark_whose_evidence_equals_the_null_is_kept():
    F, (a, b, c, a2) = topic_data(seed=2)
    M = membership([a, b, c, a2], F.shape[0])
    with_null = rc.assess(M, F, F, CFG)  # the "null" shows exactly what the SAE shows
    assert with_null.null_scale == pytest.approx(1.0)
    np.testing.assert_allclose(with_null.null_ratio, with_null.ratio)
    assert not with_null.above_null[3, 0] and not with_null.covers[3, 0]
    r = rc.recommend(with_null)
    assert list(r.kept) == [0, 1, 2, 3]  # nothing may be dropped on evidence the null shows too
    without = rc.recommend(rc.assess(M, F, None, CFG))
    assert 3 not in without.kept or 0 not in without.kept  # the SAE alone would drop one of the pair


def test_bigger_benchmark_kept_when_two_cover_each_other_and_exact_is_never_costlier():
    F, (a, b, c, a2) = topic_data(seed=3)
    M = membership([a, b, c, a2], F.shape[0])
    asm = rc.assess(M, F, random_null(F), CFG)
    assert asm.covers[0, 3] and asm.covers[3, 0]
    g = rc.recommend(asm)
    assert 0 in g.kept and 3 not in g.kept and g.covered_by[3] == 0  # a (80) stands in for a2 (60)
    costs = np.array([5.0, 1.0, 1.0, 1.0])
    e = rc.recommend(asm, costs, exact=True)
    assert e.cost <= rc.recommend(asm, costs).cost + 1e-9
    assert e.selection.optimal


def test_interval_brackets_the_estimate_and_self_coverage_is_a_ceiling():
    F, (a, b, c, a2) = topic_data(seed=4)
    M = membership([a, b, c, a2], F.shape[0])
    asm = rc.assess(M, F, None, CFG)
    off = ~np.eye(4, dtype=bool)
    assert np.all(asm.lo[off] <= asm.ratio[off] + 1e-12) and np.all(asm.ratio[off] <= asm.hi[off] + 1e-12)
    assert np.all((asm.self_share > 0.3) & (asm.self_share < 1))


def test_sample_weights_and_subset_share():
    F, (a, b, c, a2) = topic_data(seed=5)
    M = membership([a, b, c], F.shape[0])
    P = rc.benchmark_profiles(M, F)
    bg = rc.background(P)
    w = rc.sample_weights(P, bg, 0)
    assert w.shape == (F.shape[1],) and np.all(w >= 0)
    assert rc.subset_share(F[a], w, bg) == pytest.approx(1.0)  # the whole benchmark shows all of itself
    assert rc.subset_share(F[b], w, bg) < 0.2                 # another topic shows little of it


def test_bad_inputs_raise():
    with pytest.raises(rc.RecommendError, match="tau"):
        rc.RecommendConfig(tau=0)
    F, (a, b, c, a2) = topic_data(seed=6)
    with pytest.raises(rc.RecommendError, match="at least 2"):
        rc.assess(membership([a], F.shape[0]), F)
    with pytest.raises(rc.RecommendError, match="same samples"):
        rc.assess(membership([a, b], F.shape[0]), F, F[:10])


def test_one_benchmark_rule_because_a_kept_sets_joint_share_grows_with_its_size_alone():
    # why "measured by ONE kept benchmark", not by the kept set (docs/recommendation.md "Alternatives measured"): per feature,
    # the max over kept benchmarks picks up the covered benchmark's chance mass (its 2 random features per
    # prompt), so the joint share grows with every unrelated benchmark added, though none shares its topic
    sizes = (("c", 2, 80),) + tuple((f"o{k}", k % 2, 20) for k in range(10))
    F, members = topic_data(seed=7, sizes=sizes)
    M = membership(members, F.shape[0])
    E = rc.characteristic(rc.benchmark_profiles(M, F), rc.background(rc.benchmark_profiles(M, F)))
    best_single = rc.covered_share(E)[0, 1:].max()
    joint = [np.minimum(E[0], E[1:1 + k].max(axis=0)).sum() / E[0].sum() for k in (1, 2, 4, 10)]
    assert all(x < y for x, y in zip(joint, joint[1:]))  # more unrelated benchmarks: "covers" more
    assert joint[-1] > 3 * best_single and best_single < 0.1  # no single one shows much of it
