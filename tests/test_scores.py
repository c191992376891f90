"""Score tables in (data/scores.py, data/score_names.py, data/score_lmeval.py) and the proxies (analysis/proxies.py).

Every input shape is written from one planted score matrix (tests/score_fixtures.py) and must read
back as that matrix, in points; lm-eval results files follow lm-eval 0.4's own layout (copied from
the genuine dummy run in tests/data/lmeval). Bad inputs raise ScoreTableError with the fix in the
message. The proxies are checked against slow, obvious set arithmetic.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from score_fixtures import TOPICS, planted_scores, write_json_records, write_lmeval_runs, write_long, write_parquet, write_wide_csv

from qscope_eval.analysis.proxies import characteristic_similarity, proxy_matrices
from qscope_eval.data.score_names import Matcher, normalise, read_mapping
from qscope_eval.data.scores import ScoreTableError, read_scores

NAMES = list(TOPICS)
TASKS = {b: b for b in NAMES}


@pytest.fixture(scope="module")
def S() -> pd.DataFrame:
    return planted_scores(40)


def _read(paths, **kw):
    return read_scores([str(p) for p in paths], benchmarks=NAMES, tasks=TASKS, **kw)


# ----------------------------------------------------------------------------- every shape reads back the matrix
@pytest.mark.parametrize("shape", ["wide", "long_csv", "long_tsv", "parquet", "json", "lmeval"])
def test_every_shape_reads_back_the_planted_matrix_in_points(S, tmp_path, shape):
    write = {"wide": lambda: write_wide_csv(S, tmp_path / "lb.csv"), "long_csv": lambda: write_long(S, tmp_path / "l.csv"),
             "long_tsv": lambda: write_long(S, tmp_path / "l.tsv"), "parquet": lambda: write_parquet(S, tmp_path / "p.parquet"),
             "json": lambda: write_json_records(S, tmp_path / "r.json"), "lmeval": lambda: write_lmeval_runs(S, tmp_path / "runs")}
    t = _read([write[shape]()])
    got = t.matched().loc[S.index, NAMES]
    np.testing.assert_allclose(got.to_numpy(), S.to_numpy(), atol=1e-9)
    used = {m.benchmark: m for m in t.matching if m.benchmark in NAMES and m.how != "ignored"}
    assert set(used) == set(NAMES) and all(m.n_models == len(S) for m in used.values())
    assert set(t.rows.columns) == {"model", "benchmark", "score", "scale", "source", "metric"} and len(t.rows) == S.size


def test_wide_leaderboard_columns_matching_scales_and_metadata(S, tmp_path):
    t = _read([write_wide_csv(S, tmp_path / "lb.csv")])
    by = {m.column: m for m in t.matching}
    assert by["harness|hendrycksTest-high_school_mathematics|5"].benchmark == "mmlu_high_school_mathematics"
    assert by["harness|hendrycksTest-high_school_mathematics|5"].how == "leaderboard"
    assert by["MMLU (High School US History)"].benchmark == "mmlu_high_school_us_history"
    assert by["mmlu_high_school_world_history (5-shot)"].benchmark == "mmlu_high_school_world_history"
    assert by["mmlu_college_biology"].how == "exact"
    # shares (MMLU columns were written /100) and points are both detected and stated
    assert by["MMLU (High School US History)"].scale == "0-1" and by["harness|gsm8k|5"].scale == "0-100"
    assert by["harness|winogrande|5"].how == "unmatched" and "--map" in by["harness|winogrande|5"].reason
    for col in ("Average ⬆️", "#Params (B)", "Hub License", "Precision", "Type", "eval_name"):
        assert by[col].how == "ignored" and by[col].reason  # never dropped silently
    assert len(t.matching) == len(pd.read_csv(tmp_path / "lb.csv", nrows=0).columns) - 1  # every column but the model's


def test_lmeval_groups_metrics_filters_and_model_names(S, tmp_path):
    root = write_lmeval_runs(S, tmp_path / "runs")
    t = _read([root])
    by = {m.column: m for m in t.matching}
    assert by["mmlu"].how == "ignored" and "group aggregate" in by["mmlu"].reason
    assert set(t.scores.index) == set(S.index)  # config.model_args pretrained=
    assert set(t.rows[t.rows.benchmark == "gsm8k"].metric) == {"exact_match,strict-match"}  # the first filter
    flex = _read([root], filter="flexible-extract").matched()["gsm8k"]
    np.testing.assert_allclose(flex.loc[S.index], np.minimum(100, S["gsm8k"] + 5), atol=1e-9)
    only_acc = _read([root], metric="acc")
    assert "no metric 'acc'" in {m.column: m for m in only_acc.matching}["gsm8k"].reason
    # a revision keeps checkpoints apart
    f = next(root.rglob("results_*.json"))
    doc = json.loads(f.read_text())
    doc["config"]["model_args"] += ",revision=step1000"
    f.write_text(json.dumps(doc))
    assert any(m.endswith("@revision=step1000") for m in _read([root]).scores.index)


def test_the_genuine_lmeval_results_file_reads(tmp_path):
    t = read_scores(["tests/data/lmeval/dummy_run"])  # no matching: every task under its own name
    assert "my_mmlu_prehistory" in t.scores.columns and t.scores.index.tolist() == ["dummy_run"]
    assert t.scores.loc["dummy_run", "my_mmlu_prehistory"] == pytest.approx(10.0)  # acc 0.1 -> 10 points
    assert {m.column: m.scale for m in t.matching}["my_mmlu_prehistory"] == "0-1"
    assert t.rows.set_index("benchmark").loc["my_gsm8k", "metric"] == "exact_match,strict-match"


# ----------------------------------------------------------------------------- matching
@pytest.mark.parametrize("column,bench", [
    ("harness|hendrycksTest-anatomy|5", "mmlu_anatomy"), ("hendrycksTest-anatomy", "mmlu_anatomy"),
    ("MMLU (Anatomy)", "mmlu_anatomy"), ("mmlu_anatomy", "mmlu_anatomy"), ("mmlu_anatomy_5shot", "mmlu_anatomy"),
    ("leaderboard_mmlu_pro", "mmlu_pro"), ("arc:challenge", "arc_c"), ("harness|arc:challenge|25", "arc_c"),
    ("arc_challenge", "arc_c"), ("harness|gsm8k|5", "gsm8k"), ("Winogrande", "winogrande"), ("HellaSwag", "hellaswag"),
    ("truthfulqa:mc", "tqa"), ("TruthfulQA", "tqa")])
def test_leaderboard_spellings_match(column, bench):
    m = Matcher(["mmlu_anatomy", "mmlu_pro", "arc_c", "gsm8k", "winogrande", "hellaswag", "tqa"],
                {"arc_c": "arc_challenge", "tqa": "truthfulqa_mc2"})
    assert m.match(column).benchmark == bench


def test_ambiguous_column_is_an_error_naming_both():
    with pytest.raises(ScoreTableError, match=r"matches 2 stored benchmarks \(mmlu-anatomy, mmlu_anatomy\).*--map"):
        Matcher(["mmlu_anatomy", "mmlu-anatomy"]).match("MMLU (Anatomy)")


def test_map_file_yaml_and_csv(S, tmp_path):
    df = S.rename(columns={"gsm8k": "GradeSchoolMath", "humaneval": "code score"})
    p = write_parquet(df, tmp_path / "p.parquet")
    (tmp_path / "m.yaml").write_text("GradeSchoolMath: gsm8k\ncode score: null\n")
    (tmp_path / "m.csv").write_text("column,benchmark\nGradeSchoolMath,gsm8k\ncode score,\n")
    for mp in ("m.yaml", "m.csv"):
        t = _read([p], mapping=tmp_path / mp)
        by = {m.column: m for m in t.matching}
        assert by["GradeSchoolMath"].how == "map" and by["code score"].how == "ignored"
        assert "gsm8k" in t.matched().columns and "humaneval" not in t.matched().columns
    assert read_mapping(tmp_path / "m.csv") == {"GradeSchoolMath": "gsm8k", "code score": None}
    (tmp_path / "bad.yaml").write_text("GradeSchoolMath: no_such_bench\n")
    with pytest.raises(ScoreTableError, match="no_such_bench"):
        _read([p], mapping=tmp_path / "bad.yaml")


def test_normalise():
    assert normalise("harness|hendrycksTest-high_school_us_history|5") == "mmlu_high_school_us_history"
    assert normalise("MMLU (High School US History) (5-shot)") == "mmlu_high_school_us_history"


# ----------------------------------------------------------------------------- bad input
def _csv(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


HEAD = "model,gsm8k,humaneval\n"


@pytest.mark.parametrize("body,match", [
    ("a,1,2\nb,3,4\nc,5,x7\nd,1,1\n", r"humaneval.*non-numeric.*'x7'.*model 'c'"),
    ("a,1,2\nb,3,4\nc,5,170\nd,1,1\n", r"humaneval.*170.*outside \[0, 100\]"),
    ("a,1,2\nb,3,4\nc,-5,7\nd,1,1\n", r"gsm8k.*-5.*outside"),
    ("a,1,2\nb,3,4\na,5,2\nd,1,1\n", r"model 'a' has different scores for 'gsm8k'"),
    ("a,1,2\nb,3,4\n", r"only 2 model\(s\).*add the scores of more models"),
])
def test_bad_cells(tmp_path, body, match):
    with pytest.raises(ScoreTableError, match=match):
        _read([_csv(tmp_path, HEAD + body)])


def test_missing_tokens_duplicates_empty_and_constant_columns(tmp_path):
    p = _csv(tmp_path, "model,gsm8k,humaneval,mmlu_college_biology,mmlu_high_school_biology\n"
                       "a,10,-,50,\nb,20,30,50,NaN\nc,30,,50,\nd,40,25,50,\nb,20,30,50,\ne,50,35,50,\n")
    t = _read([p])
    by = {m.column: m for m in t.matching}
    assert np.isnan(t.scores.loc["a", "humaneval"]) and t.scores.loc["b", "humaneval"] == 30
    assert by["mmlu_college_biology"].how == "ignored" and "constant" in by["mmlu_college_biology"].reason
    assert by["mmlu_high_school_biology"].how == "ignored" and "empty" in by["mmlu_high_school_biology"].reason
    assert any("merged" in n for n in t.notes) and any("same score" in n for n in t.notes)
    assert list(t.matched().columns) == ["gsm8k", "humaneval"]


@pytest.mark.parametrize("name,content,match", [
    ("e.csv", b"", "is empty"),
    ("g.csv", bytes(range(256)) * 8, "not a score table"),
    ("g.parquet", b"PAR1 not really", "not a score table"),
    ("x.json", b'{"a": 1}', "not a score table"),
])
def test_not_a_table(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ScoreTableError, match=match):
        _read([tmp_path / name])


def test_lmeval_from_another_harness_version(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results_2024.json").write_text(json.dumps({"config": {}, "versions": {}}))
    with pytest.raises(ScoreTableError, match=r"results_2024.json.*top level: config, versions.*'results' object"):
        _read([tmp_path / "r"])
    (tmp_path / "r" / "results_2024.json").write_text(json.dumps({"results": {"gsm8k": {"acc": 0.3, "acc_stderr": 0.1}}}))
    with pytest.raises(ScoreTableError, match=r"without ',<filter>'.*lm-eval < 0.4"):
        _read([tmp_path / "r"])


def test_nothing_matches_says_what_was_unmatched(tmp_path):
    with pytest.raises(ScoreTableError, match=r"no score column matches.*'foo'.*--map"):
        _read([_csv(tmp_path, "model,foo,bar\na,1,2\nb,2,3\nc,3,1\n")])


# ----------------------------------------------------------------------------- proxies against slow set arithmetic
def test_proxies_against_obvious_set_arithmetic():
    rng = np.random.default_rng(3)
    n, d, K = 60, 40, 4
    F = sp.csr_matrix(rng.random((n, d)) < 0.15)
    labels = np.arange(n) % K
    M = sp.csr_matrix((np.ones(n, bool), (labels, np.arange(n))), shape=(K, n))
    P = proxy_matrices(M, F)
    Fd = F.toarray()
    sets = [set(np.flatnonzero(Fd[labels == k].any(axis=0))) for k in range(K)]
    counts = np.array([Fd[labels == k].sum(axis=0) for k in range(K)], float)
    p = counts / counts.sum(axis=1, keepdims=True)
    for a in range(K):
        assert np.isnan(P["sym"][a, a])
        for b in range(K):
            if a != b:
                assert P["sym"][a, b] == pytest.approx(len(sets[a] & sets[b]) / min(len(sets[a]), len(sets[b])))
                assert P["freq"][a, b] == pytest.approx(np.minimum(p[a], p[b]).sum())
    C = characteristic_similarity(M, F)
    np.testing.assert_allclose(C, C.T)
    np.testing.assert_allclose(P["characteristic"][~np.eye(K, dtype=bool)], C[~np.eye(K, dtype=bool)])


def test_long_table_with_a_metric_column(S, tmp_path):
    long = S.rename_axis("model").reset_index().melt(id_vars="model", var_name="task", value_name="value")
    both = pd.concat([long.assign(metric="acc"), long.assign(metric="acc_norm", value=long.value / 2)])
    p = tmp_path / "m.csv"
    both.to_csv(p, index=False)
    first, norm = _read([p]), _read([p], metric="acc_norm")
    np.testing.assert_allclose(first.matched().loc[S.index, NAMES], S, atol=1e-9)
    np.testing.assert_allclose(norm.matched().loc[S.index, NAMES], S / 2, atol=1e-9)
    assert {m.column: m.how for m in first.matching}["metric"] == "ignored"


def test_json_object_and_tsv_wide_shapes_and_folder_errors(S, tmp_path):
    (tmp_path / "obj.json").write_text(json.dumps({m: row.to_dict() for m, row in S.iterrows()}))
    S.rename_axis("Model").reset_index().to_csv(tmp_path / "w.tsv", sep="\t", index=False)
    for name in ("obj.json", "w.tsv"):
        np.testing.assert_allclose(_read([tmp_path / name]).matched().loc[S.index, NAMES], S, atol=1e-9)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ScoreTableError, match="holds no results_\\*.json, CSV"):
        _read([tmp_path / "empty_dir"])
    with pytest.raises(ScoreTableError, match="no model column.*name the column of model names 'model'"):
        _read([_csv(tmp_path, "a,gsm8k\n1,2\n3,4\n")])


def test_records_named_results_json_are_a_table(S, tmp_path):
    p = write_json_records(S, tmp_path / "results.json")
    np.testing.assert_allclose(_read([p]).matched().loc[S.index, NAMES], S, atol=1e-9)

