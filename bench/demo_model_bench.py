"""Choose the demo's causal LM layer, pooling and SAE by measurement on suites of known structure (issue 27).

13 benchmarks in 7 topic groups (MMLU subjects grouped by topic, HumanEval, GSM8K), the first N prompts of each,
as lm-eval shows them (zero-shot; MMLU prompts end with "Answer:"). One forward pass per backbone reads every layer
it needs; the residuals of the prompts' tokens are cached on disk (`--cache`), so every (layer, pooling, encoder)
candidate is pooled from the same forward with the project's own pooling functions (model.encode.pool_last /
pool_max / pool_top, model.encode.token_mask):

  python bench/demo_model_bench.py collect --model asset:smollm2 --layers 4 7 10 13 16      # forward once
  python bench/demo_model_bench.py layers  --model asset:smollm2                            # raw residuals per layer
  python bench/demo_model_bench.py score   --model asset:smollm2 --layer 10 --sae DIR       # last/top/max, SAE/null/words
  python bench/demo_model_bench.py score   --model asset:minilm --layer 3 --sae qscope_eval/suites/demo_sae  # reference

Figures (all with 95 % Wilson intervals over prompts, or bootstrap intervals where said):

  nn_purity        share of prompts whose nearest other prompt (cosine of the pooled feature vectors: binary
                   fired sets) is in the same topic group
  xb_purity        the same, with the nearest prompt taken from the OTHER benchmarks only (and only prompts of
                   groups with >= 2 benchmarks): does the representation put a prompt next to the same topic
                   asked by another benchmark? (same-benchmark neighbours are easy: same template, same subject)
  groups_dropped / kept    the default recommendation (analysis.recommend, via bench/recommend_bench.score)
  template_share   mean share of a prompt's fired features that fire on >= 50 % of all prompts (what every prompt
                   shares: the template)
The null (random dictionary of the same shape, seed 0, like the audit's) and the words (lexical: tf-idf cosine of
analysis.lexical.term_counts, no model) are scored on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROUPS = {
    "math": ["mmlu_elementary_mathematics", "mmlu_high_school_mathematics", "mmlu_college_mathematics"],
    "biology": ["mmlu_high_school_biology", "mmlu_college_biology", "mmlu_anatomy"],
    "history": ["mmlu_high_school_us_history", "mmlu_high_school_world_history", "mmlu_high_school_european_history"],
    "economics": ["mmlu_high_school_macroeconomics", "mmlu_high_school_microeconomics"],
    "physics": ["mmlu_high_school_physics", "mmlu_conceptual_physics"],
    "code": ["humaneval"],
    "word_problems": ["gsm8k"],
}
BENCH_MMLU = tuple(b.removeprefix("mmlu_") for bs in GROUPS.values() for b in bs if b.startswith("mmlu_"))
"""MMLU subjects this bench measures on: the demo SAE's training corpus leaves them out."""


def suite_dict(n: int, max_length: int, model: str = "asset:smollm2") -> dict:
    """The bench suite (a suite file's content): every benchmark's first n prompts."""
    benches = []
    for bs in GROUPS.values():
        for b in bs:
            if b == "gsm8k":
                benches.append({"name": b, "task": "gsm8k", "data_files": {"test": "asset:gsm8k/test.jsonl"}})
            elif b == "humaneval":
                benches.append({"name": b, "task": "humaneval", "data_files": {"test": "asset:humaneval/HumanEval.jsonl.gz"}})
            else:
                benches.append({"name": b, "task": b, "data_files": {"test": f"asset:mmlu/{b.removeprefix('mmlu_')}.jsonl"}})
    return {"name": "demo-model-bench", "model": {"id": model, "dtype": "float32", "device": "cpu", "max_length": max_length},
            "sae": {"path": "."}, "layers": [0], "pooling": "top", "limit": n, "benchmarks": benches}


def _cache_file(args, model: str) -> Path:
    return Path(args.cache) / f"{model.replace(':', '_').replace('/', '_')}-n{args.n}-L{args.max_length}.pt"


def collect(args) -> None:
    """One truncated forward over the bench prompts; cache every requested layer's residuals and the masks."""
    import torch

    from qscope_eval.data.sources import load_suite_rows
    from qscope_eval.data.suite import parse_suite
    from qscope_eval.model.backbone import load_backbone

    suite = parse_suite(suite_dict(args.n, args.max_length, args.model), source=Path.cwd() / "x.yaml")
    rows = load_suite_rows(suite)
    bb = load_backbone(suite.model)
    tok = bb.tokenize(rows["text"].tolist())
    out = {"benchmark": rows["benchmark"].tolist(), "text": rows["text"].tolist(), "layers": list(args.layers),
           "hidden": {n: [] for n in args.layers}, "special": [], "n_truncated": tok.n_truncated}
    t0 = time.perf_counter()
    for i in range(0, len(tok.ids), args.batch):
        res = bb.residuals(tok.ids[i:i + args.batch], list(args.layers))
        for j, ids in enumerate(tok.ids[i:i + args.batch]):
            for n in args.layers:
                out["hidden"][n].append(res.hidden[n][j, :len(ids)].clone())
            out["special"].append(res.special_mask[j, :len(ids)].clone())
        print(f"  {i + len(tok.ids[i:i + args.batch])}/{len(tok.ids)} prompts, {time.perf_counter() - t0:.0f}s", flush=True)
    n_tok = int(tok.lengths.sum())
    dt = time.perf_counter() - t0
    out["seconds"], out["n_tokens"] = dt, n_tok
    path = _cache_file(args, args.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    print(f"{args.model}: {len(tok.ids)} prompts, {n_tok} tokens ({tok.n_truncated} truncated to {args.max_length}), "
          f"forward to layer {max(args.layers)} in {dt:.0f}s ({n_tok / dt:.0f} tokens/s, torch threads "
          f"{torch.get_num_threads()}) -> {path}")


def layers_cmd(args):  # defined below (placeholder until written)
    raise SystemExit("not yet")


def score_cmd(args):
    raise SystemExit("not yet")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["collect", "layers", "score"])
    ap.add_argument("--model", default="asset:smollm2")
    ap.add_argument("--layers", type=int, nargs="*", default=[4, 7, 10, 13, 16])
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--sae", default=None, help="SAE directory (Qwen-Scope format) for `score`")
    ap.add_argument("--n", type=int, default=30, help="prompts per benchmark")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cache", default="out/demo_model_bench")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    {"collect": collect, "layers": layers_cmd, "score": score_cmd}[args.command](args)


if __name__ == "__main__":
    main()
