"""Template dominance (analysis/template.py) and what the recommendation does with it.

A suite of templated prompts read with `last` pooling (tiny random Qwen3 + random SAE: the real encode path;
every prompt ends in "\\nAnswer:") must not yield drops no better than chance: the recommendation either keeps
the benchmarks with the template reason, or its drops are within-group significantly more often than random
drops. The statistic itself is checked against a slow loop.
"""

from __future__ import annotations

import json

import numpy as np
from scipy.stats import binomtest

from qscope_eval.analysis import recommend as rc
from qscope_eval.analysis.template import TEMPLATE_SHARE, template_share, template_warning


def test_template_share_equals_a_slow_loop():
    rng = np.random.default_rng(0)
    P = rng.random((4, 30)) * (rng.random((4, 30)) < 0.5)
    want = []
    for d in range(4):
        shared = sum(min(P[e, f] for e in range(4)) for f in range(30))
        want.append(shared / P[d].sum())
    np.testing.assert_allclose(template_share(P), want)
    assert template_share(np.zeros((2, 3))).tolist() == [0.0, 0.0]


def _templated(rng, n_bench=6, n=40, d=64, template=0.0):
    """Benchmarks in 3 topic groups of 2; each prompt fires 6 of its group's 12 features, plus, with probability
    `template`, the 6 template features 0-5 every prompt shares (replacing topic features)."""
    M = np.zeros((n_bench, n_bench * n), bool)
    F = np.zeros((n_bench * n, d), bool)
    for b in range(n_bench):
        M[b, b * n:(b + 1) * n] = True
        pool = 6 + 12 * (b // 2) + np.arange(12)
        for i in range(n):
            if rng.random() < template:
                F[b * n + i, :6] = True
                F[b * n + i, rng.choice(pool, 1)] = True
            else:
                F[b * n + i, rng.choice(pool, 6, replace=False)] = True
    return M, F


def test_template_dominated_benchmarks_are_kept_and_topic_ones_are_not():
    M, F = _templated(np.random.default_rng(1), template=0.0)
    a = rc.assess(M, F, config=rc.RecommendConfig(replicates=20))
    assert not a.template_dominated.any() and a.template.max() < 0.05
    assert rc.recommend(a).kept.size == 3  # one per topic group
    M, F = _templated(np.random.default_rng(1), template=0.95)
    a = rc.assess(M, F, config=rc.RecommendConfig(replicates=20))
    assert a.template_dominated.all() and a.template.min() >= TEMPLATE_SHARE
    assert rc.recommend(a).kept.size == 6  # no evidence either way: nothing dropped
    w = template_warning([f"b{i}" for i in range(6)], a.template)
    assert w and w.startswith("6 of 6 benchmarks") and "template" in w


TOPICS = {
    "algebra": ["Solve for x when 3x plus {k} equals {m}", "Factor the polynomial x squared minus {k}x plus {m}",
                "What is the value of {k} times {m} minus x"],
    "biology": ["Which organelle of the cell makes ATP for {k} cycles", "How many chromosomes does a cell with {k} pairs hold",
                "Which enzyme digests starch in {k} minutes"],
    "history": ["In which year did the treaty of {k} end the war", "Who ruled the empire after {k} years of conflict",
                "Which king signed the charter in the year {m}"],
}


def _write_suite(root):
    from synthetic import write_tiny_suite

    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for topic, stems in TOPICS.items():
        for half in (0, 1):  # two benchmarks per topic group
            name = f"{topic}_{half}"
            rows = [{"q": stems[(i + half) % 3].format(k=3 + i + 7 * half, m=11 + 2 * i) + "?\nA. one\nB. two\n"
                          "C. three\nD. four\nAnswer:"} for i in range(12)]
            (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            lines.append(f"  - {{name: {name}, path: {name}.jsonl, text: q}}\n")
    return write_tiny_suite(root, name="templated", benchmarks="".join(lines))


def test_templated_prompts_read_at_the_last_token_yield_no_chance_drops(tmp_path):
    """The issue's failure on the real path: `last` pooling on prompts that all end in "Answer:"."""
    from qscope_eval.data.suite import load_suite
    from qscope_eval.jobs.pipeline import encode_suite
    from qscope_eval.jobs.summary import load, select_benchmarks, template_warnings
    from qscope_eval.analysis import metrics
    from qscope_eval.store import Store

    suite = _write_suite(tmp_path / "suite")
    with Store(tmp_path / "t.duckdb") as s:
        encode_suite(load_suite(suite), s, progress=False)
        ld = load(s)
        rep = select_benchmarks(s, ld)
        warns = template_warnings(ld, metrics.fired(ld.real.X))
    rows = {r["benchmark"]: r for r in rep["table"]}
    group = lambda name: name.rsplit("_", 1)[0]  # noqa: E731
    drops = [r for r in rows.values() if r["decision"] == "drop"]
    for r in rows.values():
        if r["decision"] == "keep" and r["template_dominated"]:
            assert "prompt template shared by every benchmark" in r["reason"]
    if drops:  # any drop must be within its topic group far more often than a random stand-in would be
        same = sum(group(r["covered_by"]) == group(r["benchmark"]) for r in drops)
        assert binomtest(same, len(drops), 1 / 5, alternative="greater").pvalue < 0.05, drops
    dominated = [r for r in rows.values() if r["template_dominated"]]
    assert bool(dominated) == bool(warns)
    assert rep["lexical_checked"] and rep["null_checked"] and "baseline_pairs" in rep
    # the words are no template: they tell the topic groups apart
    lex = ld.lexical.data
    assert ld.lexical.source == "stored"
    sym = metrics.overlap_matrices(lex.M, lex.X > 0, 1).sym
    names = lex.benchmarks
    for i, b in enumerate(names):
        row = np.where(np.arange(len(names)) == i, -1, sym[i])
        assert group(names[int(np.argmax(row))]) == group(b)


def test_two_benchmarks_are_never_called_a_template():
    """With two benchmarks, what both share may be their common topic: the check needs three."""
    M, F = _templated(np.random.default_rng(2), n_bench=2, template=0.0)  # one topic group of two
    assert template_share(rc.benchmark_profiles(M, F)).min() > TEMPLATE_SHARE
    a = rc.assess(M, F, config=rc.RecommendConfig(replicates=20))
    assert not a.template_dominated.any()
