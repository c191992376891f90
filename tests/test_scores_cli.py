"""`validate --scores` end to end: a small store whose SAE features follow a planted topic structure
(the null's and the words' do not), score tables of 100 synthetic models with the same structure.

Asserted: the JSON keys; the pairs' figures against an independent computation (pandas correlations of
the input table, set arithmetic on the stored features); the analysis recovers the planted structure for
the SAE and not for the null or lexical baselines; --save round-trips; every bad input exits 1 with one
`Error:` line and leaves the database byte-identical; the service serves the saved result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from score_fixtures import TOPICS, build_topic_store, planted_scores, write_lmeval_runs, write_wide_csv

from qscope_eval.cli import cli
from qscope_eval.store import Store, copy_database

FAST = ["--permutations", "199", "--replicates", "50"]
KEYS = {"validation_id", "kind", "created_at", "encoder", "sources", "matching", "scales", "n_models", "models",
        "benchmarks", "config", "agreement", "notes"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    build_topic_store(root / "base.duckdb").close()
    S = planted_scores(100)
    return root / "base.duckdb", S, write_wide_csv(S, root / "leaderboard.csv"), write_lmeval_runs(S, root / "runs")


@pytest.fixture
def db(base, tmp_path):
    path = tmp_path / "s.duckdb"
    copy_database(base[0], path)
    Store(path).close()  # the first open re-points the parts view at the copy's folder
    return path


def digest(db: Path) -> str:
    h = hashlib.sha256(db.read_bytes())
    parts = db.parent / (db.name + ".parts")
    for p in sorted(parts.iterdir()) if parts.exists() else []:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def run(*args):
    return CliRunner().invoke(cli, ["validate", *map(str, args)])


def test_json_keys_pairs_and_planted_structure(base, db):
    _, S, csv, _ = base
    res = run("--db", db, "--scores", csv, "--no-save", "--json", *FAST)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert KEYS <= set(out) and out["kind"] == "scores" and out["n_models"] == 100
    assert [b["name"] for b in out["benchmarks"]] == list(TOPICS)
    assert out["scales"]["mmlu_college_biology"] == "0-1" and out["scales"]["gsm8k"] == "0-100"
    for b in out["benchmarks"]:  # the table's own means, in points
        assert b["mean"] == pytest.approx(S[b["name"]].mean()) and b["sd"] == pytest.approx(S[b["name"]].std())
    ag = out["agreement"]
    raw = S.corr()
    with Store(db, read_only=True) as s:  # the SAE's F(D) from SQL, Eq. 11 by hand
        fired = s.con.execute("SELECT DISTINCT m.benchmark, a.feature FROM activations a JOIN memberships m "
                              "USING (sample_id) WHERE a.encoder_id = 1 AND a.value > 0").fetchall()
    sets = {b: {f for bb, f in fired if bb == b} for b in TOPICS}
    for p in ag["pairs"]:
        assert p["score_corr"] == pytest.approx(raw.loc[p["a"], p["b"]], abs=1e-9)
        a, b = sets[p["a"]], sets[p["b"]]
        assert p["proxies"]["sae:sym"] == pytest.approx(len(a & b) / min(len(a), len(b)))
    names = {x["name"] for x in ag["proxies"]}
    assert {f"{k}:{m}" for k in ("sae", "null", "lexical") for m in ("sym", "freq", "characteristic")} | {"lexical:tfidf"} <= names
    part = {x["name"]: x["partial_pearson"] for x in ag["proxies"]}
    # planted: same-topic pairs correlate beyond the general factor and share SAE features; null and words do not
    assert min(part["sae:sym"], part["sae:freq"], part["sae:characteristic"]) > 0.7
    assert max(abs(part[n]) for n in names if not n.startswith("sae:")) < 0.5


def test_lmeval_runs_and_table_give_the_same_analysis(base, db):
    _, S, csv, runs = base
    a = json.loads(run("--db", db, "--scores", csv, "--no-save", "--json", *FAST).output)
    b = json.loads(run("--db", db, "--scores", runs, "--no-save", "--json", *FAST).output)
    for x, y in zip(a["agreement"]["proxies"], b["agreement"]["proxies"]):  # the same up to float rounding
        assert x.keys() == y.keys() and x["name"] == y["name"]
        assert all(x[k] == pytest.approx(y[k], abs=1e-9) for k in x if isinstance(x[k], float))
    assert {m["column"]: m["how"] for m in b["matching"]}["mmlu"] == "ignored"


def test_save_round_trip_and_report_table(base, db):
    _, S, csv, _ = base
    res = run("--db", db, "--scores", csv, *FAST)
    assert res.exit_code == 0, res.output
    assert res.output.index("columns of") > 0 and "harness|winogrande|5" in res.output and "unmatched" in res.output
    assert "sae:sym" in res.output and "null:sym" in res.output and "lexical:tfidf" in res.output
    with Store(db, read_only=True) as s:
        saved = s.latest_score_validation(1)
        got = s.benchmark_scores()
        assert s.latest_validation(1) is None  # the per-sample validation stays apart
        assert [v["validation_id"] for v in s.score_validations()] == [saved["validation_id"]]
    assert saved["kind"] == "scores" and saved["n_models"] == 100
    wide = got.pivot(index="model", columns="benchmark", values="score").loc[S.index, list(S.columns)]
    np.testing.assert_allclose(wide.to_numpy(), S.to_numpy(), atol=1e-9)
    assert set(got[got.benchmark == "mmlu_college_biology"].scale) == {"0-1"}
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 100
        assert con.execute("SELECT kind FROM validations").fetchall() == [("scores",)]


def _bad(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize("name,content,message", [
    ("garbage.csv", bytes(range(256)) * 4, "is not a score table"),
    ("empty.csv", b"", "is empty"),
    ("dup.csv", "model,gsm8k,humaneval\na,1,2\nb,2,3\nc,3,1\na,9,2\n", "different scores"),
    ("text.csv", "model,gsm8k,humaneval\na,1,2\nb,2,oops\nc,3,1\n", "non-numeric"),
    ("range.csv", "model,gsm8k,humaneval\na,1,2\nb,2,300\nc,3,1\n", "outside [0, 100]"),
    ("few.csv", "model,gsm8k,humaneval\na,1,2\nb,2,3\n", "fewer than 3 models"),
    ("none.csv", "model,foo,bar\na,1,2\nb,2,3\nc,3,1\n", "no score column matches"),
    ("one.csv", "model,gsm8k,bar\na,1,2\nb,2,3\nc,3,1\n", "only 1 score column"),
])
def test_bad_input_exits_1_and_leaves_the_database(db, tmp_path, name, content, message):
    before = digest(db)
    res = run("--db", db, "--scores", _bad(tmp_path, name, content), *FAST)
    assert res.exit_code == 1 and message in res.output, res.output
    assert res.output.count("Error:") == 1 and "Traceback" not in res.output
    assert digest(db) == before


def test_input_kind_and_option_errors(base, db, tmp_path):
    _, _, csv, runs = base
    assert "neither was given" in run("--db", db).output
    assert "not both" in run("--db", db, runs, "--scores", csv).output
    assert "--reference BENCH" in run("--db", db, "--scores", csv, "--control", "reference").output
    res = run("--db", db, "--scores", csv, "--reference", "nope", "--no-save", *FAST)
    assert res.exit_code == 1 and "--reference 'nope'" in res.output
    (tmp_path / "amb.yaml").write_text("harness|gsm8k|5: not_stored\n")
    res = run("--db", db, "--scores", csv, "--map", tmp_path / "amb.yaml", *FAST)
    assert res.exit_code == 1 and "not_stored" in res.output


def test_reference_control_by_table_column(base, db):
    _, _, csv, _ = base
    res = run("--db", db, "--scores", csv, "--reference", "harness|gsm8k|5", "--no-save", "--json", *FAST)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["config"]["control"] == "reference" and out["config"]["reference"] == "gsm8k"


def test_service_serves_score_validations(base, db):
    from fastapi.testclient import TestClient

    from qscope_eval.service.app import create_app

    client = TestClient(create_app(db))
    r = client.get("/api/score_validation")
    assert r.status_code == 404 and "validate --db" in r.json()["error"]
    out = json.loads(run("--db", db, "--scores", base[2], "--json", *FAST).output)
    assert client.get("/api/score_validation").json() == json.loads(json.dumps(out))
    listed = client.get("/api/score_validations").json()
    assert [v["validation_id"] for v in listed["validations"]] == [out["validation_id"]]
    from qscope_eval.service.app import score_validation_html  # the index page's section (the page itself: test_serve)

    part = score_validation_html(db)
    assert "Score validation" in part and "sae:sym" in part and "api/score_validations" in part


def test_report_shows_the_saved_score_validation(base, db, tmp_path):
    out = json.loads(run("--db", db, "--scores", base[2], "--json", *FAST).output)
    res = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(tmp_path / "rep"), "--no-png"])
    assert res.exit_code == 0, res.output
    assert f"scores: {out['agreement']['verdicts'][0]}" in res.output
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["score_validation"]["validation_id"] == out["validation_id"]
    page = (tmp_path / "rep" / "report.html").read_text()
    assert 'id="chart-score_validation"' in page and "Score validation" in page and "lexical:tfidf" in page
    from qscope_eval.report.behaviour import charts

    spec = charts(summary)["score_validation"].to_dict()
    pts = spec["data"].get("values") or next(iter(spec["datasets"].values()))
    kinds = {p["kind"] for p in pts}
    assert kinds == {"SAE", "null dictionary", "prompts' words"}
    assert len(pts) == len(out["agreement"]["pairs"]) * 10  # every pair under every proxy


def test_lexical_baseline_tracks_topics_when_the_words_carry_them(base, tmp_path):
    """Same scores, but each topic's prompts now use words of their own: the words alone must find the topics."""
    db = tmp_path / "words.duckdb"
    build_topic_store(db, topical_words=True).close()
    out = json.loads(run("--db", db, "--scores", base[2], "--no-save", "--json", *FAST).output)
    part = {x["name"]: x["partial_pearson"] for x in out["agreement"]["proxies"]}
    assert part["lexical:tfidf"] > 0.7 and part["lexical:sym"] > 0.7 and part["sae:sym"] > 0.7
    assert max(abs(part[n]) for n in part if n.startswith("null:")) < 0.5
    vs_words = [c for c in out["agreement"]["comparisons"]
                if c["proxy"] == "sae:sym" and c["baseline"] == "lexical:tfidf" and c["statistic"] == "partial_pearson"]
    assert vs_words and vs_words[0]["lo"] < 0.1  # the SAE is not shown to beat words that carry the same topics


def test_missing_cells_pairs_with_too_few_models_are_reported(base, db, tmp_path):
    S = planted_scores(30)
    S.loc[S.index[4:], "humaneval"] = np.nan  # humaneval: 4 models, under min_pair_models (5)
    p = tmp_path / "holes.csv"
    S.rename_axis("model").reset_index().to_csv(p, index=False)
    res = run("--db", db, "--scores", p, "--no-save", *FAST)
    assert res.exit_code == 0, res.output
    assert "pairs with too few models" in res.output
    out = json.loads(run("--db", db, "--scores", p, "--no-save", "--json", *FAST).output)
    few = out["agreement"]["too_few_models"]
    assert sorted((f["a"], f["b"]) for f in few) == sorted(tuple(sorted((a, "humaneval"), key=list(TOPICS).index))
                                                           for a in TOPICS if a != "humaneval")
    assert all(f["n_models"] == 4 for f in few)
    assert {b["name"]: b["n_models"] for b in out["benchmarks"]}["humaneval"] == 4
