"""The encode job: suite -> benchmark rows -> model + SAEs -> pooled features in the store.

Order matters for "bad input leaves the database as it was": every benchmark
is loaded, the model and every SAE are loaded and checked against each other
BEFORE the first write. Then encoders are registered, and only the samples
each encoder has not stored yet are encoded. Batches are written by a
background thread while the next batch computes; it stores the benchmarks'
texts and memberships first, while the first batches compute. The writer adds the
lexical encoder's rows (the prompts' words, jobs/lexical_encoder.py) to each batch's
transaction, host-side, so the model never waits for them. Batches finished
within `encode.commit_every_s` of each other are merged into one transaction. A
killed run loses at most those and the batches queued for the writer, and
never writes a sample twice.

The same pieces serve the Prefect flow: `prepare` (registration and the
pending list), `encode_texts` (pure compute: a shard on any worker) and
`write_results` (the single writer).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd

from qscope_eval.analysis.metrics import is_saturated, saturation_warning
from qscope_eval.jobs.lexical_encoder import lexical_infos, warm_up, with_lexical
from qscope_eval.jobs.reference_stats import ensure_reference_stats
from qscope_eval.model.encoders import EncoderInfo, Runtime, load_runtime, pooling_tag, sae_identity
from qscope_eval.data.suite import Suite
from qscope_eval.store import EncoderRow, Store, sample_ids

log = logging.getLogger(__name__)


class EncodedBatch(NamedTuple):
    """One forward batch's results: per encoder key, a PooledBatch (COO rows index `ids`)."""

    ids: np.ndarray
    n_tokens: np.ndarray
    truncated: np.ndarray
    pooled: dict


@dataclass
class Prepared:
    """What an encode run will do: registered encoders and the texts still to encode."""

    suite: Suite
    encoders: dict[str, EncoderRow]
    """encoder key -> store row (main SAE encoders and their null twins)."""
    pending_ids: np.ndarray
    """Sample ids some encoder still lacks (unique, suite order)."""
    texts: dict[int, str]
    """sample id -> text, for the pending ids."""
    n_samples: int
    """Distinct samples in the suite."""
    benchmark_ids: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What the run must say before it starts (path_change_warnings)."""
    registrations: list[Callable[[], object]] = field(default_factory=list)
    """Benchmark registrations `prepare(defer_texts=True)` left to the caller's writer (run them in order, first)."""
    lexical_backfill: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Sample ids every model encoder has stored but a lexical encoder lacks (an older database): filled from
    their texts (in `texts`) before the first batch, without the model."""

    @property
    def main_encoders(self) -> list[EncoderRow]:
        return [e for e in self.encoders.values() if e.kind == "sae"]

    def backfill(self, store: Store) -> Callable[[], int]:
        """The writer's step that fills `lexical_backfill` (runs after the registrations)."""
        return functools.partial(write_lexical, store, self.encoders, self.lexical_backfill, self.texts)


@dataclass(frozen=True)
class EncodeReport:
    """Counts and timings of one encode run."""

    n_samples: int
    n_encoded: int
    n_skipped: int
    n_truncated: int
    n_tokens: int
    seconds: float
    encoders: list[str]
    warnings: list[str]
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds in each part of `seconds`: prepare (rows, runtime, registration, the pending list), first_batch (its
    tokenization and forward), loop (every batch, the first included), tail (the last writes, the closing checks)."""


# ---- the three stages -----------------------------------------------------------------

def load_rows(suite: Suite):
    """All benchmarks' rows, then the reference corpora's (a DataFrame: benchmark, position, text; names are
    unique across both). Fails before any write."""
    import pandas as pd

    from qscope_eval.data.sources import load_reference_rows, load_suite_rows

    rows = load_suite_rows(suite)
    if not suite.reference:
        return rows
    return pd.concat([rows, load_reference_rows(suite, rows)], ignore_index=True)


def encoder_params(suite: Suite, k: int) -> dict:
    """What an encoder row records beside its key: the pooling, k, and the model / SAE / encode specs that
    jobs/evidence.py needs to re-encode a few prompts later (token-level drill-down)."""
    import dataclasses

    return {"pooling": pooling_tag(suite), "k": k, "model": dataclasses.asdict(suite.model),
            "sae": dataclasses.asdict(suite.sae), "encode": dataclasses.asdict(suite.encode), "lexical": suite.lexical}


PATH_FIELDS = ("compile", "deterministic", "packing", "sae_precision")
"""encode settings that change the arithmetic a prompt's features come from: sets computed on two paths differ by
more than either path's batch-composition floor (docs/performance.md, Noise floor)."""


