"""Batch planning benchmark: padded tokens and estimated forward time of the batch planner vs the previous greedy one.

Every forward batch is padded to its longest prompt (rounded up to the bucket), and every batch costs a fixed
overhead (kernel launches, a sync, a host copy). model.batching.plan_batches cuts the length-sorted prompts
where padded tokens + overhead x batches is least (dynamic programming); the previous planner filled each
batch greedily up to the token budget (closing early at a prompt < 0.8 x the longest once 1/8 of the budget
was filled), and compiled batches were padded to multiples of 64 tokens (now 16). Both run here, on:

  demo        the demo suite's lm-eval prompts (GSM8K, HumanEval, MMLU), MiniLM tokenizer
  validation  bench/suites/validation.yaml's 43 benchmarks (3 619 lm-eval prompts), Qwen3 tokenizer
  uniform     2000 prompts of 128-1024 tokens (the GPU bench's bench/encode_gpu.py lengths)
  lognormal   5000 prompts, log-normal lengths (median 150, long tail to 4096)

under the settings the forward uses: CPU (2048-token budget, overhead 64), CUDA eager (auto budget 131 072 or
16 384, overhead 8192, bucket 1) and CUDA compiled (overhead 1024; bucket 64 before, 16 now). For each it prints batches,
padded / real tokens, and the estimated time (padded + overhead x batches) / real tokens; the last column is
the previous planner's estimate over the new one's (> 1: the new plan is faster). Prompts are planned in the
forward's groups (first 256, growing 4-fold up to encode.shard_size 2048), as model.forward does.

Then the distinct batch shapes of the compiled CUDA plan at 2000, 20 000 and 100 000 uniform prompts (an attention
kernel with a per-shape plan pays once per distinct shape). Then one measured figure, on this machine: the demo's prompts through MiniLM on CPU, batch by batch, under
both plans (alternating, best of --repeat), wall seconds and the ratio.

    python bench/plan_bench.py [--repeat 3] [--no-measure]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from qscope_eval.model.batching import (BATCH_OVERHEAD_CPU, BATCH_OVERHEAD_CUDA,  # noqa: E402
                                        BATCH_OVERHEAD_CUDA_COMPILED, CPU_BATCH_TOKENS, padded_tokens, plan_batches)
from qscope_eval.model.text_groups import group_bounds  # noqa: E402


def greedy_plan(lengths, batch_tokens: int, max_batch: int) -> list[np.ndarray]:
    """The previous planner (model/batching.py before this change), verbatim: the baseline."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, min(max_batch, batch_tokens // longest))
        close = int(np.searchsorted(-lengths[order[start:start + size]], -0.8 * longest, side="right"))
        size = max(1, min(size, max(close, math.ceil(0.125 * batch_tokens / longest))))
        batches.append(order[start:start + size])
        start += size
    return batches


def grouped(lengths: np.ndarray, planner, shard: int = 2048) -> list[np.ndarray]:
    """Plan group by group, as model.forward does (indices into `lengths`)."""
    out = []
    for g, stop in group_bounds(len(lengths), shard):
        out += [b + g for b in planner(lengths[g:stop])]
    return out


def suite_texts(name: str) -> list[str]:
    from qscope_eval.data.suite import load_suite
    from qscope_eval.jobs.pipeline import load_rows

    return load_rows(load_suite(name))["text"].tolist()


def demo_backbone():
    from qscope_eval.data.suite import load_suite
    from qscope_eval.model.encoders import load_runtime

    return load_runtime(load_suite("demo-minilm")).backbone


def distributions(bb) -> dict[str, np.ndarray]:
    from qscope_eval.model import toy

    out = {"demo": np.asarray(bb.tokenize(suite_texts("demo-minilm")).lengths)}
    qwen = toy.qwen_tokenizer()
    enc = qwen(suite_texts(str(ROOT / "bench/suites/validation.yaml")), truncation=True, max_length=4096)
    out["validation"] = np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)
    out["uniform"] = np.random.default_rng(0).integers(128, 1025, 2000)
    out["lognormal"] = np.clip(np.random.default_rng(1).lognormal(np.log(150), 0.8, 5000), 8, 4096).astype(np.int64)
    return out


DEMO_LAYER = 3
"""The demo suite reads layer 3 (the forward stops after it)."""

