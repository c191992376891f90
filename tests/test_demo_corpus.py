"""The demo SAE's training corpus (data.demo_corpus) shares no prompt with what the demo and the bench measure."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from qscope_eval.data import demo_corpus as dc
from qscope_eval.data.assets import resolve
from qscope_eval.data.suite import load_suite

ROOT = Path(__file__).parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("demo_model_bench", ROOT / "bench" / "demo_model_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _subjects(suite) -> set[str]:
    entries = list(suite.benchmarks) + list(suite.reference)
    return {e.data_files["test"].removeprefix("asset:mmlu/").removesuffix(".jsonl")
            for e in entries if e.data_files and e.data_files["test"].startswith("asset:mmlu/")}


def test_corpus_leaves_out_every_measured_subject_and_item():
    assert set(dc.BENCH_SUBJECTS) == set(_bench_module().BENCH_MMLU)
    demo = _subjects(load_suite("demo"))
    assert demo == set(dc.DEMO_SUBJECTS) | set(dc.DEMO_REFERENCE_SUBJECTS)
    held = set(dc.held_out_subjects())
    assert held and not held & (demo | set(dc.BENCH_SUBJECTS)) and len(held) == 57 - len(demo | set(dc.BENCH_SUBJECTS))
    corpus = dc.demo_lm_corpus()
    texts = set(corpus.texts)
    assert sum(corpus.counts.values()) == len(corpus.texts) and min(corpus.counts.values()) > 100
    rows = [json.loads(x) for x in resolve("asset:gsm8k/test.jsonl").read_text().splitlines() if x.strip()]
    measured = {dc.gsm8k_prompt(r) for r in rows[:dc.GSM8K_SKIP]}
    assert not measured & texts and dc.gsm8k_prompt(rows[dc.GSM8K_SKIP]) in texts
    with gzip.open(resolve("asset:humaneval/HumanEval.jsonl.gz"), "rt") as fh:
        prompts = [json.loads(x)["prompt"] for x in fh if x.strip()]
    docstrings = [p.split('"""')[1].strip() for p in prompts if p.count('"""') >= 2]
    assert len(docstrings) > 100 and not any(d[:60] in t for d in docstrings for t in corpus.texts)
