"""GPU mode of the encode benchmark (`python bench/encode_bench.py --gpu`): throughput and the FLOP bound.

Needs no download. A Qwen3-1.7B-Base-shaped model built from its config with
random weights (toy.random_qwen3, bf16 on CUDA), a random SAE of the real
Qwen-Scope shape (d_sae 32768, d_model 2048, k 50) at layer 14, and synthetic
prompts of 128-1024 tokens (seeded; words drawn from the Qwen vocabulary).
Throughput does not depend on weight values. Default pooling there is `last`
(the default for causal LMs). The methods run one after the other (a GPU is not
shared). It reports tokens/s and the share of the bf16 dense FLOP bound:

    FLOPs(forward truncated after layer L)
        = sum over prompts (T real tokens, padding not counted) and layers 0..L of
          2 * P_layer * T            (every weight used once per token; P_layer = the
                                      layer's parameter count; embedding gather free)
        + 2 * T^2 * H * d_head      (causal attention: QK^T and AV, each
                                      2 * T^2/2 * d_head per head)
    FLOPs(SAE encode) = 2 * d_model * d_sae per encoded token (`last`: one per prompt)
    share of the bound = FLOPs / seconds / peak dense bf16 FLOP/s of the device
                         (H100 SXM / H200: 989 TFLOP/s; --peak-tflops to set it)

The share is given for the forward alone (model.forward.iter_forward over the encode path's own
batches, prompts tokenized beforehand, no SAE), and for the whole of encode_texts / encode_suite (which also
tokenize, encode with the SAE and copy results back). bench/encode_arms.py measures the issue-14 arms
(budget, packing, compile, SAE precision, noise floor) in one run. The baseline runs
on --baseline-n prompts only (it is slow), and the ratio compares per-sample
rates. `--gpu --device cpu --tiny` runs the same code on a tiny config on CPU
(a dry run of the GPU mode; its figures mean nothing).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from encode_baseline import ModelCardBaseline, compare, explain, identity_line
from encode_common import print_table, run_encode_texts, run_rounds, suite_arm
from qscope_eval.model import encoders
from qscope_eval.model.sae import Sae, SaeConfig
from qscope_eval.model.feature_stats import FeatureStats
from qscope_eval.data.suite import BenchmarkSpec, EncodeSpec, ModelSpec, SaeSpec, Suite

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s. First match wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4),
    ("H100", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 125.0), ("L4", 121.0),
)


# ---------------------------------------------------------------- FLOPs


def forward_flops(model: torch.nn.Module, layers: torch.nn.ModuleList, deepest: int, lengths: np.ndarray) -> float:
    """Useful FLOPs of the forward truncated after `deepest` (formula in the module docstring)."""
    cfg = model.config
    params = sum(p.numel() for layer in layers[: deepest + 1] for p in layer.parameters())
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    lengths = lengths.astype(np.float64)
    n_layers = deepest + 1
    return float(2 * params * lengths.sum() + n_layers * 2 * heads * head_dim * (lengths**2).sum())


def rate(flops: float, seconds: float) -> str:
    per_s = flops / seconds
    return f"{per_s / 1e12:,.1f} TFLOP/s" if per_s >= 1e12 else f"{per_s / 1e9:,.2f} GFLOP/s"


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given"
    if device.type != "cuda":
        return None, "no bound on CPU"
    name = torch.cuda.get_device_name(device).upper()
    for key, tf in PEAK_BF16_TFLOPS:
        if key in name:
            return tf, f"{key} data sheet"
    return None, f"unknown device {name!r}: pass --peak-tflops"


# ---------------------------------------------------------------- prompts


def synthetic_prompts(tokenizer, n: int, lo: int, hi: int, seed: int):
    """n texts of lo..hi tokens: words drawn from the tokenizer's vocabulary (one token each)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    vocab = tokenizer.get_vocab()
    # byte-level BPE writes a leading space as "Ġ": pick whole lowercase words
    words = sorted(t[1:] for t in vocab if t.startswith("Ġ") and 3 <= len(t) - 1 <= 10 and t[1:].isalpha()
                   and t[1:].islower())
    words = np.asarray(words)
    lengths = rng.integers(lo, hi + 1, size=n)
    texts = [" ".join(words[rng.integers(0, len(words), size=int(t))]) for t in lengths]
    return pd.DataFrame({"benchmark": "synthetic", "position": np.arange(n), "text": texts})


