"""Activations as immutable Parquet parts beside the DuckDB catalog, and the file locks around it.

Why (measured in bench/store_bench.py): DuckDB lets one process open a file
read-write and then nobody else may open it at all, not even read-only, so a
writer that keeps the file open for a whole encode refuses every reader. The
store therefore

- writes each committed batch's activations to a Parquet part in
  `<db>.parts/` (temporary name, fsync, rename), and lists the part in the
  catalog table `parts` in the SAME DuckDB transaction as the batch's `encoded`
  markers; a part that is on disk but not listed (a run killed between rename
  and commit) is invisible to every reader and deleted at the next writer open;
- exposes them as the view `activations` (read_parquet over the listed parts),
  re-created in that same transaction, so a reader sees a batch's markers and
  its activations together or not at all;
- closes the catalog between batches (see store.Store.hold_s), so readers get
  in; a writer that finds readers inside raises a "writer waiting" flag file
  that makes new readers wait, so steady readers cannot starve it.

Parts are never modified: compaction writes a merged part and swaps the
catalog rows in one transaction, then deletes the old files (readers hold the
catalog's shared lock for their whole query, so no reader is mid-read then).
Parquet (zstd, rows sorted by sample then feature) also stores a pair in about
half the bytes of DuckDB's own table. `Transaction` is the BEGIN/COMMIT block every write of the store uses.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qscope_eval.errors import StoreError

SCHEMA = pa.schema([("encoder_id", pa.int32()), ("sample_id", pa.int64()), ("feature", pa.int32()),
                    ("value", pa.float32()), ("n_tokens", pa.int32())])
COLUMNS = ", ".join(SCHEMA.names)
WAITING_FRESH_S = 5.0
"""A writer-waiting flag older than this is stale (its writer died) and ignored."""


def parts_dir(db: Path) -> Path:
    """Where a database's Parquet parts live: `out/a.duckdb` -> `out/a.duckdb.parts/`."""
    return db.with_name(db.name + ".parts")


def waiting_flag(db: Path) -> Path:
    """Touched by a writer while readers keep it out."""
    return db.with_name(db.name + ".writer-waiting")


def reader_flag(db: Path) -> Path:
    """Touched by a reader while the writer keeps it out; the writer then pauses after its next commit."""
    return db.with_name(db.name + ".reader-waiting")


def yield_to_readers(db: Path, max_s: float = 0.2) -> None:
    """After the writer closed the file: if a reader is waiting, give it up to `max_s` to get in."""
    flag, end = reader_flag(db), time.monotonic() + max_s
    while fresh(flag) and time.monotonic() < end:
        time.sleep(0.005)


# Encodings measured in bench/store_bench.py: byte-stream-split floats and delta-coded features (sorted
# within a sample) take 6.0 B/pair against 8.5 with pyarrow's defaults (dictionary + zstd).
WRITE_OPTIONS = dict(compression="zstd", use_dictionary=["encoder_id", "sample_id", "n_tokens"],
                     column_encoding={"value": "BYTE_STREAM_SPLIT", "feature": "DELTA_BINARY_PACKED"})


def activation_table(encoder_id: int, ids: np.ndarray, keep: np.ndarray, rows, features, values,
                     fired_tokens) -> pa.Table:
    """A part's rows: the COO triples of the samples `keep` marks (rows index `ids`), grouped by sample with
    features rising (runs and small deltas compress best).

    Pooled batches arrive in that order (sorted by (row, feature)) and usually keep every sample; then nothing
    is copied or sorted. On a 2M-row `max` batch the sort and the masked copies had been 80 % of the write."""
    rows = np.asarray(rows, np.int64)
    cols = [np.asarray(features, np.int32), np.asarray(values, np.float32), np.asarray(fired_tokens, np.int32)]
    if not keep.all():
        sel = keep[rows]
        rows, cols = rows[sel], [c[sel] for c in cols]
    key = (rows << 32) | cols[0].astype(np.int64)  # (row, feature) in one int64: features are >= 0 int32
    if not (key[1:] > key[:-1]).all():
        order = np.argsort(key, kind="stable")
        rows, cols = rows[order], [c[order] for c in cols]
    return pa.table({"encoder_id": np.full(len(rows), encoder_id, np.int32), "sample_id": ids[rows],
                     "feature": cols[0], "value": cols[1], "n_tokens": cols[2]})


