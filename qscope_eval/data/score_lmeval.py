"""lm-eval `results_<timestamp>.json` files -> one score per (model, task) (the aggregate every `lm_eval` run writes).

Layout read (lm-eval 0.4.x, evaluator_utils.EvalResults): `results.<task>` holds
`"<metric>,<filter>": value` and `"<metric>_stderr,<filter>": se` beside `name`, `alias`,
`sample_len`; `group_subtasks` maps a group (e.g. `mmlu`, `mmlu_humanities`) to its children
and `groups` repeats the groups that aggregate. A group's own row is an average of its
subtasks: the subtasks' rows are used and the group row is reported as ignored, so a
benchmark is never counted twice. `n-samples.<task>.effective` gives the items behind
each score. The model is `config.model_args`' pretrained= (with revision=, so checkpoints
stay apart), else `model_name`, else the run folder. Files of another layout (no
`results` object, metric keys without `,<filter>` as lm-eval < 0.4 wrote them) are
refused with what was expected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from qscope_eval.data.lmeval_logs import results_model
from qscope_eval.data.score_names import ScoreTableError

_FIXED = {"name", "alias", "sample_len", "sample_count", " ", ""}
_TS_RE = re.compile(r"results_?(?P<ts>.*)\.json$")


@dataclass
class TaskScore:
    """One model's score on one task, as lm-eval aggregated it (value on lm-eval's own scale)."""

    model: str
    task: str
    value: float
    metric: str
    """`<metric>,<filter>` as lm-eval keys it."""
    n: int | None
    path: Path


@dataclass
class LmevalScores:
    """Every task score of a set of results files, what was skipped and why."""

    scores: list[TaskScore] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """task -> why it was left out (group aggregate, no such metric)."""
    notes: list[str] = field(default_factory=list)


def is_results_file(path: Path) -> bool:
    return path.suffix.lower() == ".json" and path.name.lower().startswith("results")


def _model(doc: dict, path: Path) -> str:
    return results_model(doc) or path.parent.name


def _groups(doc: dict) -> set[str]:
    gs = doc.get("group_subtasks") if isinstance(doc.get("group_subtasks"), dict) else {}
    out = {g for g, kids in gs.items() if kids}
    if isinstance(doc.get("groups"), dict):
        out |= set(doc["groups"])
    return out


def _metric_keys(row: dict) -> list[str]:
    return [k for k in row if k not in _FIXED and "," in k and not k.split(",", 1)[0].endswith("_stderr")]


def _choose(row: dict, metric: str | None, filt: str | None) -> str | None:
    keys = [k for k in _metric_keys(row) if isinstance(row[k], (int, float)) and not isinstance(row[k], bool)]
    if metric is not None:
        keys = [k for k in keys if k.split(",", 1)[0] == metric]
    if filt is not None and any(k.split(",", 1)[1] == filt for k in keys):
        keys = [k for k in keys if k.split(",", 1)[1] == filt]
    return keys[0] if keys else None


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScoreTableError(f"{path} is not JSON ({str(e).splitlines()[0]}); give lm-eval's results_<timestamp>.json "
                              "files or a score table (CSV, TSV, Parquet, JSON records)") from None
    expected = ("expected lm-eval >= 0.4's layout: a top-level 'results' object of task -> "
                "{'<metric>,<filter>': value} (beside 'configs', 'versions', 'n-shot'); re-run the evaluation with "
                "lm-eval >= 0.4, or export the scores as a wide table (a 'model' column, one column per benchmark)")
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        keys = ", ".join(list(doc)[:8]) if isinstance(doc, dict) else type(doc).__name__
        raise ScoreTableError(f"{path} is not an lm-eval results file this version reads (top level: {keys}); {expected}")
    for task, row in doc["results"].items():
        if not isinstance(row, dict):
            raise ScoreTableError(f"{path}: results.{task} is not an object of metrics; {expected}")
        numeric = [k for k, v in row.items() if k not in _FIXED and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numeric and not any("," in k for k in numeric):
            raise ScoreTableError(f"{path}: results.{task} has metric keys without ',<filter>' (e.g. {numeric[0]!r}): "
                                  f"it was written by lm-eval < 0.4; {expected}")
    return doc


def read_results(files: list[Path], metric: str | None = None, filt: str | None = None) -> LmevalScores:
    """Scores of every leaf task in `files`; one model's task read twice keeps the newest file (by timestamp)."""
    out = LmevalScores()
    newest: dict[tuple[str, str], TaskScore] = {}
    stamp: dict[tuple[str, str], str] = {}
    replaced = 0
    for path in sorted(files):
        doc = _load(path)
        model, groups = _model(doc, path), _groups(doc)
        ts = (_TS_RE.search(path.name).group("ts") if _TS_RE.search(path.name) else "") or str(path.stat().st_mtime)
        nsamp = doc.get("n-samples") if isinstance(doc.get("n-samples"), dict) else {}
        for task, row in doc["results"].items():
            if task in groups:
                out.skipped[task] = "group aggregate (its subtasks' own rows are used)"
                continue
            key = _choose(row, metric, filt)
            if key is None:
                have = sorted({k.split(",", 1)[0] for k in _metric_keys(row)})
                out.skipped[task] = (f"no metric {metric!r} (it has: {', '.join(have) or 'none'}); pass --metric"
                                     if metric else "no numeric metric")
                continue
            n = nsamp.get(task, {}).get("effective") if isinstance(nsamp.get(task), dict) else None
            ts_old = stamp.get((model, task))
            if ts_old is not None:
                replaced += 1
                if ts_old > ts:
                    continue
            newest[(model, task)] = TaskScore(model, task, float(row[key]), key, None if n is None else int(n), path)
            stamp[(model, task)] = ts
    out.scores = list(newest.values())
    if replaced:
        out.notes.append(f"{replaced} (model, task) scores were in several results files; the newest file's were used")
    used = {s.task for s in out.scores}
    for t in list(out.skipped):
        if t in used:  # one model's run lacked the metric, another's had it: the task is used
            del out.skipped[t]
    by_task: dict[str, set[str]] = {}
    for s in out.scores:
        by_task.setdefault(s.task, set()).add(s.metric)
    for t, ms in sorted(by_task.items()):
        if len(ms) > 1:
            out.notes.append(f"{t}: models were scored with different metrics ({', '.join(sorted(ms))}); pass --metric to use one")
    return out
