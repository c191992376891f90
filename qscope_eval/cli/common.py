"""What every CLI command shares: options (--db, --encoder, --json/--csv/--table, metric
thresholds), the output helper, and the group class that turns library errors into one line.

Commands live in small modules beside this one (cli/encode.py, cli/metrics.py, cli/jobs.py,
cli/sae.py, cli/validate.py) and import only from here; cli/main.py adds them to the group.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys

import click

from qscope_eval.errors import QScopeError

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
    @click.option("--json", "fmt", flag_value="json", help="Machine-readable JSON (stable keys: docs/cli.md).")
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
        from qscope_eval import progress

        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        progress.set_quiet(any(a in ("--json", "--csv") for a in args))  # machine output: no bars on stderr
        try:
            return super().invoke(ctx)
        except QScopeError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