def write_part(directory: Path, encoder_id: int, tables) -> str:
    """Write one immutable part from a table or an iterable of tables (temp name, fsync, rename); returns its name.

    An iterable is streamed (one input in memory at a time), for compaction.
    """
    directory.mkdir(parents=True, exist_ok=True)
    name = f"e{encoder_id}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = directory / f".{name}.tmp"
    try:
        with pq.ParquetWriter(tmp, SCHEMA, **WRITE_OPTIONS) as w:
            for t in ([tables] if isinstance(tables, pa.Table) else tables):
                w.write_table(t.cast(SCHEMA), row_group_size=1 << 20)  # few footers; zone maps still prune
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name


def view_sql(directory: Path, names: list[str], temp: bool = False) -> str:
    """The `activations` view over exactly these parts (absolute paths; an empty typed relation if none)."""
    kind = "TEMP VIEW" if temp else "VIEW"
    if not names:
        cols = ", ".join(f"NULL::{t} AS {n}" for n, t in
                         zip(SCHEMA.names, ["INTEGER", "BIGINT", "INTEGER", "REAL", "INTEGER"]))
        return f"CREATE OR REPLACE {kind} activations AS SELECT {cols} WHERE false"
    files = ", ".join("'" + str(directory.resolve() / n).replace("'", "''") + "'" for n in names)
    return f"CREATE OR REPLACE {kind} activations AS SELECT {COLUMNS} FROM read_parquet([{files}])"


def copy_database(src: str | Path, dst: str | Path) -> Path:
    """Copy a database: the DuckDB file and its parts folder (a copy of the file alone has no activations)."""
    import shutil

    src, dst = Path(src), Path(dst)
    shutil.copy2(src, dst)
    if parts_dir(src).is_dir():
        shutil.copytree(parts_dir(src), parts_dir(dst), dirs_exist_ok=True)
    return dst


def part_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The committed parts, oldest first (the order of the `activations` view)."""
    return [r[0] for r in con.execute("SELECT part FROM parts ORDER BY created_at, part").fetchall()]


def view_points_at(con: duckdb.DuckDBPyConnection, directory: Path) -> bool:
    """Whether the stored `activations` view reads its parts from `directory` (False after the files moved)."""
    row = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'activations' AND NOT temporary").fetchall()
    return not row or "read_parquet" not in row[0][0] or str(directory.resolve()) + "/" in row[0][0]


def remove_orphans(directory: Path, listed: set[str]) -> int:
    """Delete part files the catalog does not list (runs killed before their commit). Caller holds the write lock."""
    if not directory.is_dir():
        return 0
    n = 0
    for p in directory.iterdir():
        if p.name not in listed and (p.suffix in (".parquet", ".tmp")):
            p.unlink(missing_ok=True)
            n += 1
    return n


class WriterLock:
    """One writer per database across processes (flock on `<db>.writer`), held for the Store's lifetime.

    The DuckDB file lock used to give this for free; now the writer releases the
    file between batches, so a second `encode` on the same file is refused here.
    """

    def __init__(self, db: Path):
        self.path = db.with_name(db.name + ".writer")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise StoreError(f"{db} is being written by another qscope-eval process; wait for it or use another --db") from None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def is_lock_error(e: Exception) -> bool:
    return isinstance(e, duckdb.IOException) and "lock" in str(e).lower()


def connect_with_retry(db: Path, wait_s: float, read_only: bool, config: dict | None = None,
                       raise_flag: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, retrying while another process holds it (up to `wait_s` seconds).

    A writer (`raise_flag`) touches the writer-waiting flag while it waits; a
    reader first waits (up to 2 s) for a fresh flag to clear, so readers let the
    writer in between their queries.
    """
    flag, mine = waiting_flag(db), (waiting_flag(db) if raise_flag else reader_flag(db))
    deadline = time.monotonic() + wait_s
    if not raise_flag:
        polite = min(deadline, time.monotonic() + 2.0)
        while fresh(flag) and time.monotonic() < polite:
            time.sleep(0.01)
    delay, flagged = 0.005, False
    try:
        while True:
            try:
                return duckdb.connect(str(db), read_only=read_only, config=config or {})
            except duckdb.IOException as e:
                if not is_lock_error(e) or time.monotonic() >= deadline:
                    raise
                try:
                    mine.touch()
                    flagged = True
                except OSError:  # a read-only folder: retrying still works, only less politely
                    pass
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05 if raise_flag else 0.01)
    finally:
        if flagged:
            mine.unlink(missing_ok=True)


