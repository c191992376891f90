"""The lexical baseline's core (analysis/lexical.py) against scikit-learn's own CountVectorizer /
TfidfVectorizer, computed independently on an indexed (not hashed) vocabulary."""

from __future__ import annotations

import re

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


# ---- the lexical baseline beside the null in the JSON outputs (a store without a lexical encoder: computed) ----

def test_coverage_and_overlap_show_the_words_beside_the_null(tmp_path):
    from synthetic import build_store

    from qscope_eval.jobs.summary import coverage_report, load, overlap_report

    with build_store(tmp_path / "s.duckdb") as store:
        ld = load(store)
        texts = store.texts(ld.real.sample_ids.tolist())
        cov, ov = coverage_report(ld), overlap_report(ld, "sym")
    assert ld.lexical.source == "computed" and ld.lexical.encoder_id is None  # older database: from the texts
    assert cov["encoder"]["lexical_source"] == "computed" and cov["encoder"]["lexical_definition"] == "top"
    # every prompt here has fewer than 32 words, so `top` keeps them all: a benchmark's lexical features are
    # its distinct words, counted here with plain Python sets of each word's hashed column (two of these random
    # numbers may share a column: the hashed width is the baseline's, so the sets are of columns)
    words = {}
    for b, name in enumerate(ld.real.benchmarks):
        rows = ld.real.M[b].indices
        words[name] = {_column(w.lower()) for i in rows
                       for w in re.findall(lx.TOKEN_PATTERN, texts[int(ld.real.sample_ids[i])])}
    assert {b["name"]: b["lexical_n_features"] for b in cov["benchmarks"]} == {k: len(v) for k, v in words.items()}
    assert all(b["null_n_features"] is not None for b in cov["benchmarks"])
    names = ov["names"]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            want = len(words[a] & words[b]) / min(len(words[a]), len(words[b]))
            assert ov["lexical_matrix"][i][j] == pytest.approx(want)
    assert ov["null_matrix"] is not None


# ---- the report's headline sentence ----

def _agreement(name, value, lo=None, hi=None):
    return {"name": name, "method": "spearman", "value": value, "lo": lo, "hi": hi}


def test_headline_reads_a_stored_validation_first_then_the_recommendations_evidence():
    from qscope_eval.report.baselines import baseline_sentence

    v = {"n_models": 12, "agreement": [_agreement("sym~score_pearson", 0.6, 0.4, 0.75),
                                       _agreement("null_sym~score_pearson", 0.2),
                                       _agreement("lexical_sym~score_pearson", 0.3)]}
    assert baseline_sentence({"validation": v}).startswith("The SAE beats both baselines on this suite")
    v["agreement"][2] = _agreement("lexical_sym~score_pearson", 0.5)  # the words reach the SAE's lower bound
    s = baseline_sentence({"validation": v})
    assert s.startswith("The SAE does not beat both") and "prompts' words" in s.split("not above the")[1]
    sel = {"null_checked": True, "lexical_checked": True,
           "baseline_pairs": {"candidates": 5, "above_null": 3, "above_lexical": 1, "above_both": 0, "level": 0.9}}
    s = baseline_sentence({"selection": sel})
    assert s.startswith("The SAE does not beat both") and "of its 5 candidate stand-in pairs" in s
    assert "0 above both" in s
    sel["baseline_pairs"].update(above_lexical=3, above_both=2)
    s = baseline_sentence({"selection": sel})
    assert s.startswith("The SAE beats both baselines on 2 of its 5 candidate stand-in pairs") and "2 above both" in s
    sel["lexical_checked"] = False
    assert "no prompts' words encoder" in baseline_sentence({"selection": sel})


def test_the_suite_key_is_a_boolean_on_by_default(tmp_path):
    from qscope_eval.data.suite import SuiteError, load_suite

    base = "name: s\nmodel: {id: ./m}\nsae: {path: ./sae}\nlayers: [1]\nbenchmarks:\n  - {name: a, path: a.jsonl, text: q}\n"
    (tmp_path / "on.yaml").write_text(base)
    assert load_suite(tmp_path / "on.yaml").lexical is True
    (tmp_path / "off.yaml").write_text(base + "lexical: false\n")
    assert load_suite(tmp_path / "off.yaml").lexical is False
    (tmp_path / "bad.yaml").write_text(base + "lexical: yes-please\n")
    with pytest.raises(SuiteError, match="lexical must be true or false"):
        load_suite(tmp_path / "bad.yaml")
