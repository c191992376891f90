"""The Table-2 analysis (analysis/behaviour.py) on synthetic models with a planted factor structure,
checked against independent slow computations (pandas, scipy, explicit loops), plus its bad input.

Scores = general ability + group ability + noise, benchmarks in 4 groups: the planted group
matrix is the "true" proxy. sae:sym = planted + noise must agree, null:sym = a random symmetric
matrix must not (Mantel calibrated), lexical:tfidf = a weaker mix sits in between.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qscope_eval.analysis import behaviour_stats as bs
from qscope_eval.analysis.behaviour import (AgreementConfig, BehaviourError, pairwise_scores, score_agreement)
from qscope_eval.analysis.behaviour_verdict import jackknife_values

N_MODELS, K, G = 100, 16, 4
FAST = AgreementConfig(replicates=200, permutations=300, splits=20)


def planted(seed=0, n=N_MODELS, k=K, groups=G, missing=0.1, general=1.0, group=0.8, noise=0.6):
    rng = np.random.default_rng(seed)
    grp = np.arange(k) % groups
    S = 0.5 + 0.1 * (general * rng.standard_normal(n)[:, None] + group * rng.standard_normal((n, groups))[:, grp]
                     + noise * rng.standard_normal((n, k)))
    S[rng.random(S.shape) < missing] = np.nan
    return S, (grp[:, None] == grp[None, :]).astype(float), grp


def sym_noise(rng, k, scale):
    A = rng.standard_normal((k, k)) * scale
    return (A + A.T) / 2


def proxies_for(true, seed=1):
    rng = np.random.default_rng(seed)
    k = true.shape[0]
    return {"sae:sym": true + sym_noise(rng, k, 0.3), "null:sym": sym_noise(rng, k, 1.0),
            "lexical:tfidf": 0.3 * true + sym_noise(rng, k, 0.5)}


NAMES = [f"bench{i}" for i in range(K)]


@pytest.fixture(scope="module")
def result():
    S, true, _ = planted()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return score_agreement(S, proxies_for(true), NAMES, FAST)


# ----------------------------------------------------------------------------- planted structure
def test_partial_recovers_groups_raw_is_general():
    S, true, _ = planted()
    ps = pairwise_scores(S)
    iu, ju = np.triu_indices(K, 1)
    same = true[iu, ju] > 0
    raw, par = ps.raw[iu, ju], ps.partial[iu, ju]
    assert raw[~same].mean() > 0.3            # the general factor makes every pair correlate
    assert par[~same].mean() < raw[~same].mean() - 0.3     # ... and partialling removes it (the mean also
    assert par[~same].mean() > -0.35                       # holds 1/4 of each group factor: slightly negative)
    assert par[same].mean() > 0.3             # the group structure stays
    assert par[same].min() > par[~same].max() - 0.1


def test_planted_agreement_and_baselines(result):
    d = result.to_dict()
    json.dumps(d, allow_nan=False)
    rows = {p["name"]: p for p in d["proxies"]}
    sae, null, lex = rows["sae:sym"], rows["null:sym"], rows["lexical:tfidf"]
    assert sae["partial_pearson_lo"] > 0.3 and sae["partial_mantel_p"] < 0.01
    assert sae["partial_pearson_lo"] <= sae["partial_pearson"] <= sae["partial_pearson_hi"]
    assert null["partial_pearson"] < sae["partial_pearson_lo"]
    assert lex["partial_pearson"] < sae["partial_pearson"]
    comp = {(c["proxy"], c["baseline"], c["statistic"]): c for c in d["comparisons"]}
    c = comp[("sae:sym", "null:sym", "partial_pearson")]
    assert c["lo"] > 0 and c["p_better"] < 0.01 and c["diff"] == pytest.approx(sae["partial_pearson"] - null["partial_pearson"])
    assert ("sae:sym", "lexical:tfidf", "pearson") in comp
    assert any(v.startswith("sae:sym beats null:sym") for v in d["verdicts"])
    assert any("strongest lexical baseline" in v for v in d["verdicts"])
    # the sentence read first: the headline SAE proxy against the null's same measure and the strongest words
    assert d["verdicts"][0].startswith("In short: on these") and "tracks" in d["verdicts"][0]
    assert "better than null:sym" in d["verdicts"][0] and "not clearly" not in d["verdicts"][0]
    rel = d["reliability"]
    assert 0 < rel["spearman_brown"] <= 1 and rel["ceiling"] == pytest.approx(np.sqrt(rel["spearman_brown"]))
    assert sae["partial_pearson"] < rel["ceiling"] + 0.1
    assert d["n_pairs"] == K * (K - 1) // 2 and len(d["pairs"]) == d["n_pairs"]
    first, row = d["pairs"][5], result.pairs.iloc[5]
    assert (first["a"], first["b"], first["score_partial"]) == (row["a"], row["b"], row["score_partial"])
    assert first["proxies"]["null:sym"] == row["null:sym"]
    assert set(d) >= {"n_models", "n_benchmarks", "n_pairs", "control", "names", "reliability", "proxies",
                      "comparisons", "pairs", "disagreements", "too_few_models", "verdicts", "notes"}


def test_comparisons_pair_measures_and_headline():
    S, true, _ = planted(seed=16)
    rng = np.random.default_rng(3)
    prox = {"sae:sym": true + sym_noise(rng, K, 0.5), "sae:characteristic": true + sym_noise(rng, K, 0.2),
            "null:characteristic": sym_noise(rng, K, 1.0), "lexical:tfidf": 0.3 * true + sym_noise(rng, K, 0.5),
            "lexical:sym": sym_noise(rng, K, 1.0)}
    res = score_agreement(S, prox, NAMES, AgreementConfig(replicates=50, permutations=50, splits=20))
    pairs = {(c["proxy"], c["baseline"]) for c in res.comparisons}
    assert pairs == {("sae:sym", "lexical:sym"), ("sae:sym", "lexical:tfidf"), ("sae:characteristic", "null:characteristic"),
                     ("sae:characteristic", "lexical:sym"), ("sae:characteristic", "lexical:tfidf")}
    assert {d["proxy"] for d in res.disagreements} == {"sae:characteristic"}
    assert "sae:characteristic reaches" in res.verdicts[-1]
    assert sum("(the strongest lexical baseline)" in v for v in res.verdicts) == 2      # lexical:tfidf, once per SAE proxy


def test_null_mantel_is_calibrated():
    """Random proxies: Mantel p roughly uniform (few below 0.05), whatever the behaviour."""
    S, true, _ = planted(seed=3)
    rng = np.random.default_rng(7)
    cfg = AgreementConfig(replicates=0, permutations=199, splits=0)
    ps = [score_agreement(S, {"null:sym": sym_noise(rng, K, 1.0)}, NAMES, cfg).proxies[0]["partial_mantel_p"]
          for _ in range(40)]
    ps = np.array(ps)
    assert (ps < 0.05).mean() <= 0.2 and 0.3 < ps.mean() < 0.7


def test_disagreement_finds_planted_pairs():
    S, true, grp = planted(seed=4)
    par = pairwise_scores(S).partial
    iu, ju = np.triu_indices(K, 1)
    t_lo = np.nanargmin(par[iu, ju])          # behaves least alike ...
    t_hi = np.nanargmax(par[iu, ju])          # ... and most alike
    P = true.copy()
    P[iu[t_lo], ju[t_lo]] = P[ju[t_lo], iu[t_lo]] = 1.5      # the proxy calls the first most alike
    P[iu[t_hi], ju[t_hi]] = P[ju[t_hi], iu[t_hi]] = -1.0     # and the second least alike
    res = score_agreement(S, {"sae:sym": P}, NAMES, AgreementConfig(replicates=0, permutations=0, splits=0))
    pos = [d for d in res.disagreements if d["direction"] == "features alike, scores not"]
    neg = [d for d in res.disagreements if d["direction"] == "scores alike, features not"]
    assert (pos[0]["a"], pos[0]["b"]) == (NAMES[iu[t_lo]], NAMES[ju[t_lo]])
    assert (pos[0]["proxy_rank"], pos[0]["behaviour_rank"]) == (1, 120)
    assert (neg[0]["a"], neg[0]["b"]) == (NAMES[iu[t_hi]], NAMES[ju[t_hi]]) and neg[0]["rank_gap"] == 1 - 120
    assert len(pos) <= 10 and len(neg) <= 10


# ----------------------------------------------------------------------------- independent computations
def test_pairwise_raw_matches_pandas():
    S, _, _ = planted(seed=5, missing=0.25)
    S[:60, 3] = np.nan                         # a benchmark few models have
    S[:97, 7] = np.nan                         # ... and one with too few for any pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps = pairwise_scores(S, AgreementConfig(min_pair_models=5))
    ref = pd.DataFrame(S).corr(min_periods=5).to_numpy()
    assert np.array_equal(np.isnan(ps.raw), np.isnan(ref))
    np.testing.assert_allclose(ps.raw, ref, atol=1e-10, equal_nan=True)
    M = np.isfinite(S)
    np.testing.assert_array_equal(ps.n, M.T.astype(int) @ M.astype(int))


def _slow_partial(S, g, min_n=5):
    """Residualise every column on g over its own models (np.polyfit), then pandas pairwise corr."""
    R = np.full_like(S, np.nan)
    for k in range(S.shape[1]):
        ok = np.isfinite(S[:, k]) & np.isfinite(g)
        slope, icpt = np.polyfit(g[ok], S[ok, k], 1)
        R[ok, k] = S[ok, k] - (slope * g[ok] + icpt)
    return pd.DataFrame(R).corr(min_periods=min_n).to_numpy()


def test_partial_matches_slow_residualisation():
    S, _, _ = planted(seed=6, missing=0.15)
    Zs = (S - np.nanmean(S, axis=0)) / np.nanstd(S, axis=0, ddof=1)
    g = np.nanmean(Zs, axis=1)                 # 'mean': mean standardised score over what the model has
    ps = pairwise_scores(S)
    iu, ju = np.triu_indices(K, 1)
    np.testing.assert_allclose(ps.partial[iu, ju], _slow_partial(S, g)[iu, ju], atol=1e-9)
    # reference control: partial on benchmark 2; its own pairs are undefined
    ps = pairwise_scores(S, AgreementConfig(control="reference", reference=2))
    slow = _slow_partial(S, S[:, 2])
    keep = (iu != 2) & (ju != 2)
    np.testing.assert_allclose(ps.partial[iu, ju][keep], slow[iu, ju][keep], atol=1e-9)
    assert np.isnan(ps.partial[2, np.arange(K) != 2]).all()


def test_pc1_matches_sklearn_pca_on_complete_data():
    from sklearn.decomposition import PCA

    S, _, _ = planted(seed=8, missing=0.0)
    Zs = (S - S.mean(axis=0)) / S.std(axis=0, ddof=1)
    g = PCA(n_components=1).fit_transform(Zs)[:, 0]
    ps = pairwise_scores(S, AgreementConfig(control="pc1"))
    iu, ju = np.triu_indices(K, 1)
    np.testing.assert_allclose(ps.partial[iu, ju], _slow_partial(S, g)[iu, ju], atol=1e-8)


def test_agreement_point_values_match_scipy(result):
    S, true, _ = planted()
    prox = proxies_for(true)
    ps = pairwise_scores(S)
    iu, ju = np.triu_indices(K, 1)
    for row in result.proxies:
        p = prox[row["name"]][iu, ju]
        for pre, beh in (("", ps.raw[iu, ju]), ("partial_", ps.partial[iu, ju])):
            assert row[pre + "pearson"] == pytest.approx(stats.pearsonr(p, beh).statistic, abs=1e-12)
            assert row[pre + "spearman"] == pytest.approx(stats.spearmanr(p, beh).statistic, abs=1e-12)
        jk = jackknife_values(p, ps.partial[iu, ju], np.ones(p.size, bool), iu, ju, K)
        for k in (0, 5):                       # leave-one-benchmark-out against an explicit drop
            keep = (iu != k) & (ju != k)
            assert jk[k] == pytest.approx(stats.pearsonr(p[keep], ps.partial[iu, ju][keep]).statistic, abs=1e-10)


def test_pair_group_with_undefined_replicate_pairs():
    """A replicate with a few undefined pairs: Pearson exact on the rest, Spearman close to exact."""
    rng = np.random.default_rng(5)
    P = rng.normal(size=(400, 3))
    r = np.tanh(P[:, 0] + rng.normal(size=400))
    grp = bs.PairGroup(np.arange(400), P)
    r[::37] = np.nan
    ok = np.isfinite(r)
    pe, sr = grp.agree(r)
    for u in range(3):
        assert pe[u] == pytest.approx(stats.pearsonr(P[ok, u], r[ok]).statistic, abs=1e-10)
        assert sr[u] == pytest.approx(stats.spearmanr(P[ok, u], r[ok]).statistic, abs=0.01)


class _FixedPerms:
    """A stand-in generator whose random() makes argsort return the given permutations."""

    def __init__(self, perms):
        self.perms, self.i = perms, 0

    def random(self, shape):
        out = np.argsort(self.perms[self.i:self.i + shape[0]], axis=1).astype(float)   # inverse: argsort -> perm
        self.i += shape[0]
        return out


def test_mantel_null_matches_slow_loop():
    S, true, _ = planted(seed=9)
    ps = pairwise_scores(S)
    prox = proxies_for(true, seed=2)
    prox["null:sym"][0, 3] = prox["null:sym"][3, 0] = np.nan      # an undefined proxy entry
    iu, ju = np.triu_indices(K, 1)
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(K) for _ in range(70)])
    names = list(prox)
    fast = bs.mantel_null(np.stack([ps.partial]), np.column_stack([prox[n][iu, ju] for n in names]), 70,
                          _FixedPerms(perms), batch=32)                       # (70, 1, J)
    for t in (0, 33, 69):
        B = ps.partial[perms[t]][:, perms[t]]
        for j, n in enumerate(names):
            x, y = B[iu, ju], prox[n][iu, ju]
            ok = np.isfinite(x) & np.isfinite(y)
            assert fast[t, 0, j] == pytest.approx(stats.pearsonr(x[ok], y[ok]).statistic, abs=1e-5)


def test_replicate_weights_equal_repeated_rows_and_pandas():
    """A bootstrap weighting equals the explicitly resampled table (complete data: exact Pearson)."""
    S, _, _ = planted(seed=10, missing=0.0)
    Z, M, _, _ = bs.standardise(S)
    g = bs.general_factor(Z, M, "mean", None)
    rep = bs.Replicator(Z, M, g)
    iu, ju = np.triu_indices(K, 1)
    w = np.bincount(np.random.default_rng(1).integers(0, N_MODELS, N_MODELS), minlength=N_MODELS).astype(float)
    raw, par = rep(w, iu, ju)
    rows = np.repeat(np.arange(N_MODELS), w.astype(int))
    np.testing.assert_allclose(raw, np.corrcoef(S[rows].T)[iu, ju], atol=2e-5)
    Gr = g[rows]
    R = np.column_stack([S[rows, k] - np.polyval(np.polyfit(Gr, S[rows, k], 1), Gr) for k in range(K)])
    np.testing.assert_allclose(par, np.corrcoef(R.T)[iu, ju], atol=2e-5)


@pytest.mark.parametrize("control, reference", [("mean", None), ("pc1", None), ("reference", 3)])
def test_complete_table_shortcut_equals_residual_path(control, reference):
    """Without missing cells the partial comes from the raw co-moments; it must equal residualising."""
    S, _, _ = planted(seed=15, missing=0.0)
    Z, M, _, _ = bs.standardise(S)
    g = bs.general_factor(Z, M, control, reference)
    fast, slow = bs.Replicator(Z, M, g), bs.Replicator(Z, M, g)
    slow.complete = False                      # forces the residual path (Ms = sqrt(w) everywhere)
    iu, ju = np.triu_indices(K, 1)
    w = np.bincount(np.random.default_rng(4).integers(0, N_MODELS, N_MODELS), minlength=N_MODELS).astype(float)
    (r1, p1), (r2, p2) = fast(w, iu, ju), slow(w, iu, ju)
    np.testing.assert_allclose(r1, r2, atol=1e-5)
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    if reference is not None:
        assert np.isnan(p1[(iu == reference) | (ju == reference)]).all()


def test_replicate_close_to_pairwise_complete_with_missing_cells():
    S, _, _ = planted(seed=11, missing=0.1)
    Z, M, _, _ = bs.standardise(S)
    iu, ju = np.triu_indices(K, 1)
    raw, _ = bs.Replicator(Z, M, None)(np.ones(N_MODELS), iu, ju)
    exact = pd.DataFrame(S).corr().to_numpy()[iu, ju]
    assert np.abs(raw - exact).mean() < 0.02 and np.abs(raw - exact).max() < 0.08


def _slow_available_case(X, mask, w):
    """Weighted available-case correlation, pair by pair: each column centred and scaled over its own models,
    the covariance averaged over the models scored on both (what a replicate computes)."""
    k = X.shape[1]
    mean = [np.average(X[mask[:, a], a], weights=w[mask[:, a]]) for a in range(k)]
    sd = [np.sqrt(np.average((X[mask[:, a], a] - mean[a]) ** 2, weights=w[mask[:, a]])) for a in range(k)]
    r = np.full((k, k), np.nan)
    for a in range(k):
        for b in range(a + 1, k):
            c = mask[:, a] & mask[:, b]
            cov = np.average((X[c, a] - mean[a]) * (X[c, b] - mean[b]), weights=w[c])
            r[a, b] = cov / (sd[a] * sd[b])
    return r


@pytest.mark.parametrize("control, reference", [("mean", None), ("reference", 3), ("none", None)])
def test_replicate_equals_slow_available_case_with_missing_cells(control, reference):
    """Every replicate path with missing cells (g for all models, g missing for some, no g) against a pair loop."""
    S, _, _ = planted(seed=16, missing=0.15)
    Z, M, _, _ = bs.standardise(S)
    g = bs.general_factor(Z, M, control, reference)
    iu, ju = np.triu_indices(K, 1)
    w = np.bincount(np.random.default_rng(6).integers(0, N_MODELS, N_MODELS), minlength=N_MODELS).astype(float)
    raw, par = bs.Replicator(Z, M, g)(w, iu, ju)
    on = M & (w > 0)[:, None]
    np.testing.assert_allclose(raw, _slow_available_case(Z, on, w)[iu, ju], atol=2e-5)
    if g is None:
        return
    on &= np.isfinite(g)[:, None]
    E = np.zeros_like(Z)
    for k in range(K):                         # weighted least squares of z on g over the column's models
        c = on[:, k]
        beta, icpt = np.polyfit(g[c], Z[c, k], 1, w=np.sqrt(w[c]))
        E[c, k] = Z[c, k] - beta * g[c] - icpt
    slow = _slow_available_case(E, on, w)[iu, ju]
    if reference is not None:                  # g explains the reference exactly: its partial is undefined
        slow[(iu == reference) | (ju == reference)] = np.nan
    ok = np.isfinite(slow)
    assert np.array_equal(ok, np.isfinite(par)) and ok.sum() >= iu.size - K
    np.testing.assert_allclose(par[ok], slow[ok], atol=2e-5)


def test_reliability_matches_one_slow_split():
    S, _, _ = planted(seed=12, missing=0.0)
    cfg = AgreementConfig(splits=1, control="none")
    Z, M, _, _ = bs.standardise(S)
    iu, ju = np.triu_indices(K, 1)
    rel = bs.reliability(bs.Replicator(Z, M, None), N_MODELS, cfg, np.ones(iu.size, bool), iu, ju, "raw")
    perm = np.random.default_rng([cfg.seed, 2]).permutation(N_MODELS)   # the split reliability() draws
    a, b = (np.corrcoef(S[h].T)[iu, ju] for h in (perm[:50], perm[50:100]))
    sh = stats.pearsonr(a, b).statistic
    assert rel["split_half"] == pytest.approx(sh, abs=1e-4)
    assert rel["spearman_brown"] == pytest.approx(2 * sh / (1 + sh), abs=1e-4)


def test_quick_ranks_spearman_close_to_exact():
    x = np.random.default_rng(2).uniform(-1, 1, 5000)
    y = x + np.random.default_rng(3).normal(0, 0.5, 5000)
    fast = np.corrcoef(bs.quick_ranks(x), stats.rankdata(y))[0, 1]
    assert fast == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-4)


# ----------------------------------------------------------------------------- bad input, no warnings
@pytest.mark.parametrize("mutate, match", [
    (lambda S, P: (S[:2], P), "at least 3"),
    (lambda S, P: (np.where(np.arange(K) == 4, 0.7, S), P), "same score"),
    (lambda S, P: (np.where(np.arange(K) == 4, np.nan, S), P), "no scores"),
    (lambda S, P: (S, {"sae:sym": P["sae:sym"][:5, :5]}), "shape"),
    (lambda S, P: (S, {"sym": P["sae:sym"]}), "<kind>:<measure>"),
    (lambda S, P: (np.where(np.arange(K) == 1, "45%", S.astype(object)), P), "numeric"),
    (lambda S, P: (np.where(np.arange(N_MODELS)[:, None] % K == np.arange(K)[None, :], S, np.nan), P),
     "benchmark pairs have at least"),
])
def test_bad_input_says_how_to_fix(mutate, match):
    S, true, _ = planted(seed=13)
    S2, P2 = mutate(S, proxies_for(true))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BehaviourError, match=match):
            score_agreement(S2, P2, NAMES, AgreementConfig(replicates=0, permutations=0, splits=0))


@pytest.mark.parametrize("kw, match", [
    ({"control": "reference"}, "reference"), ({"reference": 2}, "reference"), ({"control": "median"}, "control"),
    ({"replicates": 5}, "replicates"), ({"min_pair_models": 2}, "min_pair_models"), ({"level": 1.5}, "level"),
])
def test_config_cross_checks(kw, match):
    with pytest.raises(BehaviourError, match=match):
        AgreementConfig(**kw)


def test_awkward_data_runs_without_warnings():
    """Reference control (undefined pairs), sparse columns, NaN proxy entries, near-ties: notes, no warnings."""
    S, true, _ = planted(seed=14, n=40, missing=0.3)
    S[:, 5] = np.round(S[:, 5], 1)             # few distinct values: resamples may lose all spread
    S[:34, 9] = np.nan                          # 6 models: some pairs fall under min_pair_models
    prox = proxies_for(true)
    prox["lexical:tfidf"][1, 2] = np.nan
    prox["lexical:tfidf"][2, 1] = 0.4           # one direction only: symmetrised from the other
    prox["null:sym"] = prox["null:sym"] + np.triu(np.full((K, K), 0.05), 1)      # asymmetric
    prox["sae:jaccard"] = np.full((K, K), np.nan)                              # a proxy with nothing defined
    cfg = AgreementConfig(control="reference", reference=0, replicates=50, permutations=99, splits=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = score_agreement(S, prox, NAMES, cfg)
        d = res.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["too_few_models"] and all(t["n_models"] < 5 for t in d["too_few_models"])
    assert any("asymmetric" in n for n in d["notes"]) and any("undefined" in n for n in d["notes"])
    assert all(p["score_partial"] is None for p in d["pairs"] if NAMES[0] in (p["a"], p["b"]))
    jac = next(p for p in d["proxies"] if p["name"] == "sae:jaccard")
    assert jac["n_pairs"] == 0 and jac["partial_pearson"] is None and jac["partial_mantel_p"] is None
    assert any(v.startswith("sae:jaccard: too few pairs") for v in d["verdicts"])
