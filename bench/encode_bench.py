"""Encode throughput: the Qwen-Scope model-card procedure against our production path.

Both encode the same prompts in one run and must give the same per-sample
feature sets; the script prints samples/s, tokens/s, peak memory, the ratio and
the identity check.

Baseline (the procedure of the Qwen-Scope model cards): one prompt at a time,
tokenizer(text) -> a full forward of the model (Qwen: AutoModelForCausalLM, LM
head included; the demo's MiniLM encoder has no LM head, so its full forward is
AutoModel: all 6 layers and the pooler), the residual read by a forward hook on
the layer, EVERY position encoded in fp32 by the SAE (pre = x @ W_enc.T + b_enc,
top-k, ReLU), then pooled in Python (lists and dicts over the tokens) with
exactly the pooling semantics of qscope_eval.encode (token mask: no special
tokens, no position 0, no attention sinks; `last`, `max` or `top`).

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

GPU mode (--gpu): needs no download. A Qwen3-1.7B-Base-shaped model built from
its config with random weights (toy.random_qwen3, bf16 on CUDA), a random SAE of
the real Qwen-Scope shape (d_sae 32768, d_model 2048, k 50) at layer 14, and
synthetic prompts of 128-1024 tokens (seeded; words drawn from the Qwen
vocabulary). Throughput does not depend on weight values. Default pooling there
is `last` (the default for causal LMs). It reports tokens/s and the share of the
bf16 dense FLOP bound:

    FLOPs(forward truncated after layer L)
        = sum over prompts (T real tokens, padding not counted) and layers 0..L of
          2 * P_layer * T            (every weight used once per token; P_layer = the
                                      layer's parameter count; embedding gather free)
        + 2 * T^2 * H * d_head      (causal attention: QK^T and AV, each
                                      2 * T^2/2 * d_head per head)
    FLOPs(SAE encode) = 2 * d_model * d_sae per encoded token (`last`: one per prompt)
    share of the bound = FLOPs / seconds / peak dense bf16 FLOP/s of the device
                         (H100 SXM / H200: 989 TFLOP/s; --peak-tflops to set it)

The share is given for the forward alone (Backbone.residuals over the same
batches, prompts tokenized beforehand, no SAE), and for the whole of encode_texts / encode_suite (which also
tokenize, encode with the fp32 SAE and copy results back). The baseline runs
on --baseline-n prompts only (it is slow), and the ratio compares per-sample
rates. `--gpu --device cpu --tiny` runs the same code on a tiny config on CPU
(a dry run of the GPU mode; its figures mean nothing).

    python bench/encode_bench.py                        # CPU, demo, top pooling
    python bench/encode_bench.py --pooling last         # or max
    python bench/encode_bench.py --gpu                  # GPU mode (CUDA)
    python bench/encode_bench.py --gpu --device cpu --tiny   # dry run of the GPU mode
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qscope_eval import pipeline  # noqa: E402
from qscope_eval.backbone import plan_batches  # noqa: E402
from qscope_eval.sae import FeatureStats, Sae, SaeConfig  # noqa: E402
from qscope_eval.suite import BenchmarkSpec, EncodeSpec, ModelSpec, SaeSpec, Suite  # noqa: E402

MiB = 2**20
_PROC = Path("/proc") / "self"
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s. First match wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4),
    ("H100", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 125.0), ("L4", 121.0),
)

# sample -> {feature: (value, n_tokens)}
Features = dict[int, tuple[float, int]]


# ---------------------------------------------------------------- measuring


class Measure(NamedTuple):
    wall: float
    cpu: float
    peak_mib: float
    """Peak process RSS (CPU) or peak allocated CUDA memory during the method, MiB."""
    rise_mib: float
    """Peak minus the same quantity at the method's start, MiB."""


