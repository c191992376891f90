"""CLI commands that run jobs: `audit` (the Prefect flow) and `report` (re-render from a database).

`register(cli)` adds them to the group in cli.py. Prefect is imported inside
`audit` only, after its environment defaults are set: local ephemeral mode with
state under `PREFECT_HOME` (default `./.prefect`), telemetry off, and a longer
start-up timeout for the temporary server. Set `PREFECT_API_URL` to run against
a Prefect server instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import QScopeError

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def prefect_env() -> None:
    """Environment defaults for Prefect; must run before `import prefect` (settings are read then)."""
    os.environ.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def audit_flow():
    """The Prefect flow `flows.audit.audit` (flows/ sits beside the package in a checkout)."""
    try:
        from flows.audit import audit
    except ModuleNotFoundError as e:
        repo = Path(__file__).resolve().parent.parent
        if e.name != "flows" or not (repo / "flows" / "audit.py").is_file():
            raise
        sys.path.insert(0, str(repo))
        from flows.audit import audit
    return audit


def headline(summary: dict, files=None) -> dict:
    """The numbers people read first: what to keep, the coverage it keeps, the cost it saves."""
    sel = summary["selection"]
    share = sel.get("cost_share")
    out = {"suite": summary.get("suite"), "run_id": summary.get("run_id"), "encoder_id": summary["encoder"]["encoder_id"],
           "kept": sel["chosen"], "n_benchmarks": len(sel["table"]), "coverage": sel["coverage"],
           "cost_share": share, "cost_saved": None if share is None else 1 - share, "method": sel["method"]}
    if files is not None:
        out.update(html=str(files.html), summary_json=str(files.summary_json),
                   pngs={k: str(p) for k, p in files.pngs.items()})
    return out


def _print_headline(h: dict, report: str) -> None:
    kept = ", ".join(h["kept"]) or "-"
    saved = "-" if h["cost_saved"] is None else f"{h['cost_saved']:.1%}"
    click.echo(f"report: {report}")
    click.echo(f"keep {len(h['kept'])}/{h['n_benchmarks']} benchmarks ({kept}): {h['coverage']:.1%} of the suite's "
               f"features, {saved} of the cost saved ({h['method']})")


def _check_task_runner(ctx, param, value):
    if value is None:
        return None
    kind, eq, arg = value.partition("=")
    if kind != "dask" or (eq and not arg) or (arg.isdigit() and int(arg) < 1):
        raise click.BadParameter("use `dask`, `dask=N` (N local workers) or `dask=ADDRESS` (e.g. tcp://10.0.0.5:8786)")
    return value


def register(cli: click.Group) -> None:
    """Add `audit` and `report` to the CLI group (cli.py calls this once its helpers exist)."""
    from .cli import db_option, emit, output_options

    @cli.command()
    @click.argument("suite")
    @db_option()
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for report.html, PNGs and summary.json.")
    @click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=None,
                  help="Share of the suite's feature union to keep (default: the suite's selection.target).")
    @click.option("--task-runner", default=None, callback=_check_task_runner, metavar="dask[=N|ADDRESS]",
                  help="Encode shards on Dask: `dask` (2 local workers), `dask=N`, or `dask=tcp://HOST:PORT`.")
    @click.option("--exact", is_flag=True, help="Exact MILP benchmark selection (HiGHS) instead of lazy greedy.")
    @output_options
    def audit(suite, db, out, target, task_runner, exact, fmt):
        """Encode what is missing, then coverage, overlap, selection and the report (a Prefect flow).

        SUITE is a YAML path or a built-in name. Reruns resume: only samples not yet in --db are encoded.
        Runs in Prefect's local ephemeral mode unless PREFECT_API_URL names a server.

        Example: qscope-eval audit demo --db out/demo.duckdb --out out/demo --target 0.95
        """
        from .suite import load_suite

        load_suite(suite)  # a typo in the suite fails in a second, before Prefect starts
        prefect_env()
        res = audit_flow()(suite, db, out, target=target, task_runner=task_runner, exact=exact)
        h = headline(res["summary"])
        h.update(n_samples=res["n_samples"], n_encoded=res["n_encoded"], html=res["html"],
                 summary_json=res["summary_json"], pngs=res["pngs"])
        layers = res["summary"].get("layers")
        if layers:
            h["layers"] = layers
        if fmt == "table":
            _print_headline(h, res["html"])
            for row in (layers or [])[1:]:  # the other layers' reports (the headline is the first layer's)
                click.echo(f"layer {row['layer']}: keep {len(row['kept'])}/{row['n_benchmarks']} benchmarks, "
                           f"{row['coverage']:.1%} of its features; report: {Path(out) / row['report']}")
        else:
            emit(h, fmt, rows=[{**h, "kept": " ".join(h["kept"])}],
                 columns=["suite", "run_id", "kept", "n_benchmarks", "coverage", "cost_saved", "html"])

    @cli.command()
    @db_option()
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for report.html, PNGs and summary.json.")
    @click.option("--encoder", default=None, help="Encoder id or key (default: the most recent SAE encoder).")
    @click.option("--suite", "suite_name", default=None, help="Only the benchmarks this suite registered.")
    @click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
                  help="Share of the feature union to keep.")
    @click.option("--png/--no-png", default=True, help="Also write one PNG per chart.")
    @output_options
    def report(db, out, encoder, suite_name, target, png, fmt):
        """Render the report from an existing database, without encoding anything.

        Example: qscope-eval report --db out/demo.duckdb --out out/demo --suite demo
        """
        from .analysis import audit_summary, load
        from .report import render_report
        from .store import Store

        with Store(db) as store:
            benches = None
            if suite_name:
                benches = [r[0] for r in store.con.execute(
                    "SELECT name FROM benchmarks WHERE suite = ? ORDER BY updated_at, name", [suite_name]).fetchall()]
                if not benches:
                    known = [r[0] for r in store.con.execute("SELECT DISTINCT suite FROM benchmarks ORDER BY 1").fetchall()]
                    raise QScopeError(f"no benchmarks of suite {suite_name!r} in {db}; suites there: {', '.join(known) or 'none'}")
            ld = load(store, encoder, benches)
            label = suite_name or _suite_label(store, ld.real.benchmarks)
            summary = audit_summary(store, ld, label, None, target)
        files = render_report(summary, Path(out), png=png)
        h = headline(summary, files)
        if fmt == "table":
            _print_headline(h, str(files.html))
        else:
            emit(h, fmt, rows=[{**h, "kept": " ".join(h["kept"])}],
                 columns=["suite", "kept", "n_benchmarks", "coverage", "cost_saved", "html"])


def _suite_label(store, benchmarks: list[str]) -> str:
    """The suite that registered these benchmarks, or `mixed` when several did."""
    rows = store.con.execute("SELECT DISTINCT suite FROM benchmarks WHERE list_contains(?, name)", [benchmarks]).fetchall()
    return rows[0][0] if len(rows) == 1 else "mixed"
