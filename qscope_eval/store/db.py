"""DuckDB storage: schema, idempotent writes, reads, SQL views (DESIGN §6).

One file holds everything an audit produces. Samples are content-addressed
(sample_id = first 8 bytes of sha256(text)), so a prompt shared by two
benchmarks is stored and encoded once. Each batch's activations and its
`encoded` completion markers go in ONE transaction, so a killed run loses at
most the batch in flight and a rerun encodes exactly what is missing.
Bulk writes go through Arrow, never row by row. The flow process is the only
writer; users read through `query.py` (read-only).
"""

from __future__ import annotations

import hashlib
import json
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
from qscope_eval.store.schema import MIGRATIONS, SCHEMA, SCHEMA_DIGEST, SCHEMA_VERSION, VIEWS
from qscope_eval.store.validation import ValidationTables


def sample_id(text: str) -> int:
    """Content address of a prompt: first 8 bytes of sha256 as a signed BIGINT."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


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


class Store(ValidationTables):
    """A qscope-eval DuckDB file opened for writing (one writer at a time)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; give a file path for --db, e.g. out/audit.duckdb")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path))
        except duckdb.IOException as e:
            msg = str(e).splitlines()[0]
            if "lock" in msg.lower():
                raise StoreError(f"{self.path} is in use by another process (DuckDB allows one writer); wait for it or use another --db") from None
            raise StoreError(f"cannot open {self.path} as a DuckDB database: {msg}") from None
        except duckdb.Error as e:
            raise StoreError(f"cannot open {self.path} as a DuckDB database: {str(e).splitlines()[0]}") from None
        self._init_schema()

    def _init_schema(self) -> None:
        tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if tables and "meta" not in tables:
            raise StoreError(f"{self.path} is a DuckDB file but not a qscope-eval database; use a new --db path")
        meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall()) if tables else {}
        # Opening a current file writes nothing (a failed write then leaves it byte-identical); an older
        # file gets the additive migrations once, in one transaction.
        if meta.get("schema_digest") != SCHEMA_DIGEST:
            with self.transaction():
                self.con.execute(SCHEMA)
                for statement in MIGRATIONS:
                    self.con.execute(statement)
                self.con.execute(VIEWS)
                self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
                self.con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_digest', ?)", [SCHEMA_DIGEST])
        version = int(self.con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchall()[0][0])
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, this qscope-eval expects {SCHEMA_VERSION}; use a new --db path")

    def close(self) -> None:
        # drop the reference too: task contexts (Prefect/Dask) may outlive the Store object
        con, self.con = self.con, None
        if con is not None:
            con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def transaction(self):
        return _Transaction(self.con)

    # ---- benchmarks and samples -------------------------------------------------
    def register_benchmark(self, name: str, suite: str, spec: dict, texts: list[str], cost: float | None = None,
                           role: str = "benchmark") -> np.ndarray:
        """Store a benchmark's (role 'reference': a reference corpus's) prompts (new texts only) and replace its
        membership. Returns sample ids."""
        assert role in ("benchmark", "reference"), role
        ids = np.array([sample_id(t) for t in texts], dtype=np.int64)
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
        """Several encoders' results for one forward batch, all in ONE transaction."""
        with self.transaction():
            return sum(self._write_one(*part) for part in parts)

    def _write_one(self, encoder_id, ids, n_tokens, truncated, rows, features, values, fired_tokens) -> int:
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
            return 0
        marker = pa.table({
            "encoder_id": np.full(n_keep, encoder_id, np.int32), "sample_id": ids[keep],
            "n_tokens": np.asarray(n_tokens, np.int32)[keep], "truncated": np.asarray(truncated, bool)[keep],
            "n_features": n_feat[keep], "encoded_at": pa.array([_now()] * n_keep, pa.timestamp("us")),
        })
        sel = keep[rows]
        acts = pa.table({
            "encoder_id": np.full(int(sel.sum()), encoder_id, np.int32), "sample_id": ids[rows[sel]],
            "feature": np.asarray(features, np.int32)[sel], "value": np.asarray(values, np.float32)[sel],
            "n_tokens": np.asarray(fired_tokens, np.int32)[sel],
        })
        self.con.register("_marker", marker)
        self.con.register("_acts", acts)
        try:
            self.con.execute("INSERT INTO activations SELECT * FROM _acts")
            self.con.execute("INSERT INTO encoded SELECT * FROM _marker")
        finally:
            self.con.unregister("_marker")
            self.con.unregister("_acts")
        return n_keep

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
        rows = np.searchsorted(ids, acts["sample_id"])
        X = sp.csr_matrix((acts["value"].astype(np.float32), (rows, acts["feature"].astype(np.int64))), shape=(len(ids), encoder.d_sae))
        return EncodedSet(encoder, X, ids, tok["n_tokens"].astype(np.int64), M, list(names))

    # ---- runs -------------------------------------------------------------------
    def start_run(self, run_id: str, suite: str, params: dict) -> None:
        self.con.execute("INSERT INTO runs (run_id, suite, started_at, status, params) VALUES (?, ?, ?, 'running', ?)",
                         [run_id, suite, _now(), json.dumps(params, sort_keys=True, default=str)])

    def finish_run(self, run_id: str, status: str, encoder_id: int | None = None, error: str | None = None,
                   summary: dict | None = None, report_dir: str | None = None) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = ?, status = ?, encoder_id = coalesce(?, encoder_id), error = ?, "
            "summary = coalesce(?, summary), report_dir = coalesce(?, report_dir) WHERE run_id = ?",
            [_now(), status, encoder_id, error, json.dumps(summary, default=str) if summary is not None else None, report_dir, run_id],
        )

    def save_run_features(self, run_id: str, features: dict[str, np.ndarray], encoder_id: int | None = None) -> None:
        """Record each benchmark's F(D) for this run and encoder, replacing any earlier record of it."""
        names = [b for b, f in features.items() for _ in range(len(f))]
        tbl = pa.table({"run_id": [run_id] * len(names), "benchmark": names,
                        "feature": np.concatenate([np.asarray(f, np.int32) for f in features.values()] or [np.zeros(0, np.int32)]),
                        "encoder_id": pa.array([encoder_id] * len(names), pa.int32())})
        with self.transaction():
            self.con.execute("DELETE FROM run_features WHERE run_id = ? AND encoder_id IS NOT DISTINCT FROM ?",
                             [run_id, encoder_id])
            self.con.register("_rf", tbl)
            self.con.execute("INSERT INTO run_features (run_id, benchmark, feature, encoder_id) "
                             "SELECT run_id, benchmark, feature, encoder_id FROM _rf")
            self.con.unregister("_rf")

    # A run_features row without encoder_id (older files) belongs to its run's own encoder.
    _RF_ENCODER = "coalesce(f.encoder_id, (SELECT r.encoder_id FROM runs r WHERE r.run_id = f.run_id))"

    def save_noise_floor(self, encoder_id: int, floor: dict) -> None:
        """Record an encoder's measured batch-composition noise floor (noise.NoiseFloor.to_dict()); the latest wins."""
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [f"noise_floor:{int(encoder_id)}", json.dumps(floor, sort_keys=True)])

    def noise_floor(self, encoder_id: int) -> dict | None:
        """The encoder's recorded noise floor, or None if none was measured."""
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [f"noise_floor:{int(encoder_id)}"]).fetchall()
        return json.loads(row[0][0]) if row else None

    def previous_run(self, suite: str, encoder_id: int, before_run: str | None = None) -> str | None:
        """The last completed run of `suite` that recorded F(D) for this encoder (or ran on it), other than `before_run`."""
        row = self.con.execute(
            "SELECT run_id FROM runs r WHERE suite = ? AND status = 'completed' AND run_id IS DISTINCT FROM ? "
            f"AND (encoder_id = ? OR EXISTS (SELECT 1 FROM run_features f WHERE f.run_id = r.run_id "
            f"AND {self._RF_ENCODER} = ?)) ORDER BY finished_at DESC LIMIT 1",
            [suite, before_run, encoder_id, encoder_id]).fetchall()
        return row[0][0] if row else None

    def run_features(self, run_id: str, encoder_id: int | None = None) -> dict[str, np.ndarray]:
        """F(D) per benchmark as recorded by `run_id` (for `encoder_id`; default: the run's own encoder)."""
        df = self.con.execute(
            f"SELECT benchmark, feature FROM run_features f WHERE run_id = ? AND {self._RF_ENCODER} IS NOT DISTINCT FROM "
            "coalesce(?, (SELECT r.encoder_id FROM runs r WHERE r.run_id = ?))", [run_id, encoder_id, run_id]).df()
        return {b: np.sort(g["feature"].to_numpy()) for b, g in df.groupby("benchmark")}

    def previous_summary(self, suite: str, encoder_id: int, before_run: str | None = None) -> dict | None:
        """The summary of the last completed run of `suite` on this encoder (for drift)."""
        row = self.con.execute(
            "SELECT summary FROM runs WHERE suite = ? AND encoder_id = ? AND status = 'completed' AND summary IS NOT NULL "
            "AND run_id IS DISTINCT FROM ? ORDER BY finished_at DESC LIMIT 1",
            [suite, encoder_id, before_run],
        ).fetchall()
        return json.loads(row[0][0]) if row else None


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

    def last_run(self, suite: str, status: str = "completed") -> dict | None:
        """The newest run of a suite with this status: run_id, started_at (ISO), params (dict), report_dir."""
        row = self.con.execute(
            "SELECT run_id, started_at, params, report_dir FROM runs WHERE suite = ? AND status = ? "
            "ORDER BY started_at DESC LIMIT 1", [suite, status]).fetchone()
        if row is None:
            return None
        return {"run_id": row[0], "started_at": row[1].isoformat(timespec="seconds") + "Z",
                "params": json.loads(row[2]) if row[2] else {}, "report_dir": row[3]}

    def run_started_at(self, run_id: str) -> str | None:
        """A run's start time (ISO, UTC): the report's "generated" stamp, so a re-render matches the audit."""
        row = self.con.execute("SELECT started_at FROM runs WHERE run_id = ?", [run_id]).fetchone()
        return None if row is None else row[0].isoformat(timespec="seconds") + "Z"

    def update_run_params(self, run_id: str, params: dict) -> None:
        """Record the settings an audit resolved (every layer, cost kind, min_support), for `report`."""
        self.con.execute("UPDATE runs SET params = ? WHERE run_id = ?",
                         [json.dumps(params, sort_keys=True, default=str), run_id])


class _Transaction:
    """BEGIN/COMMIT around a block; ROLLBACK on any exception so the file stays as it was."""

    def __init__(self, con):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN TRANSACTION")
        return self.con

    def __exit__(self, exc_type, exc, tb):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