def path_change_warnings(suite: Suite, encoders: list[EncoderRow], n_stored: dict[int, int],
                         n_pending: dict[int, int]) -> list[str]:
    """One warning per encoder whose stored samples were encoded on another path than the one this run adds to them
    (the encoder row keeps the encode settings of its first run)."""
    import dataclasses

    now = dataclasses.asdict(suite.encode)
    out = []
    for e in encoders:
        then = (e.params or {}).get("encode") or {}
        changed = [f for f in PATH_FIELDS if f in then and then[f] != now[f]]
        if changed and n_stored.get(e.encoder_id) and n_pending.get(e.encoder_id):
            was = ", ".join(f"{f}: {then[f]}" for f in changed)
            out.append(f"layer {e.layer}: {n_stored[e.encoder_id]} samples in this database were encoded with {was}; "
                       f"this run encodes {n_pending[e.encoder_id]} more with "
                       f"{', '.join(f'{f}: {now[f]}' for f in changed)}, and the two paths' features differ by more "
                       f"than the noise floor. Set encode back to {was} to keep one path per database, or encode "
                       f"into a new database")
    return out


QUICK_START = True
"""encode_suite starts computing sooner: its writer thread stores the texts while the first batches compute
(prepare(defer_texts=True)), and prepare does not ask the store what an encoder it has just created has stored.
Before, the start waited for both: 0.05-0.08 s of encode_suite's 0.29 s around 30 batches of 2000 prompts on 2 CPU
cores (python bench/write_bench.py --sections 6)."""


def prepare(suite: Suite, store: Store, rows=None, encoders: list[EncoderInfo] | None = None,
            defer_texts: bool = False) -> Prepared:
    """Register benchmarks and encoders; list the samples some encoder still needs.

    `encoders`: from `load_runtime(suite).encoders` or `check_encoders(suite)` (default: the former).
    `defer_texts`: compute the sample ids here and leave storing the texts and memberships to
    `Prepared.registrations`, for a writer that runs them before its first batch.
    """
    rows = load_rows(suite) if rows is None else rows
    encoders_info = encoders if encoders is not None else load_runtime(suite).encoders
    bench_ids, texts, later = {}, {}, []
    roles = [(b, "benchmark") for b in suite.benchmarks] + [(r, "reference") for r in suite.reference]
    for bench, role in roles:
        b_texts = rows.loc[rows["benchmark"] == bench.name, "text"].tolist()
        spec = {k: v for k, v in bench.__dict__.items() if v is not None}
        # the store content-addresses the texts; its ids are the ones to encode under
        if defer_texts:
            bench_ids[bench.name] = ids = sample_ids(b_texts)
            later.append(functools.partial(store.register_benchmark, bench.name, suite.name, spec, b_texts,
                                           bench.cost, role, ids))
        else:
            bench_ids[bench.name] = store.register_benchmark(bench.name, suite.name, spec, b_texts, bench.cost, role)
        texts.update(zip(bench_ids[bench.name].tolist(), b_texts))
    known = store.encoder_keys() if QUICK_START else None
    encoders = {}
    for e in list(encoders_info) + lexical_infos(suite, encoders_info):
        encoders[e.key] = store.register_encoder(
            e.key, suite.model.id, suite.model.revision, sae_identity(suite, e.layer), e.layer, suite.pooling, e.kind,
            e.d_sae, encoder_params(suite, e.k),
        )
    all_ids = np.concatenate(list(bench_ids.values()))
    # an encoder created just now has stored nothing: everything is pending
    pending = [pd.unique(all_ids) if known is not None and e.key not in known else store.pending(e.encoder_id, all_ids)
               for e in encoders.values()]
    model = [p for e, p in zip(encoders.values(), pending) if e.kind != "lexical"]
    pending_ids = np.unique(np.concatenate(model)) if model else np.zeros(0, np.int64)
    lexical = [p for e, p in zip(encoders.values(), pending) if e.kind == "lexical"]
    backfill = np.setdiff1d(np.unique(np.concatenate(lexical)), pending_ids) if lexical else np.zeros(0, np.int64)
    # keep suite order so a resumed run continues where it stopped
    order = {i: n for n, i in enumerate(dict.fromkeys(all_ids.tolist()))}
    pending_ids = np.array(sorted(pending_ids.tolist(), key=order.__getitem__), dtype=np.int64)
    n_pending = {e.encoder_id: len(np.unique(p)) for e, p in zip(encoders.values(), pending)}
    n_stored = {e.encoder_id: len(order) - n_pending[e.encoder_id] for e in encoders.values()}
    mains = [e for e in encoders.values() if e.kind == "sae"]
    return Prepared(suite, encoders, pending_ids, {i: texts[i] for i in pending_ids.tolist() + backfill.tolist()},
                    n_samples=len(order), benchmark_ids=bench_ids,
                    warnings=path_change_warnings(suite, mains, n_stored, n_pending), registrations=later,
                    lexical_backfill=backfill)


