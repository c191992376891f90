"""Multi-model lm-eval logs with planted abilities, derived from one genuine lm-eval `dummy` run.

tests/data/lmeval/dummy_run/ is what `lm_eval --model dummy --log_samples` wrote
(see tests/data/lmeval/make_fixtures.py). `plant_models` copies it once per model,
changing only the per-sample metric values (and, for a third of the models, writing
them as strings, as lm-eval often does), drawn from an item-response model:

    P(model m solves item j) = sigmoid(a · (g_m + s · (u_m · cos θ_T + v_m · sin θ_T) − b_j))

with a general ability g, a topic ability that varies smoothly with the topic's angle
θ_T (so two topics' scores correlate as (var g + s² cos Δθ) / (var g + s²): nearer
topics correlate more), item difficulty b and, for a share of each benchmark's items
("noise items"), a coin flip instead. `plant_features` writes an encoder whose
informative items fire features from a window around the topic's angle on a circular
feature axis (nearer topics share more features) and whose noise items fire features
anywhere — so feature overlap tracks score correlation, and R̂ tracks the noise share
as R does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qscope_eval.store import Store

DUMMY = Path(__file__).parent / "data" / "lmeval" / "dummy_run"
TOPIC = {"my_gsm8k": "math", "my_mmlu_elementary_mathematics": "math", "my_mmlu_high_school_mathematics": "math",
         "my_mmlu_high_school_biology": "bio", "my_mmlu_college_biology": "bio", "my_mmlu_prehistory": "history",
         "my_humaneval": "code"}
ANGLE = {"math": 0.0, "code": 70.0, "bio": 160.0, "history": 250.0}  # degrees
# share of coin-flip items per task (varied so R differs between benchmarks)
NOISE = {"my_gsm8k": 0.0, "my_mmlu_elementary_mathematics": 0.3, "my_mmlu_high_school_mathematics": 0.7,
         "my_mmlu_high_school_biology": 0.1, "my_mmlu_college_biology": 0.6, "my_mmlu_prehistory": 0.2,
         "my_humaneval": 0.45}
# the suite that stores the same documents the way this project renders them (zero-shot, no description)
SUITE_BENCHMARKS = """\
  - {name: gsm8k, task: gsm8k, data_files: {test: "asset:gsm8k/test.jsonl"}}
  - {name: humaneval, task: humaneval, data_files: {test: "asset:humaneval/HumanEval.jsonl.gz"}}
  - {name: hs_bio, task: mmlu_high_school_biology, data_files: {test: "asset:mmlu/high_school_biology.jsonl"}}
  - {name: college_bio, task: mmlu_college_biology, data_files: {test: "asset:mmlu/college_biology.jsonl"}}
  - {name: elem_math, task: mmlu_elementary_mathematics, data_files: {test: "asset:mmlu/elementary_mathematics.jsonl"}}
  - {name: hs_math, task: mmlu_high_school_mathematics, data_files: {test: "asset:mmlu/high_school_mathematics.jsonl"}}
  - {name: prehistory, task: mmlu_prehistory, data_files: {test: "asset:mmlu/prehistory.jsonl"}}
"""
BENCH_OF = {"my_gsm8k": "gsm8k", "my_humaneval": "humaneval", "my_mmlu_high_school_biology": "hs_bio",
            "my_mmlu_college_biology": "college_bio", "my_mmlu_elementary_mathematics": "elem_math",
            "my_mmlu_high_school_mathematics": "hs_math", "my_mmlu_prehistory": "prehistory"}


def task_of(path: Path) -> str:
    return path.name[len("samples_"):].rsplit("_", 1)[0]


def ability_correlation(topic_a: str, topic_b: str, g_sd: float = 0.8, s: float = 1.2) -> float:
    """The planted correlation of two topics' abilities across models: (var g + s² cos Δθ) / (var g + s²)."""
    d = np.deg2rad(ANGLE[topic_a] - ANGLE[topic_b])
    return float((g_sd ** 2 + s ** 2 * np.cos(d)) / (g_sd ** 2 + s ** 2))


