"""Shared pieces of the encode benchmark (bench/encode_bench.py and its GPU mode, bench/encode_gpu.py).

Measuring: wall and process CPU seconds and peak memory of a block (on CPU the
process's peak RSS, VmHWM reset before each timed segment, with a 5 ms sampler
where it cannot be reset; on CUDA torch.cuda.max_memory_allocated). Running our
production path: pipeline.encode_texts with the results gathered per sample, and
pipeline.encode_suite into a fresh DuckDB file with its loaders pointed at what
is already in memory, plus a reader of what it stored. The arms of a
comparison, timing them group by group, and the results table with the ratios.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from qscope_eval.jobs import pipeline
from qscope_eval.data.suite import EncodeSpec, Suite

MiB = 2**20
_PROC = Path("/proc") / "self"

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


# ---------------------------------------------------------------- ours: the production path


def run_encode_texts(runtime, keys: list[int], texts: list[str], suite: Suite) -> tuple[dict[int, Features], int]:
    """pipeline.encode_texts; results gathered per sample after the loop (the loop is what is timed)."""
    batches = list(pipeline.encode_texts(runtime, np.asarray(keys, dtype=np.int64), texts, suite))
    return collect(batches, runtime.handles[0].key), int(sum(int(b.n_tokens.sum()) for b in batches))


def collect(batches, key: str) -> dict[int, Features]:
    """Encoded batches -> {sample: {feature: (value, n_tokens)}} for the encoder `key`."""
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


def run_encode_suite(runtime, rows, suite: Suite, db: Path, phases: dict | None = None
                     ) -> tuple[Callable[[], dict[int, Features]], int]:
    """pipeline.encode_suite into a fresh DuckDB file; returns a reader of the stored results and the token count.
    `phases` gets the report's phases (EncodeReport.phases) and the Store's open and close, in seconds."""
    from qscope_eval.store import Store

    t0 = time.perf_counter()
    with injected(runtime, rows), Store(db) as store:
        t1 = time.perf_counter()
        report = pipeline.encode_suite(suite, store, progress=False)
        t2 = time.perf_counter()
    if phases is not None:
        phases.update(open=round(t1 - t0, 4), **report.phases, close=round(time.perf_counter() - t2, 4))

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


def suite_arm(runtime, rows, suite: Suite, db: Path, group: list[int]):
    """run_encode_suite on the rows `group` (positions in `rows`); the reader maps sample ids back to them."""
    sub = rows.iloc[group]
    read, tokens = run_encode_suite(runtime, sub, suite, db)
    from qscope_eval.store import sample_id

    back = {sample_id(t): k for k, t in zip(group, sub["text"])}
    return (lambda: {back[s]: v for s, v in read().items()}), tokens


def budget(spec: EncodeSpec, device: torch.device) -> int | str:
    """The token budget encode_texts batches under (batching.batch_tokens caps it off CUDA; 0 on CUDA: auto)."""
    from qscope_eval.model.batching import batch_tokens

    if spec.batch_tokens == 0 and device.type == "cuda":
        return "auto (forward.auto_batch_tokens)"
    return batch_tokens(spec, device)


# ---------------------------------------------------------------- one comparison


@dataclasses.dataclass
class Arm:
    name: str
    runs: list = dataclasses.field(default_factory=list)
    samples: int = 0
    tokens: int = 0
    results: dict = dataclasses.field(default_factory=dict)

    def total(self) -> Measure:
        return fold(self.runs)


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