def encode_texts(runtime: Runtime, ids: np.ndarray, texts: list[str], suite: Suite,
                 group: int | None = None) -> Iterator[EncodedBatch]:
    """Pure compute: tokenize, batch under the token budget, forward, encode, pool. Yields per batch.

    The loop is model.forward.iter_texts: tokenization and host batches in a background thread,
    padded or packed batches, optional torch.compile, halving on out-of-memory. `group` texts are
    tokenized and planned at a time (default: encode.shard_size)."""
    from qscope_eval.model.encode import encode_batch
    from qscope_eval.model.forward import iter_texts, options_for

    bb = runtime.backbone
    layers = sorted({h.layer for h in runtime.handles})
    opts = options_for(suite.encode, bb, layers, group=group or suite.encode.shard_size)
    ids = np.asarray(ids)
    # defer: `last` codes reach the host while the next batch runs (model.encode.DEFER_HOST_WORK)
    for chunk in iter_texts(bb, texts, layers, lambda res: encode_batch(res, runtime.handles, suite.encode, defer=True),
                            opts):
        yield EncodedBatch(ids[chunk.positions], chunk.lengths, chunk.truncated, chunk.result)


def merge_batches(batches: list[EncodedBatch]) -> EncodedBatch:
    """Several forward batches as one (each PooledBatch's rows re-indexed into the joined ids)."""
    if len(batches) == 1:
        return batches[0]
    offsets = np.cumsum([0] + [len(b.ids) for b in batches[:-1]])
    pooled = {}
    for key, first in batches[0].pooled.items():
        parts = [b.pooled[key] for b in batches]
        row = np.concatenate([pb.row + off for pb, off in zip(parts, offsets)])
        pooled[key] = type(first)(row, *(np.concatenate([getattr(pb, f) for pb in parts]) for f in first._fields[1:]))
    return EncodedBatch(np.concatenate([b.ids for b in batches]), np.concatenate([b.n_tokens for b in batches]),
                        np.concatenate([b.truncated for b in batches]), pooled)


MERGE_PAIRS = 1 << 20
"""(sample, feature) pairs past which batches are not merged further: a transaction's fixed ~25 ms is then under a
fifth of its write (2 x 10^6 pairs took 0.23 s, python bench/write_bench.py --sections 3)."""


def _pairs(b: EncodedBatch) -> int:
    return max((len(pb.row) for pb in b.pooled.values()), default=0)


def merged_runs(batches: list[EncodedBatch], max_pairs: int = MERGE_PAIRS) -> Iterator[EncodedBatch]:
    """Consecutive batches merged while their (sample, feature) pairs stay under `max_pairs`: one transaction
    each, instead of one per forward batch (a transaction costs ~25 ms, a CPU batch 15-50 ms)."""
    run, pairs = [], 0
    for b in batches:
        n = _pairs(b)
        if run and pairs + n > max_pairs:
            yield merge_batches(run)
            run, pairs = [], 0
        run.append(b)
        pairs += n
    if run:
        yield merge_batches(run)


