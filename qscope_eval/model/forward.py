"""The one forward iterator: texts -> tokens -> batches -> forward -> fn(Residuals), halving on out-of-memory.

Encoding (pipeline.encode_texts), reference statistics and SAE training data
(encode.iter_masked_residuals) all run prompts through the model with this loop:

    opts = options_for(spec, backbone, layers)              # token budget, packing, compile, buckets
    for chunk in iter_texts(backbone, texts, layers, fn, opts):
        chunk.positions, chunk.result                        # result = fn(Residuals of those prompts)

What it does, and why:
- Tokenization and host-side batch building (padding in numpy, pinned memory) run in a
  background thread, `PREFETCH` batches ahead, so the GPU is not idle while Python pads the
  next batch; the copy to the device is non_blocking. Texts come in groups (a small first one,
  then growing up to opts.group), each tokenized while the one before runs (model.text_groups).
- Padded batches (`plan_batches`: length-sorted runs under the token budget, cut where padded
  tokens + a per-batch overhead are least) are right-padded to a multiple of `bucket` tokens.
  Causal models run them without a padding mask: under causal attention a real token never
  sees the padding to its right, so sdpa can use its flash kernel (dense Qwen2/Qwen3 under
  varlen.CAUSAL_SDPA: transformers then skips its mask step, and the host sync in it).
- Packed batches (causal Qwen2/Qwen3 only): prompts are laid end to end in ONE row with
  position_ids restarting at 0 per prompt. On CUDA the row's segments go as offsets to flash
  attention's varlen kernel (model.varlen: no padding, no mask, whole layers compiled around it);
  otherwise transformers builds a per-prompt causal mask (flex_attention on CUDA, the deterministic
  mode's; sdpa with a dense mask elsewhere). With `fixed_shape` every row is
  exactly `batch_tokens` long (one compiled shape); with `align` each prompt starts at a
  multiple of `align` tokens (attention blocks line up the same way in any batch: the
  deterministic mode). The packed output is scattered back to a padded [B, T, d] Residuals,
  so pooling code sees one layout.
- Out of memory: the batch is halved and each half retried (backbone.run_with_oom_split);
  a prompt that fails alone raises OutOfMemory naming its length.
- torch.compile (opts.compile): each decoder layer's forward is compiled (our hooks stay
  outside the compiled code); if compilation fails the layers go back to eager with one
  warning and the batch is rerun (model.compiling). On CUDA its attention leaves cuDNN out
  (COMPILED_SDPA: no plan built per new shape), and a batch of one prompt runs as two copies of
  it, so every batch uses the one dynamic-shape graph.
- The packed rows and host batches themselves: model.batching (plan_packed, build_host_batch).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from qscope_eval.errors import ModelError
from qscope_eval.model.backbone import Backbone, Residuals
from qscope_eval.model.batching import (ALIGN_DETERMINISTIC, BATCH_OVERHEAD_CPU, BATCH_OVERHEAD_CUDA,
                                        BATCH_OVERHEAD_CUDA_COMPILED, CPU_BATCH_TOKENS, Deferred, ForwardOptions,
                                        HostBatch, batch_tokens,
                                        build_host_batch, is_oom, plan_batches, plan_packed, run_with_oom_split)
from qscope_eval.model import text_groups, varlen
from qscope_eval.model.compiling import compile_layers, compiled, uncompile

log = logging.getLogger(__name__)

PACKABLE_TYPES = ("qwen2", "qwen3")
"""Dense full-attention causal models whose mask transformers builds per packed prompt (MoE routing and
Qwen3.5's linear attention are left padded: linear attention would carry state across prompts)."""
PREFETCH = 2
"""Host batches prepared ahead of the forward by the background thread."""
COMPILED_SDPA = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
"""sdpa kernels of compiled padded batches on CUDA: all but cuDNN's. torch builds a cuDNN attention plan for every
new (batch, width) shape, and nearly every batch of an audit has a new shape. On an H100, in one run
(bench/results/gpu_probe_h100_run3.txt), 2000 prompts in 30 batches: with torch's choice (cuDNN) 5.40 s on shapes
not yet run and 3.45 s once run; with these (flash) 3.65 and 3.62 s. Eager batches keep torch's choice, the
model-card procedure's, whose sets ours then match exactly."""
LONE_PROMPT_COPIES = 2
"""A compiled batch of one prompt runs as this many copies of it (one dynamic-shape graph for every batch;
bench/gpu_probe.py's `split` section tries more, to see whether flash attention's split of a small batch's keys
is what is left of the batch-composition noise)."""
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
    cuda = backbone.device.type == "cuda"
    overhead = (BATCH_OVERHEAD_CUDA_COMPILED if compile_ else BATCH_OVERHEAD_CUDA) if cuda else BATCH_OVERHEAD_CPU
    attention = packed_attention(backbone, deterministic) if packing else None
    # a varlen row compiles with dynamic shapes (one graph for every length), so it needs no fixed length: a
    # group's last, part-filled row then costs its real tokens. The flex path compiles its MLPs statically.
    fixed = packing and (deterministic or (compile_ and attention != varlen.VARLEN))
    return ForwardOptions(budget, spec.max_batch, packing=packing, bucket=COMPILE_BUCKET if compile_ and not packing else 1,
                          overhead=overhead, align=ALIGN_DETERMINISTIC if deterministic else 1,
                          fixed_shape=fixed, compile=compile_, group=group, attention=attention,
                          sdpa_backends=COMPILED_SDPA if compile_ and cuda and not packing else None)


PACKED_VARLEN = True
"""Packed rows on CUDA run through flash attention's varlen kernel (model.varlen) where it runs, not flex_attention:
no per-batch BlockMask, and whole layers compile around it. (Not yet measured on a GPU: bench/encode_arms.py's
"packed varlen auto+compile" arm against the padded and flex arms, in one run.)"""


def packed_attention(backbone: Backbone, deterministic: bool = False) -> str | None:
    """attn_implementation of packed rows: model.varlen.VARLEN on CUDA where flash's varlen kernel runs and every
    layer is full attention; None (flex_attention on CUDA, sdpa elsewhere) otherwise, and in the deterministic
    mode, whose batch invariance was measured with flex_attention's aligned blocks."""
    if (deterministic or not PACKED_VARLEN or not full_attention_only(backbone)
            or not varlen.flash_varlen_ok(backbone.device, backbone.dtype)):
        return None
    return varlen.register()


def _forward(backbone: Backbone, host: HostBatch, layers: Sequence[int], opts: ForwardOptions) -> Residuals:
    """Copy a host batch to the device and run the truncated forward; always returns the padded layout."""
    dev = backbone.device
    nb = dev.type == "cuda"
    ids = host.input_ids.to(dev, non_blocking=nb)
    lens = host.lengths.to(dev, non_blocking=nb)
    special = host.special.to(dev, non_blocking=nb)
    mask = torch.arange(special.shape[1], device=dev)[None, :] < lens[:, None]
    n_real = int(host.lengths.sum())  # on the host: pooling needs no sync to find the real tokens
    if host.position_ids is None:
        if backbone.kind == "causal":
            # Right padding under a causal mask: a real token only sees earlier positions, all real, so the
            # padding mask changes nothing we read; without it sdpa takes its causal flash kernel and
            # torch.compile sees no mask tensor. (Pad positions get garbage; pooling never reads them.)
            # dynamo specialises a batch of one into its own graph, whose kernels round differently: a prompt
            # alone would get other features than in a batch. Run it as a batch of two (itself twice, [2, T])
            # so the one dynamic-shape graph serves every batch; not where every batch is one prompt (the
            # deterministic mode without packing) nor where two copies would exceed the token budget.
            twin = (ids.shape[0] == 1 and compiled(backbone) and opts.max_batch > 1
                    and LONE_PROMPT_COPIES * ids.shape[1] <= opts.batch_tokens)
            if twin:
                ids = ids.expand(LONE_PROMPT_COPIES, -1)
            with _maskless_sdpa(backbone):
                hidden = backbone.forward_hooked(layers, input_ids=ids)
            if twin:
                hidden = {n: h[:1] for n, h in hidden.items()}
        else:  # bidirectional encoders need the padding mask
            hidden = backbone.forward_hooked(layers, input_ids=ids, attention_mask=mask.long())
        return Residuals(hidden, mask, special, lens, n_real)
    pos = host.position_ids.to(dev, non_blocking=nb)
    gather = host.gather.to(dev, non_blocking=nb)
    impl = opts.attention or _packed_fallback(backbone)
    if impl == varlen.VARLEN and not _varlen(backbone, opts):
        impl = _packed_fallback(backbone)  # the varlen kernel failed on this model earlier in the run
    extra = {}
    if impl == varlen.VARLEN:  # the segments go to the attention as offsets; transformers builds no mask
        varlen.register()
        extra = {varlen.SEGMENTS_KW: host.segments.to(dev, non_blocking=nb), varlen.MAX_LEN_KW: host.max_segment}
    with attention_implementation(backbone.model, impl):
        # attention_mask None + position_ids restarting per prompt: transformers masks per prompt
        packed = backbone.forward_hooked(layers, input_ids=ids, position_ids=pos, **extra)
    hidden = {n: h[0][gather] for n, h in packed.items()}  # [1, L, d] -> [B, T, d]
    return Residuals(hidden, mask, special, lens, n_real)


def full_attention_only(backbone: Backbone) -> bool:
    """True for a dense Qwen2/Qwen3 whose every layer is full causal attention: the attention functions we register
    (model.varlen) stand in for transformers' mask there (a sliding-window layer needs the mask transformers builds)."""
    cfg = backbone.model.config
    return (getattr(cfg, "model_type", "") in PACKABLE_TYPES and not getattr(cfg, "use_sliding_window", False)
            and all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ())))


