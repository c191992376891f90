"""Where the GPU forward's time goes (issue 14): ceilings, the GEMMs at the model's own shapes, a kernel profile
of the compiled padded forward, per-batch times, and the same layers on uniform shapes; one device call.

Same model, prompts and FLOP formula as bench/encode_arms.py (a Qwen3-1.7B-shaped model with random bf16
weights truncated after layer 14; --n synthetic prompts of 128-1024 tokens). It prints, as shares of the
data-sheet bf16 peak:

  ceiling: matmul 8192^3      a large bf16 matrix product (what cuBLAS reaches on this card)
  ceiling: copy               a device-to-device copy, bytes read + written per second
  gemm <name>                 each of a decoder layer's seven products at M = --gemm-m tokens, and their
                              time-weighted sum: the share of peak a forward made of GEMMs alone could reach
  forward <config>            forward.iter_forward over all prompts (after a warm-up pass), as encode_arms does
  profile                     one more pass under torch.profiler: kernel time by kind (GEMM, attention, fused
                              Triton, copies, other), GPU-busy time against wall time, and the CUDA runtime calls
                              that stall the host (malloc/free/synchronize)
  per batch                   each batch alone, synchronised: (prompts, width, padded tokens, ms); a least-squares
                              fit ms = a + b * padded tokens + c * attention term checks forward.BATCH_OVERHEAD_CUDA
  uniform                     the same compiled layers on B x T = 128 x 512 random ids (no padding, one shape)
  floors                      the model-card baseline (64 prompts, one at a time) against itself run with eager
                              attention instead of sdpa, and in fp32: its own noise floor; then ours against it
  overheads                   the compiled forward planned with other per-batch overheads (BATCH_OVERHEAD_*)
  split                       the compiled path's noise floor with a lone prompt run as 16 copies of itself, not 2
  varlen                      packed rows through flash attention's varlen kernel (model.varlen), whole layers
                              compiled: the forward, its attention kernels, its profile (with "profile"), its sets
                              against the model-card baseline and its batch-composition floor (with "floors")
  pooling                     encode_texts with `max` pooling (500 prompts, compiled) profiled with the sync-free
                              reduction (model.pooling) and with the previous one: synchronize calls, GPU busy
  cudnn                       the compiled forward with torch's own sdpa choice (cuDNN on Hopper) instead of
                              forward.COMPILED_SDPA, recompiled, on shapes it has not run

Each forward is a warm-up pass on 48 prompts, then timed passes over all of them: the first meets shapes it has
not run (as every batch of an audit does), the later ones reuse them; both are printed.

    python bench/gpu_probe.py --out DIR               # on the device (bench/gpu_arms.sh runs it after the arms)
    python bench/gpu_probe.py --device cpu --tiny     # dry run on CPU (figures mean nothing)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_arms import Bench  # noqa: E402  (puts the project root on sys.path)
from qscope_eval.analysis import noise  # noqa: E402
from qscope_eval.data.suite import EncodeSpec  # noqa: E402
from qscope_eval.model import forward  # noqa: E402
from qscope_eval.model.batching import build_host_batch  # noqa: E402

GEMM_KINDS = ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90", "sm80")
ATTN_KINDS = ("flash", "fmha", "attention", "efficient")


def timed(fn, sync, reps: int) -> float:
    """Median seconds of fn() over reps runs (after one warm-up)."""
    fn()
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def kind_of(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ATTN_KINDS):
        return "attention"
    if any(k in n for k in GEMM_KINDS):
        return "gemm"
    if n.startswith("triton"):
        return "fused (triton)"
    if "memcpy" in n or "memset" in n or "copy" in n:
        return "copy/memset"
    return "other"


class Probe:
    def __init__(self, b: Bench):
        self.b, self.rows = b, []

    def emit(self, what: str, text: str, **row) -> None:
        self.rows.append({"what": what, **row})
        with open(self.b.out / "probe.jsonl", "a") as f:
            f.write(json.dumps({"what": what, **row}) + "\n")
        print(f"{what:<34} {text}", flush=True)

    def share(self, flops: float, seconds: float) -> str:
        tf = flops / seconds / 1e12
        return f"{tf:7.1f} TFLOP/s" + (f" {100 * tf / self.b.peak:5.1f}% of peak" if self.b.peak else "")

    def ceilings(self) -> None:
        dev, n = self.b.device, (8192 if self.b.device.type == "cuda" else 512)
        a = torch.randn(n, n, device=dev, dtype=self.b.bb.dtype)
        c = torch.randn(n, n, device=dev, dtype=self.b.bb.dtype)
        s = timed(lambda: a @ c, self.b.sync, 10)
        self.emit(f"ceiling: matmul {n}^3", self.share(2 * n**3, s), tflops=2 * n**3 / s / 1e12)
        x = torch.randn(1 << 28 if dev.type == "cuda" else 1 << 20, device=dev, dtype=torch.float32)
        y = torch.empty_like(x)
        s = timed(lambda: y.copy_(x), self.b.sync, 10)
        gbs = 2 * x.numel() * 4 / s / 1e9
        self.emit("ceiling: copy", f"{gbs:,.0f} GB/s (read + write)", gb_per_s=gbs)

    def gemms(self, m: int) -> None:
        """The decoder layer's products at M tokens: their summed time is the GEMM-only bound of the forward."""
        layer = self.b.bb.layers_module[0]
        dev, dt = self.b.device, self.b.bb.dtype
        total_f, total_s = 0.0, 0.0
        for name, mod in [(n, m_) for n, m_ in layer.named_modules() if isinstance(m_, torch.nn.Linear)]:
            x = torch.randn(m, mod.in_features, device=dev, dtype=dt)
            s = timed(lambda: mod(x), self.b.sync, 5)
            f = 2 * m * mod.in_features * mod.out_features
            total_f, total_s = total_f + f, total_s + s
            self.emit(f"gemm {name}", f"{m}x{mod.in_features}x{mod.out_features} {s * 1e3:7.2f} ms {self.share(f, s)}",
                      seconds=s, flops=f)
        self.emit("gemm: one layer's seven", f"{total_s * 1e3:7.2f} ms {self.share(total_f, total_s)}",
                  seconds=total_s, flops=total_f)

    def forward_pass(self, opts, ids=None) -> float:
        t0 = time.perf_counter()
        for _ in forward.iter_forward(self.b.bb, [self.b.layer], lambda r: None, opts, ids=ids or self.b.tok.ids):
            pass
        self.b.sync()
        return time.perf_counter() - t0

    def counters(self) -> dict:
        """Compile and allocator counters (their change over a pass says what the pass paid for)."""
        out = {}
        try:
            from torch._dynamo.utils import counters
            for group, c in counters.items():
                out.update({f"{group}.{k}": int(v) for k, v in c.items() if isinstance(v, (int, float))})
        except Exception:  # noqa: BLE001 - diagnostics only
            pass
        if self.b.device.type == "cuda":
            st = torch.cuda.memory_stats(self.b.device)
            out.update({k: int(st.get(k, 0)) for k in ("num_alloc_retries", "num_device_alloc", "num_device_free",
                                                        "num_sync_all_streams")})
        return out

    def forward(self, name: str, spec: EncodeSpec, passes: int = 3, **over):
        """Warm-up pass, then `passes` timed passes (each printed with what its counters moved); the min is kept."""
        b = self.b
        opts = dataclasses.replace(forward.options_for(spec, b.bb, [b.layer]), **over)
        w = self.forward_pass(opts, b.warm_ids())
        times = []
        for i in range(passes):
            c0 = self.counters()
            times.append(self.forward_pass(opts))
            c1 = self.counters()
            moved = {k: v - c0.get(k, 0) for k, v in c1.items() if v != c0.get(k, 0)}
            print(f"   pass {i + 1}: {times[-1]:.3f}s  {moved}", flush=True)
        s = min(times)
        plan = forward._plan(b.lengths, opts)
        pad = b.computed_over_real(opts, plan)
        self.emit(f"forward {name}", f"{s:6.2f}s {b.lengths.sum() / s:>9,.0f} tok/s {self.share(b.flops(b.lengths), s)}"
                  f"  batches={len(plan)} padded/real={pad:.3f} warm={w:.1f}s passes={[round(t, 2) for t in times]}",
                  seconds=s, passes=times, batches=len(plan), padded_over_real=pad, budget=opts.batch_tokens,
                  overhead=opts.overhead)
        return opts

    def profile(self, opts, label: str = "", run=None) -> None:
        """One pass (the forward over all prompts, or `run()` -> its wall seconds) under torch.profiler: kernel time
        by kind, GPU-busy share, the host's CUDA calls that wait; the top kernels -> profile[_label].txt."""
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.b.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            wall = run() if run is not None else self.forward_pass(opts)
        kinds: dict[str, float] = {}
        spans, host = [], {}
        for e in prof.events():
            dur = e.time_range.elapsed_us() / 1e6
            if e.device_type == torch.autograd.DeviceType.CUDA:
                kinds[kind_of(e.name)] = kinds.get(kind_of(e.name), 0.0) + dur
                spans.append((e.time_range.start, e.time_range.end))
            elif e.name.startswith(("cudaMalloc", "cudaFree", "cudaStreamSynchronize", "cudaDeviceSynchronize",
                                    "cudaHostAlloc", "cudaEventSynchronize", "cudaMemcpy")):
                n, t = host.get(e.name, (0, 0.0))
                host[e.name] = (n + 1, t + dur)
        busy, end = 0.0, -1.0
        for s, e in sorted(spans):  # union of kernel intervals
            if e > end:
                busy += (e - max(s, end)) / 1e6
                end = e
        total = sum(kinds.values()) or 1.0
        tag = f" {label}" if label else ""
        self.emit(f"profile{tag}: wall / GPU busy", f"{wall:6.2f}s / {busy:6.2f}s ({100 * busy / wall:.0f}% busy)",
                  wall=wall, busy=busy)
        for k, t in sorted(kinds.items(), key=lambda kv: -kv[1]):
            self.emit(f"profile{tag}: {k}", f"{t:6.3f}s {100 * t / total:5.1f}% of kernel time", seconds=t)
        for k, (n, t) in sorted(host.items(), key=lambda kv: -kv[1][1]):
            self.emit(f"host{tag}: {k}", f"{n:6d} calls {t:7.3f}s", calls=n, seconds=t)
        top = prof.key_averages().table(sort_by="self_device_time_total" if self.b.device.type == "cuda"
                                        else "self_cpu_time_total", row_limit=25, max_name_column_width=70)
        (self.b.out / (f"profile_{label}.txt" if label else "profile.txt")).write_text(top)

    def pooling(self, spec: EncodeSpec, n: int) -> None:
        """encode_texts with `max` pooling on n prompts, profiled with model.pooling's sync-free reduction and with
        the previous one (model.encode.SYNC_FREE): the host's synchronize calls and the GPU-busy share, each."""
        from qscope_eval.jobs import pipeline
        from qscope_eval.model import encode

        b = self.b
        rt, suite, ids = b.runtime("max"), b.suite("max", spec), np.arange(n)

        def run() -> float:
            t0 = time.perf_counter()
            for _ in pipeline.encode_texts(rt, ids, b.texts[:n], suite):
                pass
            b.sync()
            return time.perf_counter() - t0

        for sync_free in (True, False):
            with mock.patch.object(encode, "SYNC_FREE", sync_free):
                run()  # warm-up: the same shapes, compiled and planned
                self.profile(None, f"max {'sync-free' if sync_free else 'with syncs'}", run)

    def per_batch(self, opts) -> None:
        b = self.b
        rows = []
        for idx in forward._plan(b.lengths, opts):
            host = build_host_batch([b.tok.ids[i] for i in idx], b.bb.pad_id, b.bb.special_ids, opts,
                                    b.device.type == "cuda")
            s = timed(lambda: forward._forward(b.bb, host, [b.layer], opts), b.sync, 2)
            B, T = host.input_ids.shape
            rows.append((B, T, B * T, B * T * T, s))
        a = np.array(rows, dtype=np.float64)
        X = np.c_[np.ones(len(a)), a[:, 2], a[:, 3]]
        coef, *_ = np.linalg.lstsq(X, a[:, 4], rcond=None)
        for B, T, p, _q, s in rows:
            self.emit("per batch", f"B={int(B):4d} T={int(T):5d} padded={int(p):7d} {s * 1e3:8.2f} ms", B=int(B),
                      T=int(T), seconds=s)
        self.emit("per batch fit", f"a={coef[0] * 1e3:.2f} ms  b={coef[1] * 1e6:.3f} us/token  "
                  f"c={coef[2] * 1e9:.3f} ns/(B*T^2); overhead in tokens a/b={coef[0] / coef[1] if coef[1] else 0:,.0f}",
                  a=coef[0], b=coef[1], c=coef[2], sum_s=float(a[:, 4].sum()))

    def attention_ops(self, opts, label: str) -> list[str]:
        """The aten attention ops one batch runs (eager or compiled): which sdpa backend dispatch took."""
        from torch.profiler import ProfilerActivity, profile

        b = self.b
        idx = forward._plan(b.lengths, opts)[0]
        host = build_host_batch([b.tok.ids[i] for i in idx], b.bb.pad_id, b.bb.special_ids, opts,
                                b.device.type == "cuda")
        forward._forward(b.bb, host, [b.layer], opts)
        b.sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            forward._forward(b.bb, host, [b.layer], opts)
            b.sync()
        ops = sorted({e.name for e in prof.events() if e.name.startswith("aten::") and "attention" in e.name})
        self.emit(f"attention ops: {label}", ", ".join(ops) or "(none)", ops=ops)
        return ops

    def floor(self, label: str, a: dict, b_: dict) -> float:
        nf = noise.compare_sets(a, b_)
        self.emit(f"floor: {label}", f"mean Jaccard {nf.mean_jaccard:.4f}, min {nf.min_jaccard:.3f}, "
                  f"{nf.share_differ:.0%} of sets differ", **nf.to_dict())
        return nf.mean_jaccard

    def baseline_floors(self, n: int) -> None:
        """The model-card baseline against itself under equally valid executions of the same procedure.

        kernel: transformers' eager attention instead of sdpa (the model card names neither); precision:
        the same model in fp32. A faster path whose sets are as close to the baseline as these is within
        the baseline's own noise floor."""
        b = self.b
        b.baseline_arm(EncodeSpec(batch_tokens=16384), n)
        keys, texts = list(range(n)), b.texts[:n]
        with forward.attention_implementation(b.bb.model, "eager"):
            alt = b.fired_sets(b.base.run(keys, texts)[0])
        self.floor("baseline sdpa vs baseline eager attention", b.base_sets, alt)
        params = list(b.bb.model.parameters())  # parameters only: buffers such as rotary inv_freq are fp32 already
        for prm in params:
            prm.data = prm.data.float()
        try:
            fp32 = b.fired_sets(b.base.run(keys, texts)[0])
        finally:
            for prm in params:
                prm.data = prm.data.to(b.bb.dtype)  # bf16 -> fp32 -> bf16 is exact
        self.floor("baseline bf16 vs baseline fp32", b.base_sets, fp32)

    def uniform(self, opts, B: int, T: int) -> None:
        b = self.b
        g = np.random.default_rng(0)
        ids = [g.integers(1000, 100000, T) for _ in range(B)]
        opts1 = dataclasses.replace(opts, batch_tokens=B * T, max_batch=B)
        host = build_host_batch(ids, b.bb.pad_id, b.bb.special_ids, opts1, b.device.type == "cuda")
        s = timed(lambda: forward._forward(b.bb, host, [b.layer], opts1), b.sync, 5)
        self.emit(f"uniform {B}x{T}", f"{s * 1e3:7.1f} ms {B * T / s:>9,.0f} tok/s {self.share(b.flops([T] * B), s)}",
                  seconds=s)


