"""Progress and messages: long steps show progress on stderr, `--json` keeps stderr empty, and no library
warning reaches the terminal (the CLI runs under `python -W error`, so any warning would be an error).

QSCOPE_EVAL_PROGRESS=1 turns progress on without a terminal and without the one-second delay, so the tests
see what a person at a terminal would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import build_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "p.duckdb"
    build_store(str(path)).close()
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QSCOPE_EVAL_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-W", "error", "-m", "qscope_eval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_json_mode_keeps_stderr_empty(db):
    r = _cli("select", "--db", str(db), "--exact", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == "", r.stderr[-3000:]  # no bar, no warning, nothing
    out = json.loads(r.stdout)
    assert out["kind"] == "characteristic" and out["table"]


def test_table_mode_shows_progress_and_no_warning(db):
    r = _cli("select", "--db", str(db), "--exact")
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr.replace("\r", "\n")
    assert "recommendation bootstrap" in err and "/100 " in err, err[-2000:]  # the bootstrap's bar, 100 replicates
    assert "exact selection (HiGHS MILP): done in" in err, err[-2000:]
    assert "Warning" not in err and "warning" not in err, err[-2000:]
    assert "keep" in r.stdout


def test_stage_and_bar_are_silent_when_off(capsys, monkeypatch):
    from qscope_eval import progress

    monkeypatch.setenv("QSCOPE_EVAL_PROGRESS", "0")
    with progress.stage("solving"):
        pass
    assert list(progress.bar(range(3), desc="x")) == [0, 1, 2] and progress.wrapper("x") is None
    monkeypatch.setenv("QSCOPE_EVAL_PROGRESS", "1")
    progress.set_quiet(True)
    try:
        assert not progress.enabled()
    finally:
        progress.set_quiet(False)
    with progress.stage("solving"):
        import time

        time.sleep(0.7)
    assert "solving: done in" in capsys.readouterr().err
