"""The suite's `selection:` keys for choosing benchmarks from score tables (docs/select-behaviour.md).

In the suite YAML they sit beside the other selection keys, e.g.
``selection: {cost: tokens, scores: [scores/leaderboard.csv], max_error: 2.0}``; `data/suite.py`
gathers them into a ``ScoreSelectionSpec`` (``Suite.selection.scores``; None without `scores:`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qscope_eval.errors import SuiteError

KEYS = ("scores", "max_error", "min_tau", "metric", "map", "min_models", "folds")


@dataclass(frozen=True)
class ScoreSelectionSpec:
    """Audit step: decide benchmarks with scores by how well the kept ones predict them."""

    tables: tuple[str, ...]
    """Score tables of many models (files or folders, as `select --scores`)."""
    max_error: float = 2.0
    """Largest held-out prediction error (MAE, points) of a dropped benchmark."""
    min_tau: float | None = None
    """Smallest held-out Kendall tau between predicted and true model ranking (None: no bound)."""
    metric: str | None = None
    """lm-eval metric to read from results_*.json (default: each task's first)."""
    map: str | None = None
    """YAML/CSV mapping of score columns to benchmark names."""
    min_models: int = 10
    """Models a benchmark needs a score for to be decided by scores (else by features)."""
    folds: int = 5
    """K of the K-fold cross-validation over models."""

    def __post_init__(self):
        if not self.tables:
            raise SuiteError("selection.scores must list at least one score table, e.g. [scores/leaderboard.csv]")
        missing = [p for p in self.tables + ((self.map,) if self.map else ()) if not Path(p).exists()]
        if missing:
            raise SuiteError(f"selection: {', '.join(missing)} not found; give score tables (or folders of lm-eval "
                             "results_*.json) relative to the suite file")
        if not self.max_error > 0 or (self.min_tau is not None and not -1 < self.min_tau <= 1):
            raise SuiteError("selection.max_error must be > 0 points and selection.min_tau in (-1, 1]")
        if self.min_models < 4 or self.folds < 2:
            raise SuiteError("selection.min_models must be >= 4 and selection.folds >= 2")

    def params(self) -> dict:
        """The keyword arguments of jobs/behaviour_select.select_with_scores (and the audit's stored settings)."""
        return {"paths": list(self.tables), "max_error": self.max_error, "min_tau": self.min_tau,
                "metric": self.metric, "mapping": self.map, "min_models": self.min_models, "folds": self.folds}


def split_keys(v: dict, resolve: Callable[[str], str]) -> tuple[dict, ScoreSelectionSpec | None]:
    """(the other selection keys, the score spec or None); paths resolved with ``resolve``."""
    rest = {k: x for k, x in v.items() if k not in KEYS}
    mine = {k: x for k, x in v.items() if k in KEYS}
    if not mine:
        return rest, None
    sc: Any = mine.pop("scores", None)
    sc = [sc] if isinstance(sc, str) else sc
    if not isinstance(sc, list) or not all(isinstance(p, str) for p in sc):
        raise SuiteError("selection.scores must be a list of paths, e.g. [scores/leaderboard.csv] "
                         "(max_error, min_tau, metric, map, min_models and folds go with it)")
    if isinstance(mine.get("map"), str):
        mine["map"] = resolve(mine["map"])
    try:
        return rest, ScoreSelectionSpec(tuple(resolve(p) for p in sc), **mine)
    except TypeError as e:
        raise SuiteError(f"selection: {e}".replace("__init__() ", "")) from None
