"""`qscope-eval serve` (qscope_eval.service.app): a read-only web service over one database, for a team (FastAPI + uvicorn).

Pages: `/` (each suite's audit history: coverage and drift over time as charts,
one row per audit with a link to its report; the newest score validation's verdicts) and `/runs/{run_id}/...` (the
report folder an audit wrote, runs.report_dir). JSON: `/api/runs` and
`/api/{key}` for the keys of `API` (coverage, overlap, selection; other
modules add theirs with `register_api`), each built by the same library
function as the CLI's `--json`, so the keys match. `/api/sql` runs read-only
SQL through query.run_sql (same sandbox and time limit as `qscope-eval sql`).

Every request opens the database read-only for as long as it reads, so it
answers while an audit writes (the writer lets readers in between batches).
Bound to anything but localhost, the service refuses to start without a token;
with a token, every request needs it (`Authorization: Bearer T`, or `?token=T`
once in a browser, which sets a cookie).
"""

from __future__ import annotations

import hmac
import html
import json
import math
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from qscope_eval.errors import QScopeError, QueryError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
COOKIE = "qscope_token"

ApiFn = Callable[..., dict]
API: dict[str, ApiFn] = {}
"""key -> fn(store, params) returning the same dict as the CLI's `--json` for that command."""


def register_api(key: str, fn: ApiFn) -> None:
    """Serve `fn(store: Store opened read-only, params: dict[str, str]) -> dict` at /api/{key}."""
    API[key] = fn


def _ld(store, p):
    from qscope_eval.jobs.summary import load
    return load(store, p.get("encoder"))


def _f(params: dict, name: str, default, cast=float):
    v = params.get(name)
    try:
        return default if v in (None, "") else cast(v)
    except ValueError:
        raise QScopeError(f"query parameter {name}={v!r} is not a {cast.__name__}") from None


def _coverage(store, p):
    from qscope_eval.jobs.summary import coverage_report
    return coverage_report(_ld(store, p), _f(p, "threshold", 0.0), _f(p, "min_support", 1, int))


def _overlap(store, p):
    from qscope_eval.jobs.summary import overlap_report
    return overlap_report(_ld(store, p), p.get("kind", "asym"), _f(p, "threshold", 0.0), _f(p, "min_support", 1, int))


def _selection(store, p):
    """`select --json`: the same call as the CLI, with its defaults (method characteristic, greedy)."""
    from qscope_eval.jobs.summary import select_benchmarks, select_samples
    ld, target, threshold = _ld(store, p), _f(p, "target", 0.95), _f(p, "threshold", 0.0)
    method, tau = p.get("method", "characteristic"), _f(p, "tau", None)
    if p.get("level", "benchmark") == "sample":
        return select_samples(store, ld, target, p.get("benchmark"), _f(p, "n", None, int),
                              _f(p, "token_budget", None, int), False, 30.0, threshold, method)
    return select_benchmarks(store, ld, target, p.get("cost", "samples"), False, 30.0, threshold,
                             _f(p, "min_support", 1, int), method, tau)


def _validation(store, p):
    """The newest stored `validate --json` result for the encoder (validate --save records it)."""
    enc = store.encoder(p.get("encoder"))
    out = store.latest_validation(enc.encoder_id)
    if out is None:
        raise FileNotFoundError(f"no validation stored for encoder {enc.encoder_id}; run "
                                "`qscope-eval validate --db DB LOGDIRS` (it saves its result)")
    return out


def _score_validation(store, p):
    """The newest stored `validate --scores --json` result for the encoder (validate --scores saves it)."""
    enc = store.encoder(p.get("encoder"))
    out = store.latest_score_validation(enc.encoder_id)
    if out is None:
        raise FileNotFoundError(f"no score validation stored for encoder {enc.encoder_id}; run "
                                "`qscope-eval validate --db DB --scores TABLE` (it saves its result)")
    return out


