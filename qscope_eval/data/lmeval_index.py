"""lm-eval's task index: task name -> kind (task, group, tag) and YAML file, cached on disk.

The index is lm-eval's own (its TaskManager walks the task folders), but
building it parses ~14k YAML files and takes ~14 s, on every run. We keep a
copy per task folder under the cache directory, keyed by a fingerprint of the
folder's files and lm_eval's version, so a later run reads it in ~0.3 s.
Folders are indexed separately (built-ins once, each `task_paths` folder on its
own) and merged in lm-eval's order: later folders win.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from qscope_eval.data.assets import cache_dir
from qscope_eval.errors import SourceError
from qscope_eval.data.suite import BenchmarkSpec

log = logging.getLogger(__name__)

_IGNORE_DIRS = {"__pycache__", ".ipynb_checkpoints"}


class TaskEntry(NamedTuple):
    """One name in lm-eval's task index."""

    name: str
    kind: str
    """task | py_task | group | tag"""
    yaml_path: str | None
    members: tuple[str, ...]
    """group: the names in its `task:` list; tag: its tasks; task: ()."""


def builtin_tasks_dir() -> Path:
    """lm-eval's own task folder, found without importing lm_eval (slow)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("lm_eval is not installed; run: pip install 'lm_eval>=0.4.13'")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def _fingerprint(root: Path) -> str:
    """Changes when any file under root is added, removed, renamed or edited, or lm_eval changes version."""
    h = hashlib.sha256(f"{importlib.metadata.version('lm_eval')}\0{root}".encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORE_DIRS)
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{os.path.relpath(dirpath, root)}/{name}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def _group_members(task_field: Any) -> tuple[str, ...]:
    """Child names of a group's `task:` list (strings, {task: ...} dicts, inline {group: ...} dicts)."""
    out: list[str] = []
    for item in task_field if isinstance(task_field, list) else [task_field]:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("task"), str):
            out.append(item["task"])
        elif isinstance(item, dict) and "group" in item:
            out.extend(_group_members(item.get("task", [])))
    return tuple(out)


def _build_root_index(root: Path) -> dict[str, TaskEntry]:
    """Index one folder with lm-eval's TaskManager (the slow part, ~14 s for the built-in tasks)."""
    from lm_eval.tasks import TaskManager

    builtin = root == builtin_tasks_dir().resolve()
    manager = TaskManager(include_path=None if builtin else str(root), include_defaults=builtin)
    index = {}
    for name, entry in manager.task_index.items():
        kind = entry.kind.name.lower()
        if kind == "group":
            members = _group_members((entry.cfg or {}).get("task", []))
        elif kind == "tag":
            members = tuple(sorted(entry.tags))
        else:
            members = ()
        index[name] = TaskEntry(name, kind, str(entry.yaml_path) if entry.yaml_path else None, members)
    return index


def root_index(root: Path) -> dict[str, TaskEntry]:
    """The task index of one folder, from the on-disk cache when the folder has not changed."""
    root = root.resolve()
    folder = cache_dir() / "lmeval-index"
    stem = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    cached = folder / f"{stem}-{_fingerprint(root)[:16]}.json"
    if cached.exists():
        try:
            return {e[0]: TaskEntry(e[0], e[1], e[2], tuple(e[3])) for e in json.loads(cached.read_text())["entries"]}
        except (ValueError, KeyError, IndexError, TypeError):
            log.warning("ignoring unreadable task index cache %s", cached)
    index = _build_root_index(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{stem}-*.json"):  # earlier fingerprints of the same folder are stale
            old.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"root": str(root), "entries": [list(e) for e in index.values()]}, fh)
        os.replace(tmp, cached)  # atomic: a concurrent reader sees the old file or the whole new one
    except OSError as e:  # a read-only cache only costs time
        log.warning("could not cache the lm-eval task index in %s (%s); set QSCOPE_EVAL_CACHE to a writable folder", folder, e)
    return index


@functools.lru_cache(maxsize=8)
def task_index(task_paths: tuple[str, ...] = ()) -> dict[str, TaskEntry]:
    """lm-eval's task index: built-in tasks, then each task_paths folder (later folders win, as in lm-eval)."""
    index = dict(root_index(builtin_tasks_dir()))
    for p in task_paths:
        root = Path(p).expanduser()
        if not root.is_dir():
            raise SourceError(f"task_paths entry {p} is not a folder; point it at a folder of lm-eval task YAMLs")
        index.update(root_index(root))
    return index


def _leaf_tasks(index: dict[str, TaskEntry], name: str, seen: set[str] | None = None) -> list[str]:
    seen = set() if seen is None else seen
    if name in seen or name not in index:
        return []
    seen.add(name)
    entry = index[name]
    if entry.kind in ("task", "py_task"):
        return [name]
    return [leaf for m in entry.members for leaf in _leaf_tasks(index, m, seen)]


def lookup_task(spec: BenchmarkSpec, index: dict[str, TaskEntry], task_paths: tuple[str, ...]) -> TaskEntry:
    """The index entry of a benchmark's task; SourceError for unknown names, groups and tags."""
    name = spec.task
    assert name is not None
    entry = index.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(index), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        where = "the suite's task_paths were searched too" if task_paths else "for your own task YAMLs add `task_paths: [folder]` to the suite"
        raise SourceError(f"benchmark {spec.name!r}: no lm-eval task {name!r}; {hint}(see `lm-eval ls tasks`; {where})")
    if entry.kind in ("group", "tag"):
        leaves = _leaf_tasks(index, name)
        shown = ", ".join(leaves[:10]) + (f", ... ({len(leaves) - 10} more)" if len(leaves) > 10 else "")
        raise SourceError(
            f"benchmark {spec.name!r}: {name!r} is an lm-eval {entry.kind} of {len(leaves)} tasks and a benchmark is one task; "
            f"list the ones you want as separate benchmarks: {shown}"
        )
    if entry.kind == "py_task" or entry.yaml_path is None:
        raise SourceError(
            f"benchmark {spec.name!r}: task {name!r} is defined by a Python class, which qscope-eval does not read; "
            "export its prompts to a JSONL file and use `path:` with `text:`"
        )
    return entry
