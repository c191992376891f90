"""The one forward iterator: texts -> tokens -> batches -> forward -> fn(Residuals), halving on out-of-memory.

Encoding (pipeline.encode_texts), reference statistics and SAE training data
(encode.iter_masked_residuals) all run prompts through the model with this loop:

    opts = options_for(spec, backbone, layers)              # token budget, packing, compile, buckets
    for chunk in iter_texts(backbone, texts, layers, fn, opts):
        chunk.positions, chunk.result                        # result = fn(Residuals of those prompts)

What it does, and why:
- Tokenization and host-side batch building (padding in numpy, pinned memory) run in a
  background thread, `PREFETCH` batches ahead, so the GPU is not idle while Python pads the
  next batch; the copy to the device is non_blocking.
- Padded batches (`plan_batches`: length-sorted runs under the token budget, cut where padded
  tokens + a per-batch overhead are least) are right-padded to a multiple of `bucket` tokens.
  Causal models run them without a padding mask: under causal attention a real token never
  sees the padding to its right, so sdpa can use its flash kernel.
- Packed batches (causal Qwen2/Qwen3 only): prompts are laid end to end in ONE row with
  position_ids restarting at 0 per prompt, and transformers builds a per-prompt causal mask
  (flex_attention on CUDA: no padding and no quadratic mask). With `fixed_shape` every row is
  exactly `batch_tokens` long (one compiled shape); with `align` each prompt starts at a
  multiple of `align` tokens (attention blocks line up the same way in any batch: the
  deterministic mode). The packed output is scattered back to a padded [B, T, d] Residuals,
  so pooling code sees one layout.
- Out of memory: the batch is halved and each half retried (backbone.run_with_oom_split);
  a prompt that fails alone raises OutOfMemory naming its length.
- torch.compile (opts.compile): each decoder layer's forward is compiled (our hooks stay
  outside the compiled code); if compilation fails the layers go back to eager with one
  warning and the batch is rerun (model.compiling).
- The packed rows and host batches themselves: model.batching (plan_packed, build_host_batch).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from qscope_eval.errors import ModelError
from qscope_eval.model.backbone import Backbone, Residuals
from qscope_eval.model.batching import (ALIGN_DETERMINISTIC, BATCH_OVERHEAD_CPU, BATCH_OVERHEAD_CUDA, CPU_BATCH_TOKENS,
                                        ForwardOptions, HostBatch, batch_tokens,
                                        build_host_batch, is_oom, plan_batches, plan_packed, run_with_oom_split)
from qscope_eval.model.compiling import compile_layers, compiled, uncompile

log = logging.getLogger(__name__)

PACKABLE_TYPES = ("qwen2", "qwen3")
"""Dense full-attention causal models whose mask transformers builds per packed prompt (MoE routing and
Qwen3.5's linear attention are left padded: linear attention would carry state across prompts)."""
PREFETCH = 2
"""Host batches prepared ahead of the forward by the background thread."""
COMPILE_BUCKET = 16
"""Compiled padded batches: widths rounded up to a multiple of 16, so Triton's divisible-by-16 specialisation
sees one case. (It was 64: on MMLU-length prompts, 90 tokens on average, that padded 30 % of the compute.)"""


def can_pack(backbone: Backbone) -> bool:
    """True when the model's attention can be restricted per packed prompt by position_ids alone."""
    return backbone.kind == "causal" and getattr(backbone.model.config, "model_type", "") in PACKABLE_TYPES


def bytes_per_token(backbone: Backbone, n_layers_kept: int) -> int:
    """Device bytes one token costs in a truncated forward: the widest live activations of one layer
    (hidden, q/k/v/o, the MLP's gate/up/product) plus the residuals kept for the SAEs."""
    cfg = backbone.model.config
    d = backbone.d_model
    inter = int(getattr(cfg, "intermediate_size", 4 * d) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", 1))
    head_dim = int(getattr(cfg, "head_dim", None) or d // heads)
    elem = torch.finfo(backbone.dtype).bits // 8
    return elem * (3 * d + 4 * heads * head_dim + 3 * inter + n_layers_kept * d)


def auto_batch_tokens(backbone: Backbone, layers: Sequence[int], fraction: float = 0.4,
                      lo: int = 4096, hi: int = 131072) -> int:
    """A token budget from the device's free memory: fraction x free / bytes_per_token, a power of 2 in [lo, hi].

    The rest of the free memory is for the SAE chunks (encode.PRE_ACT_BUDGET) and the allocator's slack;
    beyond `hi` tokens a forward is already compute-bound, bigger batches only add OOM risk."""
    if backbone.device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _total = torch.cuda.mem_get_info(backbone.device)
    n = int(fraction * free / bytes_per_token(backbone, len(set(layers))))
    return int(min(hi, max(lo, 1 << max(0, n.bit_length() - 1))))


def options_for(spec, backbone: Backbone, layers: Sequence[int], group: int | None = None) -> ForwardOptions:
    """ForwardOptions from an EncodeSpec: budget (0 = auto from free memory), packing, compile, determinism."""
    budget = auto_batch_tokens(backbone, layers) if spec.batch_tokens == 0 else batch_tokens(spec, backbone.device)
    deterministic = getattr(spec, "deterministic", False)
    packing = bool(getattr(spec, "packing", False) or deterministic) and can_pack(backbone)
    if getattr(spec, "packing", False) and not can_pack(backbone):
        log.warning("encode.packing: %s (%s) cannot be packed; using padded batches", backbone.name,
                    getattr(backbone.model.config, "model_type", "?"))
    compile_ = bool(getattr(spec, "compile", False))
    if deterministic and not packing:
        # no packing: the only composition-free batch is a batch of one prompt, unpadded
        return ForwardOptions(budget, 1, compile=compile_, group=group)
    overhead = BATCH_OVERHEAD_CUDA if backbone.device.type == "cuda" else BATCH_OVERHEAD_CPU
    return ForwardOptions(budget, spec.max_batch, packing=packing, bucket=COMPILE_BUCKET if compile_ and not packing else 1,
                          overhead=overhead, align=ALIGN_DETERMINISTIC if deterministic else 1,
                          fixed_shape=packing and (compile_ or deterministic), compile=compile_, group=group)


def _forward(backbone: Backbone, host: HostBatch, layers: Sequence[int], opts: ForwardOptions) -> Residuals:
    """Copy a host batch to the device and run the truncated forward; always returns the padded layout."""
    dev = backbone.device
    nb = dev.type == "cuda"
    ids = host.input_ids.to(dev, non_blocking=nb)
    lens = host.lengths.to(dev, non_blocking=nb)
    special = host.special.to(dev, non_blocking=nb)
    mask = torch.arange(special.shape[1], device=dev)[None, :] < lens[:, None]
    if host.position_ids is None:
        if backbone.kind == "causal":
            # Right padding under a causal mask: a real token only sees earlier positions, all real, so the
            # padding mask changes nothing we read; without it sdpa takes its causal flash kernel and
            # torch.compile sees no mask tensor. (Pad positions get garbage; pooling never reads them.)
            hidden = backbone.forward_hooked(layers, input_ids=ids)
        else:  # bidirectional encoders need the padding mask
            hidden = backbone.forward_hooked(layers, input_ids=ids, attention_mask=mask.long())
        return Residuals(hidden, mask, special, lens)
    pos = host.position_ids.to(dev, non_blocking=nb)
    gather = host.gather.to(dev, non_blocking=nb)
    with attention_implementation(backbone.model, opts.attention or ("flex_attention" if nb else "sdpa")):
        # attention_mask None + position_ids restarting per prompt: transformers masks per prompt
        packed = backbone.forward_hooked(layers, input_ids=ids, position_ids=pos)
    hidden = {n: h[0][gather] for n, h in packed.items()}  # [1, L, d] -> [B, T, d]
    return Residuals(hidden, mask, special, lens)


class attention_implementation:
    """Context manager: run the model with another attn_implementation (restored after)."""

    def __init__(self, model: torch.nn.Module, impl: str):
        self.model, self.impl, self.saved = model, impl, None

    def __enter__(self):
        cfg = self.model.config
        self.saved = cfg._attn_implementation
        if self.saved != self.impl:
            self.model.set_attn_implementation(self.impl) if hasattr(self.model, "set_attn_implementation") \
                else setattr(cfg, "_attn_implementation", self.impl)
        return self

    def __exit__(self, *exc):
        if self.model.config._attn_implementation != self.saved:
            if hasattr(self.model, "set_attn_implementation"):
                self.model.set_attn_implementation(self.saved)
            else:
                self.model.config._attn_implementation = self.saved
        return False


def _run_host(backbone: Backbone, host: HostBatch, layers, opts: ForwardOptions, fn: Callable[[Residuals], Any]):
    """fn(forward(host)); a non-OOM error while compiled falls back to eager once and reruns the batch."""
    try:
        return fn(_forward(backbone, host, layers, opts))
    except Exception as e:  # noqa: BLE001 - only compile failures are handled; the rest is re-raised
        if is_oom(e) or not compiled(backbone):
            raise
        root = e
        while root.__cause__ is not None or getattr(root, "inner_exception", None) is not None:
            root = root.__cause__ or root.inner_exception  # dynamo wraps the backend's own error
        text = str(root).strip().splitlines()
        reason = f"{type(e).__name__}: {text[0] if text else type(root).__name__}"[:300]
    uncompile(backbone, reason)
    return fn(_forward(backbone, host, layers, opts))


class Chunk(NamedTuple):
    """fn's result for some prompts: `positions` index the texts (or ids) given to the iterator."""

    positions: np.ndarray
    """int64 indices of the prompts, in the order fn saw them."""
    lengths: np.ndarray
    """int64 tokens per prompt (after truncation)."""
    truncated: np.ndarray
    """bool: the prompt was cut to max_length."""
    result: Any
    """fn(Residuals) for these prompts (Residuals rows follow `positions`)."""


def _plan(lengths: np.ndarray, opts: ForwardOptions) -> list[np.ndarray]:
    if opts.packing:
        return plan_packed(lengths, opts.batch_tokens, opts.align)
    return plan_batches(lengths, opts.batch_tokens, opts.max_batch, opts.bucket, opts.overhead)


class parallel_tokenization:
    """Context: let the Rust tokenizer encode a batch on all cores (TOKENIZERS_PARALLELISM=true), then restore.

    The variable is off in our environment for fork safety (Dask workers); the tokenizers library reads it
    on every call, and restoring it to its old value keeps a later fork quiet and safe."""

    def __init__(self, on: bool = True):
        self.on, self.saved = on, None

    def __enter__(self):
        if self.on:
            self.saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "true"
        return self

    def __exit__(self, *exc):
        if self.on:
            if self.saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = self.saved
        return False


FIRST_GROUP = 256
"""The first group of texts is at most this large, so the GPU starts while the rest is tokenized."""


def _groups(n: int, step: int) -> list[tuple[int, int]]:
    """(start, stop) of the text groups: a small first group, then `step` at a time."""
    out, g = [], 0
    size = min(step, FIRST_GROUP)
    while g < n:
        out.append((g, min(n, g + size)))
        g += size
        size = step
    return out


def _produce(backbone: Backbone, texts, ids, opts: ForwardOptions, out: queue.Queue, stop: threading.Event) -> None:
    """Background thread: tokenize group by group, plan, build host batches; puts (offset, tok, idx, host).

    On CUDA the tokenizer uses every core (the forward does not need them) and the first group is
    small, so the first forward starts early and later groups are tokenized while the GPU works."""
    pin = backbone.device.type == "cuda"
    n = len(texts) if texts is not None else len(ids)
    step = opts.group or max(n, 1)
    try:
        for g, stop_at in _groups(n, step):
            if texts is not None:
                with parallel_tokenization(pin):
                    tok = backbone.tokenize(texts[g:stop_at])
                g_ids, trunc = tok.ids, tok.truncated
            else:
                g_ids, trunc = list(ids[g:stop_at]), np.zeros(stop_at - g, dtype=bool)
            lengths = np.fromiter((len(x) for x in g_ids), dtype=np.int64, count=len(g_ids))
            for idx in _plan(lengths, opts):
                host = build_host_batch([g_ids[i] for i in idx], backbone.pad_id, backbone.special_ids, opts, pin)
                while not stop.is_set():
                    try:
                        out.put((g, g_ids, lengths, trunc, idx, host), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
    except BaseException as e:  # surfaced in the consumer
        out.put(e)
        return
    out.put(None)


def iter_forward(backbone: Backbone, layers: Sequence[int], fn: Callable[[Residuals], Any], opts: ForwardOptions,
                 texts: Sequence[str] | None = None, ids: Sequence[np.ndarray] | None = None,
                 on_split: Callable[[int], None] | None = None) -> Iterator[Chunk]:
    """Run `texts` (or already tokenized `ids`) through the model; yield fn's result per forward chunk.

    Chunks come in plan order (longest prompts first within each group of opts.group texts);
    on out-of-memory a batch is split in halves (on_split(n) is told) and the halves come as
    separate chunks. A prompt that does not fit alone raises OutOfMemory.
    """
    if (texts is None) == (ids is None):
        raise ModelError("iter_forward needs texts or ids (one of them)")
    backbone.check_layers(layers)
    if opts.compile:
        compile_layers(backbone, scope="mlp" if opts.packing else "layer")
    elif compiled(backbone):
        uncompile(backbone)
    if texts is not None:
        texts = list(texts)
    pin = backbone.device.type == "cuda"
    q: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()
    worker = threading.Thread(target=_produce, args=(backbone, texts, ids, opts, q, stop), name="qscope-prefetch",
                              daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            g, g_ids, lengths, trunc, idx, host = item

            def run(pos: Sequence[int], host=host, idx=idx, g_ids=g_ids):
                if len(pos) == len(idx):  # the prefetched batch; halves are rebuilt here
                    return _run_host(backbone, host, layers, opts, fn)
                sub = build_host_batch([g_ids[idx[p]] for p in pos], backbone.pad_id, backbone.special_ids, opts, pin)
                return _run_host(backbone, sub, layers, opts, fn)

            for pos, result in run_with_oom_split(range(len(idx)), run, on_split,
                                                  lambda p, idx=idx, g_ids=g_ids: backbone.oom_message(g_ids[idx[p]])):
                sel = idx[np.asarray(pos, dtype=np.int64)]
                yield Chunk(sel + g, lengths[sel], trunc[sel], result)
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


def iter_texts(backbone: Backbone, texts: Sequence[str], layers: Sequence[int], fn: Callable[[Residuals], Any],
               opts: ForwardOptions, on_split: Callable[[int], None] | None = None) -> Iterator[Chunk]:
    """iter_forward over texts (tokenized in the background thread, opts.group at a time)."""
    return iter_forward(backbone, layers, fn, opts, texts=texts, on_split=on_split)