def _score_validations(store, p):
    """Every stored score validation, newest first (?encoder=ID: of that encoder only)."""
    enc = p.get("encoder")
    return {"validations": store.score_validations(None if enc in (None, "") else store.encoder(enc).encoder_id)}


def _gaps(store, p):
    """`gaps --json` (without the model-dependent token evidence)."""
    from qscope_eval.analysis.gaps import GapConfig
    from qscope_eval.jobs.gaps import gaps_report
    cfg = GapConfig(ratio=_f(p, "ratio", 2.0), min_count=_f(p, "min_count", 3, int), top_samples=_f(p, "per_group", 5, int))
    return gaps_report(store, p.get("encoder"), p.get("reference"), cfg, tokens=False)


register_api("coverage", _coverage)
register_api("overlap", _overlap)
register_api("selection", _selection)
register_api("validation", _validation)
register_api("score_validation", _score_validation)
register_api("score_validations", _score_validations)
register_api("gaps", _gaps)


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if host not in LOCAL_HOSTS and not token:
        raise QScopeError(f"--host {host} exposes the database beyond this machine; give --token T "
                          "(or QSCOPE_EVAL_TOKEN) so every request must carry it")


# ----------------------------------------------------------------------------- reads
def runs(db: Path) -> list[dict]:
    """Every audit of the database (newest first), with the numbers the index charts.

    gained / lost: features in the suite's union F(suite) now and not at the suite's previous completed
    audit on the same encoder (and the reverse), from the F(D) each audit recorded (run_features).
    """
    import numpy as np

    from qscope_eval.store import Store

    with Store(db, read_only=True) as store:
        rows = store.runs()
        unions = {r["run_id"]: np.unique(np.concatenate([np.zeros(0, np.int64), *store.run_features(r["run_id"]).values()]))
                  for r in rows if r["status"] == "completed"}
    out, last = [], {}
    for r in sorted(rows, key=lambda r: (str(r.get("finished_at")), r["run_id"])):
        s = json.loads(r.pop("summary")) if r.get("summary") else None
        r["report"] = f"runs/{r['run_id']}/report.html" if r.get("report_dir") else None
        if s:
            m, sel = s.get("metrics") or {}, s.get("selection") or {}
            d_sae = m.get("d_sae") or (s.get("encoder") or {}).get("d_sae")
            r.update(suite_union=m.get("suite_union"), d_sae=d_sae,
                     union_share=(m["suite_union"] / d_sae) if m.get("suite_union") is not None and d_sae else None,
                     kept=sel.get("chosen"), kept_coverage=sel.get("coverage"), gained=None, lost=None)
        if r["run_id"] in unions and unions[r["run_id"]].size:
            key, now = (r["suite"], r.get("encoder_id")), unions[r["run_id"]]
            if key in last:
                r.update(gained=int(np.setdiff1d(now, last[key]).size), lost=int(np.setdiff1d(last[key], now).size))
            last[key] = now
        out.append(r)
    return out[::-1]


def api_answer(db: Path, key: str, params: dict) -> dict:
    """The JSON of /api/{key}: load the encoder's arrays read-only, then the key's library function."""
    from qscope_eval.store import Store

    if key not in API:
        raise KeyError(key)
    with Store(db, read_only=True) as store:
        return API[key](store, params)


def report_file(db: Path, run_id: str, rel: str) -> Path:
    """A file of a run's report folder; never a path outside it."""
    from qscope_eval.store import Store

    with Store(db, read_only=True) as store:
        folder = next((r["report_dir"] for r in store.runs() if r["run_id"] == run_id), None)
    if not folder:
        raise FileNotFoundError(f"run {run_id!r} has no report folder")
    root = Path(folder).resolve()
    path = (root / (rel or "report.html")).resolve()
    if root != path and root not in path.parents or not path.is_file():
        raise FileNotFoundError(rel)
    return path


