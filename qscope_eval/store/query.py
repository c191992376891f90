"""Read-only SQL over a qscope-eval database, for people (datasette-style).

User SQL runs on a connection opened `read_only=True` with external access
(files, network, extensions, ATTACH, COPY) disabled and the configuration
locked, so a query can neither change the database nor read or write any
other file. A watchdog interrupts queries that run past a time limit.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from qscope_eval.errors import QueryError

DEFAULT_TIMEOUT_S = 30.0


def connect_readonly(db: str | Path, memory_limit: str = "2GB", threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open `db` read-only and sandboxed (no files, no network, config locked)."""
    path = Path(db)
    if not path.is_file():
        raise QueryError(f"no database at {path}; run `qscope-eval encode SUITE --db {path}` first or fix --db")
    config = {
        "enable_external_access": False,
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "memory_limit": memory_limit,
    }
    if threads:
        config["threads"] = threads
    try:
        con = duckdb.connect(str(path), read_only=True, config=config)
    except duckdb.Error as e:
        msg = str(e).splitlines()[0]
        if "lock" in msg.lower():
            raise QueryError(f"{path} is being written by another process (an audit?); query it when that finishes") from None
        raise QueryError(f"cannot open {path}: {msg}") from None
    con.execute("SET lock_configuration = true")
    return con


def run_sql(db: str | Path, sql: str, timeout_s: float = DEFAULT_TIMEOUT_S, max_rows: int | None = None) -> pd.DataFrame:
    """Run one user query read-only; returns a DataFrame. Raises QueryError with a one-line reason."""
    if not sql or not sql.strip():
        raise QueryError('empty query; pass SQL, e.g. "SELECT * FROM coverage"')
    con = connect_readonly(db)
    timed_out = threading.Event()

    def _interrupt():
        timed_out.set()
        con.interrupt()

    timer = threading.Timer(timeout_s, _interrupt)
    timer.start()
    try:
        rel = con.execute(sql)
        if rel.description is None:
            return pd.DataFrame()
        if not max_rows:
            return rel.df()
        # stream Arrow batches so a huge result never lands in memory whole
        with warnings.catch_warnings():  # the extra copy is per batch, bounded by max_rows
            warnings.simplefilter("ignore")
            reader, batches, n = rel.to_arrow_reader(min(max_rows, 100_000)), [], 0
        for batch in reader:
            batches.append(batch)
            n += batch.num_rows
            if n >= max_rows:
                break
        if not batches:
            return reader.schema.empty_table().to_pandas()
        return pa.Table.from_batches(batches).to_pandas().head(max_rows)
    except duckdb.Error as e:
        if timed_out.is_set():
            raise QueryError(f"query stopped after the {timeout_s:g} s limit; add a LIMIT or filter, or raise --timeout") from None
        msg = str(e).splitlines()[0]
        if "read-only" in msg or "file system operations are disabled" in msg or "configuration has been locked" in msg:
            raise QueryError(f"refused: qscope-eval runs user SQL read-only, without file or network access ({msg})") from None
        raise QueryError(f"SQL error: {msg}") from None
    finally:
        timer.cancel()
        con.close()
