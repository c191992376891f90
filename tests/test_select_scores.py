"""`select --scores` end to end, and the audit's summary/report section, on a small topic store.

The store's SAE features follow planted topics (score_fixtures.build_topic_store); the score table
has 100 synthetic models whose scores follow the same topics with little noise, so most same-topic
benchmarks are predictable from one kept member; two benchmarks have no scores (decided by features).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from score_fixtures import build_topic_store

from qscope_eval.cli import cli

TOPICS = {f"{t}_{i}": t for t in ("math", "code", "history", "biology") for i in range(3)}
TOPICS.update({"law_0": "law", "math_new": "math", "law_new": "law"})
UNSCORED = ("math_new", "law_new")
KEYS = {"kind", "level", "definition", "max_error", "min_tau", "cost_kind", "chosen", "cost", "total_cost",
        "cost_share", "models", "min_models", "decided_by_scores", "decided_by_features", "cv", "table",
        "random_baseline", "frontier", "chosen_point", "feature_point", "disagreements", "matching", "notes"}
ROW_KEYS = {"benchmark", "decision", "decided_by", "cost", "n_models", "predicted_error", "kendall_tau",
            "carried_by", "random_error", "feature", "reason"}


def scores(n=100, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kinds = sorted(set(TOPICS.values()))
    g, t = rng.normal(size=n), {k: rng.normal(size=n) for k in kinds}
    S = pd.DataFrame({b: 55 + 6 * g + 5 * t[k] + 0.8 * rng.normal(size=n) for b, k in TOPICS.items()
                      if b not in UNSCORED}, index=[f"org/m{i}" for i in range(n)])
    return S.round(3)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bselect")
    build_topic_store(root / "t.duckdb", TOPICS).close()
    scores().to_csv(root / "scores.csv", index_label="model")
    return root


def _run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_select_scores_json_and_table(env):
    db, sc = str(env / "t.duckdb"), str(env / "scores.csv")
    r = _run("select", "--db", db, "--scores", sc, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert KEYS <= set(out) and out["kind"] == "behaviour" and out["models"] == 100
    rows = {row["benchmark"]: row for row in out["table"]}
    assert all(ROW_KEYS <= set(row) for row in rows.values())
    for b in UNSCORED:
        assert rows[b]["decided_by"] == "features" and rows[b]["n_models"] == 0
    assert rows["law_0"]["decided_by"] == "scores" and rows["law_0"]["decision"] == "keep"  # its own factor
    assert rows["law_new"]["decision"] == "drop" and rows["law_new"]["feature"]["covered_by"] == "law_0"
    dropped = [row for row in rows.values() if row["decided_by"] == "scores" and row["decision"] == "drop"]
    assert len(dropped) >= 5
    for row in dropped:
        pe = row["predicted_error"]
        assert pe["lo"] <= pe["mae"] <= pe["hi"] and pe["n_models"] == out["cv"]["report_models"]
        topic = TOPICS[row["benchmark"]]
        assert TOPICS[row["carried_by"][0]["benchmark"]] == topic  # carried by a kept benchmark of its topic
    assert out["cost_share"] < 0.5
    rb, cp = out["random_baseline"], out["chosen_point"]
    assert cp["max_error"] < rb["max_error"]["mean"] and cp["error"] < rb["mean_error"]["mean"]
    assert out["cv"]["selection_models"] + out["cv"]["report_models"] == 100 and out["cv"]["nested"] is False
    assert [p["cost_share"] for p in out["frontier"]] == sorted(p["cost_share"] for p in out["frontier"])
    assert out["feature_point"]["cost_share"] > 0
    t = _run("select", "--db", db, "--scores", sc, "--max-error", "1.5", "--min-tau", "0.7")
    assert t.exit_code == 0 and "decided_by" in t.output and "random kept sets of the same cost" in t.output


def test_select_scores_bad_input_is_one_error_line(env, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("this is not\x00 a table")
    r = CliRunner().invoke(cli, ["select", "--db", str(env / "t.duckdb"), "--scores", str(bad)])
    assert r.exit_code == 1 and r.output.strip().startswith("Error:") and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["select", "--db", str(env / "t.duckdb"), "--scores", str(env / "scores.csv"),
                                 "--level", "sample"])
    assert r.exit_code == 1 and "--scores decides benchmarks" in r.output


def test_audit_summary_and_report_section(env, tmp_path):
    from qscope_eval.jobs.audit import AuditSettings, _behaviour, render_layers, summarize_layers
    from qscope_eval.jobs.summary import load
    from qscope_eval.store import Store

    with Store(env / "t.duckdb", read_only=True) as store:
        enc = [e.encoder_id for e in store.encoders() if e.kind == "sae"]
        settings = AuditSettings("demo", tuple(TOPICS), tuple(enc),
                                 scores={"paths": [str(env / "scores.csv")], "max_error": 2.0})
        s = summarize_layers(store, settings, None, tokens=False)
        bad = AuditSettings("demo", tuple(TOPICS), tuple(enc), scores={"paths": [str(tmp_path / "nope.csv")]})
        warnings: list[str] = []
        assert _behaviour(store, load(store, enc[0]), bad, warnings) is None
    assert len(warnings) == 1 and warnings[0].startswith("selection.scores skipped:")
    b = s[0]["behaviour_selection"]
    assert b["kind"] == "behaviour" and len(b["table"]) == len(TOPICS)
    files = render_layers(s, tmp_path / "rep", png=False)
    html = files.html.read_text()
    assert "Recommendation from scores" in html and 'id="chart-behaviour_selection"' in html
    assert json.loads(files.summary_json.read_text())["behaviour_selection"]["chosen"] == b["chosen"]
