"""Qwen-Scope SAEs: the `layer{n}.sae.pt` format, the registry of releases, TopK encode/decode.

A released set is a Hugging Face repo `Qwen/SAE-Res-<model>-W<width>-L0_<k>` with one
file per decoder layer, `layer{n}.sae.pt`: a dict of four fp32 tensors (DESIGN §2)

    W_enc (d_sae, d_model)   b_enc (d_sae,)   W_dec (d_model, d_sae)   b_dec (d_model,)

Encode is `pre = x @ W_enc.T + b_enc` (no b_dec subtraction, no input scaling), keep the
top-k of `pre`, ReLU; decode is `z @ W_dec.T + b_dec`. Our own SAEs (the demo's, or one
trained with `train-sae`) use the same file and add a `config.json` beside it; released
repos have none, so their config comes from the registry below and the tensor shapes.

A `.pt` file is a pickle: we only ever read it with `torch.load(weights_only=True)`, and
anything but a dict of the four finite float tensors is refused with an SaeError.
Reference feature statistics for `top` pooling live beside the SAE as `layer{n}.stats.npz`.
"""

from __future__ import annotations

import difflib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from qscope_eval.errors import SaeError
from qscope_eval.data.suite import SaeSpec

KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
HOOKS = ("resid_post",)


@dataclass(frozen=True)
class SaeConfig:
    """Shape and sparsity of one layer's SAE."""

    d_model: int
    """Width of the residual stream the SAE reads."""
    d_sae: int
    """Number of dictionary features."""
    k: int
    """Features kept per token by the TopK rule."""
    layer: int
    """Decoder layer whose output residual the SAE encodes."""
    release: str | None = None
    """Qwen-Scope release id, when the SAE came from one."""
    hook: str = "resid_post"
    """Hook point: the output of decoder layer `layer` (the only one Qwen-Scope ships)."""

    def __post_init__(self):
        if self.d_model < 1 or self.d_sae < 1:
            raise SaeError(f"SAE config needs d_model >= 1 and d_sae >= 1, got {self.d_model} and {self.d_sae}")
        if not 1 <= self.k <= self.d_sae:
            raise SaeError(f"SAE k must be between 1 and d_sae ({self.d_sae}), got {self.k}; set `sae: {{k: ...}}`")
        if self.layer < 0:
            raise SaeError(f"SAE layer must be >= 0, got {self.layer}")
        if self.hook not in HOOKS:
            raise SaeError(f"SAE hook {self.hook!r} is not supported; use one of {', '.join(HOOKS)}")

    @property
    def filename(self) -> str:
        return f"layer{self.layer}.sae.pt"


class TopKCodes(NamedTuple):
    """TopK codes of a batch of activations."""

    top_acts: torch.Tensor
    """[..., k] ReLU of the k largest pre-activations (0 where the top value was negative)."""
    top_indices: torch.Tensor
    """[..., k] int64 feature ids of those pre-activations."""


class Sae:
    """One layer's TopK SAE: the four tensors of the released format plus its config.

    Weights stay in fp32 by default (as released) and inputs are cast to them, so the values
    we store are the fp32 codes of the model's (possibly bf16) residual. A lower `dtype` in
    `to()` halves memory and speeds the matmul, but then the top-k selection and the values
    carry bf16 rounding; the pipeline keeps fp32.
    """

    def __init__(self, cfg: SaeConfig, W_enc, b_enc, W_dec, b_dec, source: str | None = None):
        self.cfg = cfg
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = W_enc, b_enc, W_dec, b_dec
        self.source = source or cfg.filename
        """Where the weights came from, for error messages."""

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Sae":
        """Move (in place, like nn.Module.to) and return self."""
        for name in KEYS:
            setattr(self, name, getattr(self, name).to(device=device, dtype=dtype))
        return self

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_model] -> [..., d_sae]: x @ W_enc.T + b_enc, nothing subtracted or scaled."""
        x = x.to(self.dtype)
        flat = x.reshape(-1, x.shape[-1])
        pre = torch.addmm(self.b_enc, flat, self.W_enc.T)
        return pre.reshape(*x.shape[:-1], self.cfg.d_sae)

    def encode(self, x: torch.Tensor) -> TopKCodes:
        """[..., d_model] -> top-k of the pre-activations, then ReLU; shapes [..., k]."""
        top = self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)
        return TopKCodes(top.values.relu(), top.indices)

    def decode(self, top_acts: torch.Tensor, top_indices: torch.Tensor) -> torch.Tensor:
        """[..., k] codes -> [..., d_model]: z @ W_dec.T + b_dec, touching only the k columns."""
        cols = self.W_dec.T[top_indices]  # [..., k, d_model]
        return torch.einsum("...k,...kd->...d", top_acts.to(self.dtype), cols) + self.b_dec

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The exact released format: the four tensors, fp32, contiguous, on CPU."""
        return {name: getattr(self, name).detach().to("cpu", torch.float32).contiguous() for name in KEYS}


