"""CLI command `validate`: does the feature proxy track your models' behaviour? (DESIGN §5a)

A thin layer over jobs/validation.run_validation (lm-eval --log_samples folders, LOGDIRS)
and jobs/scores.run_score_validation (score tables, --scores; printed by cli/score_table.py):
parse options, print the verdict lines and tables (or the whole result with --json).
"""

from __future__ import annotations

from pathlib import Path

import click

from qscope_eval.cli.common import _table, db_option, emit, encoder_option
from qscope_eval.errors import QScopeError


def _r_rows(out: dict) -> list[dict]:
    return [{"benchmark": b["name"], "task": b["task"], "models": b["n_models"], "items": b["n_items"],
             "R": b["r"], "R_se": b["r_se"], "R_lo": b["r_lo"], "R_hi": b["r_hi"], "R_null": b["r_null"],
             "R_hat": b["r_hat"], "AUC": b["auc"]} for b in out["benchmarks"]]


def _match_rows(out: dict) -> list[dict]:
    return [{"task": m["task"], "benchmark": m["benchmark"], "docs": m["n_docs"], "matched": m["n_matched"],
             "by_doc": m["by_doc"],
             "unmatched": ", ".join(f"{k}: {v}" for k, v in m["unmatched"].items()) or "-"} for m in out["matching"]]


def _agreement_rows(out: dict) -> list[dict]:
    return [{"statistic": a["name"], "method": a["method"], "value": a["value"], "lo": a["lo"], "hi": a["hi"],
             "units": a["n_units"], "models": a["n_models"]} for a in out["agreement"]]


@click.command()
@db_option()
@click.argument("logdirs", nargs=-1, required=False, type=click.Path(exists=True))
@click.option("--scores", "scores", multiple=True, type=click.Path(exists=True),
              help="A score table or folder (repeatable): wide/long CSV, TSV, Parquet, JSON, or lm-eval results_*.json "
                   "folders; instead of LOGDIRS.")
@click.option("--map", "mapping", default=None, type=click.Path(exists=True, dir_okay=False),
              help="With --scores: YAML (`column: benchmark`, null to ignore) or two-column CSV for columns named otherwise.")
@click.option("--control", type=click.Choice(["mean", "pc1", "reference", "none"]), default=None,
              help="With --scores: general factor partialled out of score correlations (default mean; "
                   "reference when --reference is given).")
@click.option("--permutations", type=click.IntRange(min=99), default=1000, show_default=True,
              help="With --scores: Mantel permutations of benchmark labels for each proxy's p-value.")
@click.option("--metric", default=None, help="Metric to read: per sample from logs, or with --scores from lm-eval "
              "results / a long table's metric column (default: each task's first, e.g. acc, exact_match).")
@click.option("--filter", "filt", default=None, help="lm-eval filter when a task logs several (default: the first).")
@click.option("--reference", default=None,
              help="Benchmark (stored name or lm-eval task) to control for in partial correlations, e.g. an MMLU task.")
@encoder_option
@click.option("--draws", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Monte Carlo (n, subset) draws per benchmark for R.")
@click.option("--replicates", type=click.IntRange(min=50), default=500, show_default=True,
              help="Bootstrap replicates (models resampled) for every interval.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save/--no-save", default=True, show_default=True,
              help="Store models, their scores (per sample, or per benchmark with --scores) and the result in --db.")
@click.option("--json", "fmt", flag_value="json", help="The whole result as JSON (stable keys, see README).")
@click.option("--table", "fmt", flag_value="table", default=True, help="Verdicts and tables (default).")
def validate(db, logdirs, scores, mapping, control, permutations, metric, filt, reference, encoder, draws, replicates,
             seed, save, fmt):
    """Check the feature proxy against behaviour, from lm-eval --log_samples outputs or score tables of several models.

    LOGDIRS are lm-eval --output_path folders (or run folders inside them) holding
    samples_<task>_<timestamp>.jsonl files; each run folder is a model. Logged prompts are
    matched to the stored samples by content (task names need not agree). Needs >= 3 models.

    --scores PATH instead reads one score per model and benchmark (leaderboard exports, long
    tables, lm-eval results_*.json) and compares pairwise score correlation (partialled on the
    general factor) with pairwise feature similarity of the SAE, the null dictionary and the
    prompts' words (the report's Table 2).

    Example: qscope-eval validate --db out/demo.duckdb runs/ --reference mmlu_high_school_biology

    Example: qscope-eval validate --db out/demo.duckdb --scores leaderboard.csv --map names.yaml
    """
    from qscope_eval.jobs.validation import ValidateConfig, run_validation
    from qscope_eval.store import Store

    if bool(logdirs) == bool(scores):
        raise QScopeError("give exactly one kind of behaviour: LOGDIRS (lm-eval --log_samples folders) or --scores PATH "
                          "(score tables); " + ("not both" if logdirs else "neither was given"))
    if not Path(db).is_file():  # Store() would create an empty database: say what to do instead
        raise QScopeError(f"no database at {db}; build it with `qscope-eval encode SUITE --db {db}` (or `audit`) first")
    if scores:
        from qscope_eval.cli.score_table import run_scores

        run_scores(db, scores, mapping=mapping, control=control, reference=reference, permutations=permutations,
                   replicates=replicates, seed=seed, metric=metric, filt=filt, encoder=encoder, save=save, fmt=fmt)
        return
    if mapping or control or permutations != 1000:
        raise QScopeError("--map, --control and --permutations apply to --scores only; drop them or give --scores PATH")
    cfg = ValidateConfig(metric=metric, filter=filt, reference=reference, draws=draws, replicates=replicates, seed=seed)
    with Store(db) as store:
        out = run_validation(store, list(logdirs), cfg, encoder=encoder, save=save)
    if fmt == "json":
        emit(out, "json")
        return
    for line in out["verdicts"]:
        click.echo(line)
    click.echo(f"\nmatching (logged task -> stored benchmark):\n{_table(_match_rows(out), list(_match_rows(out)[0]))}")
    rows = _r_rows(out)
    click.echo(f"\nperformance-based redundancy R ({out['draws']} draws per benchmark; R_lo/R_hi: "
               f"{out['level']:.0%} model-bootstrap interval; R_null: scores shuffled across models):")
    click.echo(_table(rows, list(rows[0])))
    click.echo("\nagreement (units: benchmarks for r~*, benchmark pairs otherwise):")
    click.echo(_table(_agreement_rows(out), list(_agreement_rows(out)[0])))
    for n in out["notes"]:
        click.echo(f"note: {n}", err=True)
