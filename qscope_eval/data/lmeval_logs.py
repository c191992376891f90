"""lm-eval `--log_samples` outputs -> per-model, per-task scores, matched to the store's samples.

Reading. lm-eval writes `<output_path>/<model>/samples_<task>_<timestamp>.jsonl`
(one object per line: doc_id, doc, target, arguments, resps, filtered_resps,
filter, metrics, the hashes and one key per metric) and `results_<timestamp>.json`
beside them, which names the model. lm-eval 0.4.0–0.4.2 wrote one JSON array per
task (`<model_args>_<task>.jsonl`) without hashes, `filter` or `metrics`; several
filters then show up as repeated doc_ids, in filter order. A folder holding sample
logs is one run; runs that name the same model are merged (the newest file of a
task wins). Values are often strings ("1.0", "True").

Matching (DESIGN §5a). Nothing here trusts the user's task names or exact prompt
strings: the logged prompt (`arguments.gen_args_0.arg_0`) is matched to the
store's prompt texts after whitespace normalisation, as the stored text being
- the whole prompt, or
- its suffix: lm-eval prepends the task description (MMLU) and few-shot examples,
  which the project's zero-shot prompts leave out, or
- the suffix of the prompt minus a constant tail (chat templates close every
  prompt with the same end-of-turn / assistant markers): the tail length is
  calibrated per file on its first prompts.
- failing those (a prompt template of the user's own, or stored prompts with few-shot
  examples), the one stored text holding the doc's longest field shown in the prompt,
  about as near its end as in the prompt (a few-shot example sits further up).
The longest stored suffix wins (a shorter one is a suffix of it). A match is kept
only if the doc agrees with it (the doc's longest string field found in the prompt
must be inside the stored text), and a normalised text shared by two stored samples
is ambiguous: both cases count as unmatched, with their reason, never guessed.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np

from qscope_eval.errors import QScopeError

KNOWN_METRICS = ("acc", "exact_match", "pass@1", "pass_at_1", "acc_norm", "em", "f1", "mc2", "mc1", "bleu", "rouge1")
_STANDARD_KEYS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                  "doc_hash", "prompt_hash", "target_hash"}
_SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<ts>\d{4}-\d{2}-\d{2}T[\d\-.:]+)\.jsonl?$")
MIN_SUFFIX = 12      # normalised characters: shorter stored texts only match a whole prompt
MAX_TAIL = 400       # longest chat-template tail tried after the stored text
CALIBRATE = 24       # prompts per file used to calibrate the tail


class LogError(QScopeError):
    """lm-eval sample logs are missing or unreadable."""


def normalize(text: str) -> str:
    """Whitespace runs -> one space, stripped: chat templates and tokenizer round trips re-space text."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------- reading
@dataclass
class TaskLog:
    """One model's scores on one logged task, reduced to one value per doc."""

    model: str
    task: str
    path: Path
    metric: str
    filter: str
    doc_ids: list[int]
    prompts: list[str]
    docs: list[Any]
    values: np.ndarray
    """(n_docs,) float score per doc."""
    notes: list[str] = field(default_factory=list)


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "false"):
            return float(s == "true")
        try:
            x = float(s)
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    if isinstance(v, list) and len(v) == 1:
        return _number(v[0])
    return None


def _prompt(args: Any) -> str | None:
    """The context lm-eval sent: arguments.gen_args_0.arg_0 (>= 0.4.3) or arguments[0][0] (0.4.0–0.4.2)."""
    if isinstance(args, dict):
        first = args.get("gen_args_0")
        ctx = first.get("arg_0") if isinstance(first, dict) else None
    elif isinstance(args, list) and args and isinstance(args[0], (list, tuple)) and args[0]:
        ctx = args[0][0]
    else:
        ctx = None
    if isinstance(ctx, str) and ctx.startswith("[{"):
        try:  # API chat models log the messages as JSON: the text is their contents
            msgs = json.loads(ctx)
            ctx = "\n\n".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
        except (json.JSONDecodeError, AttributeError):
            pass
    return ctx if isinstance(ctx, str) else None


