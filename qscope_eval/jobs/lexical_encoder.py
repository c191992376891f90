"""The lexical encoder's rows: the prompts' own words stored like an SAE encoder (kind `lexical`, docs/baselines.md).

The encode job registers one lexical twin per SAE encoder (`lexical_infos`) and its
writer thread adds the twin's rows to every batch it writes (`with_lexical`), from
the batch's texts: host-side work that never holds up the model. The store keeps
each prompt's full hashed word counts (content-addressed like the samples); what a
lexical "fired feature" is (`analysis.lexical.lexical_features`) is applied when
they are read.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from qscope_eval.analysis.lexical import DEFAULT_DEFINITION, LEXICAL_WIDTH, lexical_features, term_counts
from qscope_eval.data.suite import Suite
from qscope_eval.model.encoders import EncoderInfo, EncoderKey, encoder_key


def lexical_infos(suite: Suite, encoders: Sequence[EncoderInfo]) -> list[EncoderInfo]:
    """The lexical twin of every SAE encoder (none with `lexical: false`): the words need no model."""
    if not suite.lexical:
        return []
    return [EncoderInfo(str(encoder_key(suite, e.layer, "lexical")), e.layer, "lexical", LEXICAL_WIDTH, 0)
            for e in encoders if e.kind == "sae"]


class LexicalRows(NamedTuple):
    """A lexical encoder's rows for one batch, in a PooledBatch's COO layout (rows index the batch's ids)."""

    row: np.ndarray
    feature: np.ndarray
    value: np.ndarray
    """The term's count in the prompt."""
    n_tokens: np.ndarray
    """The same count (a term "fires" on each of its occurrences)."""


def lexical_rows(texts: Sequence[str]) -> LexicalRows:
    """Every prompt's hashed word counts (analysis.lexical.term_counts) as COO rows."""
    C = term_counts(texts).tocoo()
    counts = C.data.astype(np.float32)
    return LexicalRows(C.row.astype(np.int64), C.col.astype(np.int32), counts, counts.astype(np.int32))


def with_lexical(batch, encoders: dict, texts: dict[int, str] | None):
    """`batch` with the rows of every lexical encoder in `encoders`, computed from the texts of its ids (host-side:
    the writer thread runs it, so the model never waits for it)."""
    keys = [k for k, e in encoders.items() if e.kind == "lexical" and k not in batch.pooled]
    if not keys or texts is None:
        return batch
    rows = lexical_rows([texts[int(i)] for i in batch.ids])
    return batch._replace(pooled={**batch.pooled, **{k: rows for k in keys}})


class LexicalSet(NamedTuple):
    """The lexical baseline of one SAE encoder's samples, row-aligned with them."""

    data: object
    """store.EncodedSet: X (n_samples × LEXICAL_WIDTH) = the lexical "fired features" (lexical_features)."""
    source: str
    """`stored` (the lexical encoder had every sample), `computed` (from the stored texts: an older database or
    samples it lacks), or `mixed`."""
    encoder_id: int | None
    """The stored lexical encoder's id, or None."""
    definition: str
    """analysis.lexical definition applied (`terms` or `top`)."""


def load_lexical(store, real, definition: str = DEFAULT_DEFINITION) -> LexicalSet | None:
    """The lexical baseline aligned with `real` (an EncodedSet): the stored lexical twin's counts, and for samples
    it lacks (or without one) the counts computed from the stored texts, which is cheap. None when the encode run
    opted out (`lexical: false` recorded on the SAE encoder) and nothing was stored."""
    import dataclasses

    import scipy.sparse as sp

    enc = store.null_for(real.encoder, "lexical")
    if enc is None and (real.encoder.params or {}).get("lexical") is False:
        return None
    n = len(real.sample_ids)
    C = sp.csr_matrix((n, LEXICAL_WIDTH), dtype=np.float32)
    have = np.zeros(n, bool)
    if enc is not None:
        st = store.load_encoded(enc, real.benchmarks)
        pos = np.searchsorted(real.sample_ids, st.sample_ids)  # both sorted by sample id
        ok = (pos < n) & (real.sample_ids[np.minimum(pos, n - 1)] == st.sample_ids)
        P = sp.csr_matrix((np.ones(int(ok.sum())), (pos[ok], np.flatnonzero(ok))), shape=(n, len(st.sample_ids)))
        C = sp.csr_matrix(P @ st.X, dtype=np.float32)
        have[pos[ok]] = True
    missing = np.flatnonzero(~have)
    if missing.size:
        texts = store.texts([int(i) for i in real.sample_ids[missing]])
        Cm = term_counts([texts.get(int(i), "") for i in real.sample_ids[missing]])
        P = sp.csr_matrix((np.ones(missing.size), (missing, np.arange(missing.size))), shape=(n, missing.size))
        C = sp.csr_matrix(C + P @ Cm, dtype=np.float32)
    source = "stored" if not missing.size else ("computed" if not have.any() else "mixed")
    row = enc or dataclasses.replace(real.encoder, encoder_id=-1, kind="lexical", d_sae=LEXICAL_WIDTH,
                                     key=str(EncoderKey.parse(real.encoder.key).twin("lexical")))
    data = dataclasses.replace(real, encoder=row, X=lexical_features(C, definition))
    return LexicalSet(data, source, None if enc is None else enc.encoder_id, definition)


def warm_up() -> None:
    """Import the word vectorizer in a background thread (seconds on a loaded machine), so the writer's first
    batch does not wait for it: encode_suite calls this before it loads the model."""
    import threading

    def _import():
        from sklearn.feature_extraction.text import HashingVectorizer  # noqa: F401

    threading.Thread(target=_import, name="qscope-lexical-import", daemon=True).start()
