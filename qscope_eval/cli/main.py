"""Command-line interface: a thin layer over the library (sqlite-utils style).

Every command's docstring carries an example; library errors (QScopeError)
become one line on stderr and exit code 1; usage errors exit 2. Each command
is a plain click command in a small module of this package; this file only
builds the group.
"""

from __future__ import annotations

import logging
import sys

import click

from qscope_eval.cli import anchors as _anchors
from qscope_eval.cli import encode as _encode
from qscope_eval.cli import gaps as _gaps
from qscope_eval.cli import jobs as _jobs
from qscope_eval.cli import metrics as _metrics
from qscope_eval.cli import sae as _sae
from qscope_eval.cli import serve as _serve
from qscope_eval.cli import validate as _validate
from qscope_eval.cli.common import Group


@click.group(cls=Group)
@click.version_option(package_name="qscope-eval")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose):
    """qscope-eval: which benchmarks measure the same thing, and what none of them touch.

    Example: qscope-eval audit demo --db out/demo.duckdb --out out/demo
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


COMMANDS = [
    _encode.suites, _encode.encode, _encode.encoders,
    _metrics.coverage, _metrics.overlap, _metrics.select_cmd, _metrics.sql,
    _jobs.audit, _jobs.report,
    _sae.train_sae, _sae.feature_stats,
    _validate.validate, _anchors.anchors,
    _gaps.gaps, _gaps.feature,
    _serve.serve,
]
for _command in COMMANDS:
    cli.add_command(_command)


def main():
    cli(prog_name="qscope-eval")


if __name__ == "__main__":
    main()