# ----------------------------------------------------------------------------- the index page
def history_charts(rows: list[dict]) -> dict[str, dict]:
    """Vega-Lite specs: share of the SAE's features the suite fires per audit, and features gained/lost."""
    import altair as alt
    import pandas as pd

    done = [r for r in rows if r.get("union_share") is not None and r.get("finished_at")]
    df = pd.DataFrame([{"suite": r["suite"], "when": str(r["finished_at"]), "union_share": r["union_share"],
                        "suite_union": r["suite_union"], "run": r["run_id"]} for r in done],
                      columns=["suite", "when", "union_share", "suite_union", "run"])
    order = [r["run"] for r in sorted(df.to_dict("records"), key=lambda r: r["when"])]
    x = alt.X("run:N", sort=order, title="audit (oldest first)", axis=alt.Axis(labelAngle=-30))
    cov = alt.Chart(df, title="Share of the SAE's features fired by the suite, per audit").mark_line(point=True).encode(
        x=x, y=alt.Y("union_share:Q", title="|F(suite)| / d_sae", axis=alt.Axis(format="%")),
        color=alt.Color("suite:N"), tooltip=["suite", "run", "suite_union", alt.Tooltip("union_share:Q", format=".1%")],
    ).properties(width=520, height=220)
    drift = pd.DataFrame([{"suite": r["suite"], "when": str(r["finished_at"]), "run": r["run_id"], "change": kind, "n": n}
                          for r in done if r.get("gained") is not None
                          for kind, n in (("gained", r["gained"]), ("lost", -r["lost"]))],
                         columns=["suite", "when", "run", "change", "n"])
    dr = alt.Chart(drift, title="Features the suite gained / lost since its previous audit").mark_bar().encode(
        x=x, y=alt.Y("n:Q", title="features"),
        color=alt.Color("change:N", scale=alt.Scale(domain=["gained", "lost"], range=["#2e7d32", "#b3261e"])),
        tooltip=["suite", "run", "change", "n"],
    ).properties(width=520, height=220)
    return {"coverage": cov.to_dict(), "drift": dr.to_dict()}


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return html.escape(f"{v:.1%}" if isinstance(v, float) and v <= 1 else str(v))


def score_validation_html(db: Path) -> str:
    """The newest score validation (`validate --scores --save`): its verdicts and proxy figures, or nothing."""
    from qscope_eval.report.behaviour import summary_html
    from qscope_eval.store import Store

    with Store(db, read_only=True) as store:
        done = store.score_validations()
    if not done:
        return ""
    return (summary_html(done[0], html.escape) + f"<p class='meta'>{len(done)} score validation(s) stored · JSON: "
            "<a href='api/score_validation'>api/score_validation</a>, "
            "<a href='api/score_validations'>api/score_validations</a></p>")


def index_html(db: Path, rows: list[dict]) -> str:
    """The index: per suite, the audit history table, charts above; self-contained (inline JS, strict CSP)."""
    from qscope_eval.report.page import page_html

    scores = score_validation_html(db)
    if not rows:
        body = "<p class='lead'>No audits yet. Run <code>qscope-eval audit SUITE --db ...</code>; they appear here.</p>"
        return page_html("qscope-eval: audits", f"<p class='meta'>{html.escape(str(db))}</p>{body}{scores}", {})
    specs = history_charts(rows)
    parts = [f"<p class='meta'>database <code>{html.escape(str(db))}</code> · {len(rows)} audits · "
             "JSON: <a href='api/runs'>api/runs</a>, <a href='api/coverage'>api/coverage</a> · SQL: <code>api/sql?q=</code></p>",
             '<figure class="chart" id="chart-coverage"></figure><figure class="chart" id="chart-drift"></figure>']
    head = ["run", "started", "status", "encoder", "|F(suite)|", "of d_sae", "kept", "coverage kept", "gained", "lost", "report"]
    for suite in sorted({r["suite"] for r in rows}):
        trs = []
        for r in (x for x in rows if x["suite"] == suite):
            link = f"<a href='{html.escape(r['report'])}'>report</a>" if r.get("report") else "-"
            kept = ", ".join(r.get("kept") or []) if r.get("kept") is not None else None
            cells = [r["run_id"], str(r["started_at"])[:19], r["status"], r.get("encoder_id"), r.get("suite_union"),
                     r.get("union_share"), kept, r.get("kept_coverage"), r.get("gained"), r.get("lost")]
            trs.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + f"<td>{link}</td></tr>")
        parts.append(f"<h2>Suite {html.escape(suite)}</h2><table class='num'><tr>"
                     + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(trs) + "</table>")
    parts.append(scores)
    return page_html("qscope-eval: audits", "".join(parts), specs)


