"""The audit flow on a tiny real suite: stored results, resume, failures, Dask, and the CLI on top.

The tiny suite is the real project path end to end: a tiny random Qwen3 checkpoint with
the real Qwen tokenizer (toy.tiny_qwen3), a random SAE in the exact Qwen-Scope format
(sae.save_sae) and two local JSONL benchmarks. Flows run against a temporary Prefect
API (prefect_test_harness), so nothing lands in ~/.prefect or ./.prefect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from qscope_eval.errors import QScopeError, SourceError
from synthetic import SHARD, write_tiny_suite

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_suite(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def prefect_api():
    """A throwaway Prefect API for this module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


ACTIVATIONS = "SELECT encoder_id, sample_id, feature, value, n_tokens FROM activations ORDER BY ALL"


# ---- pure helpers (no Prefect API needed) ------------------------------------------------

def test_parse_task_runner():
    from qscope_eval.jobs.audit import DEFAULT_DASK_WORKERS, parse_task_runner

    assert parse_task_runner(None) is None and parse_task_runner("") is None
    assert parse_task_runner("dask") == (DEFAULT_DASK_WORKERS, None)
    assert parse_task_runner("dask=3") == (3, None)
    assert parse_task_runner("dask=tcp://10.0.0.5:8786") == (0, "tcp://10.0.0.5:8786")
    for bad in ("ray", "dask=", "dask=0", "threads=2"):
        with pytest.raises(QScopeError, match="dask"):
            parse_task_runner(bad)


def test_make_task_runner_builds_dask_runners():
    from prefect_dask import DaskTaskRunner

    from flows.audit import make_task_runner

    assert make_task_runner(None) is None
    local = make_task_runner("dask=3")
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["threads_per_worker"] == 1 and local.cluster_kwargs["processes"]
    assert make_task_runner("dask=tcp://h:8786").address == "tcp://h:8786"


def test_retries_only_on_encode_shards():
    from flows import audit as fa

    assert fa.encode_shard.retries == 2
    for t in (fa.load, fa.prepare, fa.write_shard, fa.summarize, fa.render):
        assert t.retries == 0, t.name
    for t in (fa.encode_shard, fa.write_shard, fa.prepare):
        assert t.persist_result is False


# ---- the flow ------------------------------------------------------------------------------

def test_audit_stores_reports_and_resumes(tiny, prefect_api, tmp_path):
    from flows.audit import audit

    db, out = tmp_path / "a.duckdb", tmp_path / "report"
    res = audit(str(tiny), str(db), str(out))
    assert res["n_samples"] == 20 and res["n_encoded"] == 20
    assert Path(res["html"]).is_file() and Path(res["summary_json"]).is_file()
    assert all(Path(p).is_file() for p in res["pngs"].values())
    assert json.loads(Path(res["summary_json"]).read_text())["suite"] == "tiny"
    (run_id, suite, status, err, enc, report_dir), = rows(db, "SELECT run_id, suite, status, error, encoder_id, report_dir FROM runs")
    assert (run_id, suite, status, err) == (res["run_id"], "tiny", "completed", None)
    assert enc == res["summary"]["encoder"]["encoder_id"] and report_dir == str(out.resolve())
    assert rows(db, "SELECT kind, count(DISTINCT sample_id) FROM encoded JOIN encoders USING (encoder_id) GROUP BY 1 "
                    "ORDER BY 1") == [("lexical", 20), ("null", 20), ("sae", 20)]  # the flow's writer fills the words too
    assert rows(db, f"SELECT DISTINCT benchmark FROM run_features WHERE run_id = '{run_id}' ORDER BY 1") == [("fruit",), ("numbers",)]
    before = rows(db, ACTIVATIONS)

    again = audit(str(tiny), str(db), str(out), target=0.5)  # a rerun encodes nothing, adds a run, reports drift
    assert again["n_encoded"] == 0 and rows(db, ACTIVATIONS) == before
    assert again["summary"]["drift"]["previous_run"] == run_id
    assert again["summary"]["sample_selection"]["target"] == 0.5  # the default benchmark method covers every benchmark
    assert again["summary"]["selection"]["kind"] == "characteristic" and again["summary"]["selection"]["coverage"] == 1.0
    assert rows(db, "SELECT count(*) FROM runs WHERE status = 'completed'") == [(2,)]