def plant_models(out: Path, n_models: int = 24, seed: int = 0, g_sd: float = 0.8, s: float = 1.2, a: float = 2.0,
                 src: Path = DUMMY) -> dict:
    """Write `n_models` run folders under `out`; return the plan (abilities, noise items)."""
    rng = np.random.default_rng(seed)
    g, u, v = rng.normal(scale=g_sd, size=n_models), rng.normal(size=n_models), rng.normal(size=n_models)
    files = sorted(src.glob("samples_*.jsonl"))
    plan = {"g": g, "u": u, "v": v, "noise_items": {}}
    rows_of = {f: [json.loads(line) for line in f.read_text().splitlines()] for f in files}
    items = {}
    for f, rows in rows_of.items():
        task = task_of(f)
        docs = sorted({r["doc_id"] for r in rows})
        noise = rng.random(len(docs)) < NOISE[task]
        items[f] = (docs, rng.normal(size=len(docs)), noise)
        plan["noise_items"][task] = noise
    results = next(src.glob("results_*.json"))
    for m in range(n_models):
        run = out / f"model_{m:02d}"
        run.mkdir(parents=True)
        res = json.loads(results.read_text())
        res["config"]["model_args"] = f"pretrained=planted/model-{m:02d}"
        res["model_name"] = f"planted/model-{m:02d}"
        (run / results.name).write_text(json.dumps(res))
        for f, rows in rows_of.items():
            docs, b, noise = items[f]
            theta = np.deg2rad(ANGLE[TOPIC[task_of(f)]])
            ability = g[m] + s * (u[m] * np.cos(theta) + v[m] * np.sin(theta))
            p = np.where(noise, 0.5, 1 / (1 + np.exp(-a * (ability - b))))
            solved = dict(zip(docs, rng.random(len(docs)) < p))
            lines = []
            for r in rows:
                r = dict(r)
                x = float(solved[r["doc_id"]])
                for metric in r["metrics"]:
                    r[metric] = str(x) if m % 3 == 0 else x  # lm-eval often writes numbers as strings
                lines.append(json.dumps(r))
            (run / f.name).write_text("\n".join(lines) + "\n")
    return plan


def plant_features(store: Store, seed: int = 0, d: int = 360, k: int = 8, half_width: int = 60) -> int:
    """A `planted` encoder over the store's benchmarks (feature f sits at angle f degrees); returns its id."""
    rng = np.random.default_rng(seed)
    enc = store.register_encoder("planted@main|sae|L0|last|sae", "planted", "main", "planted", 0, "last", "sae", d, {})
    bench_task = {v: t for t, v in BENCH_OF.items()}
    for name in store.benchmark_names():
        task = bench_task[name]
        window = (int(ANGLE[TOPIC[task]]) + np.arange(-half_width, half_width + 1)) % d
        ids = store.con.execute("SELECT sample_id FROM memberships WHERE benchmark = ? ORDER BY position", [name]).fetchnumpy()["sample_id"]
        todo = store.pending(enc.encoder_id, ids)
        rows, feats = [], []
        for r in range(len(todo)):
            pool = np.arange(d) if rng.random() < NOISE[task] else window  # noise item: anything
            rows += [r] * k
            feats += list(rng.choice(pool, size=k, replace=False))
        n = len(rows)
        store.write_batch(enc.encoder_id, todo, np.full(len(todo), 50), np.zeros(len(todo), bool), np.array(rows),
                          np.array(feats), rng.random(n) + 0.1, np.ones(n, int))
    return enc.encoder_id


if __name__ == "__main__":  # python tests/lmeval_fixtures.py OUT [N_MODELS] [SEED]: planted logs for trying `validate`
    import sys

    target = Path(sys.argv[1])
    if target.exists() and any(target.iterdir()):
        sys.exit(f"{target} is not empty; give a new folder")
    plant_models(target, *(int(x) for x in sys.argv[2:4]))
    print(f"wrote {len(list(target.iterdir()))} model folders of lm-eval sample logs to {target}")