WRITE_QUEUE = 8
"""Forward batches that may wait for the writer (and most batches in one transaction)."""


def write_lexical(store: Store, encoders: dict[str, EncoderRow], ids: np.ndarray, texts: dict[int, str],
                  chunk: int = 20000) -> int:
    """Fill the lexical encoders for `ids` alone (no model: samples the SAE already stored), in chunks."""
    written = 0
    for a in range(0, len(ids), chunk):
        part = np.asarray(ids[a:a + chunk], np.int64)
        words = [texts[int(i)] for i in part]
        n_words = np.array([len(t.split()) for t in words], np.int32)
        batch = with_lexical(EncodedBatch(part, n_words, np.zeros(len(part), bool), {}), encoders, texts)
        written += write_results(store, encoders, batch)
    return written


def write_results(store: Store, encoders: dict[str, EncoderRow], batch: EncodedBatch,
                  texts: dict[int, str] | None = None) -> int:
    """All encoders' results for one batch in one transaction (with `texts`, the lexical encoders' rows too).
    Returns samples newly stored."""
    batch = with_lexical(batch, encoders, texts)
    parts = []
    for key, pb in batch.pooled.items():
        e = encoders[key]
        cut = batch.truncated if e.kind != "lexical" else np.zeros(len(batch.ids), bool)  # the words see it all
        parts.append((e.encoder_id, batch.ids, batch.n_tokens, cut, pb.row, pb.feature, pb.value, pb.n_tokens))
    return store.write_batches(parts)


class BatchWriter:
    """The single writer thread of encode_suite: write_results for the batches `put` to it, in order.

    Batches finished within `interval` seconds of the first unwritten one, and any already queued, share
    one transaction (merge_batches): a transaction costs ~25 ms whatever its size (Parquet part + fsync,
    markers, commit, compaction check), and on a CPU, or a GPU on short prompts, a batch takes 15-50 ms.
    Once the waiting batches hold `max_pairs` pairs they are written at once: merging more saves little, and
    what waits when the last batch arrives is written after the compute has ended (`max` pooling: 10^6 pairs
    a batch on the GPU bench).
    An error stops the writing; `put` then returns False and `raise_error` re-raises it in the caller's thread."""

    def __init__(self, store: Store, encoders: dict[str, EncoderRow], interval: float = 0.5,
                 max_pairs: int | None = None, first: Sequence[Callable[[], object]] = (),
                 texts: dict[int, str] | None = None):
        self.store, self.encoders, self.interval, self.first = store, encoders, interval, list(first)
        self.texts = texts
        """sample id -> text: the lexical encoders' rows are computed here, in the writer's thread."""
        self.max_pairs = MERGE_PAIRS if max_pairs is None else max_pairs
        self.queue: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self.errors: list[BaseException] = []
        self.batches = self.transactions = 0
        self.thread = threading.Thread(target=self._run, name="qscope-writer", daemon=True)
        self.thread.start()

    def put(self, batch: EncodedBatch) -> bool:
        """Queue a batch (blocks while WRITE_QUEUE are waiting); False once a write has failed."""
        if self.errors:
            return False
        self.queue.put(batch)
        return True

    def close(self) -> None:
        """Write what is left and stop the thread."""
        self.queue.put(None)
        self.thread.join()

    def raise_error(self) -> None:
        if self.errors:
            raise self.errors[0]

    def _flush(self, items: list) -> None:
        if items and not self.errors:
            try:
                write_results(self.store, self.encoders, merge_batches(items), self.texts)
                self.batches += len(items)
                self.transactions += 1
                if self.queue.empty():  # waiting for the model now: let readers in meanwhile
                    self.store.release()
            except BaseException as e:  # surfaced in the main thread
                self.errors.append(e)
        items.clear()

    def _run(self) -> None:
        try:
            for write in self.first:  # e.g. the texts' registration: before any batch's markers
                write()
        except BaseException as e:
            self.errors.append(e)
        items: list[EncodedBatch] = []
        due, pairs = 0.0, 0
        while True:
            try:
                item = self.queue.get(timeout=max(0.0, due - time.monotonic()) if items else None)
            except queue.Empty:  # the interval is over
                self._flush(items)
                continue
            if not items:
                due, pairs = time.monotonic() + self.interval, 0
            while item is not None:  # batches already waiting join too
                items.append(item)
                pairs += _pairs(item)
                if len(items) >= WRITE_QUEUE or pairs >= self.max_pairs or self.queue.empty():
                    break
                item = self.queue.get_nowait()  # this thread is the only consumer: not empty means there
            if item is None:
                self._flush(items)
                return
            if time.monotonic() >= due or len(items) >= WRITE_QUEUE or pairs >= self.max_pairs:
                self._flush(items)


