"""Reference corpora and gaps: what no benchmark measures (DESIGN §5b), and the evidence behind a feature.

Pure functions on planted sparse data (a topic only the reference has must be found, a topic a benchmark has
must not, whatever the corpus sizes); then the real path on small real data: the demo backbone (MiniLM) and
its trained SAE encode a few dozen MMLU questions per topic, with astronomy only in the reference and
biology in both.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from qscope_eval.errors import QScopeError, SourceError, SuiteError
from qscope_eval.analysis.gaps import GapConfig, benjamini_hochberg, cofiring, find_gaps, top_by_value
from qscope_eval.data.suite import SUITES_DIR, parse_suite

# ---------------------------------------------------------------- planted sparse data

D, GENERIC, TOPIC_W = 400, 40, 20


def corpus(rng, topic: int, n: int) -> np.ndarray:
    """(n, D) fired: generic features everywhere, 20 features of `topic` at 40 %, background noise."""
    X = rng.random((n, D)) < 0.005
    X[:, :GENERIC] |= rng.random((n, GENERIC)) < 0.3
    lo = GENERIC + topic * TOPIC_W
    X[:, lo:lo + TOPIC_W] |= rng.random((n, TOPIC_W)) < 0.4
    return X


def topic_features(topic: int) -> set[int]:
    return set(range(GENERIC + topic * TOPIC_W, GENERIC + (topic + 1) * TOPIC_W))


def assemble(benches: list[np.ndarray], refs: list[np.ndarray]):
    """(F, M benchmarks, ref rows, reference parts) from per-corpus blocks."""
    blocks = benches + refs
    F = sp.csr_matrix(np.vstack(blocks))
    starts = np.cumsum([0] + [len(b) for b in blocks])
    member = sp.lil_matrix((len(blocks), F.shape[0]), dtype=bool)
    for i in range(len(blocks)):
        member[i, starts[i]:starts[i + 1]] = True
    member = member.tocsr()
    ref = np.zeros(F.shape[0], bool)
    ref[starts[len(benches)]:] = True
    return F, member[: len(benches)], ref, member[len(benches):]


@pytest.mark.parametrize("ref_scale", [1, 8])
def test_planted_gap_found_and_covered_topic_not(ref_scale):
    rng = np.random.default_rng(ref_scale)
    benches = [corpus(rng, 0, 40), corpus(rng, 1, 120), corpus(rng, 2, 25)]
    refs = [corpus(rng, 1, 30 * ref_scale), corpus(rng, 3, 30 * ref_scale)]  # topic 1 covered, topic 3 not
    F, M, ref, parts = assemble(benches, refs)
    res = find_gaps(F, M, ref, GapConfig(), parts)
    gaps = set(np.flatnonzero(res.calls.gap).tolist())
    assert len(gaps & topic_features(3)) >= 12, "most features of the reference-only topic are gaps"
    assert not gaps & (topic_features(1) | set(range(GENERIC))), "covered or generic features called gaps"
    top = res.groups[0]
    assert set(top.features.tolist()) <= topic_features(3)
    assert all(s >= F.shape[0] - 30 * ref_scale for s in top.samples), \
        "typical prompts of the gap group come from the reference-only topic"
    # the headline follows what the reference holds: half of it is the uncovered topic
    assert 0.25 < res.gap_share < 0.75 and 0.25 < res.covered_share < 0.75
    only_covered = find_gaps(*assemble(benches, refs[:1])[:3])
    only_gap = find_gaps(*assemble(benches, refs[1:])[:3])
    assert only_covered.covered_share > 0.7 and only_covered.gap_share < 0.05
    assert only_gap.gap_share > 0.6 and only_gap.gap_share > 3 * only_gap.covered_share


def test_small_topic_in_a_mixed_reference_is_found_through_its_named_corpus():
    rng = np.random.default_rng(7)
    benches = [corpus(rng, 0, 100), corpus(rng, 1, 100)]
    refs = [corpus(rng, 0, 400), corpus(rng, 2, 40)]  # the gap topic is 1/11 of the reference
    F, M, ref, parts = assemble(benches, refs)
    with_parts = set(np.flatnonzero(find_gaps(F, M, ref, GapConfig(), parts).calls.gap).tolist())
    assert len(with_parts & topic_features(2)) >= 12 and not with_parts & topic_features(0)


def test_gaps_need_support_and_a_benchmark_close_enough_is_coverage():
    rng = np.random.default_rng(3)
    benches = [corpus(rng, 0, 60)]
    refs = [corpus(rng, 0, 60)]
    F, M, ref, parts = assemble(benches, refs)
    res = find_gaps(F, M, ref, GapConfig(), parts)
    assert res.n_gap_features == 0 and res.groups == []
    # a feature seen twice in the reference and never in a benchmark is "too rare to call", not a gap
    F = F.tolil()
    rows = np.flatnonzero(ref)[:2]
    F[rows, D - 1] = True
    res = find_gaps(F.tocsr(), M, ref, GapConfig(min_count=3), parts)
    assert not res.calls.gap[D - 1] and not res.calls.covered[D - 1]


def test_benjamini_hochberg_matches_the_step_up_rule():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True] + [False] * 8
    assert benjamini_hochberg(p, 0.5).sum() == 10 and benjamini_hochberg(np.zeros(0), 0.05).size == 0


def test_cofiring_and_top_by_value():
    X = sp.csr_matrix(np.array([[3.0, 1.0, 0, 0], [2.0, 0, 1.0, 0], [0, 0, 1.0, 0], [5.0, 1.0, 0, 2.0]]))
    co = cofiring(X > 0, 0, k=5)
    assert co.features.tolist() == [1, 3, 2] and co.n_both.tolist() == [2, 1, 1]  # J = 2/3, 1/3, 1/4
    assert co.jaccard[0] == pytest.approx(2 / 3)
    rows, vals = top_by_value(X, 0, k=2)
    assert rows.tolist() == [3, 0] and vals.tolist() == [5.0, 3.0]


# ---------------------------------------------------------------- suite and store (no model)

def base_suite(**extra) -> dict:
    return {"name": "s", "model": "m", "sae": {"path": "sae"}, "layers": [0],
            "benchmarks": [{"name": "a", "path": "a.jsonl", "text": "q"}], **extra}


def test_reference_entries_parse_like_benchmarks_and_names_must_differ(tmp_path):
    s = parse_suite(base_suite(reference=[{"name": "traffic", "path": "t.jsonl", "text": "prompt"}]),
                    source=tmp_path / "s.yaml")
    assert s.reference[0].path == str((tmp_path / "t.jsonl").resolve())
    with pytest.raises(SuiteError, match="differ from every benchmark name; rename: a"):
        parse_suite(base_suite(reference=[{"name": "a", "path": "t.jsonl", "text": "q"}]))
    with pytest.raises(SuiteError, match="reference must be a list"):
        parse_suite(base_suite(reference={"name": "t"}))


def test_empty_or_identical_reference_is_refused(tmp_path):
    from qscope_eval.jobs.pipeline import load_rows

    (tmp_path / "a.jsonl").write_text('{"q": "one"}\n{"q": "two"}\n')
    (tmp_path / "blank.jsonl").write_text('{"q": " "}\n')
    suite = parse_suite(base_suite(reference=[{"name": "r", "path": "blank.jsonl", "text": "q"}]),
                        source=tmp_path / "s.yaml")
    with pytest.raises(SourceError, match="reference 'r' is empty"):
        load_rows(suite)
    suite = parse_suite(base_suite(reference=[{"name": "r", "path": "a.jsonl", "text": "q"}]), source=tmp_path / "s.yaml")
    with pytest.raises(SourceError, match="holds exactly the prompts of benchmark 'a'"):
        load_rows(suite)


def test_database_from_before_references_opens_and_gaps_says_how_to_fix(tmp_path):
    from qscope_eval.jobs.gaps import gaps_report
    from qscope_eval.store import Store

    db = tmp_path / "old.duckdb"
    with duckdb.connect(str(db)) as con:  # the benchmarks table as it was before the `role` column
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        con.execute("CREATE TABLE benchmarks (name VARCHAR PRIMARY KEY, suite VARCHAR NOT NULL, spec JSON NOT NULL, "
                    "n_samples INTEGER NOT NULL, cost DOUBLE, updated_at TIMESTAMP NOT NULL)")
        con.execute("INSERT INTO benchmarks VALUES ('old', 's', '{}', 1, NULL, now())")
    with Store(db) as store:
        assert store.benchmark_roles() == {"old": "benchmark"} and store.benchmark_names() == ["old"]
        with pytest.raises(QScopeError, match="holds no reference corpus.*add a `reference:` list"):
            gaps_report(store)


# ---------------------------------------------------------------- real path: demo backbone + SAE, real MMLU

N = 30


@pytest.fixture(scope="module")
def real_db(tmp_path_factory) -> Path:
    """Biology and US history as benchmarks; college biology (covered) and astronomy (not) as reference."""
    from qscope_eval.jobs.pipeline import encode_suite
    from qscope_eval.store import Store

    entry = lambda name, subject: {"name": name, "path": f"asset:mmlu/{subject}.jsonl", "text": "{{question}}",
                                   "limit": N}
    suite = parse_suite({
        "name": "gaps-test", "model": {"id": "asset:minilm", "dtype": "float32", "device": "cpu"},
        "sae": {"path": str(SUITES_DIR / "demo_sae")}, "layers": [3], "pooling": "top", "null": True,
        "benchmarks": [entry("bio", "high_school_biology"), entry("history", "high_school_us_history")],
        "reference": [entry("ref_bio", "college_biology"), entry("ref_astro", "astronomy")],
    })
    db = tmp_path_factory.mktemp("gaps") / "g.duckdb"
    with Store(db) as store:
        encode_suite(suite, store, progress=False)
    return db


def astro_texts(db: Path) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute("SELECT s.text FROM memberships m JOIN samples s USING (sample_id) "
                                          "WHERE m.benchmark = 'ref_astro'").fetchall()}


def test_reference_is_stored_but_never_a_benchmark(real_db):
    from qscope_eval.jobs.summary import load
    from qscope_eval.store import Store

    with duckdb.connect(str(real_db), read_only=True) as con:
        assert sorted(r[0] for r in con.execute("SELECT DISTINCT benchmark FROM coverage").fetchall()) == ["bio", "history"]
        roles = dict(con.execute("SELECT role, count(DISTINCT benchmark) FROM feature_support GROUP BY 1").fetchall())
        assert roles == {"benchmark": 2, "reference": 2}
        top = con.execute("SELECT reference, ratio FROM reference_gaps WHERE encoder_id = 1 "
                          "ORDER BY n_samples * ratio DESC LIMIT 1").fetchall()[0]
        assert top[0] == "ref_astro" and top[1] > 2
    with Store(real_db) as store:
        assert load(store).real.benchmarks == ["bio", "history"]


def test_real_gap_is_astronomy_and_covered_biology_is_not(real_db):
    from qscope_eval.jobs.gaps import gaps_report
    from qscope_eval.store import Store

    with Store(real_db) as store:
        rep = gaps_report(store)
        astro, bio = gaps_report(store, reference="ref_astro"), gaps_report(store, reference="ref_bio")
    astro_set = astro_texts(real_db)
    share = [np.mean([p["text"] in astro_set for p in g["prompts"]]) for g in rep["groups"]]
    weight = [g["excess_share"] for g in rep["groups"]]
    assert share[0] >= 0.8 and np.average(share, weights=weight) >= 0.75, (share, weight)
    assert astro["coverage"]["gap_share"] > 2 * bio["coverage"]["gap_share"]
    assert astro["coverage"]["covered_share"] < bio["coverage"]["covered_share"]
    assert rep["null"] is not None and set(rep["null"]) == set(rep["coverage"])
    assert rep["benchmarks"] == ["bio", "history"] and rep["reference"] == ["ref_bio", "ref_astro"]


def test_cli_gaps_export_and_feature_evidence(real_db, tmp_path):
    from qscope_eval.cli.main import cli

    runner = CliRunner()
    seeds = tmp_path / "seeds.jsonl"
    res = runner.invoke(cli, ["gaps", "--db", str(real_db), "--json", "--export", str(seeds)])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert {"encoder", "reference", "n_reference_samples", "benchmarks", "config", "coverage", "null", "groups",
            "exported"} <= set(rep)
    lines = [json.loads(x) for x in seeds.read_text().splitlines()]
    assert len(lines) == rep["exported"]["n_prompts"] == sum(len(g["prompts"]) for g in rep["groups"])
    lead = rep["groups"][0]["features"][0]
    res = runner.invoke(cli, ["feature", "--db", str(real_db), str(lead), "--json", "--top", "2"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output)
    freq = {f["name"]: f["frequency"] for f in ev["frequency"]}
    assert freq["ref_astro"] > 2 * max(freq["bio"], freq["history"])
    assert ev["tokens_available"] and all(any(t["value"] > 0 for t in s["tokens"]) for s in ev["top_samples"])
    assert "".join(t["token"] for t in ev["top_samples"][0]["tokens"]).lower().count(
        ev["top_samples"][0]["text"].lower()[:20]) == 1, "token pieces join back into the prompt"
    for args, msg in ((["gaps", "--reference", "nope"], "reference 'nope' is not stored"),
                      (["gaps", "--reference", "bio"], "'bio' is a benchmark, not a reference corpus"),
                      (["feature", "999999"], "out of range")):
        res = runner.invoke(cli, args[:1] + ["--db", str(real_db)] + args[1:])
        assert res.exit_code == 1 and msg in res.output and res.output.count("\n") == 1, res.output


def test_audit_summary_and_report_show_the_gaps(real_db):
    from qscope_eval.jobs.audit import AuditSettings, summarize_layers
    from qscope_eval.report.html import report_html
    from qscope_eval.store import Store

    with Store(real_db) as store:
        settings = AuditSettings("gaps-test", ("bio", "history"), (1,))
        summary = summarize_layers(store, settings, None)[0]
    gaps = summary["gaps"]
    assert gaps["groups"] and gaps["groups"][0]["evidence"]["tokens_available"]
    assert summary["metrics"]["names"] == ["bio", "history"], "the reference is no benchmark in the summary"
    page = report_html(summary, specs={})
    assert "What no benchmark measures" in page and "<mark" in page and "reference covered" in page
    first = gaps["groups"][0]["prompts"][0]["text"]
    assert html.escape(first, quote=True) in page, "typical prompts are shown, escaped"
    assert "names no reference corpus" in report_html({**summary, "gaps": None}, specs={})


def test_feature_evidence_without_the_model_says_why_and_shows_the_rest(real_db, tmp_path):
    from qscope_eval.jobs.evidence import feature_evidence
    from qscope_eval.store import Store, copy_database

    db = tmp_path / "old.duckdb"
    copy_database(real_db, db)  # the file and its parts folder
    with duckdb.connect(str(db)) as con:  # an encoder stored before its model spec was recorded
        con.execute("""UPDATE encoders SET params = '{"k": 32, "pooling": "top"}'""")
        feature = con.execute("SELECT feature FROM activations WHERE encoder_id = 1 LIMIT 1").fetchall()[0][0]
    with Store(db) as store:
        ev = feature_evidence(store, feature, top=2)
    assert not ev["tokens_available"] and "rerun `qscope-eval encode" in ev["tokens_note"]
    assert ev["frequency"] and all("tokens" not in s for s in ev["top_samples"])