def _rss_mib() -> float:
    with open(_PROC / "statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def _hwm_mib() -> float | None:
    try:
        with open(_PROC / "status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0)."""
    try:
        with open(_PROC / "clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    """Fallback peak-RSS meter where VmHWM cannot be reset: sample every 5 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = _rss_mib(), threading.Event()

    def run(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, _rss_mib())


@contextlib.contextmanager
def measure(device: torch.device, out: list):
    """Time the block; append a Measure to `out`."""
    cuda = device.type == "cuda"
    sampler = None
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_mem = torch.cuda.memory_allocated(device) / MiB
    else:
        start_mem = _rss_mib()
        if not _reset_hwm() or _hwm_mib() is None:
            sampler = _Sampler()
            sampler.start()
    c0, w0 = time.process_time(), time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / MiB
    elif sampler is not None:
        sampler.stop.set()
        sampler.join()
        peak = max(sampler.peak, _rss_mib())
    else:
        peak = _hwm_mib()
    out.append(Measure(wall, cpu, peak, peak - start_mem))


# ---------------------------------------------------------------- the baseline: the model-card procedure


class ModelCardBaseline:
    """One prompt at a time: full forward, hook on the layer, SAE on every position in fp32, pooling in Python."""

    def __init__(self, full_model: torch.nn.Module, tokenizer, layer_module: torch.nn.Module, sae: Sae,
                 pooling: str, spec: EncodeSpec, max_length: int, ref_mean: np.ndarray | None = None, m: int = 32):
        self.model, self.tokenizer, self.layer_module = full_model, tokenizer, layer_module
        self.device = next(full_model.parameters()).device
        # fp32 SAE weights on the model's device, as the model card loads them
        self.W_enc, self.b_enc = sae.W_enc.float(), sae.b_enc.float()
        self.k, self.pooling, self.spec, self.max_length, self.m = sae.cfg.k, pooling, spec, max_length, m
        self.ref_mean = ref_mean.tolist() if ref_mean is not None else None
        tok = tokenizer
        self.special = {int(i) for i in (tok.all_special_ids or []) if i is not None}
        if tok.pad_token_id is not None:
            self.special.add(int(tok.pad_token_id))
        self.captured: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def hooked(self):
        def hook(module, args, output):
            self.captured["resid"] = output[0] if isinstance(output, (tuple, list)) else output

        handle = self.layer_module.register_forward_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def encode(self, text: str) -> tuple[Features, int]:
        """Pooled features of one prompt and its token count."""
        inputs = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_length)
        inputs = {name: t.to(self.device) for name, t in inputs.items()}
        with torch.no_grad():
            self.model(**inputs)  # every layer, LM head / pooler included
            x = self.captured.pop("resid")[0].float()  # [T, d_model], fp32
            pre = x @ self.W_enc.T + self.b_enc  # [T, d_sae]: every position
            top = pre.topk(self.k, dim=-1)
            values, indices = top.values.relu().tolist(), top.indices.tolist()
            norms = x.norm(dim=-1).tolist()
        ids = inputs["input_ids"][0].tolist()
        return self.pool(ids, values, indices, norms), len(ids)

    def kept(self, ids: list[int], norms: list[float]) -> list[int]:
        """Positions the pooling reads: `last`: the last non-special token; `max`/`top`: the token mask."""
        plain = [t for t, i in enumerate(ids) if i not in self.special]  # not special (no padding here)
        if self.pooling == "last":
            return [plain[-1] if plain else len(ids) - 1]
        # median_low = torch.median's "lower of the two middle values"
        median = statistics.median_low([norms[t] for t in plain]) if plain else math.nan
        return [t for t in plain
                if not (self.spec.exclude_first and t == 0) and not norms[t] > self.spec.sink_factor * median]

    def pool(self, ids: list[int], values: list[list[float]], indices: list[list[int]], norms: list[float],
             cut: bool = True) -> Features:
        """The pooling of qscope_eval.encode, written as plain Python over tokens."""
        keep = self.kept(ids, norms)
        if self.pooling == "last":
            t = keep[0]
            return {f: (v, 1) for f, v in zip(indices[t], values[t]) if v > 0}
        acc: dict[int, float] = {}
        count: dict[int, int] = {}
        for t in keep:
            for f, v in zip(indices[t], values[t]):
                if v > 0:
                    if self.pooling == "max":
                        acc[f] = max(acc.get(f, 0.0), v)
                    else:
                        acc[f] = acc.get(f, 0.0) + v
                    count[f] = count.get(f, 0) + 1
        if self.pooling == "max":
            return {f: (v, count[f]) for f, v in acc.items()}
        # top: mean z over the kept tokens / reference mean; the m best, ties to the lower id
        score = {f: s / len(keep) / self.ref_mean[f] for f, s in acc.items()}
        best = sorted(score, key=lambda f: (-score[f], f))[: self.m if cut else None]
        return {f: (score[f], count[f]) for f in best if score[f] > 0}

    def ties(self, text: str, features: set[int], tol: float) -> dict[int, str]:
        """Which of `features` sit on a decision boundary of this prompt, where rounding noise of the order
        of `tol` (a batched vs a one-prompt forward) may flip them: at a pooled token, the feature is k-th
        or (k+1)-th with the two within tol; or it is in the top-k with a pre-activation within tol of 0
        (ReLU); or (`top`) its score is within tol of the m-th best. Not timed: run after the fact."""
        inputs = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_length)
        inputs = {name: t.to(self.device) for name, t in inputs.items()}
        with self.hooked(), torch.no_grad():
            self.model(**inputs)
            x = self.captured.pop("resid")[0].float()
            pre = x @ self.W_enc.T + self.b_enc
            top = pre.topk(self.k + 1, dim=-1)
            vals, idx, norms = top.values.tolist(), top.indices.tolist(), x.norm(dim=-1).tolist()
        ids = inputs["input_ids"][0].tolist()
        why: dict[int, str] = {}
        for t in self.kept(ids, norms):
            vk, vk1 = vals[t][self.k - 1], vals[t][self.k]
            scale = abs(vals[t][0]) or 1.0  # the token's largest pre-activation
            for f in features - set(why):
                if f in idx[t][self.k - 1:] and vk - vk1 <= tol * scale:
                    why[f] = f"k-th/(k+1)-th tie at token {t} (gap {(vk - vk1) / scale:.0e} of the top value)"
                elif f in idx[t][: self.k] and abs(vals[t][idx[t].index(f)]) <= tol * scale:
                    why[f] = f"pre-activation within {tol:g} of 0 at token {t}"
        if self.pooling == "top" and set(why) != features:
            z = [[max(v, 0.0) for v in row[: self.k]] for row in vals]
            scores = self.pool(ids, z, [row[: self.k] for row in idx], norms, cut=False)
            ranked = sorted(scores.values(), key=lambda vn: -vn[0])
            if len(ranked) > self.m:
                s_m, s_m1 = ranked[self.m - 1][0], ranked[self.m][0]
                for f in features - set(why):
                    if s_m - s_m1 <= tol * s_m and f in scores and s_m1 * (1 - tol) <= scores[f][0] <= s_m * (1 + tol):
                        why[f] = f"the m-th and (m+1)-th scores within {tol:g}"
        return why

    def run(self, keys: list[int], texts: list[str]) -> tuple[dict[int, Features], int]:
        out, n_tokens = {}, 0
        with self.hooked():
            for key, text in zip(keys, texts):
                out[key], n = self.encode(text)
                n_tokens += n
        return out, n_tokens


# ---------------------------------------------------------------- ours: the production path


def run_encode_texts(runtime, keys: list[int], texts: list[str], suite: Suite) -> tuple[dict[int, Features], int]:
    """pipeline.encode_texts; results gathered per sample after the loop (the loop is what is timed)."""
    batches = list(pipeline.encode_texts(runtime, np.asarray(keys, dtype=np.int64), texts, suite))
    return _collect(batches, runtime.handles[0].key), int(sum(int(b.n_tokens.sum()) for b in batches))


def _collect(batches, key: str) -> dict[int, Features]:
    out: dict[int, Features] = {}
    for b in batches:
        for i in b.ids.tolist():
            out.setdefault(int(i), {})
        pb = b.pooled[key]
        for r, f, v, n in zip(pb.row.tolist(), pb.feature.tolist(), pb.value.tolist(), pb.n_tokens.tolist()):
            out[int(b.ids[r])][f] = (v, n)
    return out


@contextlib.contextmanager
def injected(runtime, rows):
    """Point encode_suite's loaders at what is already in memory (loading is not what we time)."""
    saved = pipeline.load_rows, pipeline.load_runtime
    pipeline.load_rows = lambda suite: rows
    pipeline.load_runtime = lambda suite: runtime
    try:
        yield
    finally:
        pipeline.load_rows, pipeline.load_runtime = saved


def run_encode_suite(runtime, rows, suite: Suite, db: Path) -> tuple[Callable[[], dict[int, Features]], int]:
    """pipeline.encode_suite into a fresh DuckDB file; returns a reader of the stored results and the token count."""
    from qscope_eval.store import Store

    with injected(runtime, rows), Store(db) as store:
        report = pipeline.encode_suite(suite, store, progress=False)

    def read() -> dict[int, Features]:
        import duckdb

        key = runtime.handles[0].key
        with duckdb.connect(str(db), read_only=True) as con:
            got = con.execute(
                "SELECT a.sample_id, a.feature, a.value, a.n_tokens FROM activations a JOIN encoders e USING (encoder_id) "
                "WHERE e.key = ?", [key]).fetchall()
            done = con.execute("SELECT sample_id FROM encoded JOIN encoders e USING (encoder_id) WHERE e.key = ?",
                               [key]).fetchall()
        out: dict[int, Features] = {int(s): {} for (s,) in done}
        for s, f, v, n in got:
            out[int(s)][int(f)] = (float(v), int(n))
        return out

    return read, report.n_tokens


# ---------------------------------------------------------------- identity


@dataclasses.dataclass
class Identity:
    n_samples: int = 0
    n_features: int = 0
    max_rel_err: float = 0.0
    """Over the features on which both agree on membership and n_tokens."""
    missing: list = dataclasses.field(default_factory=list)
    suspects: dict = dataclasses.field(default_factory=dict)
    """sample -> features whose membership, n_tokens or value (beyond rtol) differ."""
    explained: dict = dataclasses.field(default_factory=dict)
    """sample -> {feature: why}: differences that sit on a top-k / ReLU / rank-m boundary."""
    jaccard: list = dataclasses.field(default_factory=list)

    @property
    def unexplained(self) -> dict:
        return {k: fs - set(self.explained.get(k, {})) for k, fs in self.suspects.items()
                if fs - set(self.explained.get(k, {}))}

    def ok(self) -> bool:
        return not self.missing and not self.unexplained


def compare(base: dict[int, Features], ours: dict[int, Features], rtol: float) -> Identity:
    idt = Identity()
    for key, want in base.items():
        got = ours.get(key)
        if got is None:
            idt.missing.append(key)
            continue
        idt.n_samples += 1
        a, b = set(want), set(got)
        idt.jaccard.append(len(a & b) / len(a | b) if a | b else 1.0)
        suspects = a ^ b
        for f in a & b:
            (v0, n0), (v1, n1) = want[f], got[f]
            idt.n_features += 1
            err = abs(v1 - v0) / max(abs(v0), 1e-30)
            if n0 != n1 or err > rtol:
                suspects.add(f)
            else:
                idt.max_rel_err = max(idt.max_rel_err, err)
        if suspects:
            idt.suspects[key] = suspects
    return idt


def explain(idt: Identity, baseline: ModelCardBaseline, texts: dict[int, str], tol: float) -> Identity:
    """Diagnose each differing sample with the baseline (untimed): which differences are boundary ties."""
    for key, fs in idt.suspects.items():
        idt.explained[key] = baseline.ties(texts[key], fs, tol)
    return idt


def identity_line(idt: Identity, rtol: float, what: str, strict: bool = True) -> str:
    head = f"{idt.n_samples} samples, {idt.n_features} features, max rel err {idt.max_rel_err:.1e} (rtol {rtol:g})"
    ties = {k: v for k, v in idt.explained.items() if v}
    tie_note = ""
    if ties:
        key, why = next(iter(ties.items()))
        f, reason = next(iter(why.items()))
        n_f = sum(len(v) for v in ties.values())
        tie_note = (f"; {len(ties)} sample(s) differ only in {n_f} feature(s) sitting on a top-k boundary, where a "
                    f"batched and a one-prompt forward may round either way (e.g. sample {key}, feature {f}: {reason})")
    if idt.ok():
        return f"identity {what}: OK ({head}{tie_note})"
    parts = []
    if idt.missing:
        parts.append(f"{len(idt.missing)} samples missing")
    bad = idt.unexplained
    if bad:
        key, fs = next(iter(bad.items()))
        parts.append(f"{len(bad)} samples differ beyond rounding (first: sample {key}, features {sorted(fs)[:8]})")
    j = idt.jaccard
    jac = f"; Jaccard of the sets mean {np.mean(j):.4f}, min {np.min(j):.4f}" if j else ""
    return f"identity {what}: {'FAIL' if strict else 'APPROX'} ({head}; {'; '.join(parts)}{jac}{tie_note})"


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


def budget(spec: EncodeSpec, device: torch.device) -> int:
    """The token budget encode_texts batches under (backbone.batch_tokens caps it off CUDA)."""
    from qscope_eval.backbone import batch_tokens

    return batch_tokens(spec, device)


# ---------------------------------------------------------------- prompts


def demo_prompts(suite: Suite, n: int, seed: int):
    """n distinct real prompts drawn from all the demo's benchmarks (rows frame: benchmark, position, text)."""
    from qscope_eval.sources import load_suite_rows

    rows = load_suite_rows(suite)
    rows = rows.iloc[np.random.default_rng(seed).permutation(len(rows))]
    rows = rows.drop_duplicates("text").head(n).reset_index(drop=True)
    return rows


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


# ---------------------------------------------------------------- one comparison


@dataclasses.dataclass
class Arm:
    name: str
    runs: list = dataclasses.field(default_factory=list)
    samples: int = 0
    tokens: int = 0
    results: dict = dataclasses.field(default_factory=dict)

    def total(self) -> Measure:
        r = self.runs
        return Measure(sum(m.wall for m in r), sum(m.cpu for m in r), max(m.peak_mib for m in r),
                       max(m.rise_mib for m in r))


def run_rounds(arms: dict[str, Callable], groups: list[list[int]], device: torch.device) -> dict[str, Arm]:
    """Every group through every arm, the order rotating from group to group."""
    out = {name: Arm(name) for name in arms}
    names = list(arms)
    for g, group in enumerate(groups):
        order = names[g % len(names):] + names[: g % len(names)]
        for name in order:
            arm = out[name]
            with measure(device, arm.runs):
                result = arms[name](group)
            finish, n_tokens = result
            arm.results.update(finish() if callable(finish) else finish)
            arm.samples += len(group)
            arm.tokens += n_tokens
    return out


def fold(parts: list[Measure]) -> Measure:
    """Segments of one method within one group -> one Measure (times add up, peaks take the max)."""
    return Measure(sum(m.wall for m in parts), sum(m.cpu for m in parts), max(m.peak_mib for m in parts),
                   max(m.rise_mib for m in parts))


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
    ours.results.update(_collect(batches, runtime.handles[0].key))
    for arm, parts, tokens in ((base, seg_b, tok_b), (ours, seg_o, tok_o)):
        arm.runs.append(fold(parts))
        arm.samples += len(group)
        arm.tokens += tokens


def print_table(arms: dict[str, Arm], base: str, device: torch.device, extra: dict[str, str] | None = None):
    mem = "peak CUDA alloc MiB" if device.type == "cuda" else "peak RSS MiB (rise)"
    print(f"\n{'method':<28}{'samples':>8}{'tokens':>10}{'wall s':>9}{'CPU s':>9}{'samples/s':>11}"
          f"{'tokens/s':>11}  {mem}")
    for arm in arms.values():
        t = arm.total()
        rise = f"{t.peak_mib:,.0f} (+{t.rise_mib:,.0f})"
        print(f"{arm.name:<28}{arm.samples:>8}{arm.tokens:>10}{t.wall:>9.2f}{t.cpu:>9.2f}"
              f"{arm.samples / t.wall:>11.1f}{arm.tokens / t.wall:>11,.0f}  {rise}"
              + (f"  {extra[arm.name]}" if extra and arm.name in extra else ""))
    b = arms[base]
    for arm in arms.values():
        if arm.name == base:
            continue
        if b.samples == arm.samples:
            per_round = [rb.wall / ro.wall for rb, ro in zip(b.runs, arm.runs)]
            tb, to = b.total(), arm.total()
            print(f"ratio {arm.name} / {base}: {tb.wall / to.wall:.2f}x on wall time (per group "
                  f"{min(per_round):.2f}-{max(per_round):.2f}x), {tb.cpu / to.cpu:.2f}x on CPU time")
        else:  # the baseline ran on fewer prompts: compare per-sample rates
            rb = b.samples / b.total().wall
            ro = arm.samples / arm.total().wall
            print(f"ratio {arm.name} / {base}: {ro / rb:.1f}x samples/s ({arm.samples} vs {b.samples} prompts; "
                  f"tokens/s {arm.tokens / arm.total().wall / (b.tokens / b.total().wall):.1f}x)")


# ---------------------------------------------------------------- CPU mode: the demo


def cpu_mode(args) -> int:
    from qscope_eval.suite import load_suite

    demo = load_suite("demo")
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

    def suite_arm(group):
        sub = rows.iloc[group]
        read, tokens = run_encode_suite(runtime, sub, suite, next(dbs))
        from qscope_eval.store import sample_id

        back = {sample_id(t): k for k, t in zip(group, sub["text"])}
        return (lambda: {back[s]: v for s, v in read().items()}), tokens

    BASE, TEXTS, SUITE = "baseline (model card)", "ours: encode_texts", "ours: encode_suite + DB"
    warm = keys[: min(8, len(keys))]  # first-call costs (allocator, kernels) out of the timings
    baseline.run(warm, [by_key[k] for k in warm])
    run_encode_texts(runtime, warm, [by_key[k] for k in warm], suite)
    suite_arm(warm)[0]()
    result = {name: Arm(name) for name in (BASE, TEXTS, SUITE)}

    def suite_step(group):
        parts: list[Measure] = []
        with measure(bb.device, parts):
            read, tokens = suite_arm(group)
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
    from qscope_eval.backbone import load_backbone
    from qscope_eval.encode import compute_feature_stats_many
    from qscope_eval.sae import save_feature_stats, save_sae
    from qscope_eval.sources import load_suite_rows

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


# ---------------------------------------------------------------- GPU mode


def gpu_mode(args) -> int:
    from transformers import Qwen3ForCausalLM

    from qscope_eval import toy
    from qscope_eval.encode import EncoderHandle

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
    runtime = pipeline.Runtime(bb, [handle])
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

    def forward_only(group):
        ids = [all_ids[i] for i in group]
        lens = np.array([len(x) for x in ids])
        for idx in plan_batches(lens, budget(encode, bb.device), encode.max_batch):
            bb.residuals([ids[i] for i in idx], [layer])
        return {}, int(lens.sum())

    def suite_arm(group):
        sub = rows.iloc[group]
        read, tokens = run_encode_suite(runtime, sub, suite, next(dbs))
        from qscope_eval.store import sample_id

        back = {sample_id(t): i for i, t in zip(group, sub["text"])}
        return (lambda: {back[s]: v for s, v in read().items()}), tokens

    ours = {
        "forward only (truncated)": forward_only,
        "ours: encode_texts": lambda g: run_encode_texts(runtime, g, [by_key[i] for i in g], suite),
        "ours: encode_suite + DB": suite_arm,
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
