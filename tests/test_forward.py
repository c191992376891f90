"""The forward iterator (qscope_eval.model.forward) on CPU: packing equals padding, OOM halving, the compile
wrapper and its eager fallback, the packed planner, chunked top-k, and the deterministic mode.

A tiny random Qwen3 (toy.random_qwen3, real Qwen tokenizer, fp32) gives real residuals; nothing is
downloaded. Packing uses sdpa here (transformers builds the same per-prompt causal mask as for
flex_attention, as a dense tensor); flex_attention itself is tried once and skipped with the reason
if this torch cannot run it on CPU.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from qscope_eval.data.suite import EncodeSpec
from qscope_eval.errors import OutOfMemory
from qscope_eval.model import batching, compiling, forward, text_groups, toy
from qscope_eval.model.batching import ForwardOptions, build_host_batch, plan_packed
from qscope_eval.model.encode import encode_tokens
from qscope_eval.model.forward import iter_forward, iter_texts
from qscope_eval.model.sae import Sae, SaeConfig
from synthetic import OutOfMemoryError, tiny_backbone

LAYERS = [1, 2]
TEXTS = [
    "Question: Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
    "def add(a, b):\n    return a + b",
    "Short one.",
    "The French Revolution began in 1789 and reshaped European politics for a century.",
    "<|im_start|>user hello there<|im_end|>",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3,
]


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def per_prompt(bb, opts, texts=TEXTS, layers=LAYERS):
    """{text index: {layer: [T, d] residual of its real tokens}} through iter_texts."""
    out = {}

    def fn(res):
        return [{n: res.hidden[n][r, : int(res.lengths[r])].clone() for n in layers} for r in range(len(res.lengths))]

    for chunk in iter_texts(bb, texts, layers, fn, opts):
        for p, h in zip(chunk.positions.tolist(), chunk.result):
            out[p] = h
    return out


def test_packing_equals_padded_batches(bb):
    padded = per_prompt(bb, ForwardOptions(batch_tokens=4096, max_batch=3))
    alone = per_prompt(bb, ForwardOptions(batch_tokens=4096, max_batch=1))
    for opts in (ForwardOptions(batch_tokens=4096, packing=True, attention="sdpa"),
                 ForwardOptions(batch_tokens=256, packing=True, align=16, fixed_shape=True, attention="sdpa"),
                 ForwardOptions(batch_tokens=40, packing=True, attention="sdpa")):  # some prompts exceed a row
        packed = per_prompt(bb, opts)
        assert packed.keys() == alone.keys() == set(range(len(TEXTS)))
        for i in alone:
            for n in LAYERS:
                torch.testing.assert_close(packed[i][n], alone[i][n], atol=2e-5, rtol=2e-5)
                torch.testing.assert_close(padded[i][n], alone[i][n], atol=2e-5, rtol=2e-5)
    assert bb.model.config._attn_implementation == "sdpa"  # restored after the packed forwards


def test_packed_host_batch_layout(bb):
    ids = [np.array([5, 6, 7]), np.array([8]), np.array([9, 10])]
    opts = ForwardOptions(batch_tokens=16, packing=True, align=4, fixed_shape=True)
    h = build_host_batch(ids, 0, np.array([10]), opts, pin=False)
    assert h.input_ids.tolist() == [[5, 6, 7, 0, 8, 0, 0, 0, 9, 10, 0, 0, 0, 0, 0, 0]]
    # every prompt and every gap restarts at 0 (transformers reads a restart as a new sequence)
    assert h.position_ids.tolist() == [[0, 1, 2, 0, 0, 0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 5]]
    assert h.gather[:, :3].tolist() == [[0, 1, 2], [4, 0, 0], [8, 9, 0]]
    assert h.special.tolist() == [[False, False, False], [False, True, True], [False, True, True]]


def test_plan_packed_fills_rows_and_places_every_prompt_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=200)
    for cap, align in ((512, 1), (1024, 64), (100, 8)):
        rows = plan_packed(lengths, cap, align)
        flat = np.concatenate(rows)
        assert sorted(flat.tolist()) == list(range(len(lengths)))
        slots = -(-lengths // align) * align
        for r in rows:
            assert slots[r].sum() <= cap or len(r) == 1  # an over-long prompt rides alone
        # first-fit decreasing: at most one row less than half full among rows of fitting prompts
        fill = [slots[r].sum() / cap for r in rows if slots[r].sum() <= cap]
        assert sum(f < 0.5 for f in fill) <= 1


def test_oom_halves_real_forward_and_single_prompt_fails_clearly(bb):
    def oom_if_big(module, args):  # simulate a GPU that holds at most 1 prompt
        if args[0].shape[0] > 1:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def last_token(res):  # [B, d]: residual at each prompt's last real token
        return res.hidden[2][torch.arange(len(res.lengths)), res.lengths - 1]

    tok = bb.tokenize(TEXTS[:4])
    opts = ForwardOptions(batch_tokens=4096)
    want = list(iter_forward(bb, [2], last_token, opts, ids=tok.ids))
    splits = []
    h = bb.layers_module[0].register_forward_pre_hook(oom_if_big)
    try:
        got = list(iter_forward(bb, [2], last_token, opts, ids=tok.ids, on_split=splits.append))
    finally:
        h.remove()
    assert len(want) == 1 and splits == [4, 2, 2] and [c.positions.tolist() for c in got] == [[p] for p in
                                                                                               want[0].positions]
    torch.testing.assert_close(torch.cat([c.result for c in got]), want[0].result, atol=1e-5, rtol=1e-5)

    h = bb.layers_module[0].register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(OutOfMemoryError("x")))
    try:
        n = int(tok.lengths[:2].max())
        with pytest.raises(OutOfMemory, match=rf"prompt of {n} tokens.*lower model.max_length"):
            list(iter_forward(bb, [2], last_token, opts, ids=tok.ids[:2]))
    finally:
        h.remove()


def test_early_stop_of_the_consumer_stops_the_prefetch_thread(bb):
    texts = TEXTS * 20
    gen = iter_texts(bb, texts, [1], lambda res: len(res.lengths), ForwardOptions(batch_tokens=64, group=10))
    next(gen)
    gen.close()
    import threading

    assert not any(t.name in ("qscope-prefetch", "qscope-tokenize") and t.is_alive() for t in threading.enumerate())


def test_next_group_is_tokenized_while_this_one_runs(bb, monkeypatch):
    """TOKENIZE_AHEAD: group g+1 is tokenized while group g's batches are consumed; results are unchanged."""
    import threading
    import time

    texts = [t + f" {i}" for i, t in enumerate(TEXTS * 10)]  # 60 texts, groups of 10, ~5 batches each
    opts = ForwardOptions(batch_tokens=64, group=10)
    log, real = [], bb.tokenize

    def tokenize(batch):
        log.append(("tokenize", len([e for e in log if e[0] == "chunk"]), threading.current_thread().name))
        return real(batch)

    def run(ahead: bool):
        monkeypatch.setattr(text_groups, "TOKENIZE_AHEAD", ahead)
        log.clear()
        out = {}
        for chunk in iter_texts(bb, texts, [1], lambda res: res.hidden[1].sum(dim=(1, 2)), opts):
            time.sleep(0.02)  # a slow consumer: the GPU's work on this batch
            log.append(("chunk",))
            out.update(zip(chunk.positions.tolist(), chunk.result.tolist()))
        return out, [(n, name) for kind, n, *name in [e for e in log if e[0] == "tokenize"] for name in name]

    monkeypatch.setattr(bb, "tokenize", tokenize)
    before, calls_before = run(False)
    after, calls_after = run(True)
    assert before == after and sorted(after) == list(range(len(texts)))
    assert len(calls_after) == len(calls_before) == 6
    assert all(name == "qscope-tokenize" for _, name in calls_after[1:])
    # chunks consumed when each later group's tokenization began: earlier with the look-ahead
    assert sum(n for n, _ in calls_after) < sum(n for n, _ in calls_before), (calls_before, calls_after)


