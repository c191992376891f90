"""DuckDB storage: schema, idempotent writes, reads, SQL views (DESIGN §6).

One file holds everything an audit produces. Samples are content-addressed
(sample_id = first 8 bytes of sha256(text)), so a prompt shared by two
benchmarks is stored and encoded once. Each batch's activations and its
`encoded` completion markers go in ONE transaction, so a killed run loses at
most the batch in flight and a rerun encodes exactly what is missing.
Bulk writes go through Arrow, never row by row. One process writes at a time
(`Store`); it closes the file between batches so readers (`Store(read_only=True)`,
`query.py`) get in while an encode runs. Activations are Parquet parts (parts.py);
audit history methods live in runs.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from qscope_eval.model.encoders import EncoderKey
from qscope_eval.errors import StoreError
from qscope_eval.store import parts as P
from qscope_eval.store.runs import RunHistory
from qscope_eval.store.schema import MIGRATIONS, SCHEMA, SCHEMA_DIGEST, SCHEMA_VERSION, VIEWS
from qscope_eval.store.scores import ScoreTables
from qscope_eval.store.validation import ValidationTables


def sample_id(text: str) -> int:
    """Content address of a prompt: first 8 bytes of sha256 as a signed BIGINT."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def sample_ids(texts: list[str]) -> np.ndarray:
    """sample_id of each text (int64): the ids register_benchmark will store them under."""
    return np.array([sample_id(t) for t in texts], dtype=np.int64)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class EncoderRow:
    """One encoder: (model, revision, SAE, layer, pooling, kind)."""

    encoder_id: int
    key: str
    model: str
    model_revision: str
    sae: str
    layer: int
    pooling: str
    kind: str
    d_sae: int
    params: dict

    @property
    def parsed_key(self) -> EncoderKey:
        return EncoderKey.parse(self.key)

    def to_dict(self, null_encoder_id: int | None = None) -> dict:
        """The `encoder` object of every JSON output (coverage --json, summary.json)."""
        return {"encoder_id": self.encoder_id, "key": self.key, "layer": self.layer, "pooling": self.pooling,
                "d_sae": self.d_sae, "null_encoder_id": null_encoder_id}


@dataclass(frozen=True)
class EncodedSet:
    """Everything the metrics need for one encoder, as arrays."""

    encoder: EncoderRow
    X: sp.csr_matrix
    """(n_samples x d_sae) pooled values, float32."""
    sample_ids: np.ndarray
    """(n_samples,) content addresses, row order of X."""
    n_tokens: np.ndarray
    """(n_samples,) prompt token counts."""
    M: sp.csr_matrix
    """(n_benchmarks x n_samples) bool membership."""
    benchmarks: list[str]
    """Row names of M, in suite/registration order."""


