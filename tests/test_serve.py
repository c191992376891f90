"""`qscope-eval serve`: a real server (the CLI in a subprocess, 127.0.0.1, a free port) over real data.

Every endpoint through an HTTP client; the JSON API equals the CLI's `--json`;
SQL that writes, attaches, copies, reads files or the network is refused and
leaves the files as they were; pages and queries are answered while a real
`qscope-eval encode` writes the same database, with counts that never go
backwards; kill -9 mid-encode then a resume leaves no duplicate; the index and
an audit page render in headless Chromium; the token rules hold.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from serve_data import build_audited
from synthetic import build_store, write_tiny_suite
from test_report import chromium  # noqa: F401  (the session fixture: Debian's chromium, installed if missing)

from qscope_eval.cli import cli

REPO = Path(__file__).resolve().parents[1]
get = functools.partial(httpx.get, timeout=60)  # the first page also loads the Vega bundle: slow on a busy box
post = functools.partial(httpx.post, timeout=60)
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(db: Path, *extra: str):
    """`qscope-eval serve` in a subprocess; yields its base URL once /healthz answers; stops it after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qscope_eval", "serve", "--db", str(db), "--port", str(port), *extra],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                if get(url + "/healthz", timeout=2, headers={"Authorization": f"Bearer {extra[-1]}"} if extra else None
                             ).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree_digest(db: Path) -> str:
    h = hashlib.sha256(db.read_bytes())
    for p in sorted((db.parent / (db.name + ".parts")).iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Path:
    return build_audited(tmp_path_factory.mktemp("serve") / "a.duckdb")


@pytest.fixture(scope="module")
def url(audited):
    with server(audited) as u:
        yield u


# ----------------------------------------------------------------------------- pages and JSON
def test_index_lists_each_audit_with_charts_and_report_links(url):
    r = get(url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "Suite synth" in page and "run-0" in page and "run-1" in page
    assert 'id="chart-coverage"' in page and 'id="chart-drift"' in page
    assert "Content-Security-Policy" in page and "cdn" not in page.lower().split("<body>")[0][:2000]
    for link in re.findall(r"href='(runs/[^']+)'", page):
        rep = get(f"{url}/{link}")
        assert rep.status_code == 200 and "qscope-eval audit" in rep.text


def test_report_folder_files_and_no_escape(url, audited):
    r = get(url + "/runs/run-0/summary.json")
    assert r.status_code == 200 and r.json()["run_id"] == "run-0"
    assert get(url + "/runs/run-0/%2e%2e/%2e%2e/a.duckdb").status_code == 404
    assert get(url + "/runs/nope/report.html").status_code == 404


def test_runs_api_carries_history(url):
    runs = get(url + "/api/runs").json()
    assert [r["run_id"] for r in runs] == ["run-1", "run-0"]
    first, second = runs[1], runs[0]
    assert first["gained"] is None and second["gained"] == 0 and second["lost"] == 0  # same data: no drift
    assert 0 < second["union_share"] <= 1 and second["suite_union"] == round(second["union_share"] * second["d_sae"])


@pytest.mark.parametrize("key,cli_args", [
    ("coverage", ["coverage"]),
    ("overlap?kind=jaccard", ["overlap", "--kind", "jaccard"]),
    ("selection", ["select"]),
    ("selection?method=union&target=0.9", ["select", "--method", "union", "--target", "0.9"]),
    ("selection?tau=0.6&cost=tokens", ["select", "--tau", "0.6", "--cost", "tokens"]),
    ("selection?level=sample&n=5", ["select", "--level", "sample", "--n", "5"]),
    ("coverage?min_support=2", ["coverage", "--min-support", "2"]),
])
def test_api_equals_cli_json(url, audited, key, cli_args):
    api = get(f"{url}/api/{key}").json()
    res = CliRunner().invoke(cli, [*cli_args, "--db", str(audited), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert api == json.loads(res.output)


def test_validation_api_serves_the_stored_result(url, audited):
    import pandas as pd

    from qscope_eval.store import Store

    r = get(url + "/api/validation")
    assert r.status_code == 404 and "qscope-eval validate" in r.json()["error"]
    result = {"verdicts": ["proxy agrees"], "n_models": 3, "benchmarks": [{"name": "bench_0", "r": 0.5}]}
    with Store(audited) as s:  # written while the server runs: the next request sees it
        s.save_validation("v-1", 1, {"metric": "acc"}, result, pd.DataFrame(columns=["model", "source"]),
                          pd.DataFrame(columns=["model", "benchmark", "sample_id", "value", "metric", "filter", "task", "doc_id"]))
    with Store(audited, read_only=True) as s:
        assert get(url + "/api/validation").json() == s.latest_validation(1) == result


def test_score_validation_api_serves_the_stored_result(url, audited):
    import pandas as pd

    from qscope_eval.store import Store

    r = get(url + "/api/score_validation")
    assert r.status_code == 404 and "validate --db DB --scores" in r.json()["error"]
    assert get(url + "/api/score_validations").json() == {"validations": []}
    result = {"kind": "scores", "validation_id": "s-1", "n_models": 3, "benchmarks": [],
              "agreement": {"verdicts": ["sae:sym tracks the scores"], "proxies": [{"name": "sae:sym", "partial_pearson": 0.5}]}}
    scores = pd.DataFrame({"model": ["m1", "m2", "m3"], "benchmark": "bench_0", "score": [10.0, 20.0, 30.0],
                           "scale": "0-100", "source": "t.csv", "metric": None})
    with Store(audited) as s:  # written while the server runs: the next request sees it
        s.save_score_validation("s-1", 1, {"paths": ["t.csv"]}, result, scores[["model", "source"]], scores)
    assert get(url + "/api/score_validation").json() == result
    assert get(url + "/api/score_validations?encoder=1").json() == {"validations": [result]}
    page = get(url + "/").text
    assert "sae:sym tracks the scores" in page and "api/score_validations" in page


def test_gaps_api_equals_cli(url, audited):
    r = get(url + "/api/gaps")
    res = CliRunner().invoke(cli, ["gaps", "--db", str(audited), "--json"])
    if res.exit_code == 0:
        assert r.status_code == 200 and r.json() == json.loads(res.output)
    else:  # the synthetic suite has no reference corpus: the same one-line error
        assert r.status_code == 400 and res.output.strip() == f"Error: {r.json()['error']}"


def test_gaps_api_finds_a_planted_gap_like_the_cli(tmp_path):
    # a reference corpus whose prompts fire features 200-229, which no benchmark fires: /api/gaps answers
    # 200 with the same JSON as `gaps --json`, and that JSON holds a gap group made of those features

    db = tmp_path / "g.duckdb"
    s = build_store(db)
    try:
        rng = np.random.default_rng(7)
        ids = s.register_benchmark("ref_new", "synth", {"path": "x"}, [f"ref q{i}" for i in range(120)], role="reference")
        for enc in s.encoders():
            lo = 200 if enc.kind == "sae" else 0  # the null twin fires like the benchmarks' null
            feats = np.concatenate([rng.choice(np.arange(lo, lo + 30), 6, replace=False) for _ in ids])
            s.write_batch(enc.encoder_id, ids, np.full(len(ids), 30), np.zeros(len(ids), bool),
                          np.repeat(np.arange(len(ids)), 6), feats, rng.random(feats.size) + 0.1, np.ones(feats.size, int))
    finally:
        s.close()
    with server(db) as u:
        r = get(u + "/api/gaps")
    res = CliRunner().invoke(cli, ["gaps", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    assert r.status_code == 200 and r.json() == json.loads(res.output)
    gap_features = {f for g in r.json()["groups"] for f in g["features"]}
    assert gap_features and gap_features <= set(range(200, 230))


def test_api_errors_are_json(url):
    r = get(url + "/api/nothing")
    assert r.status_code == 404 and "coverage" in r.json()["error"]
    r = get(url + "/api/overlap?kind=cosine")
    assert r.status_code == 400 and "asym" in r.json()["error"]
    assert get(url + "/api/coverage?threshold=abc").status_code == 400


# ----------------------------------------------------------------------------- SQL
def test_sql_get_and_post(url):
    r = get(url + "/api/sql", params={"q": "SELECT benchmark, n_features FROM coverage WHERE encoder_id = 1 ORDER BY 1"})
    body = r.json()
    assert r.status_code == 200 and body["columns"] == ["benchmark", "n_features"] and len(body["rows"]) == 5
    r = post(url + "/api/sql", json={"sql": "SELECT * FROM range(100000)", "limit": 7})
    assert r.status_code == 200 and len(r.json()["rows"]) == 7


@pytest.mark.parametrize("sql", [
    "DELETE FROM samples",
    "CREATE TABLE x AS SELECT 1",
    "ATTACH '/tmp/other.duckdb' AS o",
    "COPY samples TO '/tmp/leak.csv'",
    "COPY (SELECT 1) TO '{parts}/e1-evil.parquet'",
    "EXPORT DATABASE '/tmp/exp'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_csv('{parts}/../../../../etc/passwd')",
    "SELECT * FROM read_csv('https://example.com/x.csv')",
    "SELECT * FROM glob('/etc/*')",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "SELECT 1; DROP VIEW coverage",
])
def test_sql_refuses_writes_files_and_network(url, audited, sql):
    before = tree_digest(audited)
    parts = str(audited.parent / (audited.name + ".parts"))
    r = post(url + "/api/sql", json={"sql": sql.format(parts=parts)})
    assert r.status_code == 400, r.text
    assert re.search("refused|disabled|Permission|SQL error", r.json()["error"])
    assert tree_digest(audited) == before


# ----------------------------------------------------------------------------- token
def test_public_bind_needs_token(audited):
    res = CliRunner().invoke(cli, ["serve", "--db", str(audited), "--host", "0.0.0.0"])
    assert res.exit_code == 1 and "--token" in res.output


def test_token_is_required_when_given_and_sql_time_limit(audited):
    with server(audited, "--sql-timeout", "1", "--token", "s3cret") as u:
        r = get(u + "/api/sql", params={"q": "SELECT count(*) FROM range(1000000000) a, range(1000) b"},
                      headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert r.status_code == 400 and "limit" in r.json()["error"]
        assert get(u + "/api/runs").status_code == 401
        assert get(u + "/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert get(u + "/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with httpx.Client(timeout=60) as c:  # a browser: ?token= once, then the cookie
            assert c.get(u + "/?token=s3cret").status_code == 200
            assert c.get(u + "/runs/run-0/report.html").status_code == 200


# ----------------------------------------------------------------------------- while an encode writes
def _big_suite(root: Path, n: int) -> Path:
    suite = write_tiny_suite(root, name="busy")
    for name in ("fruit", "numbers"):
        rows = [{"q": f"{name} prompt {i}: " + " ".join(["apple", "seven", "plum", "nine"][(i + j) % 4] for j in range(6 + i % 9))}
                for i in range(n)]
        (root / f"{name}_big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # small batches, each committed on its own: readers must see the encode progress batch by batch
    text = suite.read_text().replace("batch_tokens: 256", "batch_tokens: 48, commit_every_s: 0")
    text = text.replace("fruit.jsonl", "fruit_big.jsonl").replace("numbers.jsonl", "numbers_big.jsonl")
    suite.write_text(text)
    return suite


def _encode(suite: Path, db: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qscope_eval", "encode", str(suite), "--db", str(db), "--json"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


COUNTS = ("SELECT (SELECT count(*) FROM encoded) AS markers, (SELECT count(*) FROM activations) AS acts, "
          "(SELECT count(*) FROM encoded e ANTI JOIN activations a USING (encoder_id, sample_id) WHERE e.n_features > 0) AS torn")


def test_answers_while_an_encode_writes_and_a_killed_encode_resumes(tmp_path):
    """One real encode is killed with SIGKILL half-way and resumed, while the service answers throughout."""
    db = tmp_path / "busy.duckdb"
    build_audited(db, n_runs=1)  # the service starts on an existing database with an audit
    n = 150  # per benchmark: 300 prompts, x2 encoders (SAE + null); long enough to be caught half-way
    total = 4 * n  # markers
    suite = _big_suite(tmp_path / "suite", n)
    seen, asked, answered, pages = [], 0, 0, 0
    with server(db) as u, httpx.Client(timeout=30) as c:
        def poll() -> int:
            nonlocal asked, answered, pages
            asked += 1
            r = c.get(u + "/api/sql", params={"q": COUNTS})
            if r.status_code == 200:
                answered += 1
                row = r.json()["rows"][0]
                assert row["torn"] == 0  # a sample's marker and its activations are visible together
                seen.append((row["markers"], row["acts"]))
            if asked % 5 == 0:
                pages += c.get(u + "/").status_code == 200 and c.get(u + "/api/coverage").status_code == 200
            time.sleep(0.1)  # a busy team, not a tight loop
            return seen[-1][0] if seen else -1

        base = poll()
        enc = _encode(suite, db)
        while poll() < base + 40:  # some batches committed: kill it, no cleanup
            assert enc.poll() is None, "encode finished before it could be killed; " + enc.stderr.read().decode()[-1500:]
        enc.send_signal(signal.SIGKILL)
        enc.wait()
        killed_at = poll()
        assert killed_at < base + total, "the encode finished before the kill landed"
        resume = _encode(suite, db)
        while resume.poll() is None:
            poll()
        out, err = resume.communicate()
        assert resume.returncode == 0, err.decode()[-2000:]
        final = poll()
    rep = json.loads(out)
    assert rep["n_encoded"] == total // 2 - (killed_at - base) // 2 and rep["n_skipped"] == (killed_at - base) // 2
    assert final == base + total and seen[-1][1] > seen[0][1]
    assert answered == asked and asked >= 10, (answered, asked)
    assert len({m for m, _ in seen if base < m < base + total}) >= 3, seen  # it saw the encode progress, batch by batch
    assert pages >= 1
    assert all(a <= b for a, b in zip(seen, seen[1:])), seen  # counts never go backwards
    with duckdb.connect(str(db), read_only=True) as con:
        q = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
        assert q("SELECT count(*) FROM (SELECT encoder_id, sample_id, feature FROM activations GROUP BY ALL HAVING count(*) > 1)") == 0
        assert q("SELECT count(*) FROM activations") == q("SELECT sum(n_features) FROM encoded")
        listed = {r[0] for r in con.execute("SELECT part FROM parts").fetchall()}
    assert {p.name for p in (tmp_path / "busy.duckdb.parts").iterdir()} == listed  # uncommitted parts were removed


# ----------------------------------------------------------------------------- in a real browser
def _dom(exe: str, tmp_path: Path, page_url: str) -> str:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", page_url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_index_and_audit_page_render_in_chromium(chromium, url, tmp_path):  # noqa: F811
    dom = _dom(chromium, tmp_path, url + "/")
    body = re.search(r"<body[^>]*data-rendered[^>]*>", dom).group(0)
    assert 'data-rendered="2"' in body and 'data-js-errors="0"' in body, body
    for name in ("coverage", "drift"):
        part = dom[dom.index(f'id="chart-{name}"'):]
        assert re.search(r'<g class="mark-(line|symbol|rect)', part[:200_000]), name
    dom = _dom(chromium, tmp_path, url + "/runs/run-1/report.html")
    body = re.search(r"<body[^>]*data-rendered[^>]*>", dom).group(0)
    assert 'data-rendered="6"' in body and 'data-js-errors="0"' in body, body
