"""Encode throughput: the Qwen-Scope model-card procedure against our production path.

Both encode the same prompts in one run and must give the same per-sample
feature sets; the script prints samples/s, tokens/s, peak memory, the ratio and
the identity check.

Baseline (the procedure of the Qwen-Scope model cards; bench/encode_baseline.py):
one prompt at a time, a full forward of the model, the residual read by a hook
on the layer, EVERY position encoded in fp32 by the SAE, pooled in Python with
exactly the pooling semantics of qscope_eval.model.encode.

Ours: the production path. `encode_texts` is pipeline.encode_texts (tokenize,
length-bucketed batches under the suite's token budget, forward stopped after
the deepest requested layer, pooling on the device, only non-zeros copied back,
batch halving on out-of-memory). `encode_suite` is pipeline.encode_suite into a
fresh temporary DuckDB file: registration, the same compute, and the writer
thread that overlaps each batch's database write with the next batch's compute.
Loading the model and the SAE is not timed (pipeline.load_rows / load_runtime are
pointed at what the script already loaded).

Timing, built for a shared machine: the prompts are split into --rounds groups.
Within a group the baseline and encode_texts run in lockstep (one batch of
ours, then baseline prompts until the baseline has encoded as many tokens, each
segment timed on its own), so load from other processes falls on both alike;
encode_suite runs on the whole group before or after (the order alternates).
Reported: wall and process CPU seconds (all threads), samples/s and tokens/s on
wall time, the ratio on wall and on CPU time with the range over the groups,
and peak memory: on CPU the process's peak RSS during the method (VmHWM, reset
before each timed segment) and its rise above the RSS at the segment's start; on
CUDA torch.cuda.max_memory_allocated. (The GPU mode runs the methods one after
the other: a GPU is not shared.)

Identity check: per sample the same features with the same n_tokens, values
within --rtol (1e-4; max rel err printed). A batched forward and a one-prompt
forward differ by fp32 rounding (~1e-6 relative), so where a token's k-th and
(k+1)-th pre-activations (or, for `top`, the m-th and (m+1)-th scores) are
closer than that, either may be kept. Each differing sample is therefore re-run
through the baseline (untimed): a difference passes only if the feature sits on
such a boundary within rtol, and is reported as such; anything else is a FAIL
(exit status 1).

CPU mode (default): the built-in demo suite (asset:minilm, layer 3, the demo SAE
d_sae 4096 k 32, `top` pooling), --n real prompts drawn from all its benchmarks
(seeded shuffle, duplicates dropped).

GPU mode (--gpu; bench/encode_gpu.py, whose docstring gives the FLOP formula):
a Qwen3-1.7B-Base-shaped model with random weights, a random SAE of the real
Qwen-Scope shape, synthetic prompts; tokens/s and the share of the bf16 dense
FLOP bound. `--gpu --device cpu --tiny` is a dry run of it on CPU.

This file is the entry point: the arguments, the CPU mode and its lockstep
timing. Shared measuring, our production path and the results table are in
bench/encode_common.py; the sibling modules are imported from bench/ (not a
package).

    python bench/encode_bench.py                        # CPU, demo, top pooling
    python bench/encode_bench.py --pooling last         # or max
    python bench/encode_bench.py --gpu                  # GPU mode (CUDA)
    python bench/encode_bench.py --gpu --device cpu --tiny   # dry run of the GPU mode
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the sibling modules (bench/ is not a package); also when loaded by file path (tests/test_gpu_path.py)
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_baseline import ModelCardBaseline, compare, explain, identity_line  # noqa: E402
from encode_common import Arm, Measure, budget, collect, fold, measure, print_table  # noqa: E402
from encode_common import run_encode_texts, suite_arm  # noqa: E402
from encode_gpu import gpu_mode  # noqa: E402
from qscope_eval.jobs import pipeline  # noqa: E402
from qscope_eval.model.sae import Sae, SaeConfig  # noqa: E402
from qscope_eval.data.suite import SaeSpec, Suite  # noqa: E402


# ---------------------------------------------------------------- CPU mode: the demo


def demo_prompts(suite: Suite, n: int, seed: int):
    """n distinct real prompts drawn from all the demo's benchmarks (rows frame: benchmark, position, text)."""
    from qscope_eval.data.sources import load_suite_rows

    rows = load_suite_rows(suite)
    rows = rows.iloc[np.random.default_rng(seed).permutation(len(rows))]
    rows = rows.drop_duplicates("text").head(n).reset_index(drop=True)
    return rows



