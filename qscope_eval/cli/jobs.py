"""CLI commands that run jobs: `audit` (the Prefect flow) and `report` (re-render from a database).

Prefect is imported inside `audit` only, after its environment defaults are set
(jobs/audit.py `prefect_env`): local ephemeral mode with state under
`PREFECT_HOME` (default `./.prefect`), telemetry off, and a longer start-up
timeout for the temporary server. Set `PREFECT_API_URL` to run against a
Prefect server instead. Both commands end in the same library calls
(jobs/audit.py), so `report` re-renders exactly what `audit` rendered.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qscope_eval.cli.common import db_option, emit, output_options
from qscope_eval.errors import QScopeError


def audit_flow():
    """The Prefect flow `flows.audit.audit` (flows/ sits beside the package in a checkout)."""
    try:
        from flows.audit import audit
    except ModuleNotFoundError as e:
        repo = Path(__file__).resolve().parents[2]
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
           "cost_share": share, "cost_saved": None if share is None else 1 - share, "method": sel["method"],
           "kind": sel.get("kind", "union")}
    gaps = summary.get("gaps") or {}
    if gaps.get("coverage"):
        out.update(reference_covered=gaps["coverage"]["covered_share"], n_gap_groups=gaps["coverage"]["n_groups"],
                   reference_covered_null=(gaps.get("null") or {}).get("covered_share"))
    if files is not None:
        out.update(html=str(files.html), summary_json=str(files.summary_json),
                   pngs={k: str(p) for k, p in files.pngs.items()})
    return out


def _print_headline(h: dict, report: str) -> None:
    kept = ", ".join(h["kept"]) or "-"
    saved = "-" if h["cost_saved"] is None else f"{h['cost_saved']:.1%}"
    click.echo(f"report: {report}")
    what = ("every dropped benchmark covered by a kept one" if h.get("kind") == "characteristic"
            else f"{h['coverage']:.1%} of the suite's features")
    click.echo(f"keep {len(h['kept'])}/{h['n_benchmarks']} benchmarks ({kept}): {what}, {saved} of the cost saved "
               f"({h['method']})")
    if h.get("reference_covered") is not None:
        null = h.get("reference_covered_null")
        click.echo(f"reference covered: {h['reference_covered']:.1%}" + (f" (null encoder {null:.1%})" if null is not None else "")
                   + f"; {h['n_gap_groups']} gap groups (`qscope-eval gaps --db ...` lists them)")


def _check_task_runner(ctx, param, value):
    from qscope_eval.jobs.audit import parse_task_runner

    try:
        parse_task_runner(value)
    except QScopeError as e:
        raise click.BadParameter(str(e)) from None
    return value


@click.command()
@click.argument("suite")
@db_option()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for report.html, PNGs and summary.json.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of coverage to keep (default: the suite's selection.target).")
@click.option("--task-runner", default=None, callback=_check_task_runner, metavar="dask[=N|gpus|ADDRESS]",
              help="Encode shards on Dask: `dask` (2 local workers), `dask=N`, `dask=gpus` (one worker per GPU), or `dask=tcp://HOST:PORT`.")
@click.option("--exact", is_flag=True, help="Exact MILP benchmark selection (HiGHS) instead of lazy greedy.")
@output_options
def audit(suite, db, out, target, task_runner, exact, fmt):
    """Encode what is missing, then coverage, overlap, selection and the report (a Prefect flow).

    SUITE is a YAML path or a built-in name. Reruns resume: only samples not yet in --db are encoded.
    Runs in Prefect's local ephemeral mode unless PREFECT_API_URL names a server.

    Example: qscope-eval audit demo --db out/demo.duckdb --out out/demo --target 0.95
    """
    from qscope_eval.data.suite import load_suite
    from qscope_eval.jobs.audit import prefect_env

    load_suite(suite)  # a typo in the suite fails in a second, before Prefect starts
    prefect_env()
    res = audit_flow()(suite, db, out, target=target, task_runner=task_runner, exact=exact)
    h = headline(res["summary"])
    h.update(n_samples=res["n_samples"], n_encoded=res["n_encoded"], html=res["html"],
             summary_json=res["summary_json"], pngs=res["pngs"])
    _emit_layers(h, res["summary"], res["html"], out, fmt)


@click.command()
@db_option()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for report.html, PNGs and summary.json.")
@click.option("--encoder", default=None, help="Only this encoder (id or key); default: every layer of the last audit.")
@click.option("--suite", "suite_name", default=None, help="The suite to re-render (default: the only one in --db).")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of coverage to keep (default: what the last audit used).")
@click.option("--png/--no-png", default=True, help="Also write one PNG per chart.")
@output_options
def report(db, out, encoder, suite_name, target, png, fmt):
    """Re-render the report of a suite's last audit from the database, without encoding anything.

    Uses the settings that audit resolved (every layer, cost kind, min_support, target), so the
    pages and summaries equal the audit's.

    Example: qscope-eval report --db out/demo.duckdb --out out/demo --suite demo
    """
    from qscope_eval.jobs.audit import render_layers, rerender_settings, summarize_layers
    from qscope_eval.store import Store

    with Store(db) as store:
        settings, run_id = rerender_settings(store, suite_name, encoder, target)
        summaries = summarize_layers(store, settings, run_id)
    files = render_layers(summaries, out, png=png)
    h = headline(summaries[0], files)
    _emit_layers(h, summaries[0], str(files.html), out, fmt)


def _emit_layers(h: dict, summary: dict, html: str, out: str, fmt: str) -> None:
    """Print the headline and one line per extra layer (or the JSON with its layer table)."""
    layers = summary.get("layers")
    if layers:
        h["layers"] = layers
    if fmt == "table":
        _print_headline(h, html)
        for line in (summary.get("validation") or {}).get("verdicts", []):  # the suite's validation step, if any
            click.echo(line)
        for line in ((summary.get("score_validation") or {}).get("agreement") or {}).get("verdicts", []):
            click.echo(f"scores: {line}")  # `validate --scores --save`, if run
        for row in (layers or [])[1:]:  # the other layers' reports (the headline is the first layer's)
            click.echo(f"layer {row['layer']}: keep {len(row['kept'])}/{row['n_benchmarks']} benchmarks, "
                       f"{row['coverage']:.1%} of its features; report: {Path(out) / row['report']}")
    else:
        emit(h, fmt, rows=[{**h, "kept": " ".join(h["kept"])}],
             columns=["suite", "run_id", "kept", "n_benchmarks", "coverage", "cost_saved", "html"])
