"""CLI command `serve`: the read-only web service over one database (qscope_eval.service)."""

from __future__ import annotations

import click

from qscope_eval.cli.common import db_option


@click.command()
@db_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but localhost needs --token.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port to listen on.")
@click.option("--token", envvar="QSCOPE_EVAL_TOKEN", default=None,
              help="API token every request must carry (Bearer header or ?token=); env QSCOPE_EVAL_TOKEN.")
@click.option("--sql-timeout", type=float, default=30.0, show_default=True, help="Seconds before an /api/sql query is stopped.")
def serve(db, host, port, token, sql_timeout):
    """Serve audit history, reports, the JSON API and read-only SQL over HTTP (answers while audits write).

    Example: qscope-eval serve --db out/demo.duckdb --port 8000
    """
    from qscope_eval.service.app import serve as run_server

    run_server(db, host, port, token, sql_timeout)
