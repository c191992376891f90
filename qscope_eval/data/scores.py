"""Score tables in: one score per (model, benchmark), from the tables eval teams already have (DESIGN §5a).

Inputs (`read_scores(paths)`, files or folders, read recursively):
- wide tables, a row per model and a column per benchmark: CSV, TSV, Parquet, JSON records
  (`[{"model": ..., "mmlu_anatomy": 61.2}, ...]`) or a JSON object `{"model": {"benchmark": score}}`;
  the model column is found by name (`fullname`, `model_name`, `eval_name`, `model`, ...) or as the
  first non-numeric column;
- long tables with columns (model, benchmark | task, score | value [, n, metric, stderr]);
- lm-eval `results_<timestamp>.json` files (data/score_lmeval.py).

Every column (a long table: every benchmark value; lm-eval: every task) is matched to a stored
benchmark (data/score_names.py) and listed in `ScoreTable.matching` with how and why, never dropped
silently. Scores are put on one scale, points 0-100: a column whose values all lie in [0, 1] is
read as a share (×100), else as points; each column's scale is stated. Missing cells ('', NaN,
'-', 'n/a') stay NaN. A duplicated (model, benchmark) with the same score merges (with a note),
with different scores is an error, as are non-numeric or out-of-range cells; an empty column is
left out with its reason, a constant one too (it has no correlation with anything).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from qscope_eval.data.score_lmeval import is_results_file, read_results
from qscope_eval.data.score_names import MATCHED, Matcher, ScoreTableError, meta_reason, read_mapping

__all__ = ["ColumnMatch", "ScoreTable", "ScoreTableError", "read_scores"]

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".parquet", ".pq", ".json", ".jsonl")
MODEL_COLUMNS = ("fullname", "model_name", "model_name_or_path", "eval_name", "model", "model_id", "models", "name",
                 "llm", "system")
BENCH_COLUMNS = ("benchmark", "task", "dataset", "subject", "eval", "evaluation", "benchmark_name", "task_name")
SCORE_COLUMNS = ("score", "value", "accuracy", "acc", "result", "metric_value", "performance")
MISSING = {"", "nan", "none", "null", "na", "n/a", "-", "—", "–", "?"}
MIN_MODELS = 3


@dataclass(frozen=True)
class ColumnMatch:
    """One source column (a long table's benchmark value, an lm-eval task): where it went and why."""

    source: str
    column: str
    benchmark: str | None
    how: str
    """'exact' | 'task' | 'leaderboard' | 'normalised' | 'map' (used) or 'unmatched' | 'ambiguous' | 'ignored'."""
    reason: str
    scale: str
    """'0-1' (read as a share, ×100) or '0-100' (points); '' where no scores were read."""
    n_models: int


@dataclass
class ScoreTable:
    """Scores in points (0-100), models × columns, with how every source column was treated."""

    scores: pd.DataFrame
    """index: model names; columns: the stored benchmark where matched, else the source column; NaN = missing."""
    matching: list[ColumnMatch]
    notes: list[str]
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["model", "benchmark", "score", "scale", "source", "metric"]))
    """Long form of `scores` with provenance: model, benchmark, score (points), scale, source, metric."""

    def matched(self) -> pd.DataFrame:
        """Only the columns matched to stored benchmarks."""
        keep = [c for c in self.scores.columns if c in {m.benchmark for m in self.matching if m.how in MATCHED}]
        return self.scores[keep]

    def to_dict(self) -> dict:
        return {"matching": [asdict(m) for m in self.matching], "notes": list(self.notes),
                "models": [str(m) for m in self.scores.index], "columns": [str(c) for c in self.scores.columns],
                "n_models": int(self.scores.shape[0])}


@dataclass
class _Column:
    """Raw cells of one source column (model -> cell as read)."""

    source: str
    column: str
    cells: pd.Series
    metric: str | None = None
    skip: str | None = None
    """Why the column is left out before any matching (metadata of the source, a group aggregate), or None."""


