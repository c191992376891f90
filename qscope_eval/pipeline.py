"""The encode job: suite -> benchmark rows -> model + SAEs -> pooled features in the store.

Order matters for "bad input leaves the database as it was": every benchmark
is loaded, the model and every SAE are loaded and checked against each other
BEFORE the first write. Then benchmarks and encoders are registered, and only
the samples each encoder has not stored yet are encoded. Batches are written
by a background thread (one transaction per forward batch) while the next
batch computes, so a killed run loses at most the batch in flight.

The same pieces serve the Prefect flow: `prepare` (registration and the
pending list), `encode_texts` (pure compute: a shard on any worker) and
`write_results` (the single writer).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from .errors import SaeError
from .store import EncoderRow, Store
from .suite import BenchmarkSpec, Suite

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

    @property
    def main_encoders(self) -> list[EncoderRow]:
        return [e for e in self.encoders.values() if e.kind == "sae"]


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


def pooling_tag(suite: Suite) -> str:
    e = suite.encode
    if suite.pooling == "last":
        return "last"
    tag = f"{suite.pooling}(first={int(not e.exclude_first)},sink={e.sink_factor:g}"
    return tag + (f",m={e.top_m})" if suite.pooling == "top" else ")")


def sae_identity(suite: Suite, layer: int) -> str:
    """A release by name@revision; a local SAE by folder name + content hash of its layer file, so
    moving the folder keeps the encoder and retraining the SAE makes a new one."""
    if suite.sae.release:
        return suite.sae.identity
    path = Path(suite.sae.path) / f"layer{layer}.sae.pt"
    if not path.is_file():
        return f"local:{Path(suite.sae.path).name}#missing"
    st = path.stat()  # a rewritten file has a new mtime or size, so the cache never serves a stale hash
    return f"local:{Path(suite.sae.path).name}#{_file_digest(str(path.resolve()), st.st_mtime_ns, st.st_size)}"


@lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    """First 12 hex digits of the file's sha256 (an encoder key is built several times per layer and run)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def encoder_key(suite: Suite, layer: int, kind: str) -> str:
    """Stable identity of an encoder: model@revision|sae|layer|pooling|kind."""
    return f"{suite.model.id}@{suite.model.revision}|{sae_identity(suite, layer)}|L{layer}|{pooling_tag(suite)}|{kind}"


# ---- runtime: model + SAE handles, cached per process (a Dask worker loads once) ----

@dataclass
class Runtime:
    backbone: object
    handles: list
    """encode.EncoderHandle per encoder key."""

    @property
    def encoders(self) -> list["EncoderInfo"]:
        """The handles as registration needs them (the same list `check_encoders` gives without weights)."""
        return _infos(self.handles)


_PLACEHOLDER = BenchmarkSpec(name="runtime", path="-")


def _stats_dir(suite: Suite) -> Path | None:
    if suite.sae.feature_stats:
        return Path(suite.sae.feature_stats)
    return Path(suite.sae.path) if suite.sae.path else None


def load_runtime(suite: Suite) -> Runtime:
    """Load the backbone and one SAE (+ null twin) per layer; every check before any write.

    Cached per process on what the runtime depends on (not the benchmarks), so a
    Dask worker or a flow's shard tasks load the model once.
    """
    return _load_runtime_cached(suite.model, suite.sae, suite.layers, suite.pooling, suite.null, suite.encode)


class EncoderInfo(NamedTuple):
    """What registering an encoder needs, with or without the model in memory."""

    key: str
    """encoder_key(...): model@revision|sae|layer|pooling|kind."""
    layer: int
    """Layer whose residual it reads."""
    kind: str
    """'sae' or 'null'."""
    d_sae: int
    """Dictionary width."""
    k: int
    """TopK of the SAE."""


def _layer_parts(suite: Suite, layer: int, d_model: int, n_layers: int, device) -> tuple:
    """(SAE on `device`, its stats, the null twin's stats) for one layer, checked against the model's shape."""
    from .sae import check_compatible, load_feature_stats, load_sae

    sae = load_sae(suite.sae, layer, device=device)
    check_compatible(sae, d_model, n_layers)
    stats = null_stats = None
    if suite.pooling == "top":
        where = _stats_dir(suite)
        if where is None:
            raise SaeError(
                f"`top` pooling needs reference feature statistics for layer {layer}; compute them with "
                f"`qscope-eval feature-stats SUITE --out DIR` and set `sae: {{feature_stats: DIR}}`"
            )
        stats = load_feature_stats(where, layer)
        if suite.null:
            # the null dictionary's reference means, computed on the same corpus by `feature-stats`
            null_stats = load_feature_stats(where, layer, null=True)
    return sae, stats, null_stats