def encode_suite(suite: Suite, store: Store, progress: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> EncodeReport:
    """The whole encode job on one machine, with DB writes overlapped with compute."""
    t0 = time.perf_counter()
    if suite.lexical:
        warm_up()  # the writer's lexical rows need sklearn: imported while the model loads
    rows = load_rows(suite)
    suite = ensure_reference_stats(suite, rows)  # `top` with an SAE that ships no statistics (Qwen-Scope releases)
    runtime = load_runtime(suite)
    prep = prepare(suite, store, rows, runtime.encoders, defer_texts=QUICK_START)
    for w in prep.warnings:
        log.warning(w)
    ids = prep.pending_ids
    texts = [prep.texts[i] for i in ids.tolist()]
    bar = _progress(len(ids), suite.name, progress)
    stats = {"truncated": 0, "tokens": 0}
    writer = BatchWriter(store, prep.encoders, suite.encode.commit_every_s,
                         first=prep.registrations + [prep.backfill(store)], texts=prep.texts)
    t_loop = time.perf_counter()
    phases = {"prepare": t_loop - t0}
    try:
        for batch in encode_texts(runtime, ids, texts, suite):
            phases.setdefault("first_batch", time.perf_counter() - t_loop)
            if not writer.put(batch):
                break
            stats["truncated"] += int(batch.truncated.sum())
            stats["tokens"] += int(batch.n_tokens.sum())
            bar.update(len(batch.ids))
            if on_batch:
                on_batch(len(batch.ids))
    finally:
        t_tail = time.perf_counter()
        phases["loop"] = t_tail - t_loop
        writer.close()
        bar.close()
    writer.raise_error()
    log.debug("%d forward batches written in %d transactions; %s", writer.batches, writer.transactions, phases)
    warnings = stored_warnings(store, prep, suite)
    for w in warnings:
        log.warning(w)
    warnings = prep.warnings + warnings
    t_end = time.perf_counter()
    phases["tail"] = t_end - t_tail
    return EncodeReport(prep.n_samples, len(ids), prep.n_samples - len(ids), stats["truncated"], stats["tokens"],
                        t_end - t0, list(prep.encoders), warnings, {k: round(v, 4) for k, v in phases.items()})


def truncation_warnings(store: Store, encoders: list[EncoderRow], benchmarks: list[str]) -> list[str]:
    """Prompts cut to the model's maximum length (read from the store, so a resumed run reports them too)."""
    for e in encoders:
        n, longest = store.truncated(e.encoder_id, benchmarks)
        if n:
            return [f"{n} prompts were longer than the model's maximum ({longest} tokens) and were truncated "
                    f"(layer {e.layer}); set model.max_length to change it"]
    return []


def stored_warnings(store: Store, prep: Prepared, suite: Suite) -> list[str]:
    """What the reader of `encode` must know about the stored data: truncated prompts, saturated benchmarks.

    The audit's report shows saturation from the metrics' own flag (same rule), so it takes only
    truncation_warnings.
    """
    out = truncation_warnings(store, prep.main_encoders, list(prep.benchmark_ids))
    for e in prep.main_encoders:
        for bench, n in store.footprints(e.encoder_id).items():
            if bench in prep.benchmark_ids and is_saturated(n, e.d_sae, suite.encode.saturation_warn):
                out.append(saturation_warning(bench, n, e.d_sae, f" at layer {e.layer} with {suite.pooling} pooling"))
    return out


def _progress(total: int, name: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=f"encode {name}", unit="sample", disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)
