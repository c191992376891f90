"""`validate` end to end: genuine lm-eval logs (planted abilities) against a store built by the real pipeline.

The store: the tiny Qwen3 suite (tests/synthetic.py) over lm-eval's own gsm8k, humaneval and five
MMLU task configs on the packaged data, 20 documents each, zero-shot and without MMLU's description
line, as this project stores prompts; plus a `planted` encoder whose features follow the same topic
plan as the planted abilities (tests/lmeval_fixtures.py). The logs: lm-eval's `dummy` run (5-shot
GSM8K, MMLU with descriptions, task names of our own) copied to 24 models with planted scores.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from lmeval_fixtures import BENCH_OF, SUITE_BENCHMARKS, TOPIC, ability_correlation, plant_features, plant_models
from qscope_eval.cli import cli
from qscope_eval.jobs.pipeline import encode_suite
from qscope_eval.store import Store, copy_database
from qscope_eval.data.suite import load_suite
from qscope_eval.jobs.validation import ValidateConfig, run_validation
from synthetic import write_tiny_suite

TABLES = ["models", "sample_scores", "validations", "samples", "memberships", "activations"]
FAST = ["--draws", "400", "--replicates", "100"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(suite yaml, database with a tiny-model and a planted encoder, planted encoder id, logs of 24 models)."""
    root = tmp_path_factory.mktemp("validate")
    suite = write_tiny_suite(root, name="val", benchmarks=SUITE_BENCHMARKS, extra="limit: 20\n")
    db = root / "base.duckdb"
    with Store(db) as s:
        encode_suite(load_suite(suite), s, progress=False)
        planted = plant_features(s)
    plant_models(root / "logs")
    return suite, db, planted, root / "logs"


@pytest.fixture
def db(base, tmp_path):
    path = tmp_path / "v.duckdb"
    copy_database(base[1], path)  # the file and its parts folder
    return path


def snapshot(db: Path) -> dict:
    with duckdb.connect(str(db), read_only=True) as con:
        have = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES if t in have}


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_recovers_the_planted_structure(base, db):
    _, _, planted, logs = base
    with Store(db) as s:
        out = run_validation(s, [logs], ValidateConfig(replicates=200, draws=1000), encoder=planted, save=False)
    # every logged task lands on its benchmark, all 20 docs: 5-shot GSM8K and MMLU's description line included
    assert {m["task"]: (m["benchmark"], m["n_matched"]) for m in out["matching"]} == {t: (b, 20) for t, b in BENCH_OF.items()}
    assert out["n_models"] == 24 and all(b["n_models"] == 24 and b["n_items"] == 20 for b in out["benchmarks"])
    topic = {BENCH_OF[t]: v for t, v in TOPIC.items()}
    same = [p["score_pearson"] for p in out["pairs"] if topic[p["a"]] == topic[p["b"]]]
    cross = [p["score_pearson"] for p in out["pairs"] if topic[p["a"]] != topic[p["b"]]]
    assert np.mean(same) > np.mean(cross) + 0.3
    # observed score correlations follow the planted ability correlations (item noise only attenuates them)
    expected = [ability_correlation(topic[p["a"]], topic[p["b"]]) for p in out["pairs"]]
    assert stats.spearmanr(expected, [p["score_pearson"] for p in out["pairs"]]).statistic > 0.8
    ag = {(a["name"], a["method"]): a for a in out["agreement"]}
    sym = ag[("sym~score_pearson", "spearman")]
    assert sym["lo"] > 0 and sym["n_units"] == 21 and sym["n_models"] == 24
    assert out["verdicts"][0].startswith("on your 24 models, feature overlap (symmetric, report Eq. 11) tracks score correlation")
    assert ag[("r~r_hat", "spearman")]["value"] > 0.5
    R = {b["name"]: b for b in out["benchmarks"]}
    assert R["gsm8k"]["r"] > R["hs_math"]["r"]                  # 0 % vs 70 % coin-flip items
    assert R["gsm8k"]["r"] > R["gsm8k"]["r_null"] + 0.1          # a real ranking, not the definition's floor
    assert all(b["r_lo"] <= b["r"] <= b["r_hi"] and b["r_se"] < 0.02 for b in out["benchmarks"])