SETTINGS = [  # name, budget, overhead, old bucket, new bucket
    ("CPU 2048", CPU_BATCH_TOKENS, BATCH_OVERHEAD_CPU, 1, 1),
    ("CUDA eager 131072", 131072, BATCH_OVERHEAD_CUDA, 1, 1),
    ("CUDA eager 16384", 16384, BATCH_OVERHEAD_CUDA, 1, 1),
    ("CUDA compile 131072", 131072, BATCH_OVERHEAD_CUDA_COMPILED, 64, 16),
]


def table(dists: dict[str, np.ndarray], max_batch: int = 256) -> None:
    print(f"{'prompts':<11}{'setting':<21}{'batches old/new':>16}{'padded/real old':>17}{'new':>7}"
          f"{'est. time old':>15}{'new':>7}{'old/new':>9}")
    for name, lengths in dists.items():
        real = int(lengths.sum())
        for setting, budget, overhead, b_old, b_new in SETTINGS:
            old = grouped(lengths, lambda x: greedy_plan(x, budget, max_batch))
            new = grouped(lengths, lambda x: plan_batches(x, budget, max_batch, b_new, overhead))
            p_old, p_new = padded_tokens(lengths, old, b_old), padded_tokens(lengths, new, b_new)
            t_old, t_new = (p_old + overhead * len(old)) / real, (p_new + overhead * len(new)) / real
            print(f"{name:<11}{setting:<21}{len(old):>8}/{len(new):<7}{p_old / real:>17.3f}{p_new / real:>7.3f}"
                  f"{t_old:>15.3f}{t_new:>7.3f}{t_old / t_new:>9.3f}")


def shapes(max_batch: int = 256) -> None:
    """Distinct (prompts, padded width) batch shapes of the compiled CUDA plan on the uniform lengths, as the audit
    grows: an attention kernel that builds a plan per new shape (cuDNN's, ~65 ms each on the H100) pays once per
    distinct shape, so it gains only where shapes repeat."""
    _, budget, overhead, _, bucket = SETTINGS[-1]
    print(f"\nshapes of the compiled CUDA plan ({budget} tokens, bucket {bucket}), uniform 128-1024 token prompts:")
    for n in (2000, 20000, 100000):
        lengths = np.random.default_rng(0).integers(128, 1025, n)
        plan = grouped(lengths, lambda x: plan_batches(x, budget, max_batch, bucket, overhead))
        distinct = {(len(b), int(-(-lengths[b].max() // bucket) * bucket)) for b in plan}
        print(f"  {n:>7} prompts  {len(plan):>5} batches  {len(distinct):>5} distinct shapes "
              f"({len(distinct) / len(plan):.0%} of batches meet a new shape)")


def measure(bb, repeat: int) -> None:
    """The demo's prompts through its MiniLM on CPU under both plans; batch by batch, wall time."""
    import torch

    tok = bb.tokenize(suite_texts("demo-minilm"))
    ids, lengths = tok.ids, np.asarray(tok.lengths)
    plans = {"previous (greedy)": grouped(lengths, lambda x: greedy_plan(x, CPU_BATCH_TOKENS, 256)),
             "plan_batches": grouped(lengths, lambda x: plan_batches(x, CPU_BATCH_TOKENS, 256, 1, BATCH_OVERHEAD_CPU))}
    best = {k: float("inf") for k in plans}
    with torch.inference_mode():
        for _ in range(repeat):
            for name, plan in plans.items():
                t = time.perf_counter()
                for b in plan:
                    bb.residuals([ids[i] for i in b], [DEMO_LAYER])
                best[name] = min(best[name], time.perf_counter() - t)
    print(f"\nmeasured: {len(ids)} demo prompts ({int(lengths.sum()):,} tokens) through MiniLM on CPU "
          f"({torch.get_num_threads()} threads), best of {repeat}")
    for name, plan in plans.items():
        print(f"  {name:<20}{len(plan):>5} batches  padded/real {padded_tokens(lengths, plan) / lengths.sum():.3f}"
              f"  {best[name]:7.2f} s")
    print(f"  previous / plan_batches: {best['previous (greedy)'] / best['plan_batches']:.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-measure", action="store_true", help="only the planning table (no model)")
    args = ap.parse_args()
    t = time.perf_counter()
    bb = demo_backbone()
    table(distributions(bb))
    print(f"(planning table: {time.perf_counter() - t:.1f} s)")
    shapes()
    if not args.no_measure:
        measure(bb, args.repeat)


if __name__ == "__main__":
    main()