def test_an_error_tokenizing_ahead_reaches_the_consumer(bb, monkeypatch):
    real, calls = bb.tokenize, []

    def tokenize(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise ValueError("tokenizer broke on group 3")
        return real(batch)

    monkeypatch.setattr(bb, "tokenize", tokenize)
    with pytest.raises(ValueError, match="group 3"):
        for _ in iter_texts(bb, TEXTS * 5, [1], lambda res: None, ForwardOptions(batch_tokens=64, group=6)):
            pass


def test_compile_wrapper_runs_and_falls_back_to_eager(bb, caplog):
    eager = per_prompt(bb, ForwardOptions(batch_tokens=4096))
    try:
        compiling.compile_layers(bb, backend="eager")  # dynamo tracing without inductor: seconds on CPU
        got = per_prompt(bb, ForwardOptions(batch_tokens=4096, compile=True, bucket=forward.COMPILE_BUCKET))
        assert compiling.compiled(bb) and bb.model._qscope_compile.scope == "layer"
        compiling.compile_layers(bb, backend="eager", scope="mlp")  # packed batches compile the MLPs only
        packed = per_prompt(bb, ForwardOptions(batch_tokens=4096, compile=True, packing=True, attention="sdpa"))
        assert bb.model._qscope_compile.scope == "mlp" and len(bb.model._qscope_compile.originals) == 3 * 4
    finally:
        compiling.uncompile(bb)
    assert not compiling.compiled(bb) and bb.model._qscope_compile is None
    for i in eager:
        torch.testing.assert_close(got[i][2], eager[i][2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[i][2], eager[i][2], atol=2e-5, rtol=2e-5)

    def broken(gm, example_inputs):  # a backend that fails, like inductor without a C compiler
        raise RuntimeError("no C compiler found for inductor")

    try:
        compiling.compile_layers(bb, backend=broken)
        with caplog.at_level(logging.WARNING, logger="qscope_eval.model.compiling"):
            got = per_prompt(bb, ForwardOptions(batch_tokens=4096, compile=True))
        assert not compiling.compiled(bb) and "no C compiler" in bb.model._qscope_compile.failed
        assert sum("torch.compile failed" in r.message for r in caplog.records) == 1
    finally:
        compiling.uncompile(bb)
        bb.model._qscope_compile = None
    for i in eager:
        torch.testing.assert_close(got[i][2], eager[i][2], atol=0, rtol=0)  # the eager rerun of the same batches


def test_compiled_prompt_alone_runs_the_batch_graph(bb, monkeypatch):
    """Dynamo gives a batch of one its own graph (size 1 is specialised), whose kernels round differently on a
    GPU: a prompt alone then got other features than in a batch (H100: 86 % of 64 sets differed). The forward
    runs it as a batch of two of itself instead, so no second graph is compiled and its rows are the batch's."""
    graphs = []

    def counting(gm, example_inputs):  # a dynamo backend that counts the graphs it is handed
        graphs.append(gm)
        return gm.forward

    real_forward = bb.forward_hooked
    # one batch of all six (a large per-batch overhead makes the planner keep them together)
    opts = ForwardOptions(batch_tokens=4096, compile=True, bucket=forward.COMPILE_BUCKET, overhead=10**6)
    torch._dynamo.reset()
    try:
        compiling.compile_layers(bb, backend=counting)
        together = per_prompt(bb, opts)
        n = len(graphs)
        alone = {i: per_prompt(bb, opts, texts=[t])[0] for i, t in enumerate(TEXTS[:3])}
    finally:
        compiling.uncompile(bb)
        torch._dynamo.reset()
    assert n >= 1 and len(graphs) == n, f"{len(graphs) - n} more graphs for prompts alone"
    for i in alone:
        torch.testing.assert_close(alone[i][2], together[i][2], atol=1e-6, rtol=1e-6)
    # where every batch is one prompt (deterministic mode without packing) the batch-of-one graph is the only
    # one, and a prompt whose two copies exceed the token budget runs alone: no doubled forward for either
    seen = []
    monkeypatch.setattr(bb, "forward_hooked", lambda layers, **kw: seen.append(kw["input_ids"].shape[0])
                        or real_forward(layers, **kw))
    try:
        compiling.compile_layers(bb, backend=counting)
        per_prompt(bb, ForwardOptions(batch_tokens=4096, max_batch=1, compile=True), texts=TEXTS[:1])
        per_prompt(bb, ForwardOptions(batch_tokens=40, compile=True), texts=TEXTS[:1])  # ~25 tokens, bucket 1
        per_prompt(bb, opts, texts=TEXTS[:1])
    finally:
        compiling.uncompile(bb)
        torch._dynamo.reset()
    assert seen == [1, 1, 2]


def test_sdpa_backends_option_limits_the_attention_kernel(bb):
    """ForwardOptions.sdpa_backends reaches the attention call (compiled CUDA batches leave cuDNN out with it)."""
    from torch.profiler import ProfilerActivity, profile

    def attention_ops(opts):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            per_prompt(bb, opts, texts=TEXTS[:2])
        return {e.name for e in prof.events() if "attention" in e.name and e.name.startswith("aten::_")}

    default = attention_ops(ForwardOptions(batch_tokens=4096))
    math_only = attention_ops(ForwardOptions(batch_tokens=4096, sdpa_backends=("MATH",)))
    assert any("flash" in o for o in default), default  # torch's own CPU choice is its flash kernel
    assert not any("flash" in o for o in math_only), math_only
    assert forward.COMPILED_SDPA[0] == "FLASH_ATTENTION" and "CUDNN_ATTENTION" not in forward.COMPILED_SDPA


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="inductor on CPU needs a C++ compiler")
def test_inductor_rounds_like_eager_in_bf16():
    # a bf16 model compiled by inductor: fused pointwise chains keep fp32 intermediates unless told to round
    # where eager rounds; emulate_eager brings the residuals much closer to the eager model's
    bb16 = tiny_backbone(num_hidden_layers=2, dtype=torch.bfloat16)
    texts = [t * 4 for t in TEXTS]
    opts = ForwardOptions(batch_tokens=4096, bucket=forward.COMPILE_BUCKET)
    eager = per_prompt(bb16, opts, texts=texts, layers=[1])
    differ = {}
    for emulate in (False, True):
        torch._dynamo.reset()
        try:
            compiling.compile_layers(bb16, emulate_eager=emulate)
            got = per_prompt(bb16, ForwardOptions(**{**opts.__dict__, "compile": True}), texts=texts, layers=[1])
            assert compiling.compiled(bb16)  # inductor really ran (no eager fallback)
        finally:
            compiling.uncompile(bb16)
            torch._dynamo.reset()
        diff = torch.cat([(got[i][1].float() - eager[i][1].float()).flatten() for i in eager])
        differ[emulate] = float((diff != 0).float().mean())
    assert differ[True] < 0.5 * differ[False], differ  # here: 64 % of the elements differ without, none with


def test_options_for_spec(bb):
    assert forward.can_pack(bb)
    o = forward.options_for(EncodeSpec(batch_tokens=0), bb, [1])
    assert o.batch_tokens == 2048 and not o.packing  # auto off CUDA: the CPU cap
    o = forward.options_for(EncodeSpec(deterministic=True), bb, [1])
    assert o.packing and o.fixed_shape and o.align == forward.ALIGN_DETERMINISTIC
    o = forward.options_for(EncodeSpec(compile=True), bb, [1])
    assert o.compile and o.bucket == forward.COMPILE_BUCKET == 16 and not o.packing
    assert o.overhead == batching.BATCH_OVERHEAD_CPU  # the planner's per-batch cost off CUDA
    assert o.sdpa_backends is None  # torch's own attention kernel off CUDA
    assert forward.bytes_per_token(bb, 1) > 0


def test_deterministic_mode_is_batch_invariant(bb):
    """Aligned fixed-shape packing: a prompt's residuals do not depend on the prompts beside it."""
    opts = forward.options_for(EncodeSpec(deterministic=True, batch_tokens=1024), bb, [2])
    opts = ForwardOptions(**{**opts.__dict__, "attention": "sdpa"})
    together = per_prompt(bb, opts, layers=[2])
    for i, text in enumerate(TEXTS[:3]):
        alone = per_prompt(bb, opts, texts=[text], layers=[2])
        torch.testing.assert_close(together[i][2], alone[0][2], atol=1e-6, rtol=1e-6)


def test_flex_attention_packing_on_cpu(bb):
    opts = ForwardOptions(batch_tokens=256, packing=True, attention="flex_attention")
    try:
        packed = per_prompt(bb, opts, texts=TEXTS[:3], layers=[1])
    except Exception as e:  # noqa: BLE001 - whatever this torch build lacks on CPU
        pytest.skip(f"flex_attention does not run on this CPU build: {type(e).__name__}: {str(e)[:120]}")
    alone = per_prompt(bb, ForwardOptions(batch_tokens=4096, max_batch=1), texts=TEXTS[:3], layers=[1])
    for i in alone:
        torch.testing.assert_close(packed[i][1], alone[i][1], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- chunked SAE encoding


def _sae(d_model=32, d_sae=512, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_sae, d_model, generator=g)
    return Sae(SaeConfig(d_model, d_sae, k, 0), W, torch.randn(d_sae, generator=g) * 0.1, W.T.contiguous(),
               torch.zeros(d_model))


def test_chunked_topk_equals_full_computation():
    sae = _sae()
    x = torch.randn(3000, 32, generator=torch.Generator().manual_seed(1))
    full = sae.pre_acts(x).topk(sae.cfg.k, dim=-1)
    want_v, want_i = full.values.relu(), full.indices
    for budget in (512 * 100, 512 * 7, 64 * 1024):  # row chunks of 100 / column blocks (rows < MIN_ROWS)
        v, i = encode_tokens(sae, x, budget=budget)
        order = v.argsort(dim=1, descending=True, stable=True)
        v, i = v.gather(1, order), i.gather(1, order)
        assert torch.equal(i.sort(dim=1).values, want_i.sort(dim=1).values)
        torch.testing.assert_close(v, want_v, atol=1e-5, rtol=1e-5)
    v, i = encode_tokens(sae, x[:5], fixed_rows=True)  # padded to one block of MIN_ROWS rows, 5 come back
    assert v.shape == (5, sae.cfg.k) and torch.equal(i.sort(dim=1).values, want_i[:5].sort(dim=1).values)


@pytest.mark.parametrize("kind", ["qwen3_moe", "qwen35"])
def test_maskless_padding_is_exact_for_moe_and_linear_attention(kind, tmp_path):
    """Causal padded batches run without a padding mask: also right for MoE routing and Qwen3.5's linear attention."""
    from qscope_eval.data.suite import ModelSpec
    from qscope_eval.model.backbone import load_backbone

    path = toy.tiny_qwen3(tmp_path, moe=True) if kind == "qwen3_moe" else toy.tiny_qwen35(tmp_path)
    model = load_backbone(ModelSpec(id=str(path), device="cpu"))
    assert model.kind == "causal" and not forward.can_pack(model)  # right-padded batches only: no packing for these
    batched = per_prompt(model, ForwardOptions(batch_tokens=4096, max_batch=8), layers=[1, 3])
    alone = per_prompt(model, ForwardOptions(batch_tokens=4096, max_batch=1), layers=[1, 3])
    for i in alone:
        for n in (1, 3):
            torch.testing.assert_close(batched[i][n], alone[i][n], atol=1e-4, rtol=1e-4)