def fresh(flag: Path) -> bool:
    try:
        return time.time() - flag.stat().st_mtime < WAITING_FRESH_S
    except FileNotFoundError:
        return False


def reader_view(con: duckdb.DuckDBPyConnection, db: Path) -> None:
    """On a reader's connection: a TEMP `activations` view over the listed parts at this file's location.

    Temp objects are found before the file's own, so the stored views (coverage,
    ...) read the parts next to the file even if the folder was moved since the
    writer last wrote the view's absolute paths. Files of schema version 1 keep
    their activations table and need nothing.
    """
    if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'parts' AND table_schema = 'main'").fetchall():
        return
    con.execute(view_sql(parts_dir(db), part_names(con), temp=True))


def migrate_table_to_parts(con: duckdb.DuckDBPyConnection, directory: Path) -> int:
    """Schema 1 -> 2 inside the caller's transaction: each encoder's rows of the activations TABLE become one part."""
    kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'activations' "
                       "AND table_schema = 'main'").fetchall()
    if not kind or kind[0][0] != "BASE TABLE":
        return 0
    encs = [r[0] for r in con.execute("SELECT DISTINCT encoder_id FROM activations ORDER BY 1").fetchall()]
    for e in encs:
        _copy_part(con, directory, e, f"SELECT {COLUMNS} FROM activations WHERE encoder_id = {int(e)} ORDER BY sample_id, feature")
    con.execute("DROP VIEW IF EXISTS sample_features; DROP VIEW IF EXISTS benchmark_features; DROP VIEW IF EXISTS coverage; "
                "DROP VIEW IF EXISTS pairwise_overlap; DROP VIEW IF EXISTS feature_frequency; DROP TABLE activations")
    return len(encs)


def _copy_part(con, directory: Path, encoder_id: int, select_sql: str) -> str:
    """COPY a query into a new part (temp name, fsync, rename) and list it; inside the caller's transaction."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"e{encoder_id}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = directory / f".{name}.tmp"
    con.execute(f"COPY ({select_sql}) TO '{str(tmp).replace(chr(39), chr(39) * 2)}' "
                "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1048576)")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / name)
    n = con.execute(f"SELECT count(*) FROM read_parquet('{str(directory / name)}')").fetchall()[0][0]
    con.execute("INSERT INTO parts VALUES (?, ?, ?, now()::TIMESTAMP)", [name, encoder_id, n])
    return name


TIER_BASE = 16
"""Compaction merges an encoder's parts once TIER_BASE of them share a size tier (log16 of their rows)."""


def compact(store, encoder_id: int) -> int:
    """Merge one tier of small parts into one (LSM style: each row is rewritten ~log16(N) times).

    Keeps the number of parts per encoder under ~16 per tier, so a reader opens
    tens of files, not one per batch. Returns the number of parts merged.
    """
    con = store.con
    rows = con.execute("SELECT part, n_rows FROM parts WHERE encoder_id = ? ORDER BY created_at, part", [encoder_id]).fetchall()
    tiers: dict[int, list[str]] = {}
    for name, n in rows:
        tier = 0
        while n >= TIER_BASE ** (tier + 3):  # tier 0: < 4096 rows, 1: < 65536, ...
            tier += 1
        tiers.setdefault(tier, []).append(name)
    group = next((names for names in tiers.values() if len(names) >= TIER_BASE), None)
    if group is None:
        return 0
    new = None
    try:
        with store.transaction():
            new = write_part(store.parts_dir, encoder_id, (pq.read_table(store.parts_dir / n) for n in group))
            n_rows = sum(pq.ParquetFile(store.parts_dir / n).metadata.num_rows for n in group)
            con.execute("INSERT INTO parts VALUES (?, ?, ?, now()::TIMESTAMP)", [new, encoder_id, n_rows])
            con.execute("DELETE FROM parts WHERE list_contains(?, part)", [group])
            con.execute(view_sql(store.parts_dir, part_names(con)))
    except BaseException:
        if new:
            (store.parts_dir / new).unlink(missing_ok=True)
        raise
    # committed: no reader can be reading the old files now (readers hold the file's shared lock while they read)
    for n in group:
        (store.parts_dir / n).unlink(missing_ok=True)
    return len(group)


class Transaction:
    """BEGIN/COMMIT around a block; ROLLBACK on any exception so the file stays as it was."""

    def __init__(self, con):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN TRANSACTION")
        return self.con

    def __exit__(self, exc_type, exc, tb):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