def two_layer_suite(tiny: Path, root: Path, seed: int, **suite_args) -> Path:
    """A copy of the tiny suite with a second SAE at layer 0, audited as `layers: [1, 0]`."""
    import shutil

    import torch

    from qscope_eval.model.sae import Sae, SaeConfig, save_sae

    shutil.copytree(tiny.parent, root, ignore=shutil.ignore_patterns("*.duckdb", "bad*.yaml"))
    gen = torch.Generator().manual_seed(seed)
    W = torch.nn.functional.normalize(torch.randn(128, 64, generator=gen), dim=1)
    save_sae(Sae(SaeConfig(d_model=64, d_sae=128, k=8, layer=0), W, torch.zeros(128), W.T.contiguous(), torch.zeros(64)),
             root / "sae")
    suite = write_tiny_suite(root, **suite_args) if suite_args else root / "tiny.yaml"
    suite.write_text(suite.read_text().replace("layers: [1]", "layers: [1, 0]"))
    return suite


def test_two_layers_get_a_report_each_and_their_own_drift(tiny, prefect_api, tmp_path):
    from flows.audit import audit

    suite = two_layer_suite(tiny, tmp_path / "two", seed=1)
    db, out = tmp_path / "two.duckdb", tmp_path / "report"

    first = audit(str(suite), str(db), str(out))
    layers = first["summary"]["layers"]
    assert [r["layer"] for r in layers] == [1, 0] and first["summary"]["encoder"]["layer"] == 1
    assert [r["report"] for r in layers] == ["report.html", "layer0/report.html"]
    sub = json.loads((out / "layer0" / "summary.json").read_text())
    assert sub["encoder"]["layer"] == 0 and sub["encoder"]["encoder_id"] == layers[1]["encoder_id"]
    assert sub["metrics"]["suite_union"] == layers[1]["features"] != layers[0]["features"]  # different SAEs
    assert 'href="layer0/report.html"' in (out / "report.html").read_text()
    assert 'href="../report.html"' in (out / "layer0" / "report.html").read_text()
    # each layer records its own F(D), so the next audit's drift compares like with like
    assert rows(db, "SELECT count(DISTINCT encoder_id) FROM run_features") == [(2,)]
    again = audit(str(suite), str(db), str(out))
    assert again["n_encoded"] == 0
    for path in (out / "summary.json", out / "layer0" / "summary.json"):
        drift = json.loads(path.read_text())["drift"]
        assert drift["previous_run"] == first["run_id"] and {b["status"] for b in drift["benchmarks"]} == {"same"}

    from click.testing import CliRunner

    from qscope_eval.cli import cli

    res = CliRunner().invoke(cli, ["audit", str(suite), "--db", str(db), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "layer 0: keep " in res.output and f"report: {out / 'layer0' / 'report.html'}" in res.output


def test_report_rerenders_exactly_what_the_audit_rendered(tiny, prefect_api, tmp_path):
    """`qscope-eval report` re-renders every layer with the audit's cost kind, min_support and warnings."""
    from click.testing import CliRunner

    from flows.audit import audit
    from qscope_eval.cli import cli

    benches = ("  - {name: fruit, path: fruit.jsonl, text: q, cost: 5}\n"
               "  - {name: numbers, path: numbers.jsonl, text: q, cost: 1}\n")
    suite = two_layer_suite(tiny, tmp_path / "custom", seed=2, name="custom", benchmarks=benches,
                            extra="selection: {cost: custom, min_support: 2, target: 0.9}\n")
    db, out, again = tmp_path / "c.duckdb", tmp_path / "audit", tmp_path / "rerender"
    audit(str(suite), str(db), str(out))

    res = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(again), "--no-png"])
    assert res.exit_code == 0, res.output
    for page in ("summary.json", "report.html", "layer0/summary.json", "layer0/report.html"):
        assert (again / page).read_text() == (out / page).read_text(), page
    summary = json.loads((again / "summary.json").read_text())
    assert summary["selection"]["cost_kind"] == "custom" and summary["metrics"]["min_support"] == 2
    assert [r["layer"] for r in summary["layers"]] == [1, 0]
    # one encoder only, on request: that layer's page, at --out
    res = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(tmp_path / "one"), "--no-png",
                                   "--encoder", str(summary["layers"][1]["encoder_id"])])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["encoder"]["layer"] == 0


