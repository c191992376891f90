"""Local benchmark files: JSONL (optionally gzipped), JSON, CSV or Parquet -> prompt texts.

`text:` is either a field name (`question`) or a Jinja2 template over the row
(`Q: {{question}}\\nA:`). Templates run in a sandbox (a suite file is user
input) with StrictUndefined, so a typo in a field name fails loudly with the
row's fields instead of silently producing empty prompts.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qscope_eval.errors import SourceError
from qscope_eval.data.assets import local_path
from qscope_eval.data.suite import BenchmarkSpec

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet")
DEFAULT_FIELD = "text"


def file_format(path: Path) -> str:
    """jsonl | json | csv | parquet, from the file name; SourceError for anything else."""
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix.removeprefix(".").removesuffix(".gz")
    raise SourceError(f"{path} has an unsupported extension; use one of {', '.join(SUFFIXES)}")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.lower().endswith(".gz") else path.open(encoding="utf-8")


def read_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a local data file, in file order (the first `limit` for JSONL, which is streamed)."""
    fmt = file_format(path)
    try:
        if fmt == "jsonl":
            return _read_jsonl(path, limit)
        if fmt == "json":
            with _open_text(path) as fh:
                data = json.load(fh)
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise SourceError(f"{path} must hold a JSON list of objects (or use .jsonl, one object per line)")
            return data
        import pandas as pd

        if fmt == "csv":
            try:
                # dtype=str, no NA parsing: a CSV cell is prompt text, never a float NaN.
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            except pd.errors.EmptyDataError:
                return []  # reported as an empty benchmark by the caller
        else:
            frame = pd.read_parquet(path)
        return frame.to_dict("records")
    except (OSError, ValueError) as e:  # json, pandas and pyarrow parse errors are ValueErrors
        raise SourceError(f"could not read {path} as {fmt}: {e}; check the file") from None


def _read_jsonl(path: Path, limit: int | None) -> list[dict[str, Any]]:
    rows = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path} line {lineno} is not valid JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise SourceError(f"{path} line {lineno} is a JSON {type(row).__name__}; each line must be an object")
            rows.append(row)
    return rows


def is_template(text: str) -> bool:
    """A `text:` value is a Jinja template if it has `{{ }}` or `{% %}`; otherwise it is a field name."""
    return "{{" in text or "{%" in text


def _fields(rows: list[dict[str, Any]]) -> str:
    return ", ".join(str(k) for k in rows[0]) if rows else "(none)"


def render_texts(spec: BenchmarkSpec, rows: list[dict[str, Any]], text: str) -> Iterator[tuple[int, str]]:
    """(position, prompt) for each row, from a field name or a template."""
    if not is_template(text):
        for position, row in enumerate(rows):
            if text not in row:
                raise SourceError(
                    f"benchmark {spec.name!r}: row {position} has no field {text!r} (fields: {', '.join(map(str, row))}); "
                    "set `text:` to one of them or to a template like '{{question}}'"
                )
            value = row[text]
            yield position, "" if value is None else str(value)
        return
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        template = env.from_string(text)
    except jinja2.TemplateSyntaxError as e:
        raise SourceError(f"benchmark {spec.name!r}: `text:` is not a valid Jinja template ({e.message}); fix its syntax") from None
    for position, row in enumerate(rows):
        try:
            yield position, template.render(**{str(k): v for k, v in row.items()})
        except jinja2.UndefinedError as e:
            raise SourceError(
                f"benchmark {spec.name!r}: template {text!r} fails on row {position}: {e.message} "
                f"(fields: {', '.join(map(str, row))}); use one of those names"
            ) from None
        except jinja2.TemplateError as e:  # sandbox violations, filters on wrong types
            raise SourceError(f"benchmark {spec.name!r}: template {text!r} fails on row {position}: {e}; fix the template") from None


def file_texts(spec: BenchmarkSpec, limit: int | None = None) -> list[tuple[int, str]]:
    """(position, prompt) pairs of a `path:` benchmark, first `limit` rows in file order."""
    assert spec.path is not None
    path = local_path(spec.path, spec)
    rows = read_records(path, limit)[:limit]
    text = spec.text if spec.text is not None else DEFAULT_FIELD
    if spec.text is None and rows and DEFAULT_FIELD not in rows[0]:
        raise SourceError(
            f"benchmark {spec.name!r}: no `text:` given and {path.name} has no 'text' field (fields: {_fields(rows)}); "
            "add `text: <field>` or a template like `text: '{{question}}'`"
        )
    return list(render_texts(spec, rows, text))
