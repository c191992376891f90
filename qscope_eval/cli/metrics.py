"""CLI commands that read a database: `coverage`, `overlap`, `select`, `sql`."""

from __future__ import annotations

import json

import click

from qscope_eval.cli.common import db_option, emit, encoder_option, metric_options, output_options
from qscope_eval.data.suite import COSTS


# ---- metrics and selection ---------------------------------------------------------------

def _loaded(db, encoder):
    from qscope_eval.jobs.summary import load
    from qscope_eval.store import Store

    store = Store(db, read_only=True)  # reads wait only for the writer's current batch
    return store, load(store, encoder)


@click.command()
@db_option()
@encoder_option
@metric_options
@output_options
def coverage(db, encoder, threshold, min_support, fmt):
    """Coverage per benchmark: |F(D)|, shares, R-hat, AUC(c), rarefied coverage, Chao1.

    Example: qscope-eval coverage --db out/demo.duckdb --json
    """
    from qscope_eval.jobs.summary import coverage_report

    store, ld = _loaded(db, encoder)
    with store:
        rep = coverage_report(ld, threshold, min_support)
    emit(rep, fmt, rows=rep["benchmarks"], columns=["name", "n_samples", "n_features", "share_of_dsae", "share_of_union",
                                                    "r_hat", "auc", "rarefied_coverage", "chao1", "null_n_features",
                                                    "lexical_n_features"])


@click.command()
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
    from qscope_eval.jobs.summary import overlap_report

    store, ld = _loaded(db, encoder)
    with store:
        rep = overlap_report(ld, kind, threshold, min_support)
    rows = [{"benchmark": a, **{b: rep["matrix"][i][j] for j, b in enumerate(rep["names"])}} for i, a in enumerate(rep["names"])]
    emit(rep, fmt, rows=rows, columns=["benchmark"] + rep["names"])


@click.command("select")
@db_option()
@encoder_option
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Share to keep: of the feature union (--method union), or of the characteristic mass (sample level).")
@click.option("--method", type=click.Choice(["characteristic", "union"]), default="characteristic", show_default=True,
              help="characteristic: drop a benchmark only if a kept one shows >= tau of what characterizes it, above "
                   "the null; union: the report's partial set cover of the feature union (Eq. 10/11).")
@click.option("--tau", type=click.FloatRange(0, 1.5, min_open=True), default=None,
              help="Benchmark level, characteristic: share of a benchmark's characteristic a kept one must show "
                   "(default 0.8, see docs/recommendation.md).")
@click.option("--level", type=click.Choice(["benchmark", "sample"]), default="benchmark", show_default=True,
              help="Keep whole benchmarks, or single samples (prompts).")
@click.option("--cost", type=click.Choice(COSTS), default="samples", show_default=True,
              help="Benchmark cost (benchmark level).")
@click.option("--benchmark", default=None, help="Sample level: select within this benchmark (default: the suite).")
@click.option("--n", type=click.IntRange(min=1), default=None, help="Sample level: best N samples instead of a target.")
@click.option("--token-budget", type=click.IntRange(min=1), default=None, help="Sample level: best samples within this many tokens.")
@click.option("--exact", is_flag=True, help="Exact MILP (HiGHS) instead of lazy greedy; reports the gap if stopped.")
@click.option("--time-limit", type=float, default=30.0, show_default=True, help="Seconds for --exact.")
@click.option("--scores", "scores", multiple=True, type=click.Path(exists=True),
              help="Score table(s) of many models (CSV/TSV/Parquet/JSON, or a folder of lm-eval results_*.json; "
                   "repeatable): benchmarks with scores are decided by how well the kept ones predict them.")
@click.option("--max-error", type=click.FloatRange(0, min_open=True), default=2.0, show_default=True,
              help="With --scores: largest held-out prediction error (MAE, score points) of a dropped benchmark.")
@click.option("--min-tau", type=click.FloatRange(-1, 1, min_open=True), default=None,
              help="With --scores: smallest held-out Kendall tau between predicted and true model ranking.")
