"""Pairwise benchmark similarity from feature sets: the proxies compared with behaviour (DESIGN §5a).

Given a membership M (K benchmarks × n samples) and fired features F (n samples × d,
any encoder: the SAE, its null twin, or the prompts' own words from analysis/lexical.py),
`proxy_matrices(M, F)` returns symmetric (K × K) similarities:

- ``sym``: the report's Eq. 11, |F(a) ∩ F(b)| / min(|F(a)|, |F(b)|) over the benchmarks' unions;
- ``freq``: frequency-weighted overlap Σ_f min(p_a(f), p_b(f)) (analysis/validation);
- ``characteristic``: the recommendation's measure (analysis/recommend): the share of what
  characterizes a benchmark (its firing frequency above the suite's background) that the other
  shows, divided by the benchmark's own split-half ceiling; the mean of both directions.

`lexical_proxies(M, counts)` adds ``tfidf`` (cosine of the benchmarks' mean tf·idf vectors).
The diagonal is set to NaN: a benchmark's similarity with itself is not a pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from qscope_eval.analysis import lexical, metrics
from qscope_eval.analysis import recommend as rc
from qscope_eval.analysis.validation import frequency_weighted_overlap

MEASURES = ("sym", "freq", "characteristic")
"""Measures of every feature kind (sae, null, lexical); lexical adds 'tfidf'."""


def _compact(F: sp.csr_matrix) -> sp.csr_matrix:
    """Only the columns that fire somewhere (the lexical width is 65 536; K × d dense profiles follow)."""
    used = np.unique(F.indices)
    return sp.csr_matrix(F[:, used]) if used.size < F.shape[1] else F


def characteristic_similarity(M: Any, F: Any, splits: int = 4, seed: int = 0) -> np.ndarray:
    """(K × K) mean over both directions of covered_share / self_coverage (the recommendation's `ratio`)."""
    P = rc.benchmark_profiles(M, F)
    b = rc.background(P)
    share = rc.covered_share(rc.characteristic(P, b))
    selfs = rc.self_coverage(M, F, b, splits, seed)
    ceiling = np.where(np.isfinite(selfs) & (selfs > 0), selfs, 1.0)
    ratio = share / ceiling[:, None]
    return 0.5 * (ratio + ratio.T)


def proxy_matrices(M: Any, F: Any) -> dict[str, np.ndarray]:
    """{'sym', 'freq', 'characteristic'} -> (K × K) similarity, NaN diagonal; M (K × n), F (n × d) fired (bool-like)."""
    M = sp.csr_matrix(M, dtype=bool)
    F = _compact(sp.csr_matrix(F, dtype=bool))
    out = {"sym": metrics.overlap_matrices(M, F).sym.astype(float),
           "freq": frequency_weighted_overlap(metrics.benchmark_features(M, F)),
           "characteristic": characteristic_similarity(M, F) if M.shape[0] >= 2 else np.full((M.shape[0],) * 2, np.nan)}
    for v in out.values():
        np.fill_diagonal(v, np.nan)
    return out


def lexical_proxies(M: Any, counts: Any) -> dict[str, np.ndarray]:
    """The same measures on the prompts' words (counts > 0 fire), plus 'tfidf'."""
    out = proxy_matrices(M, sp.csr_matrix(counts) > 0)
    out["tfidf"] = lexical.tfidf_similarity(M, counts)
    np.fill_diagonal(out["tfidf"], np.nan)
    return out
