"""lm-eval tasks -> prompt texts, built by lm-eval's own task configs and context code.

A benchmark `{task: gsm8k}` yields, per document, exactly the context lm-eval
would show the model: `task.fewshot_context(doc, num_fewshot)` (task
description + few-shot examples + `doc_to_text`), without the answer unless the
suite sets `include_target`. `data_files: {split: file}` points the task's
config at local files (how the demo and the tests stay offline); without it
lm-eval loads the dataset from the Hugging Face hub as usual.

What we do differently from lm-eval, and why:
- Task names are looked up in lm-eval's own task index, cached on disk
  (lmeval_index.py: building it takes ~14 s).
- The task YAML is read with `!function` references left unresolved, and the
  scoring keys (metrics, filters, process_results) are dropped before the rest
  are imported: scoring code is not needed for prompts and may download things
  (HumanEval's metric calls `evaluate.load("code_eval")` at import time).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from qscope_eval.errors import SourceError
from qscope_eval.data.lmeval_index import TaskEntry, lookup_task, task_index
from qscope_eval.data.assets import local_path
from qscope_eval.data.suite import BenchmarkSpec

_SCORING_KEYS = ("metric_list", "filter_list", "process_results")
_STRUCTURAL_KEYS = ("tag", "group", "task_list", "include")  # lm-eval's factory drops these too
_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


# ---------------------------------------------------------------- task config


class _FunctionRef(NamedTuple):
    """A `!function utils.fn` reference, resolved only if its key is needed for prompts."""

    qual: str
    base_dir: str


def read_task_yaml(path: Path, _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """A task YAML with its `include:` chain merged (local keys win), as lm-eval merges it."""
    import yaml

    path = path.resolve()
    if path in _seen:
        raise SourceError(f"task YAML {path} includes itself (cycle); fix its `include:`")

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    Loader.add_constructor("!function", lambda loader, node: _FunctionRef(loader.construct_scalar(node), str(path.parent)))
    try:
        with path.open("rb") as fh:
            cfg = yaml.load(fh, Loader=Loader)  # noqa: S506 - a safe loader plus one inert tag
    except (OSError, yaml.YAMLError) as e:
        raise SourceError(f"could not read task YAML {path}: {e}; fix the file") from None
    if not isinstance(cfg, dict):
        raise SourceError(f"task YAML {path} is not a mapping; fix the file")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_cfg = read_task_yaml(path.parent / inc, _seen | {path})
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    merged.update(cfg)
    return merged


def _resolve_functions(value: Any, task: str) -> Any:
    if isinstance(value, _FunctionRef):
        from lm_eval.tasks._yaml_loader import _import_func_in_yml  # lm-eval's importer: same module cache

        try:
            return _import_func_in_yml(value.qual, Path(value.base_dir))
        except Exception as e:  # noqa: BLE001 - any import-time failure of task code
            raise SourceError(f"task {task!r}: cannot import !function {value.qual} from {value.base_dir}: {e}") from None
    if isinstance(value, dict):
        return {k: _resolve_functions(v, task) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_functions(v, task) for v in value]
    return value


def task_config(spec: BenchmarkSpec, entry: TaskEntry) -> tuple[dict[str, Any], str]:
    """The task's config dict, pointed at `data_files` and at the split to read; and that split."""
    assert entry.yaml_path is not None
    raw = read_task_yaml(Path(entry.yaml_path))
    cfg = {k: v for k, v in raw.items() if k not in _SCORING_KEYS + _STRUCTURAL_KEYS}
    cfg = _resolve_functions(cfg, entry.name)
    cfg["task"] = entry.name
    meta = cfg.get("metadata")
    cfg["metadata"] = {**(meta if isinstance(meta, dict) else {}), "config_source": entry.yaml_path}
    cfg["num_fewshot"] = spec.num_fewshot
    default_split = cfg.get("test_split") or cfg.get("validation_split")
    split = spec.split or default_split
    if spec.data_files:
        files = {s: str(local_path(p, spec, what=f"data_files.{s}")) for s, p in spec.data_files.items()}
        from qscope_eval.data.source_file import file_format

        builders = {_BUILDERS[file_format(Path(f))] for f in files.values()}
        for part, f in files.items():
            if Path(f).stat().st_size == 0:  # datasets fails on these with a bare StopIteration
                raise SourceError(f"benchmark {spec.name!r} is empty (data_files.{part} {f} has no rows); check `data_files:`")
        if len(builders) > 1:
            raise SourceError(f"benchmark {spec.name!r}: data_files mix formats ({', '.join(sorted(builders))}); use one format for all splits")
        if split not in files:
            if spec.split is None and len(files) == 1:
                split = next(iter(files))  # one file given: that is the split to read, whatever its name
            else:
                wanted = f"split {split!r}" if split else "a test or validation split"
                raise SourceError(
                    f"benchmark {spec.name!r}: task {entry.name} reads {wanted} but data_files has {', '.join(files)}; "
                    "add that split to data_files or set `split:`"
                )
        cfg.update(dataset_path=builders.pop(), dataset_name=None, dataset_kwargs={"data_files": files}, custom_dataset=None)
        # Splits the local files do not provide would make lm-eval index a missing split.
        for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
            if cfg.get(key) not in files:
                cfg[key] = None
        fewshot = cfg.get("fewshot_config")
        if isinstance(fewshot, dict) and fewshot.get("split") not in (None, *files):
            cfg["fewshot_config"] = {**fewshot, "split": None}
    if not split:
        raise SourceError(f"benchmark {spec.name!r}: task {entry.name} names no test or validation split; set `split:`")
    cfg["test_split"] = split  # lm-eval evaluates test_split when set: make it the split we read
    fewshot = cfg.get("fewshot_config") or {}
    has_pool = fewshot.get("split") or fewshot.get("samples") is not None or cfg.get("fewshot_split")
    if not has_pool and not cfg.get("training_split") and not cfg.get("validation_split"):
        # No other split to draw examples from: draw from the evaluated split itself. Naming it makes
        # lm-eval's sampler drop the evaluated document from its own few-shot examples.
        cfg["fewshot_split"] = split
    return cfg, split