@click.option("--metric", default=None, help="With --scores: lm-eval metric to read (default: each task's first).")
@click.option("--map", "mapping", default=None, type=click.Path(exists=True, dir_okay=False),
              help="With --scores: YAML (`column: benchmark`, null to ignore) or two-column CSV for other names.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="With --scores: K of the K-fold cross-validation over models.")
@click.option("--min-models", type=click.IntRange(min=4), default=10, show_default=True,
              help="With --scores: models a benchmark needs scores for to be decided by scores (else by features).")
@metric_options
@output_options
def select_cmd(db, encoder, target, method, tau, level, cost, benchmark, n, token_budget, exact, time_limit, scores,
               max_error, min_tau, metric, mapping, folds, min_models, threshold, min_support, fmt):
    """Recommend which benchmarks (or samples) to keep, with the evidence for every decision.

    With --scores, benchmarks that enough models have scores for are kept or dropped by how well
    the kept ones predict them on models held out (docs/select-behaviour.md); the rest by features.

    Example: qscope-eval select --db out/demo.duckdb --level benchmark --cost tokens

    Example: qscope-eval select --db out/demo.duckdb --scores leaderboard.csv --max-error 2
    """
    from qscope_eval.jobs.summary import select_benchmarks, select_samples

    if scores:
        from qscope_eval.cli.select_scores import run_select_scores
        from qscope_eval.errors import QScopeError

        if level != "benchmark" or method != "characteristic" or exact:
            raise QScopeError("--scores decides benchmarks (--level benchmark, --method characteristic, no --exact); "
                              "drop those options or --scores")
        run_select_scores(db, encoder, scores, cost=cost, max_error=max_error, min_tau=min_tau, metric=metric,
                          mapping=mapping, folds=folds, min_models=min_models, tau=tau, fmt=fmt)
        return
    store, ld = _loaded(db, encoder)
    with store:
        if level == "benchmark":
            rep = select_benchmarks(store, ld, target, cost, exact, time_limit, threshold, min_support, method, tau)
            rows = rep["table"]
            if rep.get("kind") == "characteristic" and fmt != "json":
                cols = ("benchmark", "decision", "cost", "covered_by", "ratio", "ratio_lo", "ratio_hi",
                        "null_ratio_scaled", "lexical_ratio_scaled", "only_here", "best_other")
                rows = [{k: r.get(k) for k in cols} for r in rows]
        else:
            rep = select_samples(store, ld, target, benchmark, n, token_budget, exact, time_limit, threshold, method)
            rows = [{k: rep[k] for k in ("level", "benchmark", "method", "n_candidates", "covered", "coverage",
                                         "cost", "chosen_tokens", "total_tokens", "gap")}
                    | {"n_chosen": len(rep["chosen"]), "random_baseline": (rep["random_baseline"] or {}).get("mean")}]
    emit(rep, fmt, rows=rows)
    if fmt == "table" and level == "benchmark" and rep.get("kind") == "characteristic":
        rb = rep["random_baseline"] or {}
        click.echo(f"\nkeep {len(rep['chosen'])}/{len(rows)} benchmarks at {rep['cost_share']:.1%} of the cost: "
                   f"{rep['definition']} (τ = {rep['tau']:.2f}). A random subset of the same cost leaves "
                   f"{1 - (rb.get('mean') or 0):.0%} of the benchmarks neither kept nor covered.")
    elif fmt == "table" and level == "benchmark":
        rb = rep["random_baseline"] or {}
        click.echo(f"\nkeep {len(rep['chosen'])}/{len(rows)} benchmarks: coverage {rep['coverage']:.1%} of the union "
                   f"at {rep['cost_share']:.1%} of the cost ({rep['method']}); random subset of the same cost: "
                   f"{(rb.get('mean') or 0):.1%}")


@click.command()
@db_option()
@click.argument("query")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds before the query is stopped.")
@click.option("--limit", "max_rows", type=int, default=None, help="At most this many rows.")
@output_options
def sql(db, query, timeout, max_rows, fmt):
    """Run the SQL statement QUERY on the database, read-only (no writes, no files, no network, time-limited).

    Example: qscope-eval sql --db out/demo.duckdb "SELECT benchmark, n_features FROM coverage ORDER BY 2 DESC"
    """
    from qscope_eval.store.query import run_sql

    df = run_sql(db, query, timeout_s=timeout, max_rows=max_rows)
    rows = json.loads(df.to_json(orient="records", date_format="iso"))
    emit(rows, fmt, rows=rows, columns=list(df.columns))
