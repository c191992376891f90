"""Encode throughput arms on a GPU (issue 14): padding vs packing, compile on/off, token budget, SAE precision,
and the noise floor of batched bf16 encoding; every figure from one run, on one device.

Same setting as `encode_bench.py --gpu` (bench/encode_gpu.py: a Qwen3-1.7B-Base-shaped model with random
bf16 weights truncated after layer 14, a random SAE d_sae 32768 k 50, --n synthetic prompts of 128-1024
tokens), and the same FLOP formula for the share of the bf16 dense peak (forward FLOPs of real tokens,
padding not counted, divided by wall time). Arms, in order (each printed and appended to
$OUT/arms.jsonl as it finishes, so a run cut short keeps what it measured):

  tokenize alone: Backbone.tokenize of all prompts on one thread and with the Rust tokenizer on every core
  forward alone (prompts tokenized beforehand; forward.iter_forward with fn doing nothing):
    padded 16k eager      the default before the auto budget: padded batches of 16 384 tokens, sdpa
    padded auto eager     token budget from free GPU memory (forward.auto_batch_tokens): today's default
    packed flex           one row per batch, position_ids restarting per prompt, flex_attention
    packed flex+compile   the same, fixed row length, MLP blocks and norms compiled
    packed varlen         one row per batch, its segments as offsets to flash attention's varlen kernel (model.varlen)
    packed varlen+compile the same, whole decoder layers compiled with the attention inside
    padded auto+compile   padded, widths bucketed to 16, whole decoder layers compiled
  end to end with the fastest forward configuration above (and today's default, for the ratio):
    encode_texts last, encode_suite + DB last, encode_suite + DB max / top (--n-pool prompts); the same with the
    previous code for comparison: tokenized in turn, host work in turn, max / top pooling with syncs
  SAE alone: masked-token residuals encoded fp32 / tf32 / bf16; time and top-k set agreement with fp32
  SAE in bf16 end to end: encode_suite + DB max / top with `sae_precision: bf16`, and their pooled sets against
    TF32's on the same batches (bench/arms_fidelity.py), beside the noise floors of max and top
  noise floor: --n-noise prompts batched vs one at a time (jobs.noise.measure_noise_floor), for today's default,
    the fastest configuration and the deterministic mode; the deterministic mode's throughput (its cost)
  model-card baseline (--baseline-n prompts, run first, eager): tokens/s; then the per-prompt feature-set
    Jaccard of ours against it (fastest configuration, today's default, deterministic)

Compilation and first-call costs are paid in an untimed warm-up pass per arm and reported beside it.

    python bench/encode_arms.py --out DIR                 # CUDA (bench/gpu_arms.sh: issue 14's arms in one device call)
    python bench/encode_arms.py --device cpu --tiny       # dry run on CPU (figures mean nothing)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms_fidelity import FidelityArms  # noqa: E402
from encode_common import run_encode_suite  # noqa: E402
from encode_gpu import forward_flops, peak_tflops, synthetic_prompts  # noqa: E402
from qscope_eval.data.suite import BenchmarkSpec, EncodeSpec, ModelSpec, SaeSpec, Suite  # noqa: E402
from qscope_eval.jobs import pipeline  # noqa: E402
from qscope_eval.model import forward, text_groups, toy  # noqa: E402
from qscope_eval.model.batching import padded_tokens  # noqa: E402
from qscope_eval.model.encode import EncoderHandle  # noqa: E402
from qscope_eval.model.encoders import Runtime  # noqa: E402
from qscope_eval.model.feature_stats import FeatureStats  # noqa: E402
from qscope_eval.model.sae import Sae, SaeConfig  # noqa: E402


class Bench(FidelityArms):
    """Shared state of one run: model, SAE, prompts, the results file and the time budget."""

    def __init__(self, args):
        self.args = args
        self.t_start = time.perf_counter()
        self.device = torch.device(args.device)
        if args.tiny:
            self.config = toy.qwen3_1p7b_config(hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                                                num_attention_heads=4, num_key_value_heads=2, head_dim=16)
            self.layer, d_sae, k, lo, hi = 2, 1024, 16, 16, 128
        else:
            self.config = toy.qwen3_1p7b_config()
            self.layer, d_sae, k, lo, hi = 14, 32768, 50, 128, 1024
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.bb = toy.random_qwen3(self.config, device=str(self.device), dtype=dtype, seed=0)
        g = torch.Generator().manual_seed(0)
        W = torch.randn(d_sae, self.config.hidden_size, generator=g)
        W /= W.norm(dim=1, keepdim=True)
        self.sae = Sae(SaeConfig(self.config.hidden_size, d_sae, k, self.layer), W,
                       torch.randn(d_sae, generator=g) * 0.05, W.T.contiguous(),
                       torch.zeros(self.config.hidden_size)).to(self.device)
        mean = np.random.default_rng(0).uniform(0.01, 1.0, d_sae)
        self.stats = FeatureStats(mean=mean, freq=np.full(d_sae, 0.01), n_tokens=1)
        self.rows = synthetic_prompts(self.bb.tokenizer, args.n, lo, hi, args.seed)
        self.texts = self.rows["text"].tolist()
        self.tok = self.bb.tokenize(self.texts)
        self.lengths = self.tok.lengths
        self.peak, self.peak_src = peak_tflops(self.device, args.peak_tflops)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: list[dict] = []
        self.tmp = tempfile.TemporaryDirectory(prefix="encode_arms.")

    # ---- helpers

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t_start)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def flops(self, lengths) -> float:
        return forward_flops(self.bb.model, self.bb.layers_module, self.layer, np.asarray(lengths))

    def save(self, row: dict) -> None:
        """Keep a result row and append it to $OUT/arms.jsonl at once (a run cut short keeps what it measured)."""
        self.results.append(row)
        with open(self.out / "arms.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def record(self, arm: str, seconds: float, lengths, **extra) -> dict:
        tokens = int(np.sum(lengths))
        share = 100 * self.flops(lengths) / seconds / 1e12 / self.peak if self.peak else None
        row = {"arm": arm, "prompts": int(len(lengths)), "tokens": tokens, "seconds": round(seconds, 3),
               "tokens_per_s": round(tokens / seconds), "share_of_peak_pct": None if share is None else round(share, 1),
               **extra}
        self.save(row)
        sh = f"{share:5.1f}%" if share is not None else "   n/a"
        more = "  ".join(f"{k}={v}" for k, v in extra.items())
        print(f"{arm:<40}{len(lengths):>6}{tokens:>10,}{seconds:>9.2f}s{tokens / seconds:>11,.0f} tok/s {sh}  {more}",
              flush=True)
        return row

    def suite(self, pooling: str, spec: EncodeSpec) -> Suite:
        return Suite(name="arms", model=ModelSpec(id="random:qwen3", device=str(self.device)), sae=SaeSpec(path="random"),
                     layers=(self.layer,), pooling=pooling, encode=spec,
                     benchmarks=(BenchmarkSpec(name="synthetic", path="synthetic.jsonl", text="text"),))

    def runtime(self, pooling: str) -> Runtime:
        return Runtime(self.bb, [EncoderHandle(f"random|L{self.layer}|{pooling}|sae", self.layer, pooling,
                                                        self.sae, self.stats if pooling == "top" else None)])

    # ---- arms

    def warm_ids(self) -> list:
        """The token ids of 48 prompts spread over the lengths: the untimed warm-up pass of a forward arm."""
        return [self.tok.ids[i] for i in np.argsort(-self.lengths)[:: max(1, len(self.lengths) // 48)]]

    def computed_over_real(self, opts, plan) -> float:
        """Tokens the forward computes for `plan` over the real ones: a padded batch pads to its (bucketed) width,
        a packed row costs its prompts' aligned slots, or the whole budget with fixed_shape."""
        if opts.packing:
            slots = -(-self.lengths // opts.align) * opts.align
            done = sum(max(int(slots[r].sum()), opts.batch_tokens if opts.fixed_shape else 0) for r in plan)
        else:
            done = padded_tokens(self.lengths, plan, opts.bucket)
        return done / self.lengths.sum()

    def forward_arm(self, name: str, spec: EncodeSpec) -> dict:
        opts = forward.options_for(spec, self.bb, [self.layer])
        t0 = time.perf_counter()
        for _ in forward.iter_forward(self.bb, [self.layer], lambda r: None, opts, ids=self.warm_ids()):
            pass
        self.sync()
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in forward.iter_forward(self.bb, [self.layer], lambda r: None, opts, ids=self.tok.ids):
            pass
        self.sync()
        state = getattr(self.bb.model, "_qscope_compile", None)
        plan = forward._plan(self.lengths, opts)
        padded = round(self.computed_over_real(opts, plan), 3)
        return self.record(f"forward: {name}", time.perf_counter() - t0, self.lengths, budget=opts.batch_tokens,
                           batches=len(plan), padded_over_real=padded, warmup_s=round(warm, 1), attention=opts.attention,
                           compile_failed=getattr(state, "failed", None) if spec.compile else None,
                           varlen_failed=getattr(self.bb.model, "_qscope_varlen_failed", None) if opts.packing else None)

    def forward_texts_arm(self, name: str, spec: EncodeSpec) -> dict:
        """The forward from texts (tokenization in the background thread), no SAE: what overlapping buys."""
        opts = forward.options_for(spec, self.bb, [self.layer], group=spec.shard_size)
        t0 = time.perf_counter()
        for _ in forward.iter_texts(self.bb, self.texts, [self.layer], lambda r: None, opts):
            pass
        self.sync()
        return self.record(f"forward from texts: {name}", time.perf_counter() - t0, self.lengths)

    def suite_arm(self, name: str, pooling: str, spec: EncodeSpec, n: int) -> dict:
        rows = self.rows.iloc[:n]
        suite, rt = self.suite(pooling, spec), self.runtime(pooling)
        t0 = time.perf_counter()
        run_encode_suite(rt, rows.iloc[: min(32, n)], suite, Path(self.tmp.name) / f"warm{len(self.results)}.duckdb")
        warm = time.perf_counter() - t0
        self.sync()
        t0, phases = time.perf_counter(), {}
        run_encode_suite(rt, rows, suite, Path(self.tmp.name) / f"arm{len(self.results)}.duckdb", phases)
        self.sync()
        # where the time outside the loop went (the gap to encode_texts): the Store's open, encode_suite's
        # prepare, the first batch, the tail after the last batch, the Store's close
        return self.record(f"encode_suite+DB {pooling}: {name}", time.perf_counter() - t0, self.lengths[:n],
                           warmup_s=round(warm, 1), **{f"{k}_s": round(v, 2) for k, v in phases.items() if k != "loop"})

    def texts_arm(self, name: str, pooling: str, spec: EncodeSpec) -> dict:
        suite, rt = self.suite(pooling, spec), self.runtime(pooling)
        ids = np.arange(len(self.texts))
        list(pipeline.encode_texts(rt, ids[:32], self.texts[:32], suite))
        self.sync()
        t0 = time.perf_counter()
        for _ in pipeline.encode_texts(rt, ids, self.texts, suite):
            pass
        self.sync()
        return self.record(f"encode_texts {pooling}: {name}", time.perf_counter() - t0, self.lengths)

    def in_turn(self, step):
        """Run a step with the previous producer: a group's texts tokenized only once the last group's batches are
        queued, and every group after the first `shard_size` large (text_groups.TOKENIZE_AHEAD, GROUP_GROWTH)."""
        with mock.patch.multiple(text_groups, TOKENIZE_AHEAD=False, GROUP_GROWTH=1 << 40):
            return step()

    def host_in_turn(self, step):
        """Run a step with pooling's host half in turn: each batch's pooled arrays copied to the host and made
        PooledBatches before the next batch is queued (model.encode.DEFER_HOST_WORK off)."""
        from qscope_eval.model import encode

        with mock.patch.object(encode, "DEFER_HOST_WORK", False):
            return step()

    def with_syncs(self, step):
        """Run a step with `max`/`top` reduced through torch.unique and boolean indexing, which wait for the GPU
        (model.encode.SYNC_FREE off: what ran before model.pooling's sync-free reduction)."""
        from qscope_eval.model import encode

        with mock.patch.object(encode, "SYNC_FREE", False):
            return step()

    def tokenize_arm(self) -> None:
        """Backbone.tokenize of every prompt: one thread, and the Rust tokenizer on every core."""
        for name, par in (("one thread", False), ("all cores", True)):
            t0 = time.perf_counter()
            with text_groups.parallel_tokenization(par):
                self.bb.tokenize(self.texts)
            self.record(f"tokenize alone: {name}", time.perf_counter() - t0, self.lengths, cores=os.cpu_count())



def run(args) -> int:
    b = Bench(args)
    dev = torch.cuda.get_device_name(b.device) if b.device.type == "cuda" else "cpu"
    print(f"encode_arms: {dev}; torch {torch.__version__}; random Qwen3 ({b.config.num_hidden_layers} layers, d_model "
          f"{b.config.hidden_size}) truncated after layer {b.layer}; SAE d_sae {b.sae.cfg.d_sae} k {b.sae.cfg.k}; "
          f"{len(b.texts)} prompts, {int(b.lengths.sum()):,} tokens; peak "
          f"{f'{b.peak:g} TFLOP/s ({b.peak_src})' if b.peak else b.peak_src}", flush=True)
    today = EncodeSpec(batch_tokens=16384)  # the default before the auto budget (EncodeSpec() is auto now)
    b.base_sets = {}
    try:
        b.baseline_arm(today, min(args.baseline_n, len(b.texts)))
    except Exception:  # noqa: BLE001
        print(f"FAILED: baseline\n{traceback.format_exc(limit=4)}", flush=True)
    auto = dataclasses.replace(today, batch_tokens=0)
    configs = {  # names: CONFIGS
        "padded 16k eager": today,
        "padded auto eager": auto,
        "packed flex 64k": dataclasses.replace(today, batch_tokens=65536 if not args.tiny else 2048, packing=True),
        "packed flex auto+compile": dataclasses.replace(auto, packing=True, compile=True),
        "padded auto+compile": dataclasses.replace(auto, compile=True),
        "packed varlen auto eager": dataclasses.replace(auto, packing=True),
        "packed varlen auto+compile": dataclasses.replace(auto, packing=True, compile=True),
    }
    assert list(configs) == list(CONFIGS)
    try:
        b.tokenize_arm()
    except Exception:  # noqa: BLE001
        print(f"FAILED: tokenize\n{traceback.format_exc(limit=4)}", flush=True)
    fwd = {}
    for name, spec in configs.items():
        if args.only and name not in args.only:
            continue
        if b.left() < 60:
            print(f"skipped forward: {name} (time budget)", flush=True)
            continue
        try:
            with attention_for(name):
                fwd[name] = b.forward_arm(name, spec)
        except Exception:  # noqa: BLE001 - one arm failing must not lose the others
            print(f"FAILED forward: {name}\n{traceback.format_exc(limit=4)}", flush=True)
    best_name = max(fwd, key=lambda k: fwd[k]["tokens_per_s"]) if fwd else "padded 16k eager"
    if args.best:
        best_name = args.best
    best = configs[best_name]
    print(f"fastest forward configuration: {best_name}", flush=True)
    n_pool = min(args.n_pool, len(b.texts))
    # deterministic: aligned fixed-shape rows of 16k tokens (a prompt alone still fills a whole row)
    det = dataclasses.replace(best, deterministic=True, batch_tokens=16384 if not args.tiny else 1024)
    # noise floors at today's 16k budget: "alone" then means a 16k row, not a whole auto-sized one
    noise_best = dataclasses.replace(best, batch_tokens=16384 if not args.tiny else 1024)
    bf16 = dataclasses.replace(best, sae_precision="bf16")  # not a default: what bf16 would buy, and cost in sets
    steps = [
        ("forward from texts", lambda: b.forward_texts_arm(best_name, best)),
        ("suite last best", lambda: b.suite_arm(best_name, "last", best, len(b.texts))),
        ("suite last today", lambda: b.suite_arm("padded 16k eager (today)", "last", today, len(b.texts))),
        ("suite last default", lambda: b.suite_arm("padded auto eager (default)", "last", auto, len(b.texts))),
        ("suite max", lambda: b.suite_arm(best_name + ", tf32 SAE", "max", best, n_pool)),
        ("suite top", lambda: b.suite_arm(best_name + ", tf32 SAE", "top", best, n_pool)),
        ("noise today", lambda: b.noise_arm("padded 16k eager (today)", "last", today, args.n_noise)),
        ("noise deterministic", lambda: b.noise_arm("deterministic", "last", det, args.n_noise)),
        ("deterministic cost", lambda: b.suite_arm("deterministic", "last", det, min(500, len(b.texts)))),
        ("best on the same prompts", lambda: b.suite_arm(best_name, "last", best, min(500, len(b.texts)))),
        ("sae", lambda: b.sae_arm(args.sae_tokens)),
        ("noise best", lambda: b.noise_arm(best_name + " at 16k", "last", noise_best, args.n_noise)),
        ("noise max best", lambda: b.noise_arm(best_name + " at 16k, tf32 SAE", "max", noise_best, args.n_noise)),
        ("vs baseline best", lambda: b.versus_baseline(best_name, best)),
        ("vs baseline today", lambda: b.versus_baseline("padded 16k eager (today)", today)),
        ("vs baseline deterministic", lambda: b.versus_baseline("deterministic", det)),
        ("encode_texts last", lambda: b.texts_arm(best_name, "last", best)),
        ("encode_texts last in turn", lambda: b.in_turn(lambda: b.texts_arm(best_name + ", tokenized in turn", "last",
                                                                             best))),
        ("suite last best in turn", lambda: b.in_turn(lambda: b.suite_arm(best_name + ", tokenized in turn", "last",
                                                                           best, len(b.texts)))),
        ("encode_texts last host in turn", lambda: b.host_in_turn(lambda: b.texts_arm(
            best_name + ", host work in turn", "last", best))),
        ("suite last best host in turn", lambda: b.host_in_turn(lambda: b.suite_arm(
            best_name + ", host work in turn", "last", best, len(b.texts)))),
        ("suite max host in turn", lambda: b.host_in_turn(lambda: b.suite_arm(
            best_name + ", tf32 SAE, host work in turn", "max", best, n_pool))),
        ("suite top host in turn", lambda: b.host_in_turn(lambda: b.suite_arm(
            best_name + ", tf32 SAE, host work in turn", "top", best, n_pool))),
        ("suite max with syncs", lambda: b.with_syncs(lambda: b.suite_arm(
            best_name + ", tf32 SAE, pooling with syncs", "max", best, n_pool))),
        ("suite top with syncs", lambda: b.with_syncs(lambda: b.suite_arm(
            best_name + ", tf32 SAE, pooling with syncs", "top", best, n_pool))),
        ("suite max bf16 SAE", lambda: b.suite_arm(best_name + ", bf16 SAE", "max", bf16, n_pool)),
        ("suite top bf16 SAE", lambda: b.suite_arm(best_name + ", bf16 SAE", "top", bf16, n_pool)),
        ("noise top best", lambda: b.noise_arm(best_name + " at 16k, tf32 SAE", "top", noise_best, args.n_noise)),
        ("max bf16 vs tf32", lambda: b.precision_arm("max", best, args.n_noise)),
        ("top bf16 vs tf32", lambda: b.precision_arm("top", best, args.n_noise)),
    ]
    assert [n for n, _ in steps] == list(STEPS), "STEPS lists the steps, in order"
    for name, step in steps:
        if args.steps is not None and name not in args.steps:
            continue
        if b.left() < 20:
            print(f"skipped: {name} (time budget)", flush=True)
            continue
        try:
            with attention_for(best_name):
                step()
        except Exception:  # noqa: BLE001
            print(f"FAILED: {name}\n{traceback.format_exc(limit=4)}", flush=True)
    for line in targets(b.results):
        print(line, flush=True)
    print(f"total {time.perf_counter() - b.t_start:.0f} s; results in {b.out / 'arms.jsonl'}", flush=True)
    b.tmp.cleanup()
    return 0


TARGETS = (("forward alone", "forward: ", 55.0), ("encode_suite + DB, last", "encode_suite+DB last: ", 45.0),
           ("encode_suite + DB, max", "encode_suite+DB max: ", 35.0), ("encode_suite + DB, top", "encode_suite+DB top: ", 35.0))
"""Issue 14's targets: (what, arm-name prefix, share of the bf16 peak in %)."""


NOT_CANDIDATES = ("in turn", "with syncs", "bf16 SAE")
"""Arms that are baselines (the previous code) or not a default (bf16 SAE), so not candidates for a target."""


def targets(rows: list[dict]) -> list[str]:
    """The best measured share of peak per issue-14 target, with the arm that reached it (NOT_CANDIDATES excluded)."""
    out = ["issue 14 targets (best arm of this run):"]
    for what, prefix, goal in TARGETS:
        got = [r for r in rows if r["arm"].startswith(prefix) and r.get("share_of_peak_pct") is not None
               and not any(x in r["arm"] for x in NOT_CANDIDATES)]
        if not got:
            out.append(f"  {what:<26} target {goal:4.1f}%  not measured")
            continue
        best = max(got, key=lambda r: r["share_of_peak_pct"])
        mark = "met" if best["share_of_peak_pct"] >= goal else "missed"
        out.append(f"  {what:<26} target {goal:4.1f}%  best {best['share_of_peak_pct']:5.1f}% ({mark}): {best['arm']}")
    return out


CONFIGS = ("padded 16k eager", "padded auto eager", "packed flex 64k", "packed flex auto+compile", "padded auto+compile",
           "packed varlen auto eager", "packed varlen auto+compile")
"""Forward configurations (--only, --best)."""


def attention_for(config: str):
    """Context: the 'packed flex' configurations keep flex_attention (forward.packed_attention would pick the varlen
    kernel on CUDA); 'packed varlen' ones get it where it runs (on CPU packed rows use sdpa either way)."""
    return mock.patch.object(forward, "PACKED_VARLEN", "flex" not in config)
STEPS = ("forward from texts", "suite last best", "suite last today", "suite last default", "suite max", "suite top",
         "noise today", "noise deterministic", "deterministic cost", "best on the same prompts", "sae", "noise best",
         "noise max best", "vs baseline best", "vs baseline today", "vs baseline deterministic", "encode_texts last",
         "encode_texts last in turn", "suite last best in turn", "encode_texts last host in turn",
         "suite last best host in turn", "suite max host in turn", "suite top host in turn", "suite max with syncs",
         "suite top with syncs", "suite max bf16 SAE", "suite top bf16 SAE", "noise top best", "max bf16 vs tf32",
         "top bf16 vs tf32")
"""End-to-end steps (--steps), in the order they run."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (dry run on CPU)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n-pool", type=int, default=1000, help="prompts for the max/top arms")
    ap.add_argument("--n-noise", type=int, default=64)
    ap.add_argument("--baseline-n", type=int, default=64)
    ap.add_argument("--sae-tokens", type=int, default=262144)
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip the remaining arms after this many seconds")
    ap.add_argument("--only", nargs="*", default=None, help="forward arms to run (names as printed)")
    ap.add_argument("--best", default=None, help="configuration for the end-to-end steps (default: the fastest)")
    ap.add_argument("--steps", nargs="*", default=None, help="end-to-end steps to run (default: all)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--out", default=os.environ.get("OUT") or "out/arms")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for given, known, flag in ((args.only, CONFIGS, "--only"), ([args.best] if args.best else None, CONFIGS, "--best"),
                               (args.steps, STEPS, "--steps")):
        unknown = [x for x in given or () if x not in known]
        if unknown:  # a typo would silently skip the arm on a device whose time is counted
            ap.error(f"{flag}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, known))}")
    if args.tiny:
        args.n, args.n_pool, args.n_noise = min(args.n, 40), min(args.n_pool, 20), min(args.n_noise, 8)
        args.baseline_n, args.sae_tokens = min(args.baseline_n, 4), min(args.sae_tokens, 2048)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