# ---------------------------------------------------------------- registry of releases


class Release(NamedTuple):
    """One Qwen-Scope release (a Hugging Face repo holding every layer of one model)."""

    repo_id: str
    model_id: str
    d_model: int
    d_sae: int
    k: int
    n_layers: int


# Sources, all agreeing: the Qwen-Scope technical report (arXiv 2605.11887, Table 1: model,
# trained layers, hidden size, width, k), the release model cards on huggingface.co
# (e.g. SAE-Res-Qwen3.5-2B-Base-W32K-L0_50: d_sae 32768, d_model 2048, layers 0-23;
# SAE-Res-Qwen3.5-9B-Base-W64K-L0_50: 65536 / 4096 / 0-31; SAE-Res-Qwen3.5-27B-W80K-L0_100:
# 81920 / 5120 / 0-63) and the collection listing (14 repos; the MoE models have a W32K k=50
# and a W128K k=100 set, the dense models W16x with k=50 and k=100).
# Widths: W32K = 32768, W64K = 65536, W80K = 81920, W128K = 131072.
_TABLE = (
    # model id, d_model, n_layers, ((width, k), ...)
    ("Qwen/Qwen3-1.7B-Base", 2048, 28, ((32768, 50), (32768, 100))),
    ("Qwen/Qwen3-8B-Base", 4096, 36, ((65536, 50), (65536, 100))),
    ("Qwen/Qwen3.5-2B-Base", 2048, 24, ((32768, 50), (32768, 100))),
    ("Qwen/Qwen3.5-9B-Base", 4096, 32, ((65536, 50), (65536, 100))),
    ("Qwen/Qwen3.5-27B", 5120, 64, ((81920, 50), (81920, 100))),  # instruct checkpoint
    ("Qwen/Qwen3-30B-A3B-Base", 2048, 48, ((32768, 50), (131072, 100))),
    ("Qwen/Qwen3.5-35B-A3B-Base", 2048, 40, ((32768, 50), (131072, 100))),
)


def _repo_id(model_id: str, d_sae: int, k: int) -> str:
    return f"Qwen/SAE-Res-{model_id.split('/')[-1]}-W{d_sae // 1024}K-L0_{k}"


RELEASES: dict[str, Release] = {
    _repo_id(m, w, k): Release(_repo_id(m, w, k), m, d, w, k, n)
    for m, d, n, sets in _TABLE
    for w, k in sets
}