def lockstep(baseline: ModelCardBaseline, runtime, suite: Suite, group: list[int], texts: dict[int, str],
             device: torch.device, base: Arm, ours: Arm) -> None:
    """Baseline and encode_texts over one group, advanced in turns: one batch of ours, then baseline prompts
    until the baseline has encoded as many tokens; each segment timed on its own, so load from other
    processes falls on both alike (to within one batch)."""
    seg_b: list[Measure] = []
    seg_o: list[Measure] = []
    gen = pipeline.encode_texts(runtime, np.asarray(group, dtype=np.int64), [texts[k] for k in group], suite)
    todo = list(group)[::-1]
    tok_b = tok_o = 0
    batches = []

    def one_baseline() -> int:
        key = todo.pop()
        with measure(device, seg_b), baseline.hooked():
            base.results[key], n = baseline.encode(texts[key])
        return n

    while True:
        with measure(device, seg_o):
            batch = next(gen, None)
        if batch is None:
            break
        batches.append(batch)
        tok_o += int(batch.n_tokens.sum())
        while todo and tok_b < tok_o:
            tok_b += one_baseline()
    while todo:
        tok_b += one_baseline()
    ours.results.update(collect(batches, runtime.handles[0].key))
    for arm, parts, tokens in ((base, seg_b, tok_b), (ours, seg_o, tok_o)):
        arm.runs.append(fold(parts))
        arm.samples += len(group)
        arm.tokens += tokens


def cpu_mode(args) -> int:
    from qscope_eval.data.suite import load_suite

    demo = load_suite("demo-minilm")
    suite = dataclasses.replace(demo, pooling=args.pooling or demo.pooling, null=False,
                                model=dataclasses.replace(demo.model, device=args.device))
    if args.batch_tokens:
        suite = dataclasses.replace(suite, encode=dataclasses.replace(suite.encode, batch_tokens=args.batch_tokens))
    t0 = time.perf_counter()
    sae_dir = Path(suite.sae.path)
    tmp = tempfile.TemporaryDirectory(prefix="encode_bench.")
    note = f"SAE {sae_dir.name} (trained)"
    if not (sae_dir / f"layer{suite.layers[0]}.sae.pt").exists():
        sae_dir, note = random_demo_sae(suite, Path(tmp.name) / "sae")
        suite = dataclasses.replace(suite, sae=SaeSpec(path=str(sae_dir)))
    rows = demo_prompts(suite, args.n, args.seed)
    runtime = pipeline.load_runtime(suite)
    bb, handle = runtime.backbone, runtime.handles[0]
    texts = rows["text"].tolist()
    keys = list(range(len(texts)))
    n_tok = int(bb.tokenize(texts).lengths.sum())
    print(f"encode_bench (CPU mode): demo suite, {len(texts)} prompts from {rows['benchmark'].nunique()} benchmarks "
          f"({n_tok:,} tokens), {bb.name} layer {handle.layer} of {bb.n_layers}, {note}: d_sae {handle.sae.cfg.d_sae}, "
          f"k {handle.sae.cfg.k}, pooling {suite.pooling}; device {bb.device}, {bb.dtype}, "
          f"{torch.get_num_threads()} torch threads; setup {time.perf_counter() - t0:.0f} s")
    print(f"baseline      = model-card procedure: one prompt at a time, full forward (MiniLM has no LM head: all "
          f"{bb.n_layers} layers + pooler), hook on layer {handle.layer}, SAE on every position in fp32, pooling in Python")
    print(f"encode_texts  = pipeline.encode_texts: length-sorted batches under {budget(suite.encode, bb.device)} tokens, "
          f"forward stopped after layer {handle.layer}, pooling on the device")
    print("encode_suite  = pipeline.encode_suite into a fresh DuckDB file (registration + writer thread)")
    print(f"timing: {args.rounds} groups; baseline and encode_texts in lockstep within each, token for token")
    baseline = ModelCardBaseline(bb.model, bb.tokenizer, bb.layers_module[handle.layer], handle.sae, suite.pooling,
                                 suite.encode, bb.max_length, handle.ref_mean().cpu().numpy() if handle.stats else None,
                                 handle.m)
    by_key = dict(zip(keys, texts))
    dbs = iter(Path(tmp.name) / f"round{i}.duckdb" for i in range(10**6))

    def suite_run(group):
        return suite_arm(runtime, rows, suite, next(dbs), group)

    BASE, TEXTS, SUITE = "baseline (model card)", "ours: encode_texts", "ours: encode_suite + DB"
    warm = keys[: min(8, len(keys))]  # first-call costs (allocator, kernels) out of the timings
    baseline.run(warm, [by_key[k] for k in warm])
    run_encode_texts(runtime, warm, [by_key[k] for k in warm], suite)
    suite_run(warm)[0]()
    result = {name: Arm(name) for name in (BASE, TEXTS, SUITE)}

    def suite_step(group):
        parts: list[Measure] = []
        with measure(bb.device, parts):
            read, tokens = suite_run(group)
        arm = result[SUITE]
        arm.runs.append(parts[0])
        arm.results.update(read())
        arm.samples += len(group)
        arm.tokens += tokens

    groups = [list(g) for g in np.array_split(np.asarray(keys), max(1, min(args.rounds, len(keys))))]
    for g, group in enumerate(groups):
        steps = [lambda: lockstep(baseline, runtime, suite, group, by_key, bb.device, result[BASE], result[TEXTS]),
                 lambda: suite_step(group)]
        for step in steps[::-1] if g % 2 else steps:
            step()
    print_table(result, "baseline (model card)", bb.device)
    base = result["baseline (model card)"].results
    ok = True
    for name in ("ours: encode_texts", "ours: encode_suite + DB"):
        idt = explain(compare(base, result[name].results, args.rtol), baseline, by_key, args.rtol)
        print(identity_line(idt, args.rtol, f"baseline vs {name.split(': ')[1]}"))
        ok &= idt.ok()
    tmp.cleanup()
    return 0 if ok else 1


