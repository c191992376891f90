"""The lexical baseline: a prompt's own words as its "features" (no model at all).

A feature proxy earns its place only where it beats what the prompts' surface
already says (DESIGN §5a). This module turns texts into a sparse term matrix of a
fixed width, so every feature-side computation (coverage, overlap, the
recommendation's characteristic mass, validation against behaviour) runs on it
exactly as on an SAE encoder, and the two can be shown side by side.

- ``term_counts(texts)``: (n_texts × LEXICAL_WIDTH) counts of lower-cased word
  unigrams, hashed (scikit-learn's HashingVectorizer, no sign flipping), so a
  term's column does not depend on which corpus was seen first: content-addressed
  like the samples themselves.
- ``top_terms(counts, m)``: per row, the m terms with the highest tf·idf (idf over
  the given rows): the prompt's most distinctive words, the lexical twin of `top`
  pooling.
- ``tfidf_similarity(M, counts)``: cosine similarity of the benchmarks' mean
  tf·idf vectors (the classic "no model" baseline for how alike two benchmarks read).
- ``lexical_features(counts, definition, m)``: what a lexical "fired feature" is for
  the feature-side analyses. The store keeps the full counts (corpus-independent);
  the definition is applied when they are read, so it can change without
  re-encoding. ``DEFAULT_DEFINITION`` was chosen by measurement (docs/baselines.md:
  the stronger baseline on the known-structure suites).

Shapes: texts (n,), counts (n × LEXICAL_WIDTH) csr float32, M (K × n) membership.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

LEXICAL_WIDTH = 1 << 16
"""Hashed vocabulary width: 65 536 columns keep collisions rare for benchmark-sized vocabularies."""
TOKEN_PATTERN = r"(?u)\b\w+\b"
"""Every run of word characters is a term (one-letter answers and digits included)."""
DEFINITIONS = ("terms", "top")
"""`terms`: every distinct term of the prompt fires (value = its count); `top`: the m terms of highest tf·idf."""
DEFAULT_DEFINITION = "top"
"""The stronger baseline on the known-structure suites (docs/baselines.md, "Which lexical definition")."""
DEFAULT_M = 32
"""Terms kept per prompt by `top` (as many as `top` pooling keeps SAE features)."""


def _vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=LEXICAL_WIDTH, alternate_sign=False, norm=None, lowercase=True,
                             token_pattern=TOKEN_PATTERN, dtype=np.float32)


def term_counts(texts: Sequence[str]) -> sp.csr_matrix:
    """(n × LEXICAL_WIDTH) hashed term counts of `texts` (float32, csr, sorted indices)."""
    X = _vectorizer().transform(list(texts))
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    X.sort_indices()
    return X


def idf(counts: Any) -> np.ndarray:
    """(LEXICAL_WIDTH,) smoothed idf over the rows of `counts`: log((1 + n) / (1 + df)) + 1."""
    C = sp.csr_matrix(counts)
    df = np.bincount(C.indices, minlength=C.shape[1]).astype(np.float64)
    n = C.shape[0]
    return np.log((1.0 + n) / (1.0 + df)) + 1.0


def tfidf(counts: Any, weights: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows of counts · idf, each scaled to unit L2 norm (an empty row stays empty)."""
    C = sp.csr_matrix(counts, dtype=np.float64)
    w = idf(C) if weights is None else np.asarray(weights, float)
    X = C @ sp.diags(w)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)) @ X)


def top_terms(counts: Any, m: int, weights: np.ndarray | None = None) -> sp.csr_matrix:
    """Keep, per row, the m terms of highest tf·idf (ties: lower column first); values stay the counts."""
    if m < 1:
        raise ValueError("m must be >= 1")
    C = sp.csr_matrix(counts, dtype=np.float32)
    C.sort_indices()
    w = idf(C) if weights is None else np.asarray(weights, float)
    score = C.data.astype(np.float64) * w[C.indices]
    keep = np.zeros(C.nnz, dtype=bool)
    for r in range(C.shape[0]):  # rows are short (a prompt's distinct words)
        a, b = C.indptr[r], C.indptr[r + 1]
        if b - a <= m:
            keep[a:b] = True
        else:
            order = np.lexsort((C.indices[a:b], -score[a:b]))[:m]
            keep[a + order] = True
    rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))[keep]
    out = sp.csr_matrix((C.data[keep], (rows, C.indices[keep])), shape=C.shape)
    out.sort_indices()
    return out


def tfidf_similarity(M: Any, counts: Any) -> np.ndarray:
    """(K × K) cosine similarity of the benchmarks' mean tf·idf vectors; M (K × n) membership, counts (n × W)."""
    M = sp.csr_matrix(M, dtype=np.float64)
    M.data[:] = 1.0
    X = tfidf(counts)
    N = np.asarray(M.sum(axis=1)).ravel()
    cent = sp.diags(np.where(N > 0, 1.0 / np.where(N > 0, N, 1.0), 0.0)) @ (M @ X)
    cent = sp.csr_matrix(cent)
    norms = np.sqrt(np.asarray(cent.multiply(cent).sum(axis=1)).ravel())
    G = (cent @ cent.T).toarray()
    with np.errstate(invalid="ignore", divide="ignore"):
        S = G / np.outer(norms, norms)
    S[(norms == 0)[:, None] | (norms == 0)[None, :]] = np.nan
    return S


def lexical_features(counts: Any, definition: str = DEFAULT_DEFINITION, m: int = DEFAULT_M) -> sp.csr_matrix:
    """(n × LEXICAL_WIDTH) the lexical "fired features" of each row: `terms` (the counts as they are) or `top`
    (top_terms with idf over these rows: a term every prompt has weighs least)."""
    if definition not in DEFINITIONS:
        raise ValueError(f"lexical definition {definition!r} is not one of {', '.join(DEFINITIONS)}")
    C = sp.csr_matrix(counts, dtype=np.float32)
    return C if definition == "terms" else top_terms(C, m)