def _maskless_sdpa(backbone: Backbone):
    """Context for a padded causal batch: sdpa under varlen.CAUSAL_SDPA (no mask step, no host sync) where the model
    runs sdpa with full attention only."""
    if backbone.model.config._attn_implementation != "sdpa" or not full_attention_only(backbone):
        return contextlib.nullcontext()
    return attention_implementation(backbone.model, varlen.register_causal_sdpa())


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


def sdpa_backends(names: Sequence[str] | None):
    """Context: let sdpa use only these kernels (SDPBackend names); None leaves torch's choice."""
    if not names:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, n) for n in names])


def _failure(e: BaseException) -> str:
    """One line on why a batch failed (dynamo wraps the backend's own error: the innermost one is named)."""
    root = e
    while root.__cause__ is not None or getattr(root, "inner_exception", None) is not None:
        root = root.__cause__ or root.inner_exception
    text = str(root).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else type(root).__name__}"[:300]


def _run_host(backbone: Backbone, host: HostBatch, layers, opts: ForwardOptions, fn: Callable[[Residuals], Any]):
    """fn(forward(host)). A non-OOM error while compiled falls back to eager once and reruns the batch; one in a
    varlen row (eager) falls back to transformers' own packed mask (flex_attention on CUDA) from then on."""
    while True:
        try:
            with sdpa_backends(opts.sdpa_backends):
                residuals = _forward(backbone, host, layers, opts)
        except Exception as e:  # noqa: BLE001 - only compile and varlen failures are handled; the rest is re-raised
            if is_oom(e):
                raise
            if compiled(backbone):
                uncompile(backbone, _failure(e))
            elif _varlen(backbone, opts):
                backbone.model._qscope_varlen_failed = _failure(e)
                log.warning("packed rows: the varlen attention failed (%s); this loaded model uses %s for packed rows "
                            "from now on (encode.packing: false runs padded batches instead)",
                            backbone.model._qscope_varlen_failed, _packed_fallback(backbone))
            else:
                raise
            continue
        return fn(residuals)  # pooling's errors (and out-of-memory) are the caller's, not a reason to fall back