def _read_rows(path: Path, notes: list[str]) -> tuple[list[dict], bool]:
    """Rows of a samples file and whether it is the old (0.4.0–0.4.2, JSON array) format."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LogError(f"cannot read {path}: {e}") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise LogError(f"{path} is a JSON array (lm-eval 0.4.0–0.4.2 format) but does not parse ({e}); "
                           "the run was probably killed while writing: rerun it or remove the file") from None
        return [r for r in rows if isinstance(r, dict)], True
    lines = text.splitlines()
    rows, odd = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 or all(not x.strip() for x in lines[i + 1:]):
                notes.append(f"{path.name}: last line is truncated (a killed run?); skipped it")
                continue
            raise LogError(f"{path}:{i + 1} is not valid JSON; fix or remove the file") from None
        if isinstance(row, dict):
            rows.append(row)
        else:
            odd += 1
    if odd:
        notes.append(f"{path.name}: {odd} lines are not JSON objects (not lm-eval samples); skipped them")
    return rows, False


def _choose(options: list[str], wanted: str | None, what: str) -> str | None:
    if wanted is not None:
        if wanted in options:
            return wanted
        return options[0] if len(options) == 1 and what == "filter" else None
    return options[0] if options else None


def _metric_names(rows: list[dict]) -> list[str]:
    first = rows[0]
    if isinstance(first.get("metrics"), list) and first["metrics"]:
        return [str(m) for m in first["metrics"]]
    keys = [k for k in first if k not in _STANDARD_KEYS]
    known = [m for m in KNOWN_METRICS if m in keys]
    return known + [k for k in keys if k not in known and _number(first[k]) is not None]


def read_task_file(path: Path, model: str, task: str, metric: str | None, filt: str | None) -> TaskLog | None:
    """One samples file -> one value per doc (None, with the reason in an exception, if unusable)."""
    notes: list[str] = []
    rows, old = _read_rows(path, notes)
    notes = [f"{model}: {n}" for n in notes]
    if not rows:
        raise LogError(f"{path} holds no samples; rerun lm-eval with --log_samples or remove the file")
    if old:  # no `filter` key: the k-th row of a doc_id belongs to the k-th filter
        seen: Counter = Counter()
        for r in rows:
            r.setdefault("filter", f"#{seen[r.get('doc_id')] + 1}")
            seen[r.get("doc_id")] += 1
    filters = list(dict.fromkeys(str(r.get("filter", "none")) for r in rows))
    f = _choose(filters, filt, "filter")
    names = _metric_names(rows)
    m = _choose(names, metric, "metric")
    if f is None or m is None:
        what = f"filter {filt!r} (it has {', '.join(filters)})" if f is None else f"metric {metric!r} (it has {', '.join(names) or 'none'})"
        raise LogError(f"{path.name} has no {what}")
    if len(filters) > 1 and filt is None:
        notes.append(f"{task}: filters {', '.join(filters)}; using {f!r} (--filter to choose)")
    by_doc: dict[int, list] = defaultdict(list)
    bad: list[Any] = []
    for r in rows:
        if str(r.get("filter", "none")) != f:
            continue
        doc_id, prompt = r.get("doc_id"), _prompt(r.get("arguments"))
        if not isinstance(doc_id, int) or prompt is None:
            bad.append("no doc_id/prompt")
            continue
        x = _number(r.get(m))
        if x is None:
            bad.append(r.get(m))
            continue
        by_doc[doc_id].append((x, prompt, r.get("doc")))
    if bad:
        shown = ", ".join(repr(b) for b in list(dict.fromkeys(map(str, bad)))[:3])
        notes.append(f"{model}: {task}: {len(bad)} rows without a numeric {m!r} value ({shown}); skipped")
    if not by_doc:
        raise LogError(f"{path.name}: no row has a numeric {m!r} value for filter {f!r}; pick one with --metric")
    dups = {d: v for d, v in by_doc.items() if len(v) > 1}
    conflicting = [d for d, v in dups.items() if len({x for x, _, _ in v}) > 1]
    if dups:
        notes.append(f"{model}: {task}: {len(dups)} docs logged more than once for filter {f!r}"
                     + (f"; {len(conflicting)} with different values were dropped" if conflicting else "; kept one"))
    ids = sorted(d for d in by_doc if d not in conflicting)
    return TaskLog(model, task, path, m, f, ids, [by_doc[d][0][1] for d in ids], [by_doc[d][0][2] for d in ids],
                   np.array([by_doc[d][0][0] for d in ids], np.float64), notes)


_NAME_KEYS = ("pretrained", "model", "path", "engine")
_VARIANT_KEYS = ("revision", "peft", "delta", "lora", "adapter", "checkpoint", "step")  # checkpoints of one model


def _name_from_args(args: Any) -> str | None:
    """`pretrained=org/m,revision=step1000` -> `org/m@revision=step1000`: checkpoints stay apart."""
    if isinstance(args, str):
        args = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)
    if not isinstance(args, dict):
        return None
    name = next((str(args[k]) for k in _NAME_KEYS if args.get(k)), None)
    if name is None:
        return None
    variant = ",".join(f"{k}={args[k]}" for k in _VARIANT_KEYS if args.get(k) not in (None, "", "main"))
    return f"{name}@{variant}" if variant else name


def _model_name(folder: Path, ts: str | None) -> str:
    """The model a run folder holds: results_<ts>.json's model_args (or model_name), else the folder name."""
    results = sorted(folder.glob("results*.json"))
    pick = [p for p in results if ts and ts in p.name] or results
    for p in reversed(pick):
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        name = results_model(r)
        if name:
            return name
    return folder.name


