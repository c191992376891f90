"""Reading lm-eval sample logs (genuine `dummy` runs, old format, bad input) and matching prompts to stored texts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmeval_fixtures import DUMMY
from qscope_eval.data.lmeval_logs import LogError, TaskLog, read_logs, read_task_file
from qscope_eval.data.lmeval_match import SampleIndex, calibrate_tail, match_tasks

GSM8K = next(DUMMY.glob("samples_my_gsm8k_*.jsonl"))
BIO = next(DUMMY.glob("samples_my_mmlu_high_school_biology_*.jsonl"))
QWEN_CHAT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path: Path, rs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rs))
    return path


def mmlu_text(doc: dict) -> str:
    """This project's MMLU prompt (lm-eval's doc_to_text, no description line)."""
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def test_genuine_dummy_run_reads_one_value_per_doc():
    logs = read_logs([DUMMY.parent])
    assert logs.models == ["dummy_run"]  # `dummy` names no pretrained model: the run folder does
    by = {t.task: t for t in logs.tasks}
    assert len(by) == 7 and all(len(t.doc_ids) == 20 for t in by.values())
    assert (by["my_gsm8k"].metric, by["my_gsm8k"].filter) == ("exact_match", "strict-match")
    assert (by["my_mmlu_prehistory"].metric, by["my_mmlu_prehistory"].filter) == ("acc", "none")
    assert any("strict-match, flexible-extract" in n for n in logs.notes)
    raw = {r["doc_id"]: float(r["acc"]) for r in rows(BIO)}
    t = by["my_mmlu_high_school_biology"]
    assert list(t.values) == [raw[d] for d in t.doc_ids]
    assert t.prompts[0].startswith("The following are multiple choice questions")  # lm-eval's description line


def test_filter_and_metric_choice(tmp_path):
    t = read_task_file(GSM8K, "m", "g", None, "flexible-extract")
    assert t.filter == "flexible-extract" and len(t.doc_ids) == 20
    assert read_task_file(BIO, "m", "b", None, "flexible-extract").filter == "none"  # the task's only filter
    with pytest.raises(LogError, match="no metric 'acc_norm'"):
        read_task_file(BIO, "m", "b", "acc_norm", None)
    with pytest.raises(LogError, match="no usable sample logs"):
        read_logs([DUMMY.parent], metric="bleu")


def test_truncated_last_line_is_skipped_with_a_note_but_a_broken_middle_line_is_an_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = BIO.read_text()
    (run / BIO.name).write_text(text[: len(text) - 200])  # a killed run: the last line stops mid-object
    logs = read_logs([run])
    assert len(logs.tasks[0].doc_ids) == 19 and any("truncated" in n for n in logs.notes)
    lines = text.splitlines()
    lines[5] = lines[5][:50]
    (run / BIO.name).write_text("\n".join(lines) + "\n")
    with pytest.raises(LogError, match=r":6 is not valid JSON"):
        read_logs([run])


def test_no_sample_logs_is_a_clear_error(tmp_path):
    (tmp_path / "results_2024.json").write_text("{}")
    with pytest.raises(LogError, match="no lm-eval sample logs"):
        read_logs([tmp_path])
    with pytest.raises(LogError, match="does not exist"):
        read_logs([tmp_path / "nope"])


def test_duplicates_and_non_numeric_values(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rs = [r for r in rows(BIO)]
    dup_same = dict(rs[0])
    dup_diff = dict(rs[1], acc=1.0 - float(rs[1]["acc"]))
    rs[2]["acc"], rs[3]["acc"] = "N/A", "True"
    write_rows(run / BIO.name, rs + [dup_same, dup_diff])
    t = read_logs([run]).tasks[0]
    assert 1 not in t.doc_ids and 0 in t.doc_ids and 2 not in t.doc_ids  # conflicting duplicate and "N/A" dropped
    assert t.values[t.doc_ids.index(3)] == 1.0
    notes = " ".join(read_task_file(run / BIO.name, "m", "t", None, None).notes)
    assert "1 with different values were dropped" in notes and "'N/A'" in notes
    for r in rs:
        r["acc"] = "N/A"
    write_rows(run / BIO.name, rs)
    with pytest.raises(LogError, match="no row has a numeric 'acc'"):
        read_logs([run])


def test_old_json_array_format(tmp_path):
    """lm-eval 0.4.0–0.4.2: `<model_args>_<task>.jsonl` holding a JSON array, no filter/metrics/hashes keys."""
    run = tmp_path / "old"
    run.mkdir()
    keep = ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "exact_match")
    rs = rows(GSM8K)
    by_filter = [[{k: r[k] for k in keep} for r in rs if r["filter"] == f] for f in ("strict-match", "flexible-extract")]
    for r in by_filter[1]:
        r["exact_match"] = 1.0  # differs from the first filter's 0.0: must not be mixed in
    for r in by_filter[0] + by_filter[1]:
        r["arguments"] = [[r["arguments"]["gen_args_0"]["arg_0"], r["arguments"]["gen_args_0"]["arg_1"]]]
    (run / "pretrained__org__old-model_my_gsm8k.jsonl").write_text(json.dumps(by_filter[0] + by_filter[1], indent=2))
    (run / "results.json").write_text(json.dumps({"results": {"my_gsm8k": {}}, "config": {"model_args": "pretrained=org/old-model"}}))
    logs = read_logs([run])
    t = logs.tasks[0]
    assert (t.model, t.task, t.filter, len(t.doc_ids)) == ("org/old-model", "my_gsm8k", "#1", 20)
    assert t.values.sum() == 0.0 and t.prompts[0].endswith("Answer:")


# ----------------------------------------------------------------------------- matching
def _bio_log(prompts=None, docs=None) -> TaskLog:
    t = read_task_file(BIO, "m", "bio", None, None)
    if prompts is not None:
        t.prompts = prompts
    if docs is not None:
        t.docs = docs
    return t


def test_description_and_chat_template_are_matched_to_the_zero_shot_text():
    t = _bio_log()
    texts = {1000 + i: mmlu_text(d) for i, d in enumerate(t.docs)}
    idx = SampleIndex(texts)
    members = {s: {"hs_bio"} for s in texts}
    [m] = match_tasks([t], idx, members)
    assert (m.benchmark, m.n_matched, m.unmatched) == ("hs_bio", 20, {})
    assert all(m.samples[("m", d)] == 1000 + i for i, d in enumerate(t.doc_ids))
    chat = _bio_log(prompts=[QWEN_CHAT.format(p) for p in t.prompts])
    assert calibrate_tail(idx, chat.prompts) == len(" <|im_start|>assistant") + len("<|im_end|>")
    [m] = match_tasks([chat], idx, members)
    assert (m.n_matched, m.samples) == (20, {k: v for k, v in m.samples.items()})
    assert all(m.samples[("m", d)] == 1000 + i for i, d in enumerate(chat.doc_ids))


def test_few_shot_prompts_match_the_last_question_not_an_example():
    t = read_task_file(GSM8K, "m", "gsm", None, None)
    texts = {i: f"Question: {d['question']}\nAnswer:" for i, d in enumerate(t.docs)}
    # lm-eval's 5 examples come from the same split: they are stored samples too, and appear inside the prompts
    assert sum(texts[j] in p for p in t.prompts for j in texts) > len(t.prompts)
    [m] = match_tasks([t], SampleIndex(texts), {s: {"gsm8k"} for s in texts})
    assert m.n_matched == 20 and all(m.samples[("m", d)] == i for i, d in enumerate(t.doc_ids))


def test_ambiguous_mismatched_and_missing_prompts_are_unmatched_never_guessed():
    t = _bio_log()
    texts = {1000 + i: mmlu_text(d) for i, d in enumerate(t.docs)}
    # two stored texts equal after whitespace normalisation, neither verbatim in the prompt: ambiguous
    texts[1000], texts[5000] = texts[1000].replace("\n", " \n"), texts[1000].replace("\n", "  \n")
    del texts[1001]                                       # doc 1 not stored at all
    # doc 4 not stored, but another benchmark holds a short text that ends its prompt (its last choice):
    # a suffix match that the doc (whose question is in the prompt, not in that text) refutes
    tail = texts.pop(1004).split("\n", 4)[-1]
    texts[6000] = tail
    assert len(tail) >= 12 and t.prompts[4].endswith(tail)
    [m] = match_tasks([t], SampleIndex(texts), {s: {"hs_bio"} for s in texts})
    assert m.unmatched == {"ambiguous": 1, "no stored prompt": 1, "doc mismatch": 1}
    assert m.n_matched == 17 and 6000 not in m.samples.values()


def test_tasks_go_to_the_benchmark_holding_their_prompts_whatever_the_names():
    bio, gsm = _bio_log(), read_task_file(GSM8K, "m", "gsm", None, None)
    texts = {1000 + i: mmlu_text(d) for i, d in enumerate(bio.docs)}
    texts.update({2000 + i: f"Question: {d['question']}\nAnswer:" for i, d in enumerate(gsm.docs)})
    members = {s: {"alpha"} if s < 2000 else {"beta"} for s in texts}
    members[1000] = {"alpha", "beta"}                     # a prompt shared by two benchmarks
    twin = _bio_log()
    twin.task = "bio_again"                               # a second logged task over the same benchmark
    twin.doc_ids, twin.prompts, twin.docs, twin.values = twin.doc_ids[:5], twin.prompts[:5], twin.docs[:5], twin.values[:5]
    res = {m.task: m for m in match_tasks([bio, gsm, twin], SampleIndex(texts), members)}
    assert res["bio"].benchmark == "alpha" and res["gsm"].benchmark == "beta"
    assert res["bio_again"].benchmark is None and "already matched by 'bio'" in res["bio_again"].note
    assert res["gsm"].n_matched == 20 and np.all([v >= 2000 for v in res["gsm"].samples.values()])


def test_copying_the_genuine_run_keeps_it_readable(tmp_path):
    run = shutil.copytree(DUMMY, tmp_path / "copy")
    assert {t.task for t in read_logs([run]).tasks} == {t.task for t in read_logs([DUMMY]).tasks}


def test_another_template_matches_by_the_docs_fields_unless_a_few_shot_example_is_all_there_is():
    t = _bio_log()
    # the user's own template: the stored text is no suffix of the prompt, but the doc's question ends both
    mine = _bio_log(prompts=[f"Subject: biology\nQ: {d['question']}\nOptions: " + " | ".join(d["choices"]) + "\nYour answer:"
                             for d in t.docs])
    texts = {1000 + i: mmlu_text(d) for i, d in enumerate(t.docs)}
    [m] = match_tasks([mine], SampleIndex(texts), {s: {"hs_bio"} for s in texts})
    assert (m.n_matched, m.by_doc) == (20, 20)
    assert all(m.samples[("m", d)] == 1000 + i for i, d in enumerate(t.doc_ids))
    # stored few-shot prompts: doc 0 itself is not stored, but its question is an example inside doc 1's prompt
    shots = {2000 + i: mmlu_text(t.docs[0]) + " C\n\n" + mmlu_text(d) for i, d in enumerate(t.docs) if i > 0}
    [m] = match_tasks([mine], SampleIndex(shots), {s: {"hs_bio"} for s in shots})
    assert ("m", 0) not in m.samples and m.n_matched == 19


def test_a_folder_without_logs_among_others_is_a_note_and_odd_lines_are_skipped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_rows(run / BIO.name, rows(BIO)[:10] + [[1, 2]])   # a JSON line that is no sample object
    (tmp_path / "other").mkdir()
    logs = read_logs([run, tmp_path / "other"])
    assert len(logs.tasks[0].doc_ids) == 10
    assert any("other holds no lm-eval sample logs" in n for n in logs.notes)
    assert any("1 lines are not JSON objects" in n for n in logs.notes)


def test_checkpoints_of_one_model_stay_apart_and_reruns_merge(tmp_path):
    results = json.loads(next(DUMMY.glob("results_*.json")).read_text())
    for folder, args in (("a", "pretrained=org/m,revision=step100,dtype=bfloat16"), ("b", "pretrained=org/m,revision=step200"),
                         ("c", {"pretrained": "org/m", "revision": "step200"})):
        run = tmp_path / folder
        run.mkdir()
        shutil.copy(BIO, run / BIO.name.replace("2026", "2027" if folder == "c" else "2026"))
        (run / "results_2026-01-01T00-00-00.json").write_text(json.dumps({**results, "config": {"model_args": args}}))
    logs = read_logs([tmp_path])
    assert logs.models == ["org/m@revision=step100", "org/m@revision=step200"]
    assert any("logged twice" in n and "using the newer" in n for n in logs.notes)
