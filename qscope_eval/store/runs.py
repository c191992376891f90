"""Audit history in the store: the `runs` rows and each audit's F(D) (`run_features`), for drift and `serve`.

A mixin of `Store` (db.py), split out by concept; it uses the Store's connection.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class RunHistory:
    """Methods of `Store` about audits (needs `con`, `transaction`, `release`, `_maybe_release`)."""

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
        self.release()  # the end of an audit: let readers in now

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
        self.release()  # the audit computes the next layer now: let readers in meanwhile

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

    def runs(self) -> list[dict]:
        """Every run (audit history), newest first, as dicts of the `runs` columns (summary as JSON text)."""
        df = self.con.execute("SELECT * FROM runs ORDER BY started_at DESC, run_id").df()
        return [{k: (None if v is None or v != v else v) for k, v in r.items()} for r in df.astype(object).to_dict("records")]
