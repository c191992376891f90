"""The deployment path of docs/flows.md against a REAL Prefect server, bounded in time.

server start (127.0.0.1, free port, own PREFECT_HOME) -> process work pool ->
`prefect deploy --all` from the repo root (prefect.yaml as checked in) ->
`prefect deployment run` with the tiny suite's parameters -> a process worker
(`--run-once --limit 1`) runs it -> the run COMPLETED, wrote its report and a
completed `runs` row. Every process started here is stopped in `finally`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from synthetic import write_tiny_suite

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 240
PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class Procs:
    """Background processes, each in its own process group, all stopped on exit."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.procs = env, logs, []

    def start(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(args, cwd=REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p, log))
        return p

    def tail(self, name: str, n: int = 40) -> str:
        return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        for _, p, _ in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _, p, log in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            log.close()


def run(env: dict, *args: str, timeout: float = 120) -> str:
    r = subprocess.run([*PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.slow
def test_scheduled_deployment_runs_on_a_real_server(tmp_path):
    t0 = time.monotonic()
    left = lambda: BUDGET_S - (time.monotonic() - t0)
    suite = write_tiny_suite(tmp_path / "tiny")
    db, out = tmp_path / "deployed.duckdb", tmp_path / "report"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",  # no 02:00 runs here
               PREFECT_LOGGING_LEVEL="INFO", DO_NOT_TRACK="1")
    client_env = {**env, "PREFECT_API_URL": api}
    procs = Procs(env, tmp_path)
    try:
        procs.start("server", [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        while True:
            try:
                if get_json(f"{api}/health") is True:
                    break
            except OSError:
                pass
            assert left() > 0 and procs.procs[0][1].poll() is None, f"server did not start:\n{procs.tail('server')}"
            time.sleep(1)
        t_server = time.monotonic() - t0

        run(client_env, "work-pool", "create", "qscope-process", "--type", "process")
        run(client_env, "--no-prompt", "deploy", "--all")
        dep = get_json(f"{api}/deployments/name/qscope-audit/qscope-audit")
        assert dep["work_pool_name"] == "qscope-process" and dep["entrypoint"] == "flows/audit.py:audit"
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 2 * * *"]
        assert dep["global_concurrency_limit"]["limit"] == 1
        assert dep["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
        t_deploy = time.monotonic() - t0

        params = {"suite": str(suite), "db": str(db), "out": str(out), "target": 0.9}
        out_run = run(client_env, "deployment", "run", "qscope-audit/qscope-audit",
                      *[a for k, v in params.items() for a in ("--param", f"{k}={v}")])
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out_run).group(1)

        worker = procs.start("worker", [*PREFECT, "worker", "start", "--pool", "qscope-process", "--run-once", "--limit", "1"],
                             env=client_env)
        state = None
        while left() > 0:
            state = get_json(f"{api}/flow_runs/{run_id}")["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state == "COMPLETED", f"flow run ended {state}\n--- worker ---\n{procs.tail('worker', 80)}"
        worker.wait(timeout=max(left(), 5))
        fr = get_json(f"{api}/flow_runs/{run_id}")
        assert fr["parameters"]["suite"] == str(suite) and fr["parameters"]["target"] == 0.9
        t_run = time.monotonic() - t0
    finally:
        procs.stop()

    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id, status, suite FROM runs").fetchall() == [(run_id, "completed", "tiny")]
        assert con.execute("SELECT count(*) FROM encoded").fetchall() == [(60,)]  # SAE, null and lexical
    print(f"server up {t_server:.0f}s, deployed {t_deploy:.0f}s, run completed {t_run:.0f}s")