def _layer_handles(suite: Suite, layer: int, sae, stats, null_stats, null=None) -> list:
    """The layer's EncoderHandles (which run the pooling / stats cross-checks): the SAE's and, with
    `null: true`, its null twin's. `null=None` lets the SAE stand in for the twin (same cfg by
    construction), for checks that must not build a random dictionary."""
    from .encode import EncoderHandle

    out = [EncoderHandle(encoder_key(suite, layer, "sae"), layer, suite.pooling, sae, stats, suite.encode.top_m)]
    if suite.null:
        out.append(EncoderHandle(encoder_key(suite, layer, "null"), layer, suite.pooling, null or sae, null_stats,
                                 suite.encode.top_m))
    return out


def _infos(handles) -> list[EncoderInfo]:
    return [EncoderInfo(h.key, h.layer, "null" if h.key.endswith("|null") else "sae", h.sae.cfg.d_sae, h.sae.cfg.k)
            for h in handles]


def check_encoders(suite: Suite) -> list[EncoderInfo]:
    """Every check `load_runtime` makes, from the model's config alone: no model weights are loaded.

    For a process that coordinates but does not encode (the audit flow with Dask workers): the
    layers fit the model, each SAE file loads and fits the model's width, the stats exist.
    """
    from .backbone import check_layers, inspect_model

    info = inspect_model(suite.model)
    check_layers(list(suite.layers), info.n_layers, suite.model.id)
    handles = []
    for layer in suite.layers:
        handles += _layer_handles(suite, layer, *_layer_parts(suite, layer, info.d_model, info.n_layers, "cpu"))
    return _infos(handles)


@lru_cache(maxsize=2)
def _load_runtime_cached(model, sae_spec, layers, pooling, null, encode) -> Runtime:
    import dataclasses

    suite = Suite(name="runtime", model=model, sae=sae_spec, layers=layers, pooling=pooling, null=null, encode=encode,
                  benchmarks=(dataclasses.replace(_PLACEHOLDER),))
    from .backbone import load_backbone
    from .sae import null_sae

    backbone = load_backbone(suite.model)
    backbone.check_layers(list(suite.layers))
    handles = []
    for layer in suite.layers:
        sae, stats, null_stats = _layer_parts(suite, layer, backbone.d_model, backbone.n_layers, backbone.device)
        null = null_sae(sae.cfg, seed=0).to(backbone.device) if suite.null else None
        handles += _layer_handles(suite, layer, sae, stats, null_stats, null)
    return Runtime(backbone, handles)


# ---- the three stages -----------------------------------------------------------------

def load_rows(suite: Suite):
    """All benchmarks' rows (a DataFrame: benchmark, position, text). Fails before any write."""
    from .sources import load_suite_rows

    return load_suite_rows(suite)


def prepare(suite: Suite, store: Store, rows=None, encoders: list[EncoderInfo] | None = None) -> Prepared:
    """Register benchmarks and encoders; list the samples some encoder still needs.

    `encoders`: from `load_runtime(suite).encoders` or `check_encoders(suite)` (default: the former).
    """
    rows = load_rows(suite) if rows is None else rows
    encoders_info = encoders if encoders is not None else load_runtime(suite).encoders
    bench_ids, texts = {}, {}
    for bench in suite.benchmarks:
        b_texts = rows.loc[rows["benchmark"] == bench.name, "text"].tolist()
        spec = {k: v for k, v in bench.__dict__.items() if v is not None}
        # the store content-addresses the texts; its ids are the ones to encode under
        bench_ids[bench.name] = store.register_benchmark(bench.name, suite.name, spec, b_texts, bench.cost)
        texts.update(zip(bench_ids[bench.name].tolist(), b_texts))
    encoders = {}
    for e in encoders_info:
        encoders[e.key] = store.register_encoder(
            e.key, suite.model.id, suite.model.revision, sae_identity(suite, e.layer), e.layer, suite.pooling, e.kind,
            e.d_sae, {"pooling": pooling_tag(suite), "k": e.k},
        )
    all_ids = np.concatenate(list(bench_ids.values()))
    pending = [store.pending(e.encoder_id, all_ids) for e in encoders.values()]
    pending_ids = np.unique(np.concatenate(pending)) if pending else np.zeros(0, np.int64)
    # keep suite order so a resumed run continues where it stopped
    order = {i: n for n, i in enumerate(dict.fromkeys(all_ids.tolist()))}
    pending_ids = np.array(sorted(pending_ids.tolist(), key=order.__getitem__), dtype=np.int64)
    return Prepared(suite, encoders, pending_ids, {i: texts[i] for i in pending_ids.tolist()},
                    n_samples=len(order), benchmark_ids=bench_ids)


