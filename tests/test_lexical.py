"""The lexical baseline's core (analysis/lexical.py) against scikit-learn's own CountVectorizer /
TfidfVectorizer, computed independently on an indexed (not hashed) vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer

from qscope_eval.analysis import lexical as lx

TEXTS = [
    "What is the derivative of x squared? Answer:",
    "Solve for x: 2x + 3 = 11. Answer:",
    "Which enzyme breaks down starch in the mouth? Answer:",
    "The mitochondria is the powerhouse of the cell; which organelle makes ATP? Answer:",
    "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"",
    "Who signed the Treaty of Versailles in 1919, and why did the treaty fail? Answer:",
    "",
]


def _column(term: str) -> int:
    """The hashed column of one vocabulary term (the same hashing as term_counts)."""
    h = HashingVectorizer(n_features=lx.LEXICAL_WIDTH, alternate_sign=False, norm=None, token_pattern=r".+",
                          lowercase=False)
    return int(h.transform([term]).indices[0])


def _indexed():
    cv = CountVectorizer(token_pattern=lx.TOKEN_PATTERN, lowercase=True)
    C = cv.fit_transform(TEXTS)
    cols = np.array([_column(t) for t in cv.get_feature_names_out()])
    assert len(set(cols.tolist())) == cols.size, "no hash collision in this small vocabulary"
    return cv, C, cols


def test_term_counts_equal_an_indexed_count_vectorizer():
    _, C, cols = _indexed()
    H = lx.term_counts(TEXTS)
    assert H.shape == (len(TEXTS), lx.LEXICAL_WIDTH)
    assert H.has_sorted_indices
    np.testing.assert_array_equal(H[:, cols].toarray(), C.toarray())
    assert H.sum() == C.sum()  # nothing outside the vocabulary's columns
    assert H[len(TEXTS) - 1].nnz == 0  # an empty prompt has no terms


def test_tfidf_and_similarity_equal_sklearn_tfidf():
    _, _, cols = _indexed()
    tv = TfidfVectorizer(token_pattern=lx.TOKEN_PATTERN, lowercase=True, smooth_idf=True, norm="l2")
    T = tv.fit_transform(TEXTS).toarray()
    ours = lx.tfidf(lx.term_counts(TEXTS))
    np.testing.assert_allclose(ours[:, cols].toarray(), T, atol=1e-6)
    # benchmarks = groups of rows; the similarity of their mean tf·idf vectors, by hand
    groups = [[0, 1], [2, 3], [4], [5, 6]]
    M = np.zeros((len(groups), len(TEXTS)), bool)
    for g, rows in enumerate(groups):
        M[g, rows] = True
    cent = np.stack([T[rows].mean(axis=0) for rows in groups])
    norm = np.linalg.norm(cent, axis=1)
    want = cent @ cent.T / np.outer(norm, norm)
    np.testing.assert_allclose(lx.tfidf_similarity(M, lx.term_counts(TEXTS)), want, atol=1e-6)


def test_top_terms_keep_the_highest_tfidf_terms_by_a_slow_loop():
    cv, C, cols = _indexed()
    tv = TfidfVectorizer(token_pattern=lx.TOKEN_PATTERN, lowercase=True, smooth_idf=True, norm=None)
    T = tv.fit_transform(TEXTS).toarray()
    m = 3
    got = lx.top_terms(lx.term_counts(TEXTS), m)
    for r in range(len(TEXTS)):
        terms = np.flatnonzero(C[r].toarray().ravel())
        # highest tf·idf first; ties: the lower hashed column first (the module's documented order)
        order = sorted(terms, key=lambda t: (-round(T[r, t], 9), cols[t]))[:m]
        want = {int(cols[t]): int(C[r, t]) for t in order}
        row = got[r]
        assert dict(zip(row.indices.tolist(), row.data.astype(int).tolist())) == want


def test_lexical_features_definitions():
    X = lx.term_counts(TEXTS)
    assert (lx.lexical_features(X, "terms") != X).nnz == 0
    top = lx.lexical_features(X, "top", m=2)
    assert np.all(np.diff(top.indptr) == np.minimum(np.diff(X.indptr), 2))
    with pytest.raises(ValueError, match="not one of"):
        lx.lexical_features(X, "bm25")
    assert sp.issparse(top)
