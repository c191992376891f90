"""`validate --scores`: run jobs/scores.run_score_validation and print its result (cli/validate.py owns the options).

Table output, in reading order: the verdict lines; how every source column was matched (or why
not) and its scale; the proxy table (SAE, null and lexical rows); the comparisons between
proxies; the reliability ceiling of the score matrix; the pairs where proxy and behaviour
disagree most; the pairs with too few models; notes (stderr). `--json`: the whole result.
"""

from __future__ import annotations

import sys

import click

from qscope_eval.cli.common import _table, emit
from qscope_eval.errors import QScopeError


def _rows(items: list[dict], drop: tuple[str, ...] = ()) -> list[dict]:
    """Flat rows of dicts (nested dicts and lists left out), keys in their order."""
    return [{k: v for k, v in d.items() if k not in drop and not isinstance(v, (dict, list))} for d in items]


def _print(title: str, rows: list[dict]) -> None:
    if rows:
        click.echo(f"\n{title}")
        click.echo(_table(rows, list(dict.fromkeys(k for r in rows for k in r))))


def _ci(d: dict, key: str) -> str:
    """'0.94 [0.89, 0.97]' from d[key], d[key_lo], d[key_hi] ('-' where missing)."""
    v, lo, hi = d.get(key), d.get(f"{key}_lo"), d.get(f"{key}_hi")
    if v is None:
        return "-"
    return f"{v:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else "")


def _proxy_rows(ag: dict) -> list[dict]:
    """The headline figures per proxy (every figure, with its benchmark jackknife SE, is in --json)."""
    return [{"proxy": p["name"], "pairs": p.get("n_pairs"), "partial r": _ci(p, "partial_pearson"),
             "partial rho": _ci(p, "partial_spearman"), "partial Mantel p": p.get("partial_mantel_p"),
             "raw r": _ci(p, "pearson"), "raw Mantel p": p.get("mantel_p")} for p in ag.get("proxies") or []]


def _comparison_rows(ag: dict) -> list[dict]:
    return [{"proxy": c["proxy"], "baseline": c["baseline"], "statistic": c["statistic"],
             "proxy r": c.get("proxy_value"), "baseline r": c.get("baseline_value"), "difference": _ci(c, "diff")
             if "diff_lo" in c else (f"{c['diff']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]"
                                     if c.get("diff") is not None and c.get("lo") is not None else c.get("diff")),
             "p (not better)": c.get("p_better")} for c in ag.get("comparisons") or []
            if c.get("statistic") in ("partial_pearson", None) or ag.get("control") == "none"]


def _match_rows(out: dict) -> list[dict]:
    return [{"column": m["column"], "benchmark": m["benchmark"], "how": m["how"], "scale": m["scale"],
             "models": m["n_models"], "reason": m["reason"]} for m in out["matching"]]


def print_result(out: dict) -> None:
    """The result as verdicts and tables (every key of the agreement's lists shown as a column)."""
    ag = out.get("agreement") or {}
    for line in ag.get("verdicts") or []:
        click.echo(line)
    enc = out["encoder"]
    click.echo(f"\n{out['n_models']} models x {len(out['benchmarks'])} benchmarks from {', '.join(out['sources'])}; "
               f"encoder {enc.get('encoder_id')} (null: {enc.get('null_encoder_id') or 'none'}; lexical: {enc.get('lexical')}); "
               f"control: {out['config']['control']}"
               + (f" ({out['config']['reference']})" if out["config"].get("reference") else ""))
    by_source: dict[str, list[dict]] = {}
    for m in out["matching"]:
        by_source.setdefault(m["source"], []).append(m)
    for src, ms in by_source.items():
        _print(f"columns of {src} (how: matched by exact name / lm-eval task / leaderboard spelling / normalised / "
               "--map; scale 0-1: read as shares, x100):", _match_rows({"matching": ms}))
    _print("benchmarks (points, 0-100):", [{"benchmark": b["name"], "models": b["n_models"], "mean": b["mean"],
                                          "sd": b["sd"]} for b in out["benchmarks"]])
    _print(f"proxy similarity vs score correlation over benchmark pairs (partial: general factor removed; "
           f"[{out['config']['level']:.0%} bootstrap over models]):", _proxy_rows(ag))
    _print("SAE vs baselines on the headline statistic (difference of correlations, bootstrap over models; "
           "--json has every statistic):", _comparison_rows(ag))
    rel = ag.get("reliability")
    if isinstance(rel, dict) and rel:
        _print("reliability ceiling of the score matrix (split-half over models):", _rows([rel]))
    _print("pairs where proxy and behaviour disagree most:", _rows(ag.get("disagreements") or []))
    _print("pairs with too few models (not used):", _rows(ag.get("too_few_models") or []))
    for n in out.get("notes") or []:
        click.echo(f"note: {n}", err=True)


def run_scores(db, paths, *, mapping, control, reference, permutations, replicates, seed, metric, filt, encoder,
               save, fmt) -> dict:
    """Build the config, run the job (progress on stderr when it is a terminal and not --json), print."""
    from qscope_eval.analysis.behaviour import AgreementConfig
    from qscope_eval.jobs.scores import run_score_validation
    from qscope_eval.store import Store

    if control == "reference" and reference is None:
        raise QScopeError("--control reference needs --reference BENCH (the benchmark to partial out)")
    if reference is not None and control not in (None, "reference"):
        raise QScopeError(f"--reference {reference} is itself the control; drop --control {control} or --reference")
    # the reference's index is known once the table is matched: the job sets control='reference' then
    cfg = AgreementConfig(control="mean" if reference else (control or "mean"), permutations=permutations,
                          replicates=replicates, seed=seed)
    loud = fmt != "json" and sys.stderr.isatty()
    progress = (lambda s: click.echo(f"... {s}", err=True)) if loud else None
    with Store(db) as store:
        out = run_score_validation(store, list(paths), cfg, encoder=encoder, metric=metric, mapping=mapping,
                                   save=save, filter=filt, reference=reference, progress=progress)
    if fmt == "json":
        emit(out, "json")
    else:
        print_result(out)
    return out
