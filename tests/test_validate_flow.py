"""The audit flow with a suite's `validation:` key: encode, validate against lm-eval logs, report — and
`qscope-eval report` re-renders the same validation section. Runs on a throwaway Prefect API."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from lmeval_fixtures import SUITE_BENCHMARKS, plant_models
from synthetic import write_tiny_suite


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_audit_with_a_validation_key(prefect_api, tmp_path):
    from flows.audit import audit
    from qscope_eval.cli import cli
    from click.testing import CliRunner

    plant_models(tmp_path / "logs", n_models=6)
    suite = write_tiny_suite(tmp_path, name="valflow", benchmarks=SUITE_BENCHMARKS,
                             extra=f"limit: 20\nvalidation: {{logs: [{tmp_path / 'logs'}], draws: 200, replicates: 50}}\n")
    db, out = tmp_path / "a.duckdb", tmp_path / "report"
    res = audit(str(suite), str(db), str(out))
    v = res["summary"]["validation"]
    assert v["n_models"] == 6 and len(v["benchmarks"]) == 7 and v["encoder"]["encoder_id"] == res["summary"]["encoder"]["encoder_id"]
    assert json.loads(Path(res["summary_json"]).read_text())["validation"]["validation_id"] == v["validation_id"]
    page = Path(res["html"]).read_text()
    assert "Validation against behaviour (6 models)" in page and Path(res["pngs"]["validation_r"]).is_file()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM validations").fetchone()[0] == 1
        assert con.execute("SELECT count(DISTINCT model) FROM sample_scores").fetchone()[0] == 6
    again = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(tmp_path / "re"), "--no-png"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "re" / "summary.json").read_text())["validation"] == json.loads(Path(res["summary_json"]).read_text())["validation"]


def test_a_skipped_validation_step_is_warned_and_rerendered(prefect_api, tmp_path):
    # logs that match none of the suite's prompts: the audit stands, its report says why validation was
    # skipped, and `qscope-eval report` re-renders the same page (the reason is stored with the settings)
    from click.testing import CliRunner

    from flows.audit import audit
    from qscope_eval.cli import cli

    (tmp_path / "logs").mkdir()
    suite = write_tiny_suite(tmp_path, name="valskip", benchmarks=SUITE_BENCHMARKS,
                             extra=f"limit: 20\nvalidation: {{logs: [{tmp_path / 'logs'}]}}\n")
    db, out, again = tmp_path / "s.duckdb", tmp_path / "report", tmp_path / "re"
    res = audit(str(suite), str(db), str(out))
    skipped = [w for w in res["summary"]["warnings"] if w.startswith("validation against behaviour skipped")]
    assert len(skipped) == 1 and res["summary"]["validation"] is None
    rr = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(again), "--no-png"])
    assert rr.exit_code == 0, rr.output
    for page in ("summary.json", "report.html"):
        assert (again / page).read_text() == (out / page).read_text(), page