def release_info(name: str) -> Release:
    """Registry entry for a release id (the `Qwen/` prefix and letter case are optional)."""
    if name in RELEASES:
        return RELEASES[name]
    by_lower = {r.lower(): r for r in RELEASES}
    for cand in (name.lower(), f"qwen/{name.lower()}"):
        if cand in by_lower:
            return RELEASES[by_lower[cand]]
    close = difflib.get_close_matches(name, list(RELEASES), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known releases: {', '.join(RELEASES)}"
    raise SaeError(f"unknown Qwen-Scope release {name!r}; {hint} (or point `sae: {{path: ...}}` at a local directory)")


def releases_for_model(model_id: str) -> list[Release]:
    """The releases trained on this model id (empty when Qwen-Scope has none for it)."""
    return [r for r in RELEASES.values() if r.model_id.lower() == model_id.lower()]


# ---------------------------------------------------------------- reading and writing files


def read_sae_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read and validate one `layer{n}.sae.pt`: the four finite float tensors, as fp32 on CPU."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words these differently per case; a refused GLOBAL is always named on its own line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        code = next((ln for ln in lines if "GLOBAL" in ln), None)
        if code:
            raise SaeError(
                f"{path} is refused: it holds pickled objects other than tensors, which could run code when loaded "
                f"({code[:160]}); use an SAE file that is a plain dict of tensors"
            ) from None
        reason = next((ln for ln in lines if "WeightsUnpickler error" in ln or "Unsupported" in ln), lines[-1] if lines else "")
        raise SaeError(f"{path} is not a readable torch file ({reason[:160]}); re-download or re-save it") from None
    except Exception as e:  # truncated download, not a torch file at all, ...
        raise SaeError(f"{path} is not a readable torch file ({type(e).__name__}: {str(e)[:200]}); re-download or re-save it") from None
    if not isinstance(data, dict):
        raise SaeError(f"{path} holds a {type(data).__name__}, not a dict of tensors {', '.join(KEYS)}; it is not a Qwen-Scope SAE file")
    missing, extra = [k for k in KEYS if k not in data], sorted(str(k) for k in data if k not in KEYS)
    if missing or extra:
        raise SaeError(
            f"{path} has the wrong keys (missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}); "
            f"a Qwen-Scope SAE file holds exactly {', '.join(KEYS)}"
        )
    for name in KEYS:
        t = data[name]
        if not isinstance(t, torch.Tensor):
            raise SaeError(f"{path}: {name} is a {type(t).__name__}, not a tensor; re-save the SAE with save_sae")
        if not t.is_floating_point():
            raise SaeError(f"{path}: {name} has dtype {t.dtype}, expected a float tensor (the release format is fp32)")
    W_enc, b_enc, W_dec, b_dec = (data[k] for k in KEYS)
    if W_enc.ndim != 2:
        raise SaeError(f"{path}: W_enc has shape {tuple(W_enc.shape)}, expected (d_sae, d_model)")
    d_sae, d_model = W_enc.shape
    want = {"b_enc": (d_sae,), "W_dec": (d_model, d_sae), "b_dec": (d_model,)}
    for name, shape in want.items():
        if tuple(data[name].shape) != shape:
            raise SaeError(
                f"{path}: {name} has shape {tuple(data[name].shape)} but W_enc {tuple(W_enc.shape)} implies {shape}; the file is inconsistent"
            )
    out = {name: data[name].to(torch.float32).contiguous() for name in KEYS}
    for name, t in out.items():
        if not torch.isfinite(t).all():
            raise SaeError(f"{path}: {name} contains NaN or infinite values; the SAE is corrupt, re-download or retrain it")
    return out


def _read_config_json(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SaeError(f"{path} is not valid JSON ({e}); fix it or delete it (shapes are read from the .pt files)") from None
    if not isinstance(cfg, dict):
        raise SaeError(f"{path} must be a JSON object with d_model, d_sae and k")
    return cfg


def save_sae(sae: Sae, directory: str | Path) -> Path:
    """Write `layer{n}.sae.pt` (exact released format) and merge this layer into `config.json`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    meta = {"d_model": cfg.d_model, "d_sae": cfg.d_sae, "k": cfg.k, "hook": cfg.hook, "release": cfg.release}
    old = _read_config_json(directory)
    layers = set(old.get("layers", []))
    if old and any(old.get(key) != meta[key] for key in ("d_model", "d_sae", "k")):
        raise SaeError(
            f"{directory} already holds SAEs with d_model {old.get('d_model')}, d_sae {old.get('d_sae')}, k {old.get('k')}; "
            f"one directory is one SAE set, so save this one (d_model {cfg.d_model}, d_sae {cfg.d_sae}, k {cfg.k}) elsewhere"
        )
    path = directory / cfg.filename
    torch.save(sae.state_dict(), path)
    meta["layers"] = sorted(layers | {cfg.layer})
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _present_layers(directory: Path) -> list[int]:
    nums = (p.name[len("layer") : -len(".sae.pt")] for p in directory.glob("layer*.sae.pt"))
    return sorted(int(n) for n in nums if n.isdigit())


def _hub_file(release: str, revision: str, layer: int, known: Release | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf

    filename = f"layer{layer}.sae.pt"
    try:
        return Path(hf_hub_download(repo_id=release, filename=filename, revision=revision))
    except hf.LocalEntryNotFoundError:
        raise SaeError(
            f"{release}/{filename} (revision {revision}) is not in the Hugging Face cache and the hub cannot be reached "
            f"(offline or HF_HUB_OFFLINE=1); download it once with network: "
            f"`hf download {release} {filename} --revision {revision}`, or set `sae: {{path: DIR}}` to a local copy"
        ) from None
    except hf.EntryNotFoundError:
        span = f"layers 0-{known.n_layers - 1}" if known else "see the repo's file list"
        raise SaeError(f"{release} has no {filename} ({span}); pick a layer the release covers") from None
    except (hf.RevisionNotFoundError, hf.GatedRepoError, hf.RepositoryNotFoundError) as e:
        fix = {hf.RevisionNotFoundError: f"revision {revision!r} does not exist; use `revision: main` or an existing tag",
               hf.GatedRepoError: "the repo is gated; accept its license on huggingface.co and run `hf auth login`"}
        hint = next((v for k, v in fix.items() if isinstance(e, k)), None)
        if hint is None:  # repo not found: suggest registered names
            hint = f"no such repo; known releases: {', '.join(RELEASES)}" if release not in RELEASES else "check your login"
        raise SaeError(f"{release}: {hint}") from None
    except (hf.HfHubHTTPError, OSError) as e:
        raise SaeError(f"could not download {release}/{filename} ({type(e).__name__}: {str(e)[:200]}); "
                       f"retry, or use a local `sae: {{path: DIR}}`") from None


def load_sae(spec: SaeSpec, layer: int, device: str | torch.device = "cpu") -> Sae:
    """Load layer `layer` of a local SAE directory (`spec.path`) or a hub release (`spec.release`).

    k comes from `spec.k`, else the directory's config.json, else the registry; the tensor
    shapes must agree with whichever of config.json / registry is known.
    """
    known: Release | None = None
    meta: dict = {}
    if spec.path is not None:
        directory = Path(spec.path).expanduser()
        if not directory.is_dir():
            raise SaeError(f"SAE directory {directory} does not exist; fix `sae: {{path: ...}}` or train one with `qscope-eval train-sae`")
        path = directory / f"layer{layer}.sae.pt"
        if not path.exists():
            present = _present_layers(directory)
            listing = ", ".join(map(str, present)) if present else "none"
            raise SaeError(f"{directory} has no layer{layer}.sae.pt (layers present: {listing}); pick one of those layers")
        meta = _read_config_json(directory)
        release = meta.get("release")
        if isinstance(release, str):
            known = RELEASES.get(release)
    else:
        release = spec.release
        try:
            known = release_info(release)
            release = known.repo_id
        except SaeError:
            known = None  # not in our registry (a newer or private set): still try the hub
        if known and not 0 <= layer < known.n_layers:
            raise SaeError(f"{release} covers layers 0-{known.n_layers - 1}; layer {layer} does not exist")
        path = _hub_file(release, spec.revision, layer, known)
    tensors = read_sae_file(path)
    d_sae, d_model = tensors["W_enc"].shape
    expected = [(f"{path.parent / 'config.json'}", meta.get("d_model"), meta.get("d_sae"))]
    if known:
        expected.append((f"the registry entry for {known.repo_id}", known.d_model, known.d_sae))
    for where, dm, ds in expected:
        if dm is not None and (dm, ds) != (d_model, d_sae):
            raise SaeError(f"{path}: tensors are d_model {d_model} x d_sae {d_sae} but {where} says {dm} x {ds}; the file does not belong to this SAE set")
    k = spec.k or meta.get("k") or (known.k if known else None)
    if k is None:
        raise SaeError(f"{path}: no k is known for this SAE (no config.json, not a registered release); set `sae: {{k: ...}}` in the suite")
    cfg = SaeConfig(d_model=d_model, d_sae=d_sae, k=int(k), layer=layer, release=release, hook=meta.get("hook", "resid_post"))
    return Sae(cfg, **tensors, source=str(path)).to(device)


def check_compatible(sae: Sae, d_model: int, n_layers: int) -> None:
    """Refuse an SAE whose width or layer does not fit the loaded model."""
    name = Path(sae.source).name
    if sae.cfg.d_model != d_model:
        raise SaeError(
            f"SAE width mismatch: {name} expects d_model {sae.cfg.d_model} but the model's hidden size is {d_model}; "
            f"pick the SAE release for this model"
        )
    if not 0 <= sae.cfg.layer < n_layers:
        raise SaeError(f"{name} reads layer {sae.cfg.layer} but the model has {n_layers} layers (0-{n_layers - 1}); pick a layer in range")


def null_sae(like: SaeConfig, seed: int = 0) -> Sae:
    """A random dictionary of the same shape: the `null` encoder's SAE (DESIGN §4, null baseline).

    W_enc rows are unit-norm Gaussian directions, b_enc = b_dec = 0, W_dec = W_enc.T. Drawn on
    CPU from a seeded torch.Generator, so every device encodes with the identical dictionary.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    W_enc = torch.randn(like.d_sae, like.d_model, generator=gen, dtype=torch.float32)
    W_enc /= W_enc.norm(dim=1, keepdim=True)
    cfg = SaeConfig(d_model=like.d_model, d_sae=like.d_sae, k=like.k, layer=like.layer, release=None, hook=like.hook)
    zeros = torch.zeros
    return Sae(cfg, W_enc, zeros(like.d_sae), W_enc.T.contiguous(), zeros(like.d_model), source=f"null(seed={seed})")


# ---------------------------------------------------------------- reference statistics (`top` pooling)
