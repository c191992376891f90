"""Encoders: the typed encoder key, and the runtime (backbone + SAE handles) behind it.

An *encoder* is (model, model revision, SAE, layer, pooling, kind) (DESIGN §3): its key
`model@revision|sae|L<layer>|<pooling>|<kind>` is built, formatted and parsed only by
`EncoderKey`, and stored as text in the `encoders` table. `load_runtime` loads the model
and the SAEs; `check_encoders` makes every check it makes from the model's config alone
(no weights), for a process that coordinates Dask workers. Both give the same
`EncoderInfo` list, which the encode job registers in the store.

Importing this module does not import torch (the store and jobs use `EncoderKey`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from qscope_eval.data.suite import EncodeSpec, ModelSpec, SaeSpec, Suite
from qscope_eval.errors import SaeError

KINDS = ("sae", "null", "lexical")
"""`sae`; `null`: the random-dictionary twin; `lexical`: the prompts' own words (no model, filled from the texts)."""


class EncoderKey(NamedTuple):
    """The identity of an encoder; `str(key)` is what the store keeps, `EncoderKey.parse` reads it back."""

    model: str
    """model id @ revision."""
    sae: str
    """SAE identity: a release name@revision, or local:<folder>#<content hash>."""
    layer: int
    """Decoder layer whose output residual it reads."""
    pooling: str
    """Pooling tag with its parameters, e.g. `last` or `top(first=0,sink=8,m=32)`."""
    kind: str
    """`sae`, `null` for the random-dictionary twin, or `lexical` for the prompts' words."""

    def __str__(self) -> str:
        return f"{self.model}|{self.sae}|L{self.layer}|{self.pooling}|{self.kind}"

    @classmethod
    def parse(cls, text: str) -> "EncoderKey":
        parts = text.split("|")
        if len(parts) != 5 or not parts[2].startswith("L") or not parts[2][1:].isdigit() or parts[4] not in KINDS:
            raise ValueError(f"not an encoder key: {text!r} (expected model@revision|sae|L<layer>|pooling|sae|null|lexical)")
        return cls(parts[0], parts[1], int(parts[2][1:]), parts[3], parts[4])

    def twin(self, kind: str) -> "EncoderKey":
        """The same encoder with another kind (an SAE encoder's null or lexical twin, and back)."""
        return self._replace(kind=kind)


@dataclass(frozen=True)
class RuntimeSpec:
    """What the runtime depends on (not the benchmarks): hashable, so it is the load cache's key."""

    model: ModelSpec
    """The backbone."""
    sae: SaeSpec
    """The SAE release or folder."""
    layers: tuple[int, ...]
    """Layers to encode."""
    pooling: str
    """last | max | top."""
    null: bool
    """Whether a null twin rides along."""
    encode: EncodeSpec
    """Batching and pooling parameters."""

    @classmethod
    def of(cls, suite: "Suite | RuntimeSpec") -> "RuntimeSpec":
        if isinstance(suite, RuntimeSpec):
            return suite
        return cls(suite.model, suite.sae, tuple(suite.layers), suite.pooling, suite.null, suite.encode)


def pooling_tag(suite: Suite | RuntimeSpec) -> str:
    e = suite.encode
    if suite.pooling == "last":
        return "last"
    tag = f"{suite.pooling}(first={int(not e.exclude_first)},sink={e.sink_factor:g}"
    return tag + (f",m={e.top_m})" if suite.pooling == "top" else ")")


def sae_identity(suite: Suite | RuntimeSpec, layer: int) -> str:
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


def encoder_key(suite: Suite | RuntimeSpec, layer: int, kind: str) -> EncoderKey:
    """Stable identity of an encoder: model@revision|sae|layer|pooling|kind."""
    return EncoderKey(f"{suite.model.id}@{suite.model.revision}", sae_identity(suite, layer), layer, pooling_tag(suite), kind)


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


def _stats_dir(suite: Suite | RuntimeSpec) -> Path | None:
    if suite.sae.feature_stats:
        return Path(suite.sae.feature_stats)
    return Path(suite.sae.path) if suite.sae.path else None