def test_failure_is_recorded_and_reraised(tiny, prefect_api, tmp_path, monkeypatch):
    import qscope_eval.report
    from flows.audit import audit

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(qscope_eval.report, "render_report", broken)
    db = tmp_path / "f.duckdb"
    with pytest.raises(RuntimeError, match="disk full"):
        audit(str(tiny), str(db), str(tmp_path / "r"))
    assert rows(db, "SELECT status, error, finished_at IS NOT NULL FROM runs") == [("failed", "RuntimeError: disk full", True)]
    assert rows(db, "SELECT count(*) FROM encoded") == [(60,)]  # the encoded shards stay: a rerun resumes


def test_failed_shard_keeps_the_others_and_a_rerun_finishes(tiny, prefect_api, tmp_path, monkeypatch):
    from flows import audit as fa
    from qscope_eval.jobs import pipeline

    real = pipeline.encode_texts
    calls = []

    def flaky(runtime, ids, texts, suite):
        calls.append(len(texts))
        if any("Question 5 about seven" in t for t in texts):
            raise OSError("worker lost")
        return real(runtime, ids, texts, suite)

    monkeypatch.setattr(pipeline, "encode_texts", flaky)
    monkeypatch.setattr(fa, "encode_shard", fa.encode_shard.with_options(retry_delay_seconds=0))
    db = tmp_path / "s.duckdb"
    with pytest.raises(OSError, match="worker lost"):
        fa.audit(str(tiny), str(db), str(tmp_path / "r"))
    assert len(calls) == 5 + 2  # five shards, the bad one tried three times
    assert rows(db, "SELECT status FROM runs") == [("failed",)]
    assert rows(db, "SELECT count(DISTINCT sample_id) FROM encoded") == [(20 - SHARD,)]

    monkeypatch.setattr(pipeline, "encode_texts", real)
    res = fa.audit(str(tiny), str(db), str(tmp_path / "r"))
    assert res["n_encoded"] == SHARD
    assert rows(db, "SELECT status FROM runs ORDER BY started_at") == [("failed",), ("completed",)]


def test_bad_input_leaves_no_database(tiny, prefect_api, tmp_path):
    from flows.audit import audit

    bad = tiny.parent / "bad.yaml"
    bad.write_text(tiny.read_text().replace("numbers.jsonl", "missing.jsonl"))
    with pytest.raises(SourceError, match="missing.jsonl"):
        audit(str(bad), str(tmp_path / "x.duckdb"), str(tmp_path / "r"))
    with pytest.raises(QScopeError, match="task runner"):
        audit(str(tiny), str(tmp_path / "x.duckdb"), str(tmp_path / "r"), task_runner="ray")
    assert not (tmp_path / "x.duckdb").exists()


