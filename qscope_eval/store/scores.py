"""Store reads and writes of score tables and their validations (`validate --scores`, DESIGN §5a).

A mixin of `store.db.Store` beside store/validation.py (one concern per module); the
tables are in store/schema.py: `benchmark_scores` (one score per model and benchmark,
in points) and `validations` rows of kind 'scores'. Models, their scores (replacing
earlier ones of the same model and benchmark) and the result go in ONE transaction.
"""

from __future__ import annotations

import json

import pandas as pd

SCORE_COLUMNS = ["model", "benchmark", "score", "scale", "source", "metric"]


def has_column(con, table: str, column: str) -> bool:
    """Whether a table has a column: a file from before the additive migrations, opened read-only, may not."""
    return bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                            [table, column]).fetchall()[0][0])


class ScoreTables:
    """Methods on a Store (self.con: the DuckDB connection; self.transaction(): BEGIN/COMMIT)."""

    def benchmark_tasks(self) -> dict[str, str]:
        """Stored benchmark (role 'benchmark') -> the lm-eval task its suite built it from (benchmarks with a task only)."""
        rows = self.con.execute("SELECT name, json_extract_string(spec, '$.task') FROM benchmarks "
                                "WHERE role = 'benchmark'").fetchall()
        return {name: task for name, task in rows if task}

    def save_score_validation(self, validation_id: str, encoder_id: int | None, params: dict, result: dict,
                              models: pd.DataFrame, scores: pd.DataFrame) -> None:
        """Models (model, source), their scores (SCORE_COLUMNS) and the result (kind 'scores'), in ONE transaction."""
        self._save_result("scores", "benchmark_scores", SCORE_COLUMNS, validation_id, encoder_id, params, result,
                          models, scores)

    def benchmark_scores(self) -> pd.DataFrame:
        """Every stored score (SCORE_COLUMNS), ordered by benchmark and model."""
        if not has_column(self.con, "benchmark_scores", "score"):
            return pd.DataFrame(columns=SCORE_COLUMNS)
        return self.con.execute(f"SELECT {', '.join(SCORE_COLUMNS)} FROM benchmark_scores ORDER BY benchmark, model").df()

    def latest_score_validation(self, encoder_id: int) -> dict | None:
        """The newest stored score validation (`validate --scores --save`) of this encoder, if any."""
        if not has_column(self.con, "validations", "kind"):
            return None
        row = self.con.execute("SELECT result FROM validations WHERE encoder_id = ? AND kind = 'scores' "
                               "ORDER BY created_at DESC LIMIT 1", [encoder_id]).fetchall()
        return json.loads(row[0][0]) if row else None

    def score_validations(self, encoder_id: int | None = None) -> list[dict]:
        """Every stored score validation (newest first), optionally of one encoder: the saved result documents."""
        if not has_column(self.con, "validations", "kind"):
            return []
        rows = self.con.execute("SELECT result FROM validations WHERE kind = 'scores' AND (? IS NULL OR encoder_id = ?) "
                                "ORDER BY created_at DESC", [encoder_id, encoder_id]).fetchall()
        return [json.loads(r[0]) for r in rows]
