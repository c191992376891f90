"""Command-line interface: a thin layer over the library (sqlite-utils style).

Every command's docstring carries an example; library errors (QScopeError)
become one line on stderr and exit code 1; usage errors exit 2.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from .errors import QScopeError

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- shared options ------------------------------------------------------------------

def db_option(required: bool = True):
    return click.option("--db", "db", type=click.Path(dir_okay=False), required=required,
                        help="The qscope-eval DuckDB file.")


def encoder_option(f):
    return click.option("--encoder", default=None,
                        help="Encoder id or key (default: the most recent SAE encoder). See `qscope-eval encoders`.")(f)


def output_options(f):
    """--json / --csv / --table (default)."""
    @click.option("--json", "fmt", flag_value="json", help="Machine-readable JSON (stable keys, see README).")
    @click.option("--csv", "fmt", flag_value="csv", help="CSV of the main table.")
    @click.option("--table", "fmt", flag_value="table", default=True, help="Aligned text table (default).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


def metric_options(f):
    f = click.option("--min-support", type=click.IntRange(min=1), default=1, show_default=True,
                     help="A feature counts for a benchmark only if it fires in at least this many of its samples.")(f)
    return click.option("--threshold", type=float, default=0.0, show_default=True,
                        help="A feature fires when its pooled value is above this.")(f)


def emit(data, fmt: str, rows=None, columns=None):
    """Print `data` as JSON, or `rows` (list of dicts) as CSV / a table."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = rows if rows is not None else (data if isinstance(data, list) else [data])
    columns = columns or (list(rows[0].keys()) if rows else [])
    if fmt == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return
    click.echo(_table(rows, columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def _table(rows, columns) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


class Group(click.Group):
    """Turns library errors into one clear line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except QScopeError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)


@click.group(cls=Group)
@click.version_option(package_name="qscope-eval")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose):
    """qscope-eval: which benchmarks measure the same thing, and what none of them touch.

    Example: qscope-eval audit demo --db out/demo.duckdb --out out/demo
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main():
    cli(prog_name="qscope-eval")


# ---- suites / encode -------------------------------------------------------------------

@cli.command()
@output_options
def suites(fmt):
    """List the built-in suites and their files.

    Example: qscope-eval suites --json
    """
    from .suite import builtin_suites, load_suite

    rows = []
    for name, path in builtin_suites().items():
        s = load_suite(path)
        rows.append({"name": name, "path": str(path), "model": s.model.id, "benchmarks": len(s.benchmarks),
                     "layers": list(s.layers), "pooling": s.pooling})
    emit(rows, fmt)


@cli.command()
@click.argument("suite")
@db_option()
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (samples/s, ETA).")
@output_options
def encode(suite, db, progress, fmt):
    """Encode a suite's benchmarks into the database (resumes; encodes only what is missing).

    SUITE is a YAML path or a built-in name.

    Example: qscope-eval encode demo --db out/demo.duckdb
    """
    from .pipeline import encode_suite
    from .store import Store
    from .suite import load_suite

    s = load_suite(suite)
    with Store(db) as store:
        rep = encode_suite(s, store, progress=progress and sys.stderr.isatty())
    emit(rep.__dict__, fmt, rows=[{k: v for k, v in rep.__dict__.items() if k not in ("encoders", "warnings")}])


@cli.command()
@db_option()
@output_options
def encoders(db, fmt):
    """List the encoders stored in a database.

    Example: qscope-eval encoders --db out/demo.duckdb
    """
    from .store import Store

    with Store(db) as store:
        rows = [{"encoder_id": e.encoder_id, "key": e.key, "layer": e.layer, "pooling": e.pooling, "kind": e.kind,
                 "d_sae": e.d_sae} for e in store.encoders()]
    emit(rows, fmt)


# ---- metrics and selection ---------------------------------------------------------------

def _loaded(db, encoder):
    from .analysis import load
    from .store import Store

    store = Store(db)
    return store, load(store, encoder)


@cli.command()
@db_option()
@encoder_option
@metric_options
@output_options
def coverage(db, encoder, threshold, min_support, fmt):
    """Coverage per benchmark: |F(D)|, shares, R-hat, AUC(c), rarefied coverage, Chao1.

    Example: qscope-eval coverage --db out/demo.duckdb --json
    """
    from .analysis import coverage_report

    store, ld = _loaded(db, encoder)
    with store:
        rep = coverage_report(ld, threshold, min_support)
    emit(rep, fmt, rows=rep["benchmarks"], columns=["name", "n_samples", "n_features", "share_of_dsae", "share_of_union",
                                                    "r_hat", "auc", "rarefied_coverage", "chao1", "null_n_features"])


@cli.command()
@db_option()
@encoder_option
@click.option("--kind", type=click.Choice(["asym", "sym", "jaccard"]), default="asym", show_default=True,
              help="asym: share of the row benchmark's features the column benchmark has (report Eq. 10).")
@metric_options
@output_options
def overlap(db, encoder, kind, threshold, min_support, fmt):
    """Pairwise overlap matrix between benchmarks (null baseline beside it when present).

    Example: qscope-eval overlap --db out/demo.duckdb --kind sym
    """
    from .analysis import overlap_report

    store, ld = _loaded(db, encoder)
    with store:
        rep = overlap_report(ld, kind, threshold, min_support)
    rows = [{"benchmark": a, **{b: rep["matrix"][i][j] for j, b in enumerate(rep["names"])}} for i, a in enumerate(rep["names"])]
    emit(rep, fmt, rows=rows, columns=["benchmark"] + rep["names"])


@cli.command("select")
@db_option()
@encoder_option
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Share of the feature union to keep.")
@click.option("--level", type=click.Choice(["benchmark", "sample"]), default="benchmark", show_default=True)
@click.option("--cost", type=click.Choice(["samples", "tokens", "custom"]), default="samples", show_default=True,
              help="Benchmark cost (benchmark level).")
@click.option("--benchmark", default=None, help="Sample level: select within this benchmark (default: the suite).")
@click.option("--n", type=click.IntRange(min=1), default=None, help="Sample level: best N samples instead of a target.")
@click.option("--token-budget", type=click.IntRange(min=1), default=None, help="Sample level: best samples within this many tokens.")
@click.option("--exact", is_flag=True, help="Exact MILP (HiGHS) instead of lazy greedy; reports the gap if stopped.")
@click.option("--time-limit", type=float, default=30.0, show_default=True, help="Seconds for --exact.")
@metric_options
@output_options
def select_cmd(db, encoder, target, level, cost, benchmark, n, token_budget, exact, time_limit, threshold, min_support, fmt):
    """Recommend the smallest benchmark (or sample) subset that keeps a target share of coverage.

    Example: qscope-eval select --db out/demo.duckdb --target 0.95 --level benchmark --cost tokens
    """
    from .analysis import select_benchmarks, select_samples

    store, ld = _loaded(db, encoder)
    with store:
        if level == "benchmark":
            rep = select_benchmarks(store, ld, target, cost, exact, time_limit, threshold, min_support)
            rows = rep["table"]
        else:
            rep = select_samples(store, ld, target, benchmark, n, token_budget, exact, time_limit, threshold)
            rows = [{k: rep[k] for k in ("level", "benchmark", "method", "n_candidates", "covered", "coverage",
                                         "cost", "chosen_tokens", "total_tokens", "gap")}
                    | {"n_chosen": len(rep["chosen"]), "random_baseline": (rep["random_baseline"] or {}).get("mean")}]
    emit(rep, fmt, rows=rows)
    if fmt == "table" and level == "benchmark":
        rb = rep["random_baseline"] or {}
        click.echo(f"\nkeep {len(rep['chosen'])}/{len(rows)} benchmarks: coverage {rep['coverage']:.1%} of the union "
                   f"at {rep['cost_share']:.1%} of the cost ({rep['method']}); random subset of the same cost: "
                   f"{(rb.get('mean') or 0):.1%}")


@cli.command()
@db_option()
@click.argument("query")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds before the query is stopped.")
@click.option("--limit", "max_rows", type=int, default=None, help="At most this many rows.")
@output_options
def sql(db, query, timeout, max_rows, fmt):
    """Run read-only SQL on the database (no writes, no files, no network, time-limited).

    Example: qscope-eval sql --db out/demo.duckdb "SELECT benchmark, n_features FROM coverage ORDER BY 2 DESC"
    """
    from .query import run_sql

    df = run_sql(db, query, timeout_s=timeout, max_rows=max_rows)
    rows = json.loads(df.to_json(orient="records", date_format="iso"))
    emit(rows, fmt, rows=rows, columns=list(df.columns))


from .cli_jobs import register as _register_jobs  # noqa: E402  (audit, report)

_register_jobs(cli)
from .cli_sae import register as _register_sae  # noqa: E402  (train-sae, feature-stats)

_register_sae(cli)


if __name__ == "__main__":
    main()
