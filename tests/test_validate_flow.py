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