@pytest.mark.slow
def test_dask_runner_stores_the_same_results(tiny, prefect_api, tmp_path):
    """`qscope-eval audit --task-runner dask=2` as a user runs it (local ephemeral Prefect, 2 worker processes
    with one thread each): the same stored results as the in-process runner, and the workers report to the
    flow's own temporary API instead of starting servers of their own."""
    from flows.audit import audit

    audit(str(tiny), str(tmp_path / "thread.duckdb"), str(tmp_path / "r1"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["QSCOPE_EVAL_PREFECT_NOTES"] = "1"  # keep Prefect's server notes, to count the servers started
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "from qscope_eval.cli import main; main()", "audit", str(tiny),
                        "--db", str(tmp_path / "dask.duckdb"), "--out", str(tmp_path / "r2"), "--task-runner", "dask=2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    print(f"CLI audit with dask=2: {time.perf_counter() - t0:.1f}s")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "keep " in r.stdout and r.stderr.count("Starting temporary server") == 1
    assert "the weights load on the Dask workers only" in r.stdout + r.stderr  # the flow process never loads the model
    assert rows(tmp_path / "dask.duckdb", ACTIVATIONS) == rows(tmp_path / "thread.duckdb", ACTIVATIONS)
    same = "SELECT encoder_id, sample_id, n_tokens, truncated, n_features FROM encoded ORDER BY ALL"
    assert rows(tmp_path / "dask.duckdb", same) == rows(tmp_path / "thread.duckdb", same)


# ---- the CLI ---------------------------------------------------------------------------------

def test_cli_audit_then_report(tiny, prefect_api, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from qscope_eval.cli import cli

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # the CLI only sets it when unset

    db, runner = tmp_path / "c.duckdb", CliRunner()
    res = runner.invoke(cli, ["audit", str(tiny), "--db", str(db), "--out", str(tmp_path / "a"), "--target", "0.9"])
    assert res.exit_code == 0, res.output
    assert f"report: {tmp_path / 'a' / 'report.html'}" in res.output and "benchmarks" in res.output

    res = runner.invoke(cli, ["report", "--db", str(db), "--out", str(tmp_path / "b"), "--suite", "tiny", "--no-png", "--json"])
    assert res.exit_code == 0, res.output
    head = json.loads(res.output)
    assert head["suite"] == "tiny" and head["n_benchmarks"] == 2 and 0 < head["coverage"] <= 1
    assert Path(head["html"]).is_file() and head["pngs"] == {}

    res = runner.invoke(cli, ["report", "--db", str(db), "--out", str(tmp_path / "b"), "--suite", "nope"])
    assert res.exit_code == 1 and "suites there: tiny" in res.output


def test_cli_audit_input_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from qscope_eval.cli import cli

    res = CliRunner().invoke(cli, ["audit", str(tmp_path / "nope.yaml"), "--db", str(tmp_path / "d.duckdb"), "--out", str(tmp_path)])
    assert res.exit_code == 1 and res.output.startswith("Error: no suite file") and res.output.count("\n") == 1
    res = CliRunner().invoke(cli, ["audit", "demo", "--db", "x.duckdb", "--out", "r", "--task-runner", "ray"])
    assert res.exit_code == 2 and "dask" in res.output


def test_report_keeps_the_audits_warnings(tiny, prefect_api, tmp_path):
    """Prompts cut to model.max_length give a warning on the audit's page; `report` shows the same warnings
    (and writes the same summary.json) from the database alone."""
    import re

    from click.testing import CliRunner

    from flows.audit import audit
    from qscope_eval.cli import cli

    suite = write_tiny_suite(tmp_path / "trunc", name="trunc")
    suite.write_text(suite.read_text().replace("device: cpu}", "device: cpu, max_length: 8}"))
    db, out, again = tmp_path / "t.duckdb", tmp_path / "audit", tmp_path / "rerender"
    audit(str(suite), str(db), str(out))
    res = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(again), "--no-png"])
    assert res.exit_code == 0, res.output

    def warnings(page: Path) -> list[str]:
        block = re.search(r"<ul class='warnings'>(.*?)</ul>", page.read_text(), flags=re.S)
        return re.findall(r"<li>(.*?)</li>", block.group(1)) if block else []

    first, second = warnings(out / "report.html"), warnings(again / "report.html")
    assert any("truncated" in w for w in first), first
    assert first == second
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, again))
    assert a["warnings"] == b["warnings"] and a == b
