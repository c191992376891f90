"""Reference feature statistics for `top` pooling: per-feature mean activation and firing frequency.

`FeatureStats` and its file pair `layer{n}.stats.npz` / `layer{n}.null.stats.npz` (numpy only,
beside the SAE), and the functions that compute them over a corpus with the same token mask
that pooling reads (one forward pass can fill the SAE's and its null twin's statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from qscope_eval.data.suite import EncodeSpec
from qscope_eval.errors import SaeError
from qscope_eval.model.encode import encode_tokens, iter_masked_residuals
from qscope_eval.model.sae import Sae


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature activation statistics of one SAE layer over a reference corpus."""

    mean: np.ndarray
    """[d_sae] float64: mean activation per token (0 on tokens where the feature did not fire)."""
    freq: np.ndarray
    """[d_sae] float64: share of reference tokens on which the feature fired."""
    n_tokens: int
    """Reference tokens counted (after the pooling token mask)."""
    corpus: str = ""
    """Free-text description of the reference corpus."""

    def __post_init__(self):
        if self.mean.ndim != 1 or self.mean.shape != self.freq.shape:
            raise SaeError(f"feature stats need 1-d mean and freq of equal length, got {self.mean.shape} and {self.freq.shape}")
        if self.n_tokens < 1:
            raise SaeError("feature stats were computed over no tokens; give a non-empty reference corpus")

    @property
    def d_sae(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_dead(self) -> int:
        """Features that never fired on the reference corpus."""
        return int((self.freq <= 0).sum())

    def reference_mean(self) -> np.ndarray:
        """[d_sae] float32 divisor for `top` scores, with dead features floored.

        A feature that never fired on the reference corpus has mean 0, which would make its
        score infinite. We floor it at the smallest positive mean: such a feature is still
        ranked as highly distinctive (it is), but finitely, and ties with the rarest live
        feature. With no live feature at all the floor is 1e-6.
        """
        pos = self.mean[self.mean > 0]
        floor = float(pos.min()) if pos.size else 1e-6
        return np.maximum(self.mean, floor).astype(np.float32)


def stats_path(directory: str | Path, layer: int, null: bool = False) -> Path:
    """`layer{n}.stats.npz`, or `layer{n}.null.stats.npz` for the null dictionary's statistics."""
    return Path(directory) / f"layer{layer}{'.null' if null else ''}.stats.npz"


def save_feature_stats(stats: FeatureStats, directory: str | Path, layer: int, null: bool = False) -> Path:
    """Write the stats beside the SAE as plain arrays (no pickle)."""
    path = stats_path(directory, layer, null)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mean=stats.mean.astype(np.float64), freq=stats.freq.astype(np.float64),
             n_tokens=np.int64(stats.n_tokens), corpus=np.str_(stats.corpus))
    return path


def load_feature_stats(directory: str | Path, layer: int, null: bool = False) -> FeatureStats:
    """Read stats written by save_feature_stats; SaeError naming the command that makes them."""
    path = stats_path(directory, layer, null)
    if not path.exists():
        raise SaeError(
            f"no reference statistics {path} for `top` pooling; make them with `qscope-eval feature-stats` "
            f"over a reference corpus, or use `pooling: last`"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return FeatureStats(mean=data["mean"].astype(np.float64), freq=data["freq"].astype(np.float64),
                                n_tokens=int(data["n_tokens"]), corpus=str(data["corpus"]) if "corpus" in data else "")
    except (OSError, ValueError, KeyError) as e:
        raise SaeError(f"{path} is not a valid feature-stats file ({e}); recompute it with `qscope-eval feature-stats`") from None


def compute_feature_stats(backbone, sae: Sae, texts: list[str], layer: int, encode_spec=None, corpus: str = "") -> FeatureStats:
    """Mean activation and firing frequency of every feature over `texts`' tokens.

    Counts exactly the tokens that `max`/`top` pooling reads (same token mask: no padding,
    special tokens, position 0 or sinks), so the ratio in `top` compares like with like.
    Several SAEs in one pass (the SAE and its null twin): encode.compute_feature_stats_many.
    """
    return compute_feature_stats_many(backbone, [sae], texts, layer, encode_spec, corpus)[0]


def compute_feature_stats_many(backbone, saes: Sequence[Sae], texts: Sequence[str], layer: int,
                               spec: EncodeSpec | None = None, corpus: str = "") -> list[FeatureStats]:
    """compute_feature_stats for several SAEs of one layer (e.g. the SAE and its null twin), one forward pass."""
    return feature_stats_from_acts(saes, iter_masked_residuals(backbone, texts, layer, spec), corpus)


def feature_stats_from_acts(saes: Sequence[Sae], acts, corpus: str = "") -> list[FeatureStats]:
    """Statistics of each SAE over masked residuals: a [N, d_model] tensor or an iterable of such chunks."""
    chunks = acts.split(65536) if isinstance(acts, torch.Tensor) else acts
    sums = [torch.zeros(s.cfg.d_sae, dtype=torch.float64, device=s.device) for s in saes]
    fires = [torch.zeros(s.cfg.d_sae, dtype=torch.float64, device=s.device) for s in saes]
    n = 0
    for flat in chunks:  # [N_tok, d_model]
        for sae, total, fired in zip(saes, sums, fires):
            z, idx = encode_tokens(sae, flat.to(sae.device))  # [N_tok, k]
            total.index_add_(0, idx.flatten(), z.flatten().double())
            fired.index_add_(0, idx.flatten(), (z.flatten() > 0).double())
        n += flat.shape[0]
    if n == 0:
        raise SaeError("the reference corpus left no tokens after masking; give longer or more texts")
    return [FeatureStats(mean=(t / n).cpu().numpy(), freq=(f / n).cpu().numpy(), n_tokens=n, corpus=corpus)
            for t, f in zip(sums, fires)]
