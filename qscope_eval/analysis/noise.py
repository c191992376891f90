"""The noise floor of batched encoding (the comparison; jobs.noise measures it): how much a prompt's feature
set moves with its batch alone.

The same prompt in a different batch (other prompts beside it, other padding, another packed
offset) goes through other kernel shapes and reduction orders; in bf16 that moves residuals by
~1e-2 relative, enough to swap features at the k-th boundary of the TopK. So two encodings of
identical texts are not identical, and a rerun, a resume or a drift report must not read that
as change. `jobs.noise.measure_noise_floor` encodes the same prompts twice through the production path
(pipeline.encode_texts): once as the suite batches them, once each prompt alone (a batch of
one, no padding, the model-card procedure's composition), and compares the feature sets:

- per sample: Jaccard |A ∩ B| / |A ∪ B| (mean, min, share of samples whose set differs);
- per union of m samples (m = 1, 2, 4, ... N, random subsets): the Jaccard of the unions, the
  quantity drift compares per benchmark (F(D) with min_support 1). `union_floor(m)` is the 5th
  percentile over subsets: a benchmark whose F(D) moved less than that is within noise.

The deterministic mode (encode.deterministic) should bring every Jaccard to 1.0; the bench
measures what it costs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qscope_eval.errors import QScopeError


class NoiseFloor(NamedTuple):
    """Agreement of the same prompts' feature sets in two batch compositions (1.0 = identical)."""

    n_samples: int
    """Prompts measured."""
    mean_jaccard: float
    """Mean per-sample Jaccard."""
    min_jaccard: float
    """Lowest per-sample Jaccard."""
    share_differ: float
    """Share of samples whose feature set differs at all."""
    union_sizes: tuple[int, ...]
    """m: sizes of the random sample subsets whose unions were compared."""
    union_jaccard: tuple[float, ...]
    """5th percentile over subsets of the union Jaccard, per m (the drift floor for a benchmark of m samples)."""

    def union_floor(self, n: int) -> tuple[float, bool]:
        """(floor Jaccard for a union of n samples, whether n lies beyond the measured sizes)."""
        sizes = np.asarray(self.union_sizes)
        i = int(np.searchsorted(sizes, n, side="right")) - 1
        return float(self.union_jaccard[max(i, 0)]), bool(n > sizes[-1])

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._asdict().items()}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseFloor":
        return cls(**{k: (tuple(d[k]) if k.startswith("union") else d[k]) for k in cls._fields})


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets agree (1.0)."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def compare_sets(a: dict[int, set], b: dict[int, set], seed: int = 0, draws: int = 200) -> NoiseFloor:
    """NoiseFloor of two encodings {sample: feature set} of the same samples."""
    keys = sorted(a)
    if set(keys) != set(b):
        raise QScopeError("the two encodings cover different samples")
    if not keys:
        raise QScopeError("no samples to compare")
    per = np.array([jaccard(a[k], b[k]) for k in keys])
    rng = np.random.default_rng(seed)
    sizes, floors = [], []
    m = 1
    while m <= len(keys):
        vals = []
        for _ in range(draws if m < len(keys) else 1):
            pick = rng.choice(len(keys), size=m, replace=False) if m < len(keys) else np.arange(len(keys))
            ua = set().union(*(a[keys[i]] for i in pick))
            ub = set().union(*(b[keys[i]] for i in pick))
            vals.append(jaccard(ua, ub))
        sizes.append(m)
        floors.append(float(np.quantile(vals, 0.05)))
        m *= 2
    if sizes[-1] != len(keys):
        sizes.append(len(keys))
        floors.append(jaccard(set().union(*a.values()), set().union(*b.values())))
    return NoiseFloor(len(keys), float(per.mean()), float(per.min()), float((per < 1.0).mean()), tuple(sizes),
                      tuple(floors))


def feature_sets(batches, key: str) -> dict[int, set]:
    """pipeline.EncodedBatch list -> {sample id: set of fired features} for encoder `key`."""
    out: dict[int, set] = {}
    for b in batches:
        for i in b.ids.tolist():
            out.setdefault(int(i), set())
        pb = b.pooled[key]
        for r, f in zip(pb.row.tolist(), pb.feature.tolist()):
            out[int(b.ids[r])].add(int(f))
    return out