def results_model(doc: dict) -> str | None:
    """The model a parsed results_<ts>.json names: `config.model_args`' pretrained= (with revision= etc.), else its
    `model_name` (not lm-eval's dummy model's), else None."""
    cfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    name = _name_from_args(cfg.get("model_args"))
    if name:
        return name
    if isinstance(doc.get("model_name"), str) and doc["model_name"] and cfg.get("model") != "dummy":
        return doc["model_name"]
    return None


def _old_task_name(path: Path) -> str:
    """Task of a 0.4.0–0.4.2 file `<model_args>_<task>.jsonl`: the longest task that results.json names."""
    tasks: set[str] = set()
    for p in path.parent.glob("results*.json"):
        try:
            tasks |= set(json.loads(p.read_text(encoding="utf-8")).get("results", {}))
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    ends = [t for t in tasks if path.stem == t or path.stem.endswith("_" + t)]
    return max(ends, key=len) if ends else path.stem


class Found(NamedTuple):
    """Sample logs under the given paths."""

    runs: dict[Path, list[tuple[str, str, Path]]]
    """Run folder -> [(task, timestamp, file)]."""
    empty: list[Path]
    """Given paths that hold no sample logs."""


def find_sample_files(paths: Iterable[str | Path]) -> Found:
    """Every folder under `paths` holding sample logs; an error if none does."""
    runs: dict[Path, list] = defaultdict(list)
    empty = []
    for p in map(Path, paths):
        if not p.exists():
            raise LogError(f"{p} does not exist; give lm-eval --output_path folders (or run folders inside them)")
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*.json*") if x.is_file())
        found = 0
        for f in files:
            m = _SAMPLES_RE.match(f.name)
            if m:
                runs[f.parent].append((m["task"], m["ts"], f))
                found += 1
            elif f.suffix == ".jsonl" and not f.name.startswith("results"):
                with f.open("rb") as fh:
                    if fh.read(64).lstrip().startswith(b"["):
                        runs[f.parent].append((_old_task_name(f), "", f))
                        found += 1
        if not found:
            empty.append(p)
    if not runs:
        raise LogError(f"no lm-eval sample logs (samples_<task>_<timestamp>.jsonl) under {', '.join(map(str, paths))}; "
                       "run lm-eval with --log_samples --output_path DIR and pass DIR")
    return Found(dict(runs), empty)


@dataclass
class LogSet:
    """All scores read from the given folders."""

    tasks: list[TaskLog]
    models: list[str]
    notes: list[str]


def read_logs(paths: Iterable[str | Path], metric: str | None = None, filt: str | None = None) -> LogSet:
    """Every model's newest log of every task. Unusable files become notes; none usable is an error."""
    found = find_sample_files(list(paths))
    newest: dict[tuple[str, str], tuple[str, Path, Path]] = {}
    notes = [f"{p} holds no lm-eval sample logs; skipped" for p in found.empty]
    for folder, items in sorted(found.runs.items()):
        for task, ts, f in items:
            model = _model_name(folder, ts)
            key = (model, task)
            if key in newest:
                notes.append(f"{model}: {task} logged twice ({newest[key][1].name}, {f.name}); using the newer")
                if ts < newest[key][0]:
                    continue
            newest[key] = (ts, f, folder)
    tasks, errors = [], []
    for (model, task), (_, f, _) in sorted(newest.items()):
        try:
            tl = read_task_file(f, model, task, metric, filt)
        except LogError as e:
            errors.append(str(e))
            continue
        notes.extend(tl.notes)
        tasks.append(tl)
    if not tasks:
        raise LogError("no usable sample logs: " + "; ".join(errors[:5]))
    notes.extend(f"skipped: {e}" for e in errors)
    counted = Counter(notes)  # the same remark about every model's copy of a task: say it once
    notes = [n if c == 1 else f"{n} ({c} models)" for n, c in counted.items()]
    return LogSet(tasks, sorted({t.model for t in tasks}), notes)
