"""torch.compile of the decoder layers, in place, with an eager fallback (used by model.forward).

Each target module's `forward` is replaced by its compiled version, so our forward hooks (which
capture residuals and stop the forward early) stay outside the compiled code. The state lives on
the model object, so a cached runtime compiles once. If compilation fails, model.forward calls
`uncompile(..., reason)`: the eager forwards come back, one warning is logged, the batch reruns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from qscope_eval.errors import ModelError

log = logging.getLogger(__name__)


@dataclass
class CompileState:
    """Per-backbone record of compiled modules (kept on the model object, so a cached runtime compiles once)."""

    scope: str
    """'layer' (whole decoder layers) or 'mlp' (MLP blocks and norms; attention stays eager)."""
    originals: list
    """(module, its eager forward) pairs, restored on fallback."""
    failed: str | None = None
    """Why compilation was abandoned (None while it works)."""


COMPILE_SCOPES = ("layer", "mlp")


def _compile_targets(backbone, scope: str) -> list[torch.nn.Module]:
    if scope == "layer":
        return list(backbone.layers_module)
    out = []
    for layer in backbone.layers_module:
        out += [m for m in (getattr(layer, "mlp", None), getattr(layer, "input_layernorm", None),
                            getattr(layer, "post_attention_layernorm", None)) if m is not None]
    return out


def compile_layers(backbone, backend: Any = "inductor", dynamic: bool | None = None,
                   scope: str = "layer", emulate_eager: bool = True) -> CompileState:
    """torch.compile the decoder layers' forwards in place (idempotent per scope); our hooks stay outside.

    scope 'layer': whole layers (padded batches), compiled with dynamic shapes (dynamic=None picks
    True here), so a new (B, T) does not recompile (sizes 0 and 1 are still specialised); packed rows through
    model.varlen compile this way too (one graph for every row length and segment count). scope 'mlp':
    the MLP blocks and norms only (packed rows through flex_attention: transformers builds a new flex
    BlockMask, a new closure, for every batch, and a compiled attention would recompile on each;
    flex_attention compiles its own kernel anyway). emulate_eager (inductor only): round
    fused intermediates to the model dtype where eager does (see below)."""
    if scope not in COMPILE_SCOPES:
        raise ModelError(f"compile scope {scope!r} is not one of {', '.join(COMPILE_SCOPES)}")
    state = getattr(backbone.model, "_qscope_compile", None)
    if state is not None and (state.failed or state.scope == scope):
        return state
    if state is not None:
        uncompile(backbone)
    state = CompileState(scope, [])
    # every layer runs the same code: room for each layer's guards and a dynamic-shape recompile or two
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 8 * len(backbone.layers_module)))
    if dynamic is None:
        # padded layers see a new (B, T) nearly every batch: symbolic from the start (one compile);
        # packed MLPs see one fixed row shape: static
        dynamic = scope == "layer"
    # inductor fuses pointwise chains and keeps their intermediates in fp32, where eager rounds each op's bf16
    # output: the residuals drift from the eager model's (the H200 run: feature-set Jaccard 0.918 against the
    # model-card baseline, vs 0.996 eager). emulate_precision_casts rounds where eager rounds. On CPU, bf16 toy
    # Qwen3s: residual elements that differ from eager 63 % -> 0.4 % (2 layers, d 64) and 79 % -> 22 % (6 layers,
    # d 256; relative L2 error 0.0085 -> 0.0031): bench/compile_fidelity.py. On the H100 the compiled path's sets
    # agree with the baseline's at Jaccard 0.924, above the baseline's own floor (0.907 with another attention
    # kernel, 0.916 against fp32): docs/performance.md, Noise floor.
    options = {"emulate_precision_casts": emulate_eager} if backend == "inductor" else None
    for module in _compile_targets(backbone, scope):
        state.originals.append((module, module.forward))
        module.forward = torch.compile(module.forward, backend=backend, dynamic=dynamic, options=options)
    backbone.model._qscope_compile = state
    return state


def uncompile(backbone, reason: str | None = None) -> None:
    """Put the eager forwards back (after a failed compilation: `reason` is logged once)."""
    state = getattr(backbone.model, "_qscope_compile", None)
    if state is None:
        return
    for module, fwd in state.originals:
        module.forward = fwd
    state.originals = []
    if reason:
        state.failed = reason
        log.warning("torch.compile failed (%s); running the model eagerly", reason)
    else:
        backbone.model._qscope_compile = None


def compiled(backbone) -> bool:
    """True while the backbone's layers run compiled."""
    state = getattr(backbone.model, "_qscope_compile", None)
    return bool(state and state.originals)