SECTIONS = ("ceilings", "gemms", "floors", "eager", "compiled", "profile", "per batch", "uniform", "overheads",
            "compiled fidelity", "split", "varlen", "pooling", "cudnn")
"""What the probe can measure (--sections), in the order it runs."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n-fidelity", type=int, default=64, help="prompts for the baseline floors and comparisons")
    ap.add_argument("--gemm-m", type=int, default=65536)
    ap.add_argument("--overheads", type=int, nargs="*", default=[2048, 1024, 512])
    ap.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--out", default="out/probe")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.tiny:
        args.n, args.gemm_m, args.n_fidelity = min(args.n, 40), min(args.gemm_m, 1024), min(args.n_fidelity, 6)
    args.budget_s = 1e9
    b = Bench(args)
    p = Probe(b)
    dev = torch.cuda.get_device_name(b.device) if b.device.type == "cuda" else "cpu"
    print(f"gpu_probe: {dev}; torch {torch.__version__}; PYTORCH_CUDA_ALLOC_CONF="
          f"{os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')!r}; {len(b.texts)} prompts, {int(b.lengths.sum()):,} tokens",
          flush=True)
    on = set(args.sections)
    auto = EncodeSpec(batch_tokens=0)
    comp = dataclasses.replace(auto, compile=True)
    comp16 = dataclasses.replace(comp, batch_tokens=16384 if not args.tiny else 1024)
    n_fid = min(args.n_fidelity, len(b.texts))
    if "ceilings" in on:
        p.ceilings()
    if "gemms" in on:
        p.gemms(args.gemm_m)
    if "floors" in on:
        p.baseline_floors(n_fid)
    if "eager" in on:
        opts = p.forward("padded auto eager", auto, passes=2)
        p.attention_ops(opts, "eager")
        if "floors" in on:
            b.versus_baseline("eager at 16k", EncodeSpec(batch_tokens=16384))
    if {"compiled", "profile", "per batch", "uniform", "overheads", "compiled fidelity"} & on:
        opts = p.forward("padded auto+compile", comp, passes=3)
        p.attention_ops(opts, "compiled")
        if "profile" in on:
            p.profile(opts)
        if "per batch" in on:
            p.per_batch(opts)
        if "uniform" in on:
            p.uniform(opts, *((128, 512) if not args.tiny else (4, 32)))
        if "overheads" in on:
            for ov in args.overheads:
                p.forward(f"padded auto+compile, overhead {ov}", comp, passes=2, overhead=ov)
        if "compiled fidelity" in on and "floors" in on:
            b.versus_baseline("compile", comp)
            b.noise_arm("compile at 16k", "last", comp16, n_fid)
        if "split" in on:
            # flash splits the keys of a small grid (few prompts x heads x query blocks) across blocks, a reduction
            # order a full batch does not use: a lone prompt run as 16 copies fills the grid like a batch does
            with mock.patch.object(forward, "LONE_PROMPT_COPIES", 16):
                b.noise_arm("compile at 16k, a lone prompt as 16 copies", "last", comp16, n_fid)
    if "varlen" in on:
        packed = dataclasses.replace(comp, packing=True)
        with mock.patch.object(forward, "PACKED_VARLEN", True):
            opts = p.forward("packed varlen auto+compile", packed, passes=3)
            p.attention_ops(opts, f"packed, attention {opts.attention or 'flex/sdpa (varlen does not run here)'}")
            if "profile" in on:
                p.profile(opts, "varlen")
            if "floors" in on:
                b.versus_baseline("packed varlen compile", packed)
                b.noise_arm("packed varlen compile at 16k", "last",
                            dataclasses.replace(packed, batch_tokens=comp16.batch_tokens), n_fid)
    if "pooling" in on:
        p.pooling(comp, min(500, len(b.texts)))
    if "cudnn" in on and b.device.type == "cuda":
        # the compiled path with torch's own sdpa choice (cuDNN on Hopper): recompiled, on shapes it has not seen
        forward.uncompile(b.bb)
        torch._dynamo.reset()
        opts = p.forward("padded auto+compile, torch's sdpa choice", comp, passes=2, sdpa_backends=None)
        p.attention_ops(opts, "compiled, torch's sdpa choice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