# ----------------------------------------------------------------------------- the app
def create_app(db: str | Path, token: str | None = None, sql_timeout_s: float = 30.0, sql_max_rows: int = 10_000):
    """The FastAPI app over `db` (read-only)."""
    from qscope_eval.store.query import run_sql

    db = Path(db)
    app = FastAPI(title="qscope-eval", description="Audit history, reports, JSON and read-only SQL over one database.")

    @app.middleware("http")
    async def need_token(request: Request, call_next):
        if not token:
            return await call_next(request)
        auth = request.headers.get("authorization", "")
        given = (auth[7:] if auth.lower().startswith("bearer ") else None) or request.query_params.get("token") \
            or request.cookies.get(COOKIE)
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "this service needs its token: `Authorization: Bearer T` or ?token=T"}, 401)
        resp = await call_next(request)
        if request.query_params.get("token"):
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp

    def error(e: Exception) -> JSONResponse:
        msg = str(e)
        status = 503 if "locked" in msg else 404 if isinstance(e, (KeyError, FileNotFoundError)) else 400
        return JSONResponse({"error": msg}, status, headers={"Retry-After": "1"} if status == 503 else None)

    @app.get("/", response_class=HTMLResponse)
    def index():
        try:
            return HTMLResponse(index_html(db, runs(db)))
        except QScopeError as e:
            return error(e)

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "db": str(db), "api": sorted(API)}

    @app.get("/api/runs")
    def api_runs():
        try:
            return runs(db)
        except QScopeError as e:
            return error(e)

    @app.get("/api/sql")
    def api_sql_get(q: str = "", limit: int | None = None):
        return _sql(q, limit)

    @app.post("/api/sql")
    async def api_sql_post(request: Request):
        body = await request.json()
        return _sql(body.get("sql", ""), body.get("limit"))

    def _sql(q: str, limit):
        try:
            df = run_sql(db, q, timeout_s=sql_timeout_s, max_rows=min(int(limit or sql_max_rows), sql_max_rows))
        except QueryError as e:
            return error(e)
        return {"columns": list(df.columns), "rows": json.loads(df.to_json(orient="records", date_format="iso"))}

    @app.get("/api/{key}")
    def api_key(key: str, request: Request):
        try:
            return JSONResponse(json.loads(json.dumps(api_answer(db, key, dict(request.query_params)), default=str)))
        except KeyError:
            return error(KeyError(f"no API key {key!r}; known: {', '.join(sorted(API))}"))
        except (QScopeError, FileNotFoundError) as e:
            return error(e)

    @app.get("/runs/{run_id}/{rel:path}")
    def run_report(run_id: str, rel: str = ""):
        try:
            return FileResponse(report_file(db, run_id, rel))
        except FileNotFoundError as e:
            return error(e)
        except QScopeError as e:
            return error(e)

    return app


def serve(db: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          sql_timeout_s: float = 30.0) -> None:
    """Run the service until interrupted (uvicorn, one process)."""
    import uvicorn

    check_binding(host, token)
    if not Path(db).is_file():
        raise QScopeError(f"no database at {db}; run `qscope-eval audit SUITE --db {db}` first or fix --db")
    uvicorn.run(create_app(db, token, sql_timeout_s), host=host, port=port, log_level="warning")