# ---------------------------------------------------------------- GPU mode


def gpu_mode(args) -> int:
    from transformers import Qwen3ForCausalLM

    from qscope_eval.model import toy
    from qscope_eval.model.encode import EncoderHandle

    if args.tiny:
        config = toy.qwen3_1p7b_config(hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16)
        layer, d_sae, k = 2, 1024, 16
        n, lo, hi, base_n = args.n or 48, 16, 128, args.baseline_n or 8
    else:
        config = toy.qwen3_1p7b_config()
        layer, d_sae, k = 14, 32768, 50
        n, lo, hi, base_n = args.n or 2000, 128, 1024, args.baseline_n or 64
    pooling = args.pooling or "last"
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        print("--gpu needs a CUDA device (or --device cpu --tiny for a dry run)", file=sys.stderr)
        return 2
    dtype = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    t0 = time.perf_counter()
    bb = toy.random_qwen3(config, device=str(device), dtype=dtype, seed=0)
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(d_sae, config.hidden_size, generator=gen)
    W /= W.norm(dim=1, keepdim=True)
    sae = Sae(SaeConfig(config.hidden_size, d_sae, k, layer), W, torch.randn(d_sae, generator=gen) * 0.05,
              W.T.contiguous(), torch.zeros(config.hidden_size)).to(device)
    stats = None
    if pooling == "top":  # synthetic reference means: throughput does not depend on them
        mean = np.random.default_rng(0).uniform(0.01, 1.0, d_sae)
        stats = FeatureStats(mean=mean, freq=np.full(d_sae, 0.01), n_tokens=1)
    handle = EncoderHandle(f"random:qwen3|random-sae|L{layer}|{pooling}|sae", layer, pooling, sae, stats)
    runtime = encoders.Runtime(bb, [handle])
    encode = EncodeSpec(batch_tokens=args.batch_tokens or EncodeSpec.batch_tokens)
    suite = Suite(name="gpu-bench", model=ModelSpec(id="random:qwen3", device=str(device)),
                  sae=SaeSpec(path="random-sae"), layers=(layer,), pooling=pooling,
                  benchmarks=(BenchmarkSpec(name="synthetic", path="synthetic.jsonl", text="text"),), encode=encode)
    rows = synthetic_prompts(bb.tokenizer, n, lo, hi, args.seed)
    texts = rows["text"].tolist()
    lengths = bb.tokenize(texts).lengths
    # the model card's AutoModelForCausalLM: the same decoder plus the (tied) LM head, sharing the weights
    with torch.device("meta"):
        lm = Qwen3ForCausalLM(config)
    lm.model = bb.model
    lm.lm_head.weight = bb.model.embed_tokens.weight
    lm.eval()
    print(f"encode_bench (GPU mode{', tiny dry run' if args.tiny else ''}): random Qwen3 "
          f"({'tiny' if args.tiny else 'Qwen3-1.7B-Base shape'}: {config.num_hidden_layers} layers, d_model "
          f"{config.hidden_size}), {dtype} on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; random SAE d_sae {d_sae}, k {k}, layer {layer} (forward stopped there), pooling {pooling}; "
            f"{n} synthetic prompts of {lo}-{hi} tokens ({int(lengths.sum()):,} tokens); setup {time.perf_counter() - t0:.0f} s")
    print(f"baseline = model-card procedure (AutoModelForCausalLM: all {config.num_hidden_layers} layers + LM head), "
          f"on the first {base_n} prompts")
    baseline = ModelCardBaseline(lm, bb.tokenizer, bb.layers_module[layer], sae, pooling, encode, bb.max_length,
                                 handle.ref_mean().cpu().numpy() if stats else None, handle.m)
    keys = list(range(len(texts)))
    by_key = dict(zip(keys, texts))
    tmp = tempfile.TemporaryDirectory(prefix="encode_bench.")
    dbs = iter(Path(tmp.name) / f"round{i}.duckdb" for i in range(10**6))

    all_ids = bb.tokenize(texts).ids  # tokenized once, outside the timings: this arm times the forward alone

    from qscope_eval.model.forward import iter_forward, options_for

    fwd_opts = options_for(encode, bb, [layer])  # the encode path's own batches (auto budget on CUDA)

    def forward_only(group):
        ids = [all_ids[i] for i in group]
        for _ in iter_forward(bb, [layer], lambda res: None, fwd_opts, ids=ids):
            pass
        return {}, int(sum(len(x) for x in ids))

    def suite_run(group):
        return suite_arm(runtime, rows, suite, next(dbs), group)

    ours = {
        "forward only (truncated)": forward_only,
        "ours: encode_texts": lambda g: run_encode_texts(runtime, g, [by_key[i] for i in g], suite),
        "ours: encode_suite + DB": suite_run,
    }
    warm = keys[: min(16, len(keys))]
    for fn in ours.values():
        res = fn(warm)
        if callable(res[0]):
            res[0]()
    baseline.run(warm[:2], [by_key[i] for i in warm[:2]])
    groups = [list(g) for g in np.array_split(np.asarray(keys), max(1, min(args.rounds, len(keys))))]
    result = run_rounds(ours, groups, device)
    base_arm = run_rounds({"baseline (model card)": lambda g: baseline.run(g, [by_key[i] for i in g])},
                          [keys[:base_n]], device)
    arms = {**base_arm, **result}
    peak, peak_src = peak_tflops(device, args.peak_tflops)
    fwd_flops = forward_flops(bb.model, bb.layers_module, layer, lengths)
    n_encoded = n if pooling == "last" else int(lengths.sum())  # upper bound for max/top (masked tokens)
    sae_flops = 2.0 * config.hidden_size * d_sae * n_encoded
    extra = {}
    for name in ours:
        secs = arms[name].total().wall
        share = f", {100 * fwd_flops / secs / 1e12 / peak:.1f}% of the bf16 bound" if peak else ""
        extra[name] = f"forward {rate(fwd_flops, secs)}{share}"
    # the baseline: the same useful work (truncated forward) per second, and what it actually ran
    # (every layer and the LM head over every position)
    lb = lengths[:base_n]
    useful = forward_flops(bb.model, bb.layers_module, layer, lb)
    full = (forward_flops(bb.model, bb.layers_module, bb.n_layers - 1, lb)
            + 2.0 * config.hidden_size * config.vocab_size * lb.sum())
    bsecs = arms["baseline (model card)"].total().wall
    share_u = f", {100 * useful / bsecs / 1e12 / peak:.1f}%" if peak else ""
    share_f = f", {100 * full / bsecs / 1e12 / peak:.1f}%" if peak else ""
    extra["baseline (model card)"] = (f"forward {rate(useful, bsecs)}{share_u} "
                                      f"(all it ran, LM head included: {rate(full, bsecs)}{share_f})")
    print_table(arms, "baseline (model card)", device, extra)
    print(f"FLOPs: truncated forward (layers 0..{layer}) {fwd_flops / 1e12:,.2f} TFLOP for {int(lengths.sum()):,} tokens "
          f"({fwd_flops / lengths.sum() / 1e9:.2f} GFLOP/token); SAE encode {sae_flops / 1e12:,.3f} TFLOP "
          f"({n_encoded:,} encoded tokens x 2 x {config.hidden_size} x {d_sae}, fp32)")
    print(f"bound: {f'{peak:g} TFLOP/s dense bf16 ({peak_src})' if peak else peak_src}")
    base = arms["baseline (model card)"].results
    # bf16 residuals of a batched forward differ from a one-prompt forward by bf16 rounding (~1e-2), not
    # fp32 rounding: there the tolerance is 2e-2 and the check is reported, not enforced.
    rtol = args.rtol if dtype == torch.float32 else 2e-2
    idt = explain(compare(base, {k: v for k, v in arms["ours: encode_texts"].results.items() if k in base}, rtol),
                  baseline, by_key, rtol)
    print(identity_line(idt, rtol, "baseline vs encode_texts", strict=dtype == torch.float32))
    idt2 = compare(arms["ours: encode_texts"].results, arms["ours: encode_suite + DB"].results, 1e-6)
    print(identity_line(idt2, 1e-6, "encode_texts vs encode_suite + DB"))
    tmp.cleanup()
    return 0 if idt2.ok() and (dtype != torch.float32 or idt.ok()) else 1
