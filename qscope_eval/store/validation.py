"""Store reads and writes of the validation against behaviour (DESIGN §5a): models, per-sample scores, results.

A mixin of `store.db.Store` (kept apart: one concern per module); the tables themselves
are in store/schema.py. Scores of a (model, benchmark) are replaced as a
whole, together with the validation result, in one transaction.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa

from qscope_eval.store.scores import has_column


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ValidationTables:
    """Methods on a Store (self.con: the DuckDB connection; self.transaction(): BEGIN/COMMIT)."""

    # ---- validation against behaviour (DESIGN §5a) ------------------------------------
    def stored_prompts(self) -> tuple[dict[int, str], dict[int, set[str]]]:
        """Every benchmark sample's text, and sample -> the benchmarks it belongs to (reference corpora are no benchmarks)."""
        rows = self.con.execute("SELECT m.sample_id, s.text, list(DISTINCT m.benchmark) FROM bench_memberships m "
                                "JOIN samples s USING (sample_id) GROUP BY ALL").fetchall()
        return {r[0]: r[1] for r in rows}, {r[0]: set(r[2]) for r in rows}

    def save_validation(self, validation_id: str, encoder_id: int | None, params: dict, result: dict,
                        models: pd.DataFrame, scores: pd.DataFrame) -> None:
        """Models, their per-sample scores (replacing earlier ones of the same model and benchmark) and the result, in ONE transaction."""
        cols = ["model", "benchmark", "sample_id", "value", "metric", "filter", "task", "doc_id"]
        self._save_result("samples", "sample_scores", cols, validation_id, encoder_id, params, result, models, scores)

    def _save_result(self, kind: str, table: str, cols: list[str], validation_id: str, encoder_id: int | None,
                     params: dict, result: dict, models: pd.DataFrame, scores: pd.DataFrame) -> None:
        """Models, their scores in `table` (earlier rows of the same model and benchmark replaced) and the result
        (a `validations` row of `kind`), in ONE transaction: `validate` on logs and on score tables both save here."""
        with self.transaction():
            self.con.register("_models", models[["model", "source"]])
            self.con.execute("INSERT OR REPLACE INTO models SELECT model, source, ? FROM _models", [_now()])
            self.con.unregister("_models")
            self.con.register("_scores", scores[cols])
            self.con.execute(f"DELETE FROM {table} s WHERE EXISTS (SELECT 1 FROM _scores n "
                             "WHERE n.model = s.model AND n.benchmark = s.benchmark)")
            self.con.execute(f"INSERT INTO {table} SELECT {', '.join(cols)} FROM _scores")
            self.con.unregister("_scores")
            self.con.execute("INSERT INTO validations (validation_id, created_at, encoder_id, params, result, kind) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             [validation_id, _now(), encoder_id, json.dumps(params, sort_keys=True, default=str),
                              json.dumps(result, default=str), kind])

    def latest_validation(self, encoder_id: int) -> dict | None:
        """The newest stored validation result for this encoder, if any."""
        kind = "AND coalesce(kind, 'samples') = 'samples' " if has_column(self.con, "validations", "kind") else ""
        row = self.con.execute(f"SELECT result FROM validations WHERE encoder_id = ? {kind}"
                               "ORDER BY created_at DESC LIMIT 1",
                               [encoder_id]).fetchall()
        return json.loads(row[0][0]) if row else None

    def sample_lengths(self, ids) -> dict[int, tuple[int, int | None]]:
        """sample_id -> (characters, prompt tokens or None): tokens as the most recent SAE encoder counted them
        (any encoder's count if no SAE encoder has the sample); the cost of a sample in a token budget."""
        self.con.register("_ids", pa.table({"sample_id": np.asarray(list(ids), dtype=np.int64)}))
        try:
            rows = self.con.execute(
                "SELECT s.sample_id, s.n_chars, arg_max(e.n_tokens, (x.kind = 'sae', x.encoder_id)) "
                "FROM samples s JOIN _ids USING (sample_id) LEFT JOIN encoded e USING (sample_id) "
                "LEFT JOIN encoders x USING (encoder_id) GROUP BY ALL").fetchall()
        finally:
            self.con.unregister("_ids")
        return {int(r[0]): (int(r[1]), None if r[2] is None else int(r[2])) for r in rows}