def test_cli_stores_scores_joinable_with_features_and_the_report_shows_them(base, db, tmp_path):
    _, _, planted, logs = base
    res = run("validate", "--db", db, logs, "--encoder", planted, "--reference", "my_mmlu_elementary_mathematics",
              "--json", *FAST)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) >= {"validation_id", "encoder", "n_models", "models", "draws", "replicates", "reference", "matching",
                        "benchmarks", "score_correlation", "overlap", "pairs", "agreement", "verdicts", "notes"}
    assert out["reference"] == "elem_math" and out["score_correlation"]["partial_pearson"] is not None
    assert {"sym", "freq_weighted"} <= set(out["overlap"])
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 24
        assert con.execute("SELECT count(*) FROM sample_scores").fetchone()[0] == 24 * 140
        # scores join features by sample: solve rate of samples firing each planted feature
        n = con.execute("SELECT count(DISTINCT a.feature) FROM sample_scores s JOIN activations a USING (sample_id) "
                        "WHERE a.encoder_id = ?", [planted]).fetchone()[0]
        assert n > 100
        assert con.execute("SELECT count(*) FROM model_scores WHERE n_samples = 20").fetchone()[0] == 24 * 7
    rep = run("report", "--db", db, "--out", tmp_path / "rep", "--encoder", planted, "--no-png")
    assert rep.exit_code == 0, rep.output
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Validation against behaviour (24 models)" in page and "chart-validation_r" in page
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["validation"]["validation_id"] == out["validation_id"]
    # the table output leads with the verdicts
    table = run("validate", "--db", db, logs, "--encoder", planted, "--no-save", *FAST)
    assert table.exit_code == 0 and table.stdout.startswith("on your 24 models")


def _rewrite_prompts(f: Path) -> None:
    rows = [json.loads(line) for line in f.read_text().splitlines()]
    for r in rows:
        r["arguments"]["gen_args_0"]["arg_0"] = "Translate backwards: " + r["arguments"]["gen_args_0"]["arg_0"][::-1]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _copy_logs(logs: Path, dst: Path, models: int) -> Path:
    for run_dir in sorted(logs.iterdir())[:models]:
        shutil.copytree(run_dir, dst / run_dir.name)
    return dst


def test_fatal_input_errors_are_one_line_and_write_nothing(base, db, tmp_path):
    _, _, planted, logs = base
    before = snapshot(db)
    empty = tmp_path / "empty"
    empty.mkdir()
    two = _copy_logs(logs, tmp_path / "two", 2)
    alien = _copy_logs(logs, tmp_path / "alien", 3)
    for f in alien.rglob("samples_*.jsonl"):  # prompts no stored benchmark holds
        _rewrite_prompts(f)
    for args, msg in (([empty], "no lm-eval sample logs"), ([two], "at least 3 models"),
                      ([alien], "no logged prompt matches a stored sample"),
                      ([logs, "--reference", "nope"], "--reference 'nope' is not a validated benchmark"),
                      ([logs, "--metric", "bleu"], "no usable sample logs")):
        res = run("validate", "--db", db, *args, "--encoder", planted, *FAST)
        assert res.exit_code == 1, res.output
        assert res.stderr.startswith("Error: ") and msg in res.stderr and res.stderr.count("\n") == 1
    assert snapshot(db) == before
    missing = tmp_path / "none.duckdb"
    res = run("validate", "--db", missing, logs)
    assert res.exit_code == 1 and "no database at" in res.stderr and not missing.exists()


