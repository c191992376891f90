"""CLI commands for getting data in: `suites`, `encode`, `encoders`."""

from __future__ import annotations

import click

from qscope_eval.cli.common import db_option, emit, output_options


# ---- suites / encode -------------------------------------------------------------------

@click.command()
@output_options
def suites(fmt):
    """List the built-in suites and their files.

    Example: qscope-eval suites --json
    """
    from qscope_eval.data.suite import builtin_suites, load_suite

    rows = []
    for name, path in builtin_suites().items():
        s = load_suite(path)
        rows.append({"name": name, "path": str(path), "model": s.model.id, "benchmarks": len(s.benchmarks),
                     "layers": list(s.layers), "pooling": s.pooling})
    emit(rows, fmt)


@click.command()
@click.argument("suite")
@db_option()
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (samples/s, ETA).")
@click.option("--noise-floor", "noise_n", type=click.IntRange(min=0), default=0, show_default=True,
              help="Then encode N of the suite's prompts batched and one at a time and record how far their "
                   "feature sets agree (drift below that floor is reported as noise).")
@output_options
def encode(suite, db, progress, noise_n, fmt):
    """Encode a suite's benchmarks into the database (resumes; encodes only what is missing).

    SUITE is a YAML path or a built-in name.

    Example: qscope-eval encode demo --db out/demo.duckdb --noise-floor 64
    """
    from qscope_eval import progress as prog
    from qscope_eval.jobs.pipeline import encode_suite
    from qscope_eval.store import Store
    from qscope_eval.data.suite import load_suite

    s = load_suite(suite)
    with Store(db) as store:
        rep = encode_suite(s, store, progress=progress and prog.enabled())
        out = dict(rep.__dict__)
        if noise_n:
            from qscope_eval.jobs.noise import record_noise_floor

            out["noise_floor"] = record_noise_floor(s, store, noise_n)
    row = {k: v for k, v in out.items() if k not in ("encoders", "warnings", "noise_floor", "phases")}
    for key, nf in (out.get("noise_floor") or {}).items():
        if key.endswith("|sae"):
            row.update(noise_mean_jaccard=round(nf["mean_jaccard"], 4), noise_share_differ=round(nf["share_differ"], 4))
            break
    emit(out, fmt, rows=[row])


@click.command()
@db_option()
@output_options
def encoders(db, fmt):
    """List the encoders stored in a database.

    Example: qscope-eval encoders --db out/demo.duckdb
    """
    from qscope_eval.store import Store

    with Store(db, read_only=True) as store:
        rows = [{"encoder_id": e.encoder_id, "key": e.key, "layer": e.layer, "pooling": e.pooling, "kind": e.kind,
                 "d_sae": e.d_sae} for e in store.encoders()]
    emit(rows, fmt)
