"""`select --scores`: run jobs/behaviour_select.select_with_scores and print it (cli/metrics.py owns the options).

Table output: one row per benchmark (decision, which evidence decided, held-out error with its
interval, Kendall τ, the kept benchmarks that carry it, random equal-cost sets' error for it,
reason); then the cost kept against random subsets of the same cost, the frontier, the
disagreements between features and scores, and notes. `--json`: the whole document.
"""

from __future__ import annotations

import click

from qscope_eval.cli.common import _table, emit


def _rows(rep: dict) -> list[dict]:
    out = []
    for r in rep["table"]:
        e = r.get("predicted_error") or {}
        f = r.get("feature") or {}
        out.append({"benchmark": r["benchmark"], "decision": r["decision"], "decided_by": r["decided_by"],
                    "cost": r["cost"], "models": r["n_models"], "mae": e.get("mae"),
                    "interval": f"{e['lo']:.2f}-{e['hi']:.2f}" if e.get("lo") is not None else None,
                    "tau": r.get("kendall_tau"), "random": r.get("random_error"),
                    "carried_by": ", ".join(c["benchmark"] for c in r.get("carried_by") or []) or None,
                    "feature_ratio": f.get("ratio"), "reason": r.get("reason")})
    return out


def print_result(rep: dict) -> None:
    rows = _rows(rep)
    click.echo(_table(rows, list(rows[0].keys()) if rows else []))
    rb, cp = rep.get("random_baseline"), rep.get("chosen_point")
    n, k = len(rep["table"]), len(rep["chosen"])
    click.echo(f"\nkeep {k}/{n} benchmarks at {rep['cost_share']:.1%} of the cost ({rep['cost_kind']}); "
               f"{rep['decided_by_scores']} decided by scores of {rep['models']} models, "
               f"{rep['decided_by_features']} by features.")
    if cp and cp["n_kept"] == rep["decided_by_scores"]:
        click.echo("no benchmark with scores is predicted within the tolerance by the others: all are kept.")
    elif rb and cp:
        me = rb["max_error"]
        mn = rb["mean_error"]
        click.echo(f"dropped benchmarks (held-out models): mean error {cp['error_reported']:.2f}, max "
                   f"{cp['max_error_reported']:.2f} points; random kept sets of the same cost ({rb['trials']} draws, "
                   f"same evaluator): mean {mn['mean']:.2f} ± {mn['sd'] or 0:.2f}, max {me['mean']:.2f} ± "
                   f"{me['sd'] or 0:.2f} (chosen on that evaluator: {rb['chosen_mean_error']:.2f} / "
                   f"{rb['chosen_max_error']:.2f}).")
        cv = rep["cv"]
        click.echo(f"chosen on {cv['selection_models']} models (K-fold, K={cv['search_folds']}), measured on the "
                   f"other {cv['report_models']} ({cv['folds']}-fold x {cv['repeats']}).")
    if rep.get("frontier"):
        click.echo("\ncost vs error (scored benchmarks; mean dropped MAE, points):")
        fr = [{"cost_share": p["cost_share"], "kept": p["n_kept"], "chosen": p["error_chosen"],
               "random_mean": p["error_random_mean"], "random_lo": p["error_random_lo"],
               "random_hi": p["error_random_hi"]} for p in rep["frontier"]]
        click.echo(_table(fr, list(fr[0].keys())))
    fp = rep.get("feature_point")
    if fp:
        click.echo(f"feature-only recommendation on the same models: {fp['cost_share']:.1%} of the scored cost, "
                   f"mean error {fp['error']:.2f}, max {fp['max_error']:.2f} points.")
    if rep.get("disagreements"):
        dis = rep["disagreements"]
        click.echo(f"\nfeatures and scores disagree on {len(dis)} pair(s)" + (", the 10 largest errors of each kind:"
                                                                          if len(dis) > 10 else ":"))
        top = [x for kind in dict.fromkeys(d["kind"] for d in dis) for x in [d for d in dis if d["kind"] == kind][:10]]
        click.echo(_table(top, ["benchmark", "other", "kind", "feature_ratio", "error", "reason"]))
    for note in rep.get("notes") or []:
        click.echo(f"note: {note}", err=True)


def run_select_scores(db, encoder, scores, *, cost, max_error, min_tau, metric, mapping, folds, min_models, tau,
                      fmt) -> None:
    """Load the encoded suite, decide, print (a ScoreTableError / QScopeError becomes one `Error:` line)."""
    from qscope_eval.jobs.behaviour_select import select_with_scores
    from qscope_eval.jobs.summary import load
    from qscope_eval.store import Store

    store = Store(db, read_only=True)
    with store:
        ld = load(store, encoder)
        rep = select_with_scores(store, ld, scores, cost=cost, max_error=max_error, min_tau=min_tau, metric=metric,
                                 mapping=mapping, folds=folds, min_models=min_models, tau=tau)
    if fmt == "json":
        emit(rep, fmt)
    elif fmt == "csv":
        emit(rep, fmt, rows=_rows(rep))
    else:
        print_result(rep)
