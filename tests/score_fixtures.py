"""Score tables with a planted factor structure, in every shape `validate --scores` reads, and a small store to match.

- `TOPICS`: the demo suite's 8 benchmarks and their topic (math, code, history, biology).
- `planted_scores(n_models)`: points = 50 + 8·general + 7·topic + 3·noise per (model, benchmark), so
  benchmarks of one topic correlate beyond the general factor (what the partial correlation keeps).
- `build_topic_store(path)`: the 8 benchmarks with an SAE encoder whose features follow the topics
  (same-topic benchmarks share a feature block), a null twin with topic-free random features, and
  prompt texts drawn from one shared vocabulary (so the words carry no topic either), in seconds.
- writers for every input shape: a leaderboard-style wide CSV (`harness|hendrycksTest-...|5`
  column names, metadata columns), a long table, Parquet, JSON records, and lm-eval
  `results_<ts>.json` run folders written the way lm-eval 0.4 writes them (an `mmlu` group with
  its subtasks, `group_subtasks`, `configs`, `n-shot`, `versions`, `n-samples`).

Run as a script to write the worked example's inputs: `python tests/score_fixtures.py OUT_DIR`.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TOPICS = {"gsm8k": "math", "humaneval": "code", "mmlu_high_school_mathematics": "math",
          "mmlu_elementary_mathematics": "math", "mmlu_high_school_us_history": "history",
          "mmlu_high_school_world_history": "history", "mmlu_high_school_biology": "biology",
          "mmlu_college_biology": "biology"}
LMEVAL_RESULTS = Path(__file__).parent / "data" / "lmeval" / "dummy_run" / "results_2026-11-27T13-21-21.831458.json"


def planted_scores(n_models: int = 100, seed: int = 0, topics: dict[str, str] = TOPICS) -> pd.DataFrame:
    """(n_models × benchmarks) points in [0, 100]: general + topic factor + noise; index 'org/model-i'."""
    rng = np.random.default_rng(seed)
    names = list(topics)
    kinds = sorted(set(topics.values()))
    g = rng.normal(size=n_models)
    t = {k: rng.normal(size=n_models) for k in kinds}
    S = np.stack([50 + 8 * g + 7 * t[topics[b]] + 3 * rng.normal(size=n_models) for b in names], axis=1)
    return pd.DataFrame(np.clip(S, 1, 99).round(2), index=[f"org/model-{i:03d}" for i in range(n_models)], columns=names)


def build_topic_store(path, topics: dict[str, str] = TOPICS, n: int = 30, d: int = 512, seed: int = 0,
                      topical_words: bool = False):
    """A Store with `topics`' benchmarks (spec task = name), SAE features by topic, null and texts topic-free
    (topical_words: each topic's prompts draw from a vocabulary of their own, so the words carry the topics too)."""
    from qscope_eval.store import Store

    rng = np.random.default_rng(seed)
    kinds = sorted(set(topics.values()))
    vocab = [f"w{i}" for i in range(400)]
    s = Store(path)
    e = s.register_encoder("toy@main|sae|L1|top|sae", "toy", "main", "sae", 1, "top", "sae", d, {})
    en = s.register_encoder("toy@main|sae|L1|top|null", "toy", "main", "sae", 1, "top", "null", d, {})
    for b, topic in topics.items():
        words = [f"{topic}{i}" for i in range(40)] if topical_words else vocab
        texts = [f"{b} item {i}: " + " ".join(rng.choice(words, 12)) for i in range(n)]
        ids = s.register_benchmark(b, "demo", {"task": b}, texts)
        block = kinds.index(topic) * 60
        for enc in (e, en):
            rows, feats = [], []
            for r in range(len(ids)):
                f = (rng.choice(np.arange(block, block + 60), 8, replace=False) if enc is e
                     else rng.choice(d, 8, replace=False))
                f = np.unique(np.concatenate([f, rng.choice(np.arange(300, d), 4, replace=False)]))
                rows += [r] * f.size
                feats += list(f)
            s.write_batch(enc.encoder_id, ids, np.full(n, 20), np.zeros(n, bool), np.array(rows), np.array(feats),
                          rng.random(len(feats)) + 0.1, np.ones(len(feats), int))
    return s


# ----------------------------------------------------------------------------- writers, one per input shape
LEADERBOARD = {"mmlu_high_school_mathematics": "harness|hendrycksTest-high_school_mathematics|5",
               "mmlu_elementary_mathematics": "hendrycksTest-elementary_mathematics",
               "mmlu_high_school_us_history": "MMLU (High School US History)",
               "mmlu_high_school_world_history": "mmlu_high_school_world_history (5-shot)",
               "gsm8k": "harness|gsm8k|5", "humaneval": "HumanEval"}


def write_wide_csv(S: pd.DataFrame, path: Path, share: bool = True) -> Path:
    """Leaderboard-style: eval_name + fullname + metadata columns + leaderboard spellings (MMLU as shares 0-1)."""
    df = pd.DataFrame({"eval_name": [m.replace("/", "__") + "_bfloat16" for m in S.index], "Precision": "bfloat16",
                       "Type": "pretrained", "Average ⬆️": S.mean(axis=1).round(2), "#Params (B)": 7.0,
                       "Hub License": "apache-2.0", "fullname": S.index})
    for b in S.columns:
        col = LEADERBOARD.get(b, b)
        df[col] = (S[b] / 100).round(4) if share and b.startswith("mmlu") else S[b]
    df["harness|winogrande|5"] = 60.0 + np.arange(len(S)) % 7  # a benchmark the store does not hold
    df.to_csv(path, index=False)
    return path


def write_long(S: pd.DataFrame, path: Path) -> Path:
    """(model, benchmark, score, n) rows; .csv or .tsv by suffix."""
    long = S.rename_axis("model").reset_index().melt(id_vars="model", var_name="benchmark", value_name="score")
    long["n"] = 100
    long.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


def write_parquet(S: pd.DataFrame, path: Path) -> Path:
    S.rename_axis("model").reset_index().to_parquet(path)
    return path


def write_json_records(S: pd.DataFrame, path: Path) -> Path:
    path.write_text(json.dumps(S.rename_axis("model").reset_index().to_dict(orient="records")))
    return path


def write_lmeval_runs(S: pd.DataFrame, root: Path, group: str = "mmlu") -> Path:
    """One lm-eval 0.4 run folder per model, `results_<ts>.json` modelled on the genuine dummy run's file.

    MMLU benchmarks become subtasks of `group` (whose own row is the subtasks' mean, as lm-eval writes it);
    values are shares (0-1) with `acc_stderr` beside `acc`; gsm8k has two filters."""
    base = json.loads(LMEVAL_RESULTS.read_text())
    for i, model in enumerate(S.index):
        doc = copy.deepcopy(base)
        results, configs, versions, nshot, nsamp = {}, {}, {}, {}, {}
        subtasks = [b for b in S.columns if b.startswith("mmlu_")]
        for b in S.columns:
            v = float(S.loc[model, b]) / 100
            if b == "gsm8k":
                row = {"alias": b, "exact_match,strict-match": v, "exact_match_stderr,strict-match": 0.01,
                       "exact_match,flexible-extract": min(1.0, v + 0.05), "exact_match_stderr,flexible-extract": 0.01}
            else:
                metric = "acc" if b.startswith("mmlu") else "exact_match"
                row = {"alias": f"  - {b[5:]}" if b in subtasks else b, f"{metric},none": v,
                       f"{metric}_stderr,none": 0.02}
            results[b] = row
            configs[b] = {"task": b, "num_fewshot": 0, "metadata": {"version": 1.0}}
            versions[b], nshot[b], nsamp[b] = 1.0, 0, {"original": 100, "effective": 100}
        if subtasks:
            results[group] = {"acc,none": float(S.loc[model, subtasks].mean()) / 100, "acc_stderr,none": 0.01,
                              "alias": group}
            versions[group], nshot[group] = 2, 0
        doc.update(results=results, groups={group: dict(results[group])} if subtasks else {},
                   group_subtasks={group: subtasks} if subtasks else {}, configs=configs, versions=versions,
                   **{"n-shot": nshot, "n-samples": nsamp})
        doc["config"] = {**doc["config"], "model": "hf", "model_args": f"pretrained={model},dtype=bfloat16"}
        doc["model_name"] = model
        folder = root / model.replace("/", "__")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"results_2026-11-27T13-21-{i % 60:02d}.000000.json").write_text(json.dumps(doc, indent=2))
    return root


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    S = planted_scores()
    write_wide_csv(S, out / "leaderboard.csv")
    write_long(S, out / "long.csv")
    write_lmeval_runs(S, out / "lmeval")
    print(f"wrote {out}/leaderboard.csv, {out}/long.csv and {out}/lmeval/ ({len(S)} models x {S.shape[1]} benchmarks)")
