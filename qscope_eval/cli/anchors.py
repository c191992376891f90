"""CLI command `anchors`: the few items per benchmark whose results estimate a model's full score.

A thin layer over jobs/sample_select.run_anchors: parse options, print one row per benchmark (held-out
error beside random items of the same count) or the whole result with --json, and --export the chosen
items as JSONL so a team can run only those.
"""

from __future__ import annotations

from pathlib import Path

import click

from qscope_eval.analysis.anchors import DEFAULT_METHOD, METHODS
from qscope_eval.cli.common import _table, db_option, emit
from qscope_eval.errors import QScopeError

COLUMNS = ("benchmark", "evidence", "models", "items", "chosen", "tokens_kept", "MAE", "MAE_lo", "MAE_hi",
           "random_MAE", "random_sd", "random_better")


def _rows(out: dict) -> list[dict]:
    return [{"benchmark": b["name"], "evidence": b["evidence"], "models": b["n_models"], "items": b["n_items"],
             "chosen": b["n_chosen"], "tokens_kept": f"{b['chosen_tokens'] / max(b['total_tokens'], 1):.1%}",
             "MAE": b["mae"], "MAE_lo": b["mae_lo"], "MAE_hi": b["mae_hi"], "random_MAE": b["random_mae_mean"],
             "random_sd": b["random_mae_sd"], "random_better": b["random_better"]} for b in out["benchmarks"]]


@click.command()
@db_option()
@click.argument("logdirs", nargs=-1, type=click.Path(exists=True))
@click.option("--n", type=click.IntRange(min=1), default=None,
              help="Items per benchmark (default 100 unless --token-budget is given).")
@click.option("--token-budget", type=click.IntRange(min=1), default=None,
              help="Prompt tokens per benchmark instead of a count.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
              help="info: metabench-style most-informative items, scored by a 2PL IRT (p-IRT); anchor: "
                   "tinyBenchmarks anchor points (weighted mean); irt: tinyBenchmarks IRT anchors with p-IRT; gp-irt: "
                   "a mix of the last two. See docs/anchors.md.")
@click.option("--benchmark", default=None, help="Only this benchmark (stored name or lm-eval task).")
@click.option("--metric", default=None, help="Per-sample metric (default: each task's first, e.g. acc, exact_match).")
@click.option("--filter", "filt", default=None, help="lm-eval filter when a task logs several (default: the first).")
@click.option("--encoder", default=None,
              help="Feature-only rows (benchmarks without logs): encoder id or key (default: the most recent SAE encoder).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="K-fold over models for the held-out error.")
@click.option("--draws", type=click.IntRange(min=20), default=200, show_default=True,
              help="Random item subsets of the same count for the baseline.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the clustering, the folds and the draws.")
@click.option("--export", "export", type=click.Path(dir_okay=False), default=None,
              help="Write the chosen items as JSONL (benchmark, task, sample_id, doc_id, weight, tokens, evidence, text).")
@click.option("--json", "fmt", flag_value="json", help="The whole result as JSON (stable keys, see docs/anchors.md).")
@click.option("--table", "fmt", flag_value="table", default=True, help="One row per benchmark (default).")
def anchors(db, logdirs, n, token_budget, method, benchmark, metric, filt, encoder, folds, draws, seed, export, fmt):
    """Choose N items per benchmark whose results estimate each model's full score (tinyBenchmarks-style).

    LOGDIRS are lm-eval --output_path folders of several models (--log_samples); items are chosen on
    some models and the estimate's error is measured on models held out of the choice, beside random
    items of the same count. Without LOGDIRS this is the feature-only choice of `select --level sample`
    (it keeps features, not scores), labelled as such.

    Example: qscope-eval anchors --db out/demo.duckdb runs/ --n 100 --export anchors.jsonl
    """
    from qscope_eval.jobs.sample_select import AnchorConfig, export_rows, run_anchors
    from qscope_eval.store import Store

    if not Path(db).is_file():
        raise QScopeError(f"no database at {db}; build it with `qscope-eval encode SUITE --db {db}` (or `audit`) first")
    cfg = AnchorConfig(n=n if n is not None or token_budget is not None else 100, token_budget=token_budget,
                       method=method, benchmark=benchmark, metric=metric, filter=filt, folds=folds, draws=draws, seed=seed)
    with Store(db, read_only=True) as store:
        out = run_anchors(store, list(logdirs), cfg, encoder=encoder)
        df = export_rows(store, out) if export else None
    if df is not None:
        Path(export).parent.mkdir(parents=True, exist_ok=True)
        df.to_json(export, orient="records", lines=True, force_ascii=False)
    if fmt == "json":
        emit(out, "json")
        return
    click.echo(f"{out['label']}\n")
    click.echo(_table(_rows(out), list(COLUMNS)))
    if out["evidence"] == "scores":
        click.echo(f"\nMAE: |estimate - full score| in points (0-100) on models held out of the choice "
                   f"({out['folds']}-fold over {out['n_models']} models; {out['interval_level']:.0%} interval); "
                   f"random: {out['draws']} draws of as many random items, mean and sd; random_better: share of "
                   f"those draws with a lower MAE. Method: {out['method']}.")
    if df is not None:
        click.echo(f"wrote {len(df)} items to {export}")
    for note in out["notes"]:
        click.echo(f"note: {note}", err=True)