# ---------------------------------------------------------------- building the task and its prompts


class _DatasetProblem(Exception):
    """Raised from inside lm-eval's task construction when the dataset cannot be had."""


@functools.lru_cache(maxsize=1)
def _prompt_task_class() -> type:
    from lm_eval.api.task import ConfigurableTask

    class PromptTask(ConfigurableTask):
        """ConfigurableTask whose dataset failures are told apart from config errors."""

        def download(self, dataset_kwargs=None, **kwargs) -> None:
            try:
                super().download(dataset_kwargs, **kwargs)
            except Exception as e:  # noqa: BLE001 - datasets raises many kinds
                raise _DatasetProblem(f"{type(e).__name__}: {e}") from e
            split = self.config.test_split
            if split not in self.dataset:
                raise _DatasetProblem(f"no split {split!r} (it has {', '.join(self.dataset)})")
            if len(self.dataset[split]) == 0:
                raise _DatasetProblem(f"split {split!r} has no rows")

    return PromptTask


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide datasets' progress bars and lm-eval's config chatter while a task is built."""
    from datasets.utils import logging as ds_logging

    bars_were_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    lm_log = logging.getLogger("lm_eval")
    level = lm_log.level
    lm_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lm_log.setLevel(level)
        if bars_were_on:
            ds_logging.enable_progress_bar()


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


def _fields_hint(cfg: dict[str, Any]) -> str:
    """' (the data has fields: a, b)' from the first local file's first row, or '' if unreadable."""
    from qscope_eval.data.source_file import read_records

    try:
        first = next(iter(cfg["dataset_kwargs"]["data_files"].values()))
        rows = read_records(Path(first), limit=1)
    except (KeyError, StopIteration, SourceError):
        return ""
    return f" (the data has fields: {', '.join(map(str, rows[0]))})" if rows else ""


def build_task(spec: BenchmarkSpec, cfg: dict[str, Any], seed: int):
    """lm-eval's ConfigurableTask for this config, its few-shot sampler seeded as lm-eval seeds it."""
    try:
        with _quiet():
            task = _prompt_task_class()(config=cfg)
    except _DatasetProblem as e:
        source = f"data_files {spec.data_files}" if spec.data_files else f"dataset {cfg.get('dataset_path')}"
        if spec.data_files:
            fix = f"check the files are the task's schema{_fields_hint(cfg)}"
        elif _offline():
            fix = "dataset not available offline; set data_files: to local files or unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE"
        else:
            fix = "check the network and hub access, or set data_files: to local files"
        raise SourceError(f"benchmark {spec.name!r}: task {spec.task} could not load its {source} ({e}); {fix}") from None
    except Exception as e:  # noqa: BLE001 - lm-eval validates the config by building on the first doc
        hint = f"; the task's prompt may need fields the data lacks{_fields_hint(cfg)}" if spec.data_files else ""
        raise SourceError(f"benchmark {spec.name!r}: lm-eval could not build task {spec.task}: {type(e).__name__}: {e}{hint}") from None
    task.set_fewshot_seed(seed=seed)
    return task


def _target_text(task, doc: dict) -> str:
    """The gold answer as lm-eval writes it after a few-shot question (choice text for multiple choice)."""
    target = task.doc_to_target(doc)
    choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None
    if isinstance(target, list):  # several gold answers: lm-eval's few-shot rendering shows the first
        target = target[0]
    if isinstance(target, int) and choices is not None:
        target = choices[target]
    return str(target)


def doc_text(task, doc: dict, num_fewshot: int, include_target: bool) -> str:
    """The context lm-eval builds for one document (build_all_requests), plus the gold answer if asked."""
    from lm_eval.api.utils import maybe_delimit

    gen_prefix = task.doc_to_prefix(doc)
    ctx = task.fewshot_context(doc, num_fewshot=num_fewshot, gen_prefix=gen_prefix)
    if isinstance(ctx, list):
        # Multiple-input tasks (winogrande) build one context per choice. Always taking the first
        # keeps the prompt independent of which choice is gold.
        ctx = ctx[0]
    if include_target:
        answer = _target_text(task, doc)
        ctx = maybe_delimit(ctx, answer, " ") if gen_prefix else ctx + task.config.target_delimiter + answer
    return ctx


def task_texts(spec: BenchmarkSpec, limit: int | None, task_paths: tuple[str, ...], seed: int) -> list[tuple[int, str]]:
    """(position, prompt) pairs of a `task:` benchmark, first `limit` documents of the split."""
    index = task_index(tuple(task_paths))
    entry = lookup_task(spec, index, task_paths)
    cfg, split = task_config(spec, entry)
    if not spec.description:
        cfg = {**cfg, "description": ""}
    task = build_task(spec, cfg, seed)
    out = []
    for position, doc in task.doc_iterator(limit=limit):
        try:
            out.append((position, doc_text(task, doc, spec.num_fewshot, spec.include_target)))
        except Exception as e:  # noqa: BLE001 - templates, samplers and task code raise anything
            raise SourceError(
                f"benchmark {spec.name!r}: task {spec.task} fails on document {position} of split {split!r}: "
                f"{type(e).__name__}: {e}" + ("; lower num_fewshot" if spec.num_fewshot else "")
            ) from None
    return out