def random_demo_sae(suite: Suite, out: Path) -> tuple[Path, str]:
    """Until the demo SAE exists: a random SAE of its shape (d_model 384, d_sae 4096, k 32) and its reference stats."""
    from qscope_eval.model.backbone import load_backbone
    from qscope_eval.model.feature_stats import compute_feature_stats_many
    from qscope_eval.model.sae import save_sae
    from qscope_eval.model.feature_stats import save_feature_stats
    from qscope_eval.data.sources import load_suite_rows

    layer = suite.layers[0]
    g = torch.Generator().manual_seed(1)
    W = torch.randn(4096, 384, generator=g)
    W /= W.norm(dim=1, keepdim=True)
    sae = Sae(SaeConfig(384, 4096, 32, layer), W, torch.randn(4096, generator=g) * 0.1, W.T.contiguous(), torch.zeros(384))
    save_sae(sae, out)
    if suite.pooling == "top":
        texts = load_suite_rows(suite)["text"].tolist()[::7]
        stats = compute_feature_stats_many(load_backbone(suite.model), [sae], texts, layer, suite.encode)[0]
        save_feature_stats(stats, out, layer)
    return out, "random SAE (the demo SAE is not there yet)"


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="prompts (CPU: 300 demo prompts; GPU: 2000 synthetic)")
    ap.add_argument("--pooling", choices=("last", "max", "top"), default=None,
                    help="pooling mode (CPU default: the demo's `top`; GPU default: `last`)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CPU mode default: cpu)")
    ap.add_argument("--gpu", action="store_true", help="GPU mode: random Qwen3-1.7B-shaped model, random 32768-wide SAE")
    ap.add_argument("--tiny", action="store_true", help="GPU mode on a tiny config (dry run, e.g. --device cpu)")
    ap.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto", help="GPU mode model dtype")
    ap.add_argument("--baseline-n", type=int, default=None, help="GPU mode: prompts for the baseline (default 64)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="override encode.batch_tokens")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak dense bf16 TFLOP/s for the bound")
    ap.add_argument("--rounds", type=int, default=None,
                    help="groups the prompts are split into, timed interleaved (default: CPU 3, GPU 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="identity tolerance on values")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logger = logging.getLogger("qscope_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)  # truncation notes, once per group, are not news here
    try:
        if args.gpu:
            if args.device == "cpu" and not args.tiny:
                args.device = "cuda"
            args.rounds = args.rounds or 2
            return gpu_mode(args)
        args.n, args.rounds = args.n or 300, args.rounds or 3
        return cpu_mode(args)
    finally:
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