class Store(ValidationTables, ScoreTables, RunHistory):
    """A qscope-eval database: a DuckDB catalog plus Parquet parts, opened for writing (one writer) or reading.

    The writer holds the DuckDB file only while it works and closes it once it
    has held it `hold_s` seconds and committed, or at once when a reader waits
    (readers get in between batches); `con` reopens it on demand.
    `read_only=True` opens it like a reader (waits up to `lock_wait_s` for the
    writer to let go) and never writes.
    """

    def __init__(self, path: str | Path, read_only: bool = False, hold_s: float = 0.5, lock_wait_s: float = 120.0):
        self.path = Path(path)
        self.read_only, self.hold_s, self.lock_wait_s = read_only, hold_s, lock_wait_s
        self.parts_dir = P.parts_dir(self.path)
        self._con, self._opened_at, self._lock = None, 0.0, None
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; give a file path for --db, e.g. out/audit.duckdb")
        if read_only:
            if not self.path.is_file():
                raise StoreError(f"no database at {self.path}; run `qscope-eval encode SUITE --db {self.path}` first or fix --db")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = P.WriterLock(self.path)
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The open DuckDB connection (reopened, waiting for readers to finish, if the writer released it)."""
        if self._con is None:
            if self._lock is None and not self.read_only:
                raise StoreError(f"{self.path} was closed; open a new Store")
            self._con = self._connect()
            self._opened_at = time.monotonic()
        return self._con

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            con = P.connect_with_retry(self.path, self.lock_wait_s, self.read_only, raise_flag=not self.read_only)
        except duckdb.IOException as e:
            if P.is_lock_error(e):
                raise StoreError(f"{self.path} stayed locked by another process for {self.lock_wait_s:g} s; try again") from None
            raise StoreError(f"cannot open {self.path} as a DuckDB database: {str(e).splitlines()[0]}") from None
        except duckdb.Error as e:
            raise StoreError(f"cannot open {self.path} as a DuckDB database: {str(e).splitlines()[0]}") from None
        if self.read_only:
            P.reader_view(con, self.path)
        return con

    def _init_schema(self) -> None:
        tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if tables and "meta" not in tables:
            raise StoreError(f"{self.path} is a DuckDB file but not a qscope-eval database; use a new --db path")
        meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall()) if tables else {}
        # Opening a current file writes nothing (a failed write then leaves it byte-identical); an older
        # file gets the migrations once, in one transaction (schema 1: activations table -> parts).
        if not self.read_only and meta.get("schema_digest") != SCHEMA_DIGEST:
            with self.transaction():
                self.con.execute(SCHEMA)
                for statement in MIGRATIONS:
                    self.con.execute(statement)
                P.migrate_table_to_parts(self.con, self.parts_dir)
                self.con.execute(P.view_sql(self.parts_dir, P.part_names(self.con)))
                self.con.execute(VIEWS)
                self.con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
                self.con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_digest', ?)", [SCHEMA_DIGEST])
            meta["schema_version"] = str(SCHEMA_VERSION)
        if not self.read_only:
            P.remove_orphans(self.parts_dir, set(P.part_names(self.con)))  # files only: parts no commit listed
            if not P.view_points_at(self.con, self.parts_dir):  # the folder moved: re-point the stored view
                with self.transaction():
                    self.con.execute(P.view_sql(self.parts_dir, P.part_names(self.con)))
        version = int(meta.get("schema_version", 0))
        if version not in (1, SCHEMA_VERSION) or (version != SCHEMA_VERSION and not self.read_only):
            raise StoreError(f"{self.path} has schema version {version}, this qscope-eval expects {SCHEMA_VERSION}; use a new --db path")
        self.release()

    def release(self) -> None:
        """Close the DuckDB file now (readers may open it); the next use of `con` reopens it."""
        con, self._con = self._con, None
        if con is not None:
            con.close()

    def _maybe_release(self) -> None:
        """Release after `hold_s` of holding, or at once when a reader is waiting (then let it in)."""
        if self._con is None:
            return
        if time.monotonic() - self._opened_at >= self.hold_s or P.fresh(P.reader_flag(self.path)):
            self.release()
            P.yield_to_readers(self.path)

    def close(self) -> None:
        # drop the references too: task contexts (Prefect/Dask) may outlive the Store object
        self.release()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def transaction(self):
        return P.Transaction(self.con)

    # ---- benchmarks and samples -------------------------------------------------
    def register_benchmark(self, name: str, suite: str, spec: dict, texts: list[str], cost: float | None = None,
                           role: str = "benchmark", ids: np.ndarray | None = None) -> np.ndarray:
        """Store a benchmark's (role 'reference': a reference corpus's) prompts (new texts only) and replace its
        membership. Returns sample ids (`ids`: sample_ids(texts) when the caller has them already)."""
        assert role in ("benchmark", "reference"), role
        ids = sample_ids(texts) if ids is None else ids
        assert len(ids) == len(texts)
        samples = pa.table({"sample_id": ids, "text": texts, "n_chars": np.array([len(t) for t in texts], dtype=np.int32)})
        members = pa.table({"benchmark": [name] * len(ids), "position": np.arange(len(ids), dtype=np.int32), "sample_id": ids})
        with self.transaction():
            self.con.register("_new_samples", samples)
            self.con.execute(
                "INSERT INTO samples SELECT DISTINCT ON (sample_id) * FROM _new_samples n "
                "WHERE NOT EXISTS (SELECT 1 FROM samples s WHERE s.sample_id = n.sample_id)"
            )
            self.con.unregister("_new_samples")
            self.con.execute("DELETE FROM memberships WHERE benchmark = ?", [name])
            self.con.register("_members", members)
            self.con.execute("INSERT INTO memberships SELECT * FROM _members")
            self.con.unregister("_members")
            self.con.execute(
                "INSERT OR REPLACE INTO benchmarks (name, suite, spec, n_samples, cost, updated_at, role) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [name, suite, json.dumps(spec, sort_keys=True), len(ids), cost, _now(), role],
            )
        self._maybe_release()
        return ids

    def benchmark_names(self, role: str = "benchmark", suite: str | None = None) -> list[str]:
        """Names of the benchmarks (role 'reference': the reference corpora), optionally only those a suite
        registered, in registration order."""
        return [r[0] for r in self.con.execute(
            "SELECT name FROM benchmarks WHERE role = ? AND (? IS NULL OR suite = ?) ORDER BY updated_at, name",
            [role, suite, suite]).fetchall()]

    def benchmark_roles(self) -> dict[str, str]:
        """Every registered name -> 'benchmark' or 'reference'."""
        return dict(self.con.execute("SELECT name, role FROM benchmarks").fetchall())

    def texts(self, ids: Iterable[int]) -> dict[int, str]:
        tbl = pa.table({"sample_id": np.asarray(list(ids), dtype=np.int64)})
        self.con.register("_ids", tbl)
        try:
            rows = self.con.execute("SELECT s.sample_id, s.text FROM samples s JOIN _ids USING (sample_id)").fetchall()
        finally:
            self.con.unregister("_ids")
        return dict(rows)

    # ---- encoders ---------------------------------------------------------------
    def register_encoder(self, key: str, model: str, model_revision: str, sae: str, layer: int,
                         pooling: str, kind: str, d_sae: int, params: dict) -> EncoderRow:
        row = self.con.execute("SELECT encoder_id FROM encoders WHERE key = ?", [key]).fetchall()
        if not row:
            with self.transaction():
                next_id = self.con.execute("SELECT coalesce(max(encoder_id), 0) + 1 FROM encoders").fetchall()[0][0]
                self.con.execute(
                    "INSERT INTO encoders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [next_id, key, model, model_revision, sae, layer, pooling, kind, d_sae, json.dumps(params, sort_keys=True), _now()],
                )
        else:  # same identity: record params an older version did not (e.g. the model spec for re-encoding)
            old = json.loads(self.con.execute("SELECT params FROM encoders WHERE key = ?", [key]).fetchall()[0][0])
            if set(params) - set(old):
                self.con.execute("UPDATE encoders SET params = ? WHERE key = ?",
                                 [json.dumps({**params, **old}, sort_keys=True), key])
        return self.encoder(key)

    def encoder_keys(self) -> set[str]:
        """Keys of the registered encoders."""
        return {r[0] for r in self.con.execute("SELECT key FROM encoders").fetchall()}

    def encoder(self, ref: str | int | None = None, kind: str = "sae") -> EncoderRow:
        """Find an encoder by id, key, or (None) the most recently created one of `kind`."""
        cols = "encoder_id, key, model, model_revision, sae, layer, pooling, kind, d_sae, params"
        if ref is None:
            row = self.con.execute(f"SELECT {cols} FROM encoders WHERE kind = ? ORDER BY created_at DESC, encoder_id DESC LIMIT 1", [kind]).fetchall()
            if not row:
                raise StoreError(f"{self.path} has no encoded data yet; run `qscope-eval encode SUITE --db {self.path}` first")
        elif isinstance(ref, int) or str(ref).isdigit():
            row = self.con.execute(f"SELECT {cols} FROM encoders WHERE encoder_id = ?", [int(ref)]).fetchall()
        else:
            row = self.con.execute(f"SELECT {cols} FROM encoders WHERE key = ?", [str(ref)]).fetchall()
        if not row:
            known = ", ".join(f"{r[0]}={r[1]}" for r in self.con.execute("SELECT encoder_id, key FROM encoders").fetchall())
            raise StoreError(f"no encoder {ref!r} in {self.path}; known encoders: {known or 'none'}")
        row = row[0]
        return EncoderRow(*row[:9], params=json.loads(row[9]))

    def encoders(self) -> list[EncoderRow]:
        return [self.encoder(r[0]) for r in self.con.execute("SELECT encoder_id FROM encoders ORDER BY encoder_id").fetchall()]

    def null_for(self, enc: EncoderRow) -> EncoderRow | None:
        """The null-baseline encoder that rode along with `enc`, if any."""
        key = str(EncoderKey.parse(enc.key).twin("null"))
        row = self.con.execute("SELECT encoder_id FROM encoders WHERE key = ?", [key]).fetchall()
        return self.encoder(row[0][0]) if row else None

    # ---- encoding progress -------------------------------------------------------
    def pending(self, encoder_id: int, ids: np.ndarray) -> np.ndarray:
        """The ids (unique, in first-seen order) not yet encoded by this encoder."""
        ids = pd.unique(np.asarray(ids, dtype=np.int64))
        self.con.register("_ids", pa.table({"sample_id": ids}))
        try:
            done = self.con.execute(
                "SELECT sample_id FROM encoded JOIN _ids USING (sample_id) WHERE encoder_id = ?", [encoder_id]
            ).fetchnumpy()["sample_id"]
        finally:
            self.con.unregister("_ids")
        return ids[~np.isin(ids, done)]

    def write_batch(self, encoder_id: int, ids: np.ndarray, n_tokens: np.ndarray, truncated: np.ndarray,
                    rows: np.ndarray, features: np.ndarray, values: np.ndarray, fired_tokens: np.ndarray) -> int:
        """Write one batch for one encoder: activations + completion markers in one transaction.

        `rows` index into `ids` (COO layout of the pooled batch). Samples already
        marked encoded are skipped, so replaying a batch after a crash adds nothing.
        Returns the number of samples written.
        """
        return self.write_batches([(encoder_id, ids, n_tokens, truncated, rows, features, values, fired_tokens)])

    def write_batches(self, parts: list[tuple]) -> int:
        """Several encoders' results for one forward batch, all in ONE transaction (one Parquet part per encoder)."""
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only")
        written, new_files = 0, []
        try:
            with self.transaction():
                for part in parts:
                    n, name = self._write_one(*part)
                    written += n
                    new_files += [name] if name else []
                if new_files:
                    self.con.execute(P.view_sql(self.parts_dir, P.part_names(self.con)))
        except BaseException:
            for name in new_files:  # never listed: remove now rather than at the next open
                (self.parts_dir / name).unlink(missing_ok=True)
            raise
        if new_files:
            for encoder_id in {int(p[0]) for p in parts}:
                P.compact(self, encoder_id)
        self._maybe_release()
        return written

    def _write_one(self, encoder_id, ids, n_tokens, truncated, rows, features, values, fired_tokens) -> tuple[int, str | None]:
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        n_feat = np.bincount(rows, minlength=len(ids)).astype(np.int32)
        fresh = self.pending(encoder_id, ids)
        keep = np.isin(ids, fresh)
        # the same text twice in one batch is written once
        _, first = np.unique(ids, return_index=True)
        once = np.zeros(len(ids), bool)
        once[first] = True
        keep &= once
        n_keep = int(keep.sum())
        if not n_keep:
            return 0, None
        marker = pa.table({
            "encoder_id": np.full(n_keep, encoder_id, np.int32), "sample_id": ids[keep],
            "n_tokens": np.asarray(n_tokens, np.int32)[keep], "truncated": np.asarray(truncated, bool)[keep],
            "n_features": n_feat[keep], "encoded_at": pa.array([_now()] * n_keep, pa.timestamp("us")),
        })
        acts = P.activation_table(encoder_id, ids, keep, rows, features, values, fired_tokens)
        name = P.write_part(self.parts_dir, encoder_id, acts)
        self.con.register("_marker", marker)
        try:
            self.con.execute("INSERT INTO encoded SELECT * FROM _marker")
            self.con.execute("INSERT INTO parts VALUES (?, ?, ?, ?)", [name, encoder_id, acts.num_rows, _now()])
        except BaseException:
            (self.parts_dir / name).unlink(missing_ok=True)  # the transaction rolls back; its part goes too
            raise
        finally:
            self.con.unregister("_marker")
        return n_keep, name

    # ---- reads for metrics --------------------------------------------------------
    def load_encoded(self, encoder: EncoderRow, benchmarks: list[str] | None = None) -> EncodedSet:
        """Sparse matrices for one encoder over the given (default: all) benchmarks' encoded samples."""
        names = benchmarks or self.benchmark_names()
        if not names:
            raise StoreError(f"{self.path} has no benchmarks; run `qscope-eval encode SUITE --db {self.path}` first")
        self.con.register("_names", pa.table({"benchmark": names, "ord": np.arange(len(names), dtype=np.int32)}))
        try:
            mem = self.con.execute(
                "SELECT n.ord, m.sample_id FROM memberships m JOIN _names n USING (benchmark) "
                "JOIN encoded e ON e.sample_id = m.sample_id AND e.encoder_id = ? ORDER BY n.ord, m.position",
                [encoder.encoder_id],
            ).fetchnumpy()
            ids, inverse = np.unique(mem["sample_id"], return_inverse=True)
            M = sp.csr_matrix((np.ones(len(inverse), bool), (mem["ord"], inverse)), shape=(len(names), len(ids)))
            M.sum_duplicates()
            self.con.register("_ids", pa.table({"sample_id": ids}))
            tok = self.con.execute(
                "SELECT sample_id, n_tokens FROM encoded JOIN _ids USING (sample_id) WHERE encoder_id = ? ORDER BY sample_id",
                [encoder.encoder_id],
            ).fetchnumpy()
            acts = self.con.execute(
                "SELECT sample_id, feature, value FROM activations JOIN _ids USING (sample_id) WHERE encoder_id = ?",
                [encoder.encoder_id],
            ).fetchnumpy()
            self.con.unregister("_ids")
        finally:
            self.con.unregister("_names")
        assert np.array_equal(tok["sample_id"], ids)
        self.release()  # the caller computes on these arrays now: let readers in meanwhile
        rows = np.searchsorted(ids, acts["sample_id"])
        X = sp.csr_matrix((acts["value"].astype(np.float32), (rows, acts["feature"].astype(np.int64))), shape=(len(ids), encoder.d_sae))
        return EncodedSet(encoder, X, ids, tok["n_tokens"].astype(np.int64), M, list(names))


    # ---- reads for jobs and the CLI (all SQL stays in this package) ----------------------

    def benchmark_costs(self) -> dict[str, float | None]:
        """Each benchmark's custom cost as registered (None where the suite gave none)."""
        return dict(self.con.execute("SELECT name, cost FROM benchmarks").fetchall())

    def suites(self) -> list[str]:
        """Suites that registered benchmarks here."""
        return [r[0] for r in self.con.execute("SELECT DISTINCT suite FROM benchmarks ORDER BY 1").fetchall()]

    def suite_of(self, benchmarks: list[str]) -> str:
        """The suite that registered these benchmarks, or `mixed` when several did."""
        rows = self.con.execute("SELECT DISTINCT suite FROM benchmarks WHERE list_contains(?, name)", [benchmarks]).fetchall()
        return rows[0][0] if len(rows) == 1 else "mixed"

    def truncated(self, encoder_id: int, benchmarks: list[str]) -> tuple[int, int | None]:
        """(prompts truncated to the model's maximum, the longest length kept) among these benchmarks' samples."""
        n, longest = self.con.execute(
            "SELECT count(*), max(n_tokens) FROM encoded WHERE encoder_id = ? AND truncated AND sample_id IN "
            "(SELECT sample_id FROM memberships WHERE benchmark IN (SELECT unnest(?)))",
            [encoder_id, list(benchmarks)]).fetchall()[0]
        return int(n), longest

    def footprints(self, encoder_id: int) -> dict[str, int]:
        """Benchmark -> |F(D)| at min_support 1 (the `coverage` view)."""
        return dict(self.con.execute("SELECT benchmark, n_features FROM coverage WHERE encoder_id = ?",
                                     [encoder_id]).fetchall())
