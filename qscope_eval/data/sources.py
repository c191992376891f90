"""Benchmarks -> (benchmark, position, text) rows: the prompts that get encoded.

A benchmark is either an lm-eval task (its own config supplies the prompt; see
source_lmeval.py, and lmeval_index.py for task lookup) or a local
JSONL/JSON/CSV/Parquet file with a field name or a Jinja template
(source_file.py). This module is the shared base: the row type,
path resolution, the empty-benchmark checks and the suite-level loader.

`position` is the 0-based index of the document in the source's order (for a
task, lm-eval's doc_id, the order its `--limit` uses), so `limit: N` always means the same N
prompts, and a position names the same document in every audit.

Importing this module stays cheap: lm-eval, datasets and pandas load only when
a benchmark of that kind is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from qscope_eval.errors import SourceError
from qscope_eval.data.suite import BenchmarkSpec, Suite

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_SEED = 1234
"""Few-shot sampling seed; lm-eval's own default (`--fewshot_random_seed`)."""


class SampleRow(NamedTuple):
    """One prompt of one benchmark."""

    benchmark: str
    """The benchmark's name in the suite."""
    position: int
    """0-based index of the document in the source's order."""
    text: str
    """The prompt text the model reads."""


def load_benchmark(
    spec: BenchmarkSpec,
    limit: int | None = None,
    task_paths: Iterable[str] = (),
    seed: int = DEFAULT_SEED,
    kind: str = "benchmark",
) -> list[SampleRow]:
    """Rows of one benchmark, first `limit` documents in source order.

    `task_paths` are extra folders of lm-eval task YAMLs; `seed` fixes few-shot sampling.
    Raises SourceError (unknown task, missing file, empty benchmark, bad template).
    """
    if limit is not None and limit < 1:
        raise SourceError(f"benchmark {spec.name!r}: limit must be >= 1, got {limit}")
    if spec.task is not None:
        from qscope_eval.data.source_lmeval import task_texts

        texts = task_texts(spec, limit=limit, task_paths=tuple(task_paths), seed=seed)
    else:
        from qscope_eval.data.source_file import file_texts

        texts = file_texts(spec, limit=limit)
    return rows_from_texts(spec, texts, kind)


def load_suite_rows(suite: Suite, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """All benchmarks of a suite as one frame (columns benchmark, position, text), in suite order."""
    import pandas as pd

    rows: list[SampleRow] = []
    for bench in suite.benchmarks:
        rows.extend(load_benchmark(bench, limit=suite.limit_for(bench), task_paths=suite.task_paths, seed=seed))
    frame = pd.DataFrame(rows, columns=list(SampleRow._fields))
    return frame.astype({"benchmark": str, "position": "int64", "text": str})


def load_reference_rows(suite: Suite, benchmark_rows: pd.DataFrame | None = None, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """The suite's reference corpora as one frame (columns as `load_suite_rows`), in suite order.

    With `benchmark_rows`, a reference whose prompts are exactly a benchmark's is refused: its gaps would be
    empty by construction, which usually means the wrong file was named.
    """
    import pandas as pd

    rows: list[SampleRow] = []
    for ref in suite.reference:
        got = load_benchmark(ref, limit=suite.limit_for(ref), task_paths=suite.task_paths, seed=seed, kind="reference")
        texts = {r.text for r in got}
        if benchmark_rows is not None:
            for name, g in benchmark_rows.groupby("benchmark", sort=False):
                if set(g["text"]) == texts:
                    raise SourceError(f"reference {ref.name!r} holds exactly the prompts of benchmark {name!r}, so it "
                                      f"can show no gap; point it at the prompts the model will really see")
        rows.extend(got)
    frame = pd.DataFrame(rows, columns=list(SampleRow._fields))
    return frame.astype({"benchmark": str, "position": "int64", "text": str})


def rows_from_texts(spec: BenchmarkSpec, texts: Iterable[tuple[int, str]], kind: str = "benchmark") -> list[SampleRow]:
    """(position, text) pairs -> rows; drops blank prompts, refuses a benchmark (or reference: `kind`) with none left."""
    rows, blank = [], 0
    for position, text in texts:
        assert isinstance(text, str), f"source produced {type(text).__name__} for {spec.name}[{position}]"
        if text.strip():
            rows.append(SampleRow(spec.name, position, text))
        else:
            blank += 1  # a blank prompt has no tokens to encode; keep the others' positions unchanged
    if not rows:
        why = f"all {blank} prompts are blank" if blank else "it has no rows"
        fix = "check `text:` names a field that holds the prompt" if spec.path else "check `split:` / `data_files:`"
        raise SourceError(f"{kind} {spec.name!r} is empty ({why}); {fix}")
    if blank:
        log.warning("%s %s: skipped %d blank prompt(s)", kind, spec.name, blank)
    return rows