# ----------------------------------------------------------------------------- reading files
def _files(paths: Sequence[str | Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise ScoreTableError(f"--scores {p}: no such file or folder")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_results_file(f))
            found = found or sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TABLE_SUFFIXES)
            if not found:
                raise ScoreTableError(f"--scores {p}: the folder holds no results_*.json, CSV, TSV, Parquet or JSON "
                                      "file; point it at lm-eval's --output_path or a score table")
            out += found
        else:
            out.append(p)
    return out


def _cells_frame(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype(object).where(df.notna(), None)
    df.columns = [str(c) for c in df.columns]
    return df


def _read_table(path: Path) -> pd.DataFrame:
    """The file as a frame of raw cells (strings or numbers), or a ScoreTableError saying why it is not a table."""
    raw = path.read_bytes()[:4096]
    if path.stat().st_size == 0 or not raw.strip():
        raise ScoreTableError(f"{path} is empty; give a score table (a 'model' column and one column per benchmark)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq") or raw[:4] == b"PAR1":
            return _cells_frame(pd.read_parquet(path))
        if b"\x00" in raw:
            raise ValueError("binary content")
        text = path.read_text(encoding="utf-8-sig")
        if suffix == ".jsonl":
            return _cells_frame(pd.DataFrame([json.loads(line) for line in text.splitlines() if line.strip()]))
        if suffix == ".json":
            doc = json.loads(text)
            if isinstance(doc, list) and all(isinstance(r, dict) for r in doc):
                return _cells_frame(pd.DataFrame(doc))
            if isinstance(doc, dict) and doc and all(isinstance(v, dict) for v in doc.values()):
                df = pd.DataFrame.from_dict(doc, orient="index")
                return _cells_frame(df.rename_axis("model").reset_index())
            raise ValueError("JSON that is neither a list of records nor an object of model -> {benchmark: score}")
        sep = "\t" if suffix in (".tsv", ".tab") or ("\t" in text.split("\n", 1)[0] and suffix != ".csv") else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except ScoreTableError:
        raise
    except Exception as e:  # noqa: BLE001 - every reader error means the same thing to the user
        raise ScoreTableError(f"{path} is not a score table ({str(e).splitlines()[0][:160]}); give a CSV/TSV, Parquet "
                              "or JSON file with a 'model' column and one column per benchmark, a long table "
                              "(model, benchmark, score) or lm-eval results_*.json files") from None


def _cell(v) -> float | None:
    """One cell as a float; NaN when missing; None when it is not a number."""
    if v is None or isinstance(v, (bool, np.bool_)):
        return np.nan if v is None else None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    t = str(v).strip()
    if t.lower() in MISSING:
        return np.nan
    try:
        return float(t[:-1]) if t.endswith("%") else float(t)
    except ValueError:
        return None


def _parse(cells: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values as floats, NaN where missing or not a number; bool mask of the cells that are not numbers).

    Missing: None, NaN, '', 'nan', 'n/a', '-', ... (MISSING); '45.3%' reads as 45.3. A column of plain
    numbers converts in one numpy call; others cell by cell (a 1000 × 500 table in about a second)."""
    vals = cells.to_numpy(dtype=object)
    bad = np.fromiter((isinstance(v, (bool, np.bool_)) for v in vals), bool, len(vals))
    num = pd.to_numeric(pd.Series(np.where(bad, None, vals), dtype=object), errors="coerce").to_numpy(float, copy=True)
    for i in np.flatnonzero(np.isnan(num) & ~bad):  # missing tokens, '45%', or not a number: cell by cell
        x = _cell(vals[i])
        bad[i] = x is None
        num[i] = np.nan if x is None else x
    return num, bad


def _model_column(df: pd.DataFrame, path: Path) -> str:
    lower = {c.lower().strip(): c for c in df.columns}
    for name in MODEL_COLUMNS:
        if name in lower:
            return lower[name]
    for c in df.columns:  # the first column whose cells are mostly not numbers
        num, bad = _parse(df[c])
        if bad.sum() > (bad | ~np.isnan(num)).sum() / 2:
            return c
    raise ScoreTableError(f"{path}: no model column (none is named {', '.join(MODEL_COLUMNS[:5])}, ... and every "
                          "column holds numbers); name the column of model names 'model'")


def _clean_model(v) -> str:
    s = re.sub(r"<[^>]+>", "", str(v)).strip()  # leaderboard exports wrap names in <a href=...>
    return s


def _skipped(source: str, column: str, why: str) -> _Column:
    return _Column(source, column, pd.Series([], dtype=object), skip=why)


def _table_columns(path: Path, metric: str | None) -> list[_Column]:
    """A wide or long table's source columns (raw cells by model), in file order; columns the layout
    itself rules out (another model-name column, a long table's extra columns) carry their `skip` reason."""
    df = _read_table(path)
    if df.shape[0] == 0 or df.shape[1] < 2:
        raise ScoreTableError(f"{path} has {df.shape[0]} rows and {df.shape[1]} columns; a score table needs a model "
                              "column and at least one score column, one row per model")
    mcol = _model_column(df, path)
    df = df[[_clean_model(v) not in ("", "None", "nan") for v in df[mcol]]]
    models = [_clean_model(v) for v in df[mcol]]
    lower = {c.lower().strip(): c for c in df.columns}
    bcol = next((lower[n] for n in BENCH_COLUMNS if n in lower), None)
    scol = next((lower[n] for n in SCORE_COLUMNS if n in lower), None)
    src = str(path)
    if bcol is not None and scol is not None:  # long: (model, benchmark, score[, n, metric])
        out = []
        part = pd.DataFrame({"model": models, "bench": [str(b) for b in df[bcol]], "cell": list(df[scol])})
        mc = lower.get("metric")
        if mc is not None:
            part["metric"] = [str(x) for x in df[mc]]
            chosen = {}
            for b, g in part.groupby("bench", sort=False):
                ms = list(dict.fromkeys(g["metric"]))
                chosen[b] = metric if metric in ms else ms[0]
            part = part[[m == chosen[b] for b, m in zip(part["bench"], part["metric"])]]
        for c in df.columns:
            if c == mc:
                out.append(_skipped(src, c, "the metric column (one metric per benchmark: --metric, else the first listed)"))
            elif c not in (mcol, bcol, scol):
                out.append(_skipped(src, c, f"a long table's extra column (the scores are in {scol!r})"))
        for b, g in part.groupby("bench", sort=False):
            out.append(_Column(src, b, _cells_series(g["model"], g["cell"]), g["metric"].iloc[0] if "metric" in g else None))
        return out
    out, index = [], pd.Index([str(m) for m in models], name="model")
    for c in df.columns:
        if c == mcol:
            continue
        if c.lower().strip() in MODEL_COLUMNS:
            out.append(_skipped(src, c, f"another model-name column (models are named by {mcol!r})"))
            continue
        out.append(_Column(src, c, _cells_series(index, df[c])))
    return out


def _cells_series(models, cells) -> pd.Series:
    cells = cells.to_numpy(dtype=object) if isinstance(cells, pd.Series) else np.asarray(list(cells), dtype=object)
    index = models if isinstance(models, pd.Index) else pd.Index([str(m) for m in models], name="model")
    return pd.Series(cells, index=index, dtype=object)


def _lmeval_columns(files: list[Path], metric: str | None, filt: str | None, notes: list) -> list[_Column]:
    res = read_results(files, metric, filt)
    notes += res.notes
    src = str(files[0].parent) if len({f.parent for f in files}) == 1 else str(Path(*_common(files)))
    skipped = [_skipped(src, task, why) for task, why in sorted(res.skipped.items())]
    by_task: dict[str, list] = {}
    for s in res.scores:
        by_task.setdefault(s.task, []).append(s)
    return skipped + [_Column(src, t, _cells_series([s.model for s in ss], [s.value for s in ss]), ss[0].metric)
                      for t, ss in by_task.items()]


def _common(files: list[Path]) -> tuple[str, ...]:
    parts = [f.parent.parts for f in files]
    common = []
    for xs in zip(*parts):
        if len(set(xs)) > 1:
            break
        common.append(xs[0])
    return tuple(common) or (".",)


# ----------------------------------------------------------------------------- one column -> points
def _numbers(col: _Column, num: np.ndarray, bad: np.ndarray, strict: bool) -> np.ndarray | None:
    """Cells as floats; None when none is a number and not strict; a ScoreTableError on a stray non-number."""
    if bad.any():
        if not strict and np.isnan(num).all():
            return None
        k = int(np.flatnonzero(bad)[0])
        m, v = col.cells.index[k], col.cells.iloc[k]
        raise ScoreTableError(f"{col.source}: column {col.column!r} has {int(bad.sum())} non-numeric cell(s), e.g. {str(v)[:40]!r} "
                              f"for model {m!r}; put a number there, or leave it empty / 'NaN' / '-' for a missing score")
    return num


def _scale(col: _Column, x: np.ndarray) -> tuple[np.ndarray, str]:
    live = x[~np.isnan(x)]
    if (live < 0).any() or (live > 100).any():
        worst = live[(live < 0) | (live > 100)][0]
        raise ScoreTableError(f"{col.source}: column {col.column!r} has a value {worst:g} outside [0, 100]; scores must "
                              "be shares (0-1) or points (0-100): fix the cell, or map the column to null with --map "
                              "if it is not a score")
    return (x * 100.0, "0-1") if live.max() <= 1.0 else (x, "0-100")


def _use(col: _Column, target: str | None, how: str, reason: str, strict: bool, notes: list[str]):
    """(ColumnMatch, row of points or None): a matched column's cells checked, scaled, or why it is left out."""
    num, bad = _parse(col.cells)
    n_live = int((bad | ~np.isnan(num)).sum())
    if how not in MATCHED and not (not strict and how == "unmatched"):
        return ColumnMatch(col.source, col.column, target, how, reason, "", n_live), None
    x = _numbers(col, num, bad, strict)
    if x is None:
        example = str(col.cells.dropna().iloc[0])[:30]
        return ColumnMatch(col.source, col.column, None, "ignored", f"not numeric (e.g. {example!r})", "", n_live), None
    live = x[~np.isnan(x)]
    if live.size == 0:
        return ColumnMatch(col.source, col.column, target, "ignored", f"empty: no model has a score ({reason})", "", 0), None
    pts, scale = _scale(col, x)
    if live.size >= 2 and np.nanmax(pts) - np.nanmin(pts) == 0:
        notes.append(f"{col.column}: every model has the same score; left out (a constant has no correlation)")
        return ColumnMatch(col.source, col.column, target, "ignored", f"constant: every model scores "
                           f"{np.nanmax(pts):g} points, so it correlates with nothing", scale, int(live.size)), None
    ok = ~np.isnan(pts)
    row = (col.cells.index.to_numpy(object)[ok], target, pts[ok], scale, col.source, col.metric, col.column)
    return ColumnMatch(col.source, col.column, target, how, reason, scale, int(live.size)), row


# ----------------------------------------------------------------------------- the whole table
def read_scores(paths: Sequence[str | Path], *, benchmarks: Sequence[str] | None = None,
                tasks: Mapping[str, str] | None = None, metric: str | None = None,
                mapping: str | Path | Mapping[str, str | None] | None = None, filter: str | None = None) -> ScoreTable:
    """Read every score file under `paths`, match columns to `benchmarks` (None: keep every column under its own name).

    tasks: stored benchmark -> the lm-eval task it was built from; metric / filter: which lm-eval
    metric (default: each task's first) and filter (default: the first) to read; mapping: a --map
    file or a dict column -> benchmark (None: ignore). Raises ScoreTableError on any bad input.
    """
    files = _files(paths)
    notes: list[str] = []
    # a JSON list named results*.json is a table of records, not lm-eval's (an object with 'results')
    lm = [f for f in files if is_results_file(f) and f.read_bytes()[:64].lstrip()[:1] != b"["]
    cols = [c for f in files if f not in lm for c in _table_columns(f, metric)]
    cols += _lmeval_columns(lm, metric, filter, notes) if lm else []
    mapping = read_mapping(mapping) if isinstance(mapping, (str, Path)) else (mapping or {})
    matcher = Matcher(benchmarks, tasks, mapping) if benchmarks is not None else None
    matching, rows = [], []
    for col in cols:
        if col.skip:
            matching.append(ColumnMatch(col.source, col.column, None, "ignored", col.skip, "", 0))
            continue
        if matcher is not None:
            nm = matcher.match(col.column)
            target, how, reason = nm.benchmark, nm.how, nm.reason
        else:  # no matching: every score column under its own name
            why = "--map maps it to null" if col.column in mapping and mapping[col.column] is None else meta_reason(col.column)
            target, how, reason = (None, "ignored", why) if why else (col.column, "unmatched",
                                                                       "kept under its own name (no matching asked)")
        m, row = _use(col, target, how, reason, strict=matcher is not None, notes=notes)
        matching.append(m)
        rows += [row] if row is not None else []
    return _assemble(rows, matching, notes, matcher is not None)


def _assemble(rows: list[tuple], matching: list[ColumnMatch], notes: list[str], matched: bool) -> ScoreTable:
    """rows: per used column (models, benchmark, points, scale, source, metric, column) -> the ScoreTable."""
    cols = ["model", "benchmark", "score", "scale", "source", "metric", "column"]
    n = [len(r[0]) for r in rows]
    long = pd.DataFrame({"model": np.concatenate([r[0] for r in rows]) if rows else [],
                         "score": np.concatenate([r[2] for r in rows]) if rows else [],
                         **{c: np.repeat(np.array([r[k] for r in rows], dtype=object), n) if rows else []
                            for k, c in ((1, "benchmark"), (3, "scale"), (4, "source"), (5, "metric"), (6, "column"))}},
                        columns=cols)
    if matched and long.empty:
        unmatched = [m.column for m in matching if m.how == "unmatched"][:8]
        raise ScoreTableError("no score column matches a stored benchmark"
                              + (f" (unmatched: {', '.join(map(repr, unmatched))})" if unmatched else "")
                              + "; name columns like the stored benchmarks or their lm-eval tasks, or give --map FILE")
    dup = long.groupby(["model", "benchmark"], sort=False)["score"]
    spread = dup.max() - dup.min()
    clash = spread[spread > 1e-9]
    if not clash.empty:
        (m, b), _ = next(iter(clash.items()))
        g = long[(long.model == m) & (long.benchmark == b)]
        where = "; ".join(f"{r.source} column {r.column!r}: {r.score:g}" for r in g.itertuples())
        raise ScoreTableError(f"model {m!r} has different scores for {b!r} ({where}); keep one row per model and "
                              "benchmark (rows of one model run twice, e.g. at two precisions: drop one or give them "
                              "distinct names; two columns of one benchmark: map one to null with --map)")
    n_dup = int((dup.size() > 1).sum())
    if n_dup:
        notes.append(f"{n_dup} (model, benchmark) scores appeared more than once with the same value; merged")
    long = long.drop_duplicates(["model", "benchmark"]).reset_index(drop=True)
    wide = long.pivot(index="model", columns="benchmark", values="score") if not long.empty else pd.DataFrame()
    order = [str(b) for b in pd.unique(long["benchmark"].to_numpy(object))]
    wide = wide.reindex(columns=order).astype(float)
    wide.index = wide.index.astype(str)
    wide.columns = [str(c) for c in wide.columns]
    wide.columns.name = None
    if matched:
        both = (wide.notna().sum(axis=1) >= 2).sum() if wide.shape[1] >= 2 else wide.shape[0]
        if both < MIN_MODELS:
            raise ScoreTableError(f"only {int(both)} model(s) have scores on at least two of the matched benchmarks "
                                  f"({', '.join(order)}); correlations across fewer than {MIN_MODELS} models mean "
                                  "nothing: add the scores of more models")
    return ScoreTable(wide, matching, notes, long[cols[:-1]])
