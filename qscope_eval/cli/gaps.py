"""CLI commands for what no benchmark measures: `gaps` (reference corpus vs suite) and `feature` (evidence).

Thin layers over jobs/gaps.py and jobs/evidence.py; the JSON they print is the contract in docs/cli.md.
"""

from __future__ import annotations

import click

from qscope_eval.cli.common import db_option, emit, encoder_option, output_options


@click.command()
@db_option()
@encoder_option
@click.option("--reference", default=None, help="One reference corpus by name (default: all of them, pooled).")
@click.option("--ratio", type=click.FloatRange(min=1), default=2.0, show_default=True,
              help="A reference frequency up to RATIO x the best benchmark's counts as covered.")
@click.option("--min-count", type=click.IntRange(min=1), default=3, show_default=True,
              help="A gap needs at least this many reference samples firing the feature.")
@click.option("--export", "export", type=click.Path(dir_okay=False), default=None,
              help="Write each gap group's prompts as JSONL seeds for new eval items.")
@click.option("--per-group", type=click.IntRange(min=1), default=5, show_default=True,
              help="Prompts listed (and exported) per gap group.")
@output_options
def gaps(db, encoder, reference, ratio, min_count, export, per_group, fmt):
    """What no benchmark measures: features the reference corpus fires that no benchmark fires as often.

    The suite's `reference:` corpora are compared with its benchmarks by firing frequency; gap features
    are grouped by co-firing and shown with their most typical reference prompts and the closest
    benchmarks, beside the null encoder's numbers.

    Example: qscope-eval gaps --db out/demo.duckdb --export out/seeds.jsonl
    """
    from qscope_eval.jobs.gaps import export_seeds, gaps_report
    from qscope_eval.analysis.gaps import GapConfig
    from qscope_eval.store import Store

    cfg = GapConfig(ratio=ratio, min_count=min_count, top_samples=per_group)
    with Store(db) as store:
        rep = gaps_report(store, encoder, reference, cfg)
    if export:
        rep["exported"] = {"path": export, "n_prompts": export_seeds(rep, export)}
    if fmt == "json":
        emit(rep, fmt)
        return
    rows = [{"group": g["group"], "features": g["n_features"], "excess_share": g["excess_share"],
             "closest": (g["closest_benchmarks"] or [{}])[0].get("benchmark"),
             "matched": (g["closest_benchmarks"] or [{}])[0].get("matched_share"),
             "prompt": (g["prompts"][0]["text"] if g["prompts"] else "")[:70].replace("\n", " ")}
            for g in rep["groups"]]
    emit(rep, fmt, rows=rows)
    if fmt == "table":
        c, n = rep["coverage"], rep["null"]
        null = f" (null encoder: {n['covered_share']:.1%}" if n else " (no null encoder stored"
        lx = rep.get("lexical")
        null += f"; prompts' words: {lx['covered_share']:.1%})" if lx else "; no lexical baseline)"
        click.echo(f"\nreference covered: {c['covered_share']:.1%}{null}; gap features carry {c['gap_share']:.1%}, "
                   f"too rare to call {c['unresolved_share']:.1%}; {c['n_gap_features']} gap features in "
                   f"{c['n_groups']} groups")
        if export:
            click.echo(f"wrote {rep['exported']['n_prompts']} seed prompts to {export}")

@click.command()
@db_option()
@click.argument("feature", type=int)
@encoder_option
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Top samples shown.")
@click.option("--no-tokens", is_flag=True, help="Do not re-encode the top samples for the token view.")
@output_options
def feature(db, feature, encoder, top, no_tokens, fmt):
    """Evidence for one feature (FEATURE: its index in the SAE): top samples with the tokens where it fires, frequency per benchmark and
    reference, and the features it co-fires with.

    Only the top samples are re-encoded (through the model and SAE recorded with the encoder); when the
    model is not available here the token view is left out with a note.

    Example: qscope-eval feature --db out/demo.duckdb 1234
    """
    from qscope_eval.jobs.evidence import feature_evidence
    from qscope_eval.store import Store

    with Store(db) as store:
        ev = feature_evidence(store, feature, encoder, top=top, reencode=not no_tokens)
    if fmt == "json":
        emit(ev, fmt)
        return
    emit(ev, fmt, rows=ev["frequency"], columns=["name", "role", "n_samples", "n_fired", "frequency"])
    if fmt != "table":
        return
    click.echo(f"\ntop samples of feature {feature} (pooled value):")
    for s in ev["top_samples"]:
        text = _highlight(s["tokens"]) if s.get("tokens") else s["text"]
        click.echo(f"  {s['value']:.3g}  [{', '.join(s['in'])}]  {text[:300]}")
    if ev["tokens_note"]:
        click.echo(f"  ({ev['tokens_note']})")
    co = ", ".join(f"{c['feature']} ({c['jaccard']:.2f})" for c in ev["cofiring"])
    click.echo(f"co-fires with (Jaccard): {co or 'none'}")


def _highlight(tokens: list[dict]) -> str:
    """The prompt with the tokens where the feature fires in [[brackets]]."""
    return "".join(f"[[{t['token']}]]" if t["value"] > 0 else t["token"] for t in tokens)
