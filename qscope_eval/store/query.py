"""Read-only SQL over a qscope-eval database, for people (datasette-style).

User SQL runs on a connection opened `read_only=True` with external access
(files, network, extensions, ATTACH, COPY) disabled except reads of the
database's own Parquet parts, and the configuration locked; only SELECT and
EXPLAIN statements run (COPY could otherwise write into the parts folder). So a
query can neither change the database nor read or write any other file. A
watchdog interrupts queries that run past a time limit. While an encode writes,
the writer closes the file between batches; opening retries until it gets in.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from qscope_eval.store import parts as P
from qscope_eval.errors import QueryError

DEFAULT_TIMEOUT_S = 30.0
LOCK_WAIT_S = 15.0
"""How long a reader waits for a writer to let go of the file between batches."""
ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def connect_readonly(db: str | Path, memory_limit: str = "2GB", threads: int | None = None,
                     lock_wait_s: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open `db` read-only and sandboxed (no files but its own parts, no network, config locked)."""
    path = Path(db)
    if not path.is_file():
        raise QueryError(f"no database at {path}; run `qscope-eval encode SUITE --db {path}` first or fix --db")
    config = {
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "memory_limit": memory_limit,
    }
    if threads:
        config["threads"] = threads
    try:
        lock_wait_s = LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
        con = P.connect_with_retry(path, lock_wait_s, read_only=True, config=config)
    except duckdb.Error as e:
        msg = str(e).splitlines()[0]
        if "lock" in msg.lower():
            raise QueryError(f"{path} stayed locked by its writer for {lock_wait_s:g} s; try again") from None
        raise QueryError(f"cannot open {path}: {msg}") from None
    try:
        # the parts folder is the one place files may be read from; set before external access goes off
        parts = str(P.parts_dir(path.resolve())).replace("'", "''")
        con.execute(f"SET allowed_directories = ['{parts}/']")
        P.reader_view(con, path)
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def check_statements(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but SELECT / EXPLAIN (COPY, EXPORT, ATTACH, SET, PRAGMA, CALL, DDL, DML)."""
    try:
        kinds = [st.type for st in con.extract_statements(sql)]
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {str(e).splitlines()[0]}") from None
    bad = [k.name for k in kinds if k not in ALLOWED]
    if bad:
        raise QueryError(f"refused: qscope-eval runs read-only SELECT queries only (got {', '.join(bad)})")


def run_sql(db: str | Path, sql: str, timeout_s: float = DEFAULT_TIMEOUT_S, max_rows: int | None = None) -> pd.DataFrame:
    """Run one user query read-only; returns a DataFrame. Raises QueryError with a one-line reason."""
    if not sql or not sql.strip():
        raise QueryError('empty query; pass SQL, e.g. "SELECT * FROM coverage"')
    con = connect_readonly(db)
    try:
        check_statements(con, sql)
    except QueryError:
        con.close()
        raise
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