def test_partial_problems_are_reported_and_the_rest_is_validated(base, db, tmp_path):
    _, _, planted, logs = base
    mixed = _copy_logs(logs, tmp_path / "mixed", 24)
    gsm = next((mixed / "model_00").glob("samples_my_gsm8k_*"))
    kept = [line for line in gsm.read_text().splitlines() if json.loads(line)["doc_id"] >= 5]
    gsm.write_text("\n".join(kept) + "\n")                       # model_00 lacks 5 GSM8K docs
    bio = next((mixed / "model_01").glob("samples_my_mmlu_high_school_biology_*"))
    bio.write_text("\n".join(bio.read_text().splitlines()[:5]) + "\n")   # model_01 has 5 of 20
    hum = next((mixed / "model_02").glob("samples_my_humaneval_*"))
    text = hum.read_text()
    hum.write_text(text[:-100])                                  # killed run: truncated last line
    pre = next((mixed / "model_03").glob("samples_my_mmlu_prehistory_*"))
    extra = pre.with_name(pre.name.replace("my_mmlu_prehistory", "not_in_suite"))
    extra.write_text(pre.read_text())
    _rewrite_prompts(extra)                                      # a task this store does not hold
    with Store(db) as s:
        out = run_validation(s, [mixed], ValidateConfig(replicates=100, draws=400), encoder=planted)
    notes = " | ".join(out["notes"])
    assert "gsm8k: 5 of 20 matched samples lack a score from some model" in notes
    assert "hs_bio: models planted/model-01 have under half of its matched samples" in notes
    assert "truncated" in notes and "not_in_suite: none of its 20 prompts is stored" in notes
    R = {b["name"]: b for b in out["benchmarks"]}
    assert (R["gsm8k"]["n_items"], R["gsm8k"]["n_models"]) == (15, 24)
    assert R["hs_bio"]["n_models"] == 23 and R["humaneval"]["n_items"] == 19
    assert len(out["benchmarks"]) == 7 and out["n_models"] == 24


def test_suite_key_runs_validation_in_the_audit_flow_step(base, db, tmp_path):
    suite, _, _, logs = base
    text = Path(suite).read_text() + f"validation: {{logs: [{logs}], draws: 200, replicates: 50}}\n"
    bad = Path(suite).with_name("val_bad.yaml")
    bad.write_text(Path(suite).read_text() + "validation: {logs: [no/such/dir]}\n")
    from qscope_eval.errors import SuiteError
    with pytest.raises(SuiteError, match="validation.logs: .*not found"):
        load_suite(bad)
    good = Path(suite).with_name("val_ok.yaml")
    good.write_text(text)
    s = load_suite(good)
    assert s.validation.logs == (str(logs),) and s.validation.draws == 200
    from flows.audit import validate
    with Store(db) as store:
        enc = store.encoder().encoder_id
        assert validate.fn(store, s, enc) is None
        result = store.latest_validation(enc)
    assert result["n_models"] == 24 and result["encoder"]["encoder_id"] == enc
    two = _copy_logs(logs, tmp_path / "two", 2)  # fewer than 3 models: the step is skipped with a reason, the audit goes on
    s_bad = dataclasses.replace(s, validation=dataclasses.replace(s.validation, logs=(str(two),)))
    with Store(db) as store:
        why = validate.fn(store, s_bad, enc)
    assert why.startswith("validation against behaviour skipped: ") and "at least 3 models" in why


def test_identical_models_give_no_ranking_and_say_so(base, db, tmp_path):
    """Three copies of the genuine dummy run: no model differs from another, so nothing is defined."""
    from lmeval_fixtures import DUMMY

    for m in ("a", "b", "c"):
        shutil.copytree(DUMMY, tmp_path / "same" / m)
    with Store(db) as s:
        out = run_validation(s, [tmp_path / "same"], ValidateConfig(replicates=50, draws=200), save=False)
    assert out["n_models"] == 3 and all(b["r"] is None for b in out["benchmarks"])
    assert any("every model has the same score" in n for n in out["notes"])
    assert all("too few benchmarks" in v for v in out["verdicts"])
