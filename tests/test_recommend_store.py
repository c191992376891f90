"""The recommendation end to end on a store (no model): evidence per decision, containment, the null check."""

from __future__ import annotations

import numpy as np
import pytest

from qscope_eval.jobs.summary import load, select_benchmarks
from qscope_eval.store import Store

TOPICS = {"alpha": 0, "alpha_too": 0, "beta": 1, "gamma": 2}  # alpha_too: other prompts of alpha's topic


def topic_store(path, null_same: bool | None, seed=0, n=60, d=256, same_words: bool = False):
    """4 benchmarks of 60 prompts (each fires 8 of its topic's 40 features, Zipf-weighted) + alpha_sub, the first
    20 prompts of alpha (same texts: the store keeps them once). The null fires 10 random features per prompt,
    or, with `null_same`, exactly what the SAE fires; `null_same=None`: no null encoder at all. `same_words`: the
    prompts of one topic share their topic's word (the words see the topics as the SAE does)."""
    rng = np.random.default_rng(seed)
    s = Store(path)
    e = s.register_encoder("toy@main|sae|L1|top|sae", "toy", "main", "sae", 1, "top", "sae", d, {})
    en = (None if null_same is None else
          s.register_encoder("toy@main|sae|L1|top|null", "toy", "main", "sae", 1, "top", "null", d, {}))
    pools = [rng.choice(d, 40, replace=False) for _ in range(3)]
    pz = 1 / np.arange(1, 41)
    pz /= pz.sum()
    texts = {}
    for name, t in TOPICS.items():
        texts[name] = ([f"topic{t} item {i + 1000 * len(texts)}" for i in range(n)] if same_words else
                       [f"{name} question {i}" for i in range(n)])
        ids = s.register_benchmark(name, "synth", {"path": "x"}, texts[name])
        feats = [rng.choice(pools[t], 8, replace=False, p=pz) for _ in ids]
        nulls = feats if null_same else [rng.choice(d, 10, replace=False) for _ in ids]
        for enc, fs in ((e, feats), (en, nulls))[:1 if null_same is None else 2]:
            rows = np.repeat(np.arange(len(ids)), [len(f) for f in fs])
            s.write_batch(enc.encoder_id, ids, np.full(len(ids), 20), np.zeros(len(ids), bool), rows,
                          np.concatenate(fs), np.ones(rows.size), np.ones(rows.size, int))
    s.register_benchmark("alpha_sub", "synth", {"path": "x"}, texts["alpha"][:20])
    return s


def decisions(tmp_path, null_same, **kw):
    with topic_store(tmp_path / "t.duckdb", null_same, **kw) as store:
        rep = select_benchmarks(store, load(store))
    return rep, {r["benchmark"]: r for r in rep["table"]}


def test_same_topic_and_subset_dropped_with_evidence_other_topics_kept(tmp_path):
    rep, rows = decisions(tmp_path, null_same=False)
    assert rep["kind"] == "characteristic" and rep["null_checked"]
    assert rows["beta"]["decision"] == rows["gamma"]["decision"] == "keep"
    assert rows["alpha_sub"]["decision"] == "drop" and rows["alpha_sub"]["contained"]
    assert rows["alpha_sub"]["covered_by"] == "alpha" and "every one of its 20 prompts" in rows["alpha_sub"]["reason"]
    assert {rows["alpha"]["decision"], rows["alpha_too"]["decision"]} == {"keep", "drop"}
    drop = rows["alpha"] if rows["alpha"]["decision"] == "drop" else rows["alpha_too"]
    assert drop["ratio"] >= rep["tau"] and drop["above_null"] and drop["ratio_lo"] <= drop["ratio"] <= drop["ratio_hi"]
    assert drop["null_ratio"] < drop["ratio"] and len(drop["examples"]) == 3
    assert rows["beta"]["only_here"] > 0.8 and rows["beta"]["distinctive_features"]
    assert rows["beta"]["only_here_prompt"].startswith("beta question")


def test_evidence_that_the_null_shows_as_well_keeps_the_benchmark_and_says_so(tmp_path):
    rep, rows = decisions(tmp_path, null_same=True)
    assert rep["null_scale"] == pytest.approx(1.0)
    assert rows["alpha"]["decision"] == rows["alpha_too"]["decision"] == "keep"
    assert "random dictionary" in rows["alpha_too"]["reason"] and not rows["alpha_too"]["above_null"]
    assert rows["alpha_sub"]["decision"] == "drop"  # its prompts are alpha's: no statistics needed


def test_without_a_null_encoder_the_check_is_skipped_and_said(tmp_path):
    from qscope_eval.report.recommendation import recommendation_html

    rep, rows = decisions(tmp_path, null_same=None)
    assert not rep["null_checked"] and rows["beta"]["null_ratio"] is None
    assert {rows["alpha"]["decision"], rows["alpha_too"]["decision"]} == {"keep", "drop"}
    assert "No null encoder" in recommendation_html({"selection": rep})


def test_evidence_the_words_show_as_sharply_keeps_the_benchmark_and_says_so(tmp_path):
    """alpha and alpha_too share their topic's word as they share features: the SAE's evidence for the pair is
    no sharper than the words', so neither is dropped, and the reason says so (the null check alone would drop)."""
    rep, rows = decisions(tmp_path, null_same=False, same_words=True)
    assert rep["lexical_checked"] and rep["lexical_scale"] is not None
    assert rows["alpha"]["decision"] == rows["alpha_too"]["decision"] == "keep"
    r = rows["alpha_too"]
    assert r["above_null"] and not r["above_lexical"] and "no evidence beyond the words" in r["reason"]
    assert r["lexical_ratio"] > 0.5 and r["checks_skipped"] == []
    assert rows["alpha_sub"]["decision"] == "drop"  # containment needs no baseline
    assert rep["baseline_pairs"]["candidates"] >= 2 and rep["baseline_pairs"]["above_both"] == 0
