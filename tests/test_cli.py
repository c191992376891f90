"""CLI: every command has help with an example and a line on docs/cli.md; JSON outputs keep their keys;
library errors become one line and exit 1."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from qscope_eval.cli import cli
from synthetic import build_store

COMMANDS_PAGE = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.duckdb"
    build_store(path).close()
    return str(path)


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help_example_and_docs(name):
    cmd = cli.commands[name]
    res = run(name, "--help")
    assert res.exit_code == 0
    assert "Example: qscope-eval " + name in (cmd.help or ""), f"{name}: docstring needs an 'Example:' line"
    assert re.search(rf"qscope-eval {re.escape(name)}\b", COMMANDS_PAGE), f"docs/cli.md does not list `qscope-eval {name}`"


def test_coverage_json_keys(db):
    out = json.loads(run("coverage", "--db", db, "--json").output)
    assert set(out) >= {"encoder", "d_sae", "suite_union", "benchmarks", "rarefied_n"}
    row = out["benchmarks"][0]
    assert set(row) >= {"name", "n_samples", "n_features", "share_of_dsae", "share_of_union", "r_hat", "auc",
                        "rarefied_coverage", "chao1", "null_n_features"}
    assert out["encoder"]["null_encoder_id"] is not None


def test_overlap_json_is_square_with_unit_diagonal(db):
    out = json.loads(run("overlap", "--db", db, "--kind", "sym", "--json").output)
    m = out["matrix"]
    assert len(m) == len(out["names"]) == 5 and all(abs(m[i][i] - 1) < 1e-12 for i in range(5))
    assert out["null_matrix"] is not None


def test_select_json_reaches_target_with_the_union_method(db):
    out = json.loads(run("select", "--db", db, "--method", "union", "--target", "0.8", "--json").output)
    assert out["coverage"] >= 0.8 and out["level"] == "benchmark" and out["kind"] == "union"
    assert {r["decision"] for r in out["table"]} <= {"keep", "drop"}
    ex = json.loads(run("select", "--db", db, "--method", "union", "--target", "0.8", "--exact", "--json").output)
    assert ex["cost"] <= out["cost"] + 1e-9


def test_select_default_is_characteristic_with_evidence_per_decision(db):
    out = json.loads(run("select", "--db", db, "--json").output)
    assert out["kind"] == "characteristic" and out["null_checked"] and out["coverage"] == 1.0
    chosen, tau = set(out["chosen"]), out["tau"]
    for r in out["table"]:
        if r["decision"] == "drop":
            assert r["covered_by"] in chosen and (r["contained"] or (r["ratio"] >= tau and r["above_null"]))
            assert r["ratio_lo"] <= r["ratio"] <= r["ratio_hi"] and r["null_ratio"] is not None
            assert r["examples"] and {"dropped_prompt", "kept_prompt", "jaccard"} <= set(r["examples"][0])
        else:
            assert r["benchmark"] in chosen and 0 <= r["only_here"] <= 1 and r["reason"]
    ex = json.loads(run("select", "--db", db, "--exact", "--json").output)
    assert ex["cost"] <= out["cost"] + 1e-9 and ex["coverage"] == 1.0
    s = json.loads(run("select", "--db", db, "--level", "sample", "--benchmark", "bench_0", "--target", "0.9",
                       "--json").output)
    pc = s["profile_check"]
    assert s["coverage"] >= 0.9 and s["kind"] == "characteristic" and 0 <= pc["random_mean"] <= 1
    assert s["random_baseline"]["mean"] < s["coverage"]  # as many random samples keep less of what characterizes it
    s = json.loads(run("select", "--db", db, "--level", "sample", "--n", "5", "--json").output)
    assert len(s["chosen"]) == 5


def test_sql_outputs(db):
    res = run("sql", "--db", db, "SELECT name FROM benchmarks ORDER BY name", "--csv")
    assert res.output.splitlines()[0] == "name" and len(res.output.splitlines()) == 6


def test_errors_are_one_line_with_exit_1(db, tmp_path):
    res = CliRunner().invoke(cli, ["sql", "--db", db, "DELETE FROM samples"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and res.output.startswith("Error: refused")
    res = CliRunner().invoke(cli, ["coverage", "--db", str(tmp_path / "empty.duckdb")])
    assert res.exit_code == 1 and "qscope-eval encode" in res.output
    res = CliRunner().invoke(cli, ["encode", str(tmp_path / "missing.yaml"), "--db", db])
    assert res.exit_code == 1 and "no suite file" in res.output