def load_runtime(suite: Suite | RuntimeSpec) -> Runtime:
    """Load the backbone and one SAE (+ null twin) per layer; every check before any write.

    Cached per process on what the runtime depends on (not the benchmarks), so a
    Dask worker or a flow's shard tasks load the model once.
    """
    return _load_runtime_cached(RuntimeSpec.of(suite))


class EncoderInfo(NamedTuple):
    """What registering an encoder needs, with or without the model in memory."""

    key: str
    """encoder_key(...): model@revision|sae|layer|pooling|kind."""
    layer: int
    """Layer whose residual it reads."""
    kind: str
    """'sae', 'null' or 'lexical'."""
    d_sae: int
    """Dictionary width."""
    k: int
    """TopK of the SAE."""


def _layer_parts(suite: Suite | RuntimeSpec, layer: int, d_model: int, n_layers: int, device) -> tuple:
    """(SAE on `device`, its stats, the null twin's stats) for one layer, checked against the model's shape."""
    from qscope_eval.model.sae import check_compatible, load_sae
    from qscope_eval.model.feature_stats import load_feature_stats

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


def _layer_handles(suite: Suite | RuntimeSpec, layer: int, sae, stats, null_stats, null=None) -> list:
    """The layer's EncoderHandles (which run the pooling / stats cross-checks): the SAE's and, with
    `null: true`, its null twin's. `null=None` lets the SAE stand in for the twin (same cfg by
    construction), for checks that must not build a random dictionary."""
    from qscope_eval.model.encode import EncoderHandle

    out = [EncoderHandle(str(encoder_key(suite, layer, "sae")), layer, suite.pooling, sae, stats, suite.encode.top_m, "sae")]
    if suite.null:
        out.append(EncoderHandle(str(encoder_key(suite, layer, "null")), layer, suite.pooling, null or sae, null_stats,
                                 suite.encode.top_m, "null"))
    return out


def _infos(handles) -> list[EncoderInfo]:
    return [EncoderInfo(h.key, h.layer, h.kind, h.sae.cfg.d_sae, h.sae.cfg.k) for h in handles]


def check_encoders(suite: Suite | RuntimeSpec) -> list[EncoderInfo]:
    """Every check `load_runtime` makes, from the model's config alone: no model weights are loaded.

    For a process that coordinates but does not encode (the audit flow with Dask workers): the
    layers fit the model, each SAE file loads and fits the model's width, the stats exist.
    """
    from qscope_eval.model.backbone import check_layers, inspect_model

    info = inspect_model(suite.model)
    check_layers(list(suite.layers), info.n_layers, suite.model.id)
    handles = []
    for layer in suite.layers:
        handles += _layer_handles(suite, layer, *_layer_parts(suite, layer, info.d_model, info.n_layers, "cpu"))
    return _infos(handles)


_LIVE: dict = {}
"""ModelSpec -> the Backbone a cached runtime holds (at most the lru_cache's two)."""


def live_backbone(model: ModelSpec):
    """The backbone an already loaded runtime holds for this ModelSpec, or None: jobs/evidence.py re-encodes a
    few prompts with it instead of loading the model a second time."""
    return _LIVE.get(model)


@lru_cache(maxsize=2)
def _load_runtime_cached(suite: RuntimeSpec) -> Runtime:
    import dataclasses

    from qscope_eval.model.backbone import load_backbone
    from qscope_eval.model.devices import this_worker_device
    from qscope_eval.model.sae import null_sae

    # one worker per GPU (`dask=gpus`): a Dask worker puts its model on its own GPU
    model = dataclasses.replace(suite.model, device=this_worker_device(suite.model.device))
    backbone = load_backbone(model)
    backbone.check_layers(list(suite.layers))
    _LIVE[suite.model] = backbone
    handles = []
    for layer in suite.layers:
        sae, stats, null_stats = _layer_parts(suite, layer, backbone.d_model, backbone.n_layers, backbone.device)
        null = null_sae(sae.cfg, seed=0).to(backbone.device) if suite.null else None
        handles += _layer_handles(suite, layer, sae, stats, null_stats, null)
    return Runtime(backbone, handles)