def _varlen(backbone: Backbone, opts: ForwardOptions) -> bool:
    """True when this packed batch goes to the varlen kernel (not after it failed on this model)."""
    return opts.packing and opts.attention == varlen.VARLEN and not getattr(backbone.model, "_qscope_varlen_failed", None)


def _packed_fallback(backbone: Backbone) -> str:
    return "flex_attention" if backbone.device.type == "cuda" else "sdpa"


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


def _produce(backbone: Backbone, texts, ids, opts: ForwardOptions, out: queue.Queue, stop: threading.Event) -> None:
    """Background thread: tokenize group by group, plan, build host batches; puts (offset, tok, idx, host).

    On CUDA the tokenizer uses every core (the forward does not need them) and the first group is
    small, so the first forward starts early; later groups are tokenized one group ahead (model.text_groups)."""
    pin = backbone.device.type == "cuda"
    n = len(texts) if texts is not None else len(ids)
    step = opts.group or max(n, 1)
    try:
        for g, g_ids, trunc in text_groups.tokenized_groups(backbone, texts, ids, text_groups.group_bounds(n, step), pin,
                                                                stop):
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
    separate chunks. A prompt that does not fit alone raises OutOfMemory. Where fn returns a
    batching.Deferred, the chunk comes (settled) once the next batch has been queued.
    """
    if (texts is None) == (ids is None):
        raise ModelError("iter_forward needs texts or ids (one of them)")
    backbone.check_layers(layers)
    if opts.compile:
        # flex rows: MLPs and norms only (a new BlockMask closure per batch would recompile an attention)
        compile_layers(backbone, scope="mlp" if opts.packing and opts.attention != varlen.VARLEN else "layer")
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
    held: list[Chunk] = []  # chunks whose Deferred results wait for the next batch to be queued
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

            done = []
            for pos, result in run_with_oom_split(range(len(idx)), run, on_split,
                                                  lambda p, idx=idx, g_ids=g_ids: backbone.oom_message(g_ids[idx[p]])):
                sel = idx[np.asarray(pos, dtype=np.int64)]
                done.append(Chunk(sel + g, lengths[sel], trunc[sel], result))
            # the last batch's deferred results settle now that this batch is queued on the device
            yield from _settled(held)
            held = []
            if all(isinstance(c.result, Deferred) for c in done):
                held = done
            else:
                yield from done
        yield from _settled(held)
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


def _settled(chunks: list[Chunk]) -> Iterator[Chunk]:
    for c in chunks:
        yield c._replace(result=c.result.settle()) if isinstance(c.result, Deferred) else c


def iter_texts(backbone: Backbone, texts: Sequence[str], layers: Sequence[int], fn: Callable[[Residuals], Any],
               opts: ForwardOptions, on_split: Callable[[int], None] | None = None) -> Iterator[Chunk]:
    """iter_forward over texts (tokenized in the background thread, opts.group at a time)."""
    return iter_forward(backbone, layers, fn, opts, texts=texts, on_split=on_split)