def encode_texts(runtime: Runtime, ids: np.ndarray, texts: list[str], suite: Suite) -> Iterator[EncodedBatch]:
    """Pure compute: tokenize, batch under the token budget, forward, encode, pool. Yields per batch."""
    from .backbone import batch_tokens, plan_batches, run_with_oom_split
    from .encode import encode_batch

    bb = runtime.backbone
    tok = bb.tokenize(texts)
    lengths = np.array([len(x) for x in tok.ids], dtype=np.int64)
    layers = sorted({h.layer for h in runtime.handles})
    for batch in plan_batches(lengths, batch_tokens(suite.encode, bb.device), suite.encode.max_batch):
        def run(idx):
            res = bb.residuals([tok.ids[i] for i in idx], layers)
            return encode_batch(res, runtime.handles, suite.encode)
        for idx, pooled in run_with_oom_split(list(batch), run, single_message=lambda i: bb.oom_message(tok.ids[i])):
            idx = np.asarray(idx)
            yield EncodedBatch(ids[idx], lengths[idx], tok.truncated[idx], pooled)


def write_results(store: Store, encoders: dict[str, EncoderRow], batch: EncodedBatch) -> int:
    """All encoders' results for one batch in one transaction. Returns samples newly stored (main encoders)."""
    parts = []
    for key, pb in batch.pooled.items():
        e = encoders[key]
        parts.append((e.encoder_id, batch.ids, batch.n_tokens, batch.truncated, pb.row, pb.feature, pb.value, pb.n_tokens))
    return store.write_batches(parts)


def encode_suite(suite: Suite, store: Store, progress: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> EncodeReport:
    """The whole encode job on one machine, with DB writes overlapped with compute."""
    t0 = time.perf_counter()
    rows = load_rows(suite)
    runtime = load_runtime(suite)
    prep = prepare(suite, store, rows, runtime.encoders)
    ids = prep.pending_ids
    texts = [prep.texts[i] for i in ids.tolist()]
    bar = _progress(len(ids), suite.name, progress)
    done = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    stats = {"truncated": 0, "tokens": 0, "written": 0}

    def writer():
        while (item := done.get()) is not None:
            if errors:
                continue
            try:
                write_results(store, prep.encoders, item)
            except BaseException as e:  # surfaced in the main thread
                errors.append(e)

    thread = threading.Thread(target=writer, name="qscope-writer", daemon=True)
    thread.start()
    try:
        for batch in encode_texts(runtime, ids, texts, suite):
            if errors:
                break
            done.put(batch)
            stats["truncated"] += int(batch.truncated.sum())
            stats["tokens"] += int(batch.n_tokens.sum())
            bar.update(len(batch.ids))
            if on_batch:
                on_batch(len(batch.ids))
    finally:
        done.put(None)
        thread.join()
        bar.close()
    if errors:
        raise errors[0]
    warnings = stored_warnings(store, prep, suite)
    for w in warnings:
        log.warning(w)
    return EncodeReport(prep.n_samples, len(ids), prep.n_samples - len(ids), stats["truncated"], stats["tokens"],
                        time.perf_counter() - t0, list(prep.encoders), warnings)


def stored_warnings(store: Store, prep: Prepared, suite: Suite) -> list[str]:
    """What the reader must know about the stored data: truncated prompts, saturated benchmarks.

    Read from the store, so a resumed run reports them too.
    """
    out = []
    for e in prep.main_encoders:
        n, longest = store.con.execute(
            "SELECT count(*), max(n_tokens) FROM encoded WHERE encoder_id = ? AND truncated AND sample_id IN "
            "(SELECT sample_id FROM memberships WHERE benchmark IN (SELECT unnest(?)))",
            [e.encoder_id, list(prep.benchmark_ids)]).fetchall()[0]
        if n:
            out.append(f"{n} prompts were longer than the model's maximum ({longest} tokens) and were truncated "
                       f"(layer {e.layer}); set model.max_length to change it")
            break
    return out + saturation_warnings(store, prep, suite)


def saturation_warnings(store: Store, prep: Prepared, suite: Suite) -> list[str]:
    """Warn when a benchmark's footprint nears d_sae (coverage stops meaning anything)."""
    out = []
    for e in prep.main_encoders:
        rows = store.con.execute(
            "SELECT benchmark, n_features FROM coverage WHERE encoder_id = ?", [e.encoder_id]).fetchall()
        for bench, n in rows:
            if bench in prep.benchmark_ids and n >= suite.encode.saturation_warn * e.d_sae:
                out.append(f"benchmark {bench} fires {n}/{e.d_sae} features ({n / e.d_sae:.0%}) at layer {e.layer} with "
                           f"{suite.pooling} pooling: coverage is saturated; use `pooling: top` or `last`")
    return out


def _progress(total: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"encode {name}", unit="sample", disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)
