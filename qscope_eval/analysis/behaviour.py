"""The Table-2 analysis: does benchmark similarity by features track benchmark similarity by scores?

Input: a score table S (n models × K benchmarks, NaN = not scored) and pairwise similarity
matrices ("proxies") among the same K benchmarks, named "<kind>:<measure>" with kind sae, null
(the random-direction dictionary of the same shape) or lexical (the prompts' own words).

What is computed, and why this way:
- Score correlation of a benchmark pair: Pearson over the models scored on both
  (pairwise-complete, like pandas' DataFrame.corr); a pair with fewer than `min_pair_models`
  models is listed under too_few_models and left out, never guessed.
- Partial correlation on the general factor: most of the score correlation between any two
  benchmarks is "good models are good at everything". Each benchmark's scores are regressed on
  the general factor g over the models it has, and the residuals are correlated pairwise-complete.
  With no missing cells this is exactly the textbook partial correlation; with missing cells it
  estimates each benchmark's dependence on g from all of its models (steadier than the formula
  (r_ab − r_ag r_bg)/√… on three differently-sized model sets, which can leave [-1, 1]).
  g is the mean standardised score by default (see behaviour_stats.general_factor); the Qwen-Scope
  report's Table 2 partials on MMLU instead (control='reference'). With few benchmarks, the mean
  contains the pair's own two benchmarks, which pulls partial correlations slightly down.
- Agreement: Pearson and Spearman, over benchmark pairs, of proxy similarity with score
  correlation (raw and partial). The headline is the partial Pearson.
- Mantel p: one-sided (proxy tracks behaviour positively), permuting the benchmark labels of the
  proxy (rows and columns together); this respects that pairs sharing a benchmark are not
  independent. p = (1 + #perm ≥ observed) / (1 + permutations).
- Interval: percentile bootstrap over models (rows of S resampled with replacement; every score
  correlation, the residualisation and the agreement are recomputed; each model's general-factor
  score is computed once and travels with it). Resampling adds noise that pulls every replicate's
  agreement down, so the percentiles are re-centred on the point estimate. It covers "other models
  like mine on these benchmarks", not "other benchmarks": for the latter, a leave-one-benchmark-out
  jackknife standard error is given beside it (`*_benchmark_se`). Paired comparisons (SAE minus
  baseline) use the same replicates for both, on the pairs both define.
- Reliability ceiling: split the models in two random halves, correlate the pair vectors of
  score correlation computed on each half, average over splits, Spearman-Brown correct to all
  models. A proxy measured without error could reach at most sqrt(reliability) (attenuation).
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from qscope_eval.analysis import behaviour_stats as bs
from qscope_eval.analysis.behaviour_verdict import (comparison_list, comparisons_and_verdicts, disagreements, interval,
                                                     jackknife_pearson, notes_for)
from qscope_eval.errors import QScopeError

KINDS = ("sae", "null", "lexical")
CONTROLS = ("mean", "pc1", "reference", "none")
MIN_MODELS = bs.MIN_MODELS
WORKERS = max(1, min(2, os.cpu_count() or 1))
"""Replicates computed at once (threads; each product on one BLAS thread)."""


class BehaviourError(QScopeError):
    """The score table or the proxies cannot support the analysis (the message says how to fix it)."""


@dataclass(frozen=True)
class AgreementConfig:
    """How the proxy-vs-behaviour agreement is computed."""

    control: str = "mean"
    """General factor partialled out: 'mean', 'pc1', 'reference' (benchmark `reference`) or 'none'."""
    reference: int | None = None
    """Column index of the reference benchmark when control == 'reference'."""
    permutations: int = 1000
    """Mantel permutations of the benchmark labels (0 = no Mantel test)."""
    replicates: int = 500
    """Bootstrap replicates over models (0 = no intervals)."""
    level: float = 0.95
    """Coverage of every interval."""
    min_pair_models: int = 5
    """A benchmark pair needs this many models scored on both, else it is reported as too few."""
    seed: int = 0
    """Seed of the bootstrap, the permutations and the splits."""
    n_disagree: int = 10
    """Pairs listed in each direction where the headline proxy and behaviour disagree most."""
    splits: int = 50
    """Random half splits of the models behind the reliability ceiling (0 = none)."""
    headline: str | None = None
    """Proxy whose disagreements are listed; default sae:characteristic, else sae:sym, else the first sae:*."""

    def __post_init__(self):
        if self.control not in CONTROLS:
            raise BehaviourError(f"control must be one of {', '.join(CONTROLS)}, not {self.control!r}")
        if (self.control == "reference") != (self.reference is not None):
            raise BehaviourError("give a reference benchmark exactly when control is 'reference' "
                                 "(e.g. control='reference', reference=<column of MMLU>)")
        if self.reference is not None and self.reference < 0:
            raise BehaviourError("reference must be a column index >= 0")
        for name in ("permutations", "replicates", "splits", "n_disagree"):
            if getattr(self, name) < 0:
                raise BehaviourError(f"{name} must be >= 0")
        if 0 < self.replicates < 20:
            raise BehaviourError("replicates must be 0 (no intervals) or at least 20 for a percentile interval")
        if not 0.5 <= self.level < 1:
            raise BehaviourError("level must be in [0.5, 1), e.g. 0.95")
        if self.min_pair_models < MIN_MODELS:
            raise BehaviourError(f"min_pair_models must be >= {MIN_MODELS}: a correlation over fewer models is meaningless")


class PairwiseScores(NamedTuple):
    """Benchmark × benchmark score correlations across models."""

    raw: np.ndarray
    """(K, K) Pearson, pairwise-complete; NaN where fewer than min_pair_models models or no spread."""
    partial: np.ndarray
    """(K, K) partial correlation on the general factor (= raw for control 'none'); NaN where undefined."""
    n: np.ndarray
    """(K, K) int, models scored on both."""


@dataclass
class AgreementResult:
    """Everything `score_agreement` found; `to_dict()` is the stable JSON form (docs/behaviour.md)."""

    n_models: int
    n_benchmarks: int
    n_pairs: int
    control: str
    names: list[str]
    reliability: dict
    proxies: list[dict]
    comparisons: list[dict]
    pairs: pd.DataFrame
    """One row per benchmark pair: a, b, n_models, score_corr, score_partial, then one column per proxy."""
    disagreements: list[dict]
    too_few_models: list[dict]
    verdicts: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        proxy_names = [p["name"] for p in self.proxies]

        def col(c):                                   # NaN -> None, numpy -> Python, in one pass per column
            return [x if x == x else None for x in self.pairs[c].to_numpy(dtype=np.float64).tolist()]

        prox = [col(p) for p in proxy_names]
        pairs = [{"a": a, "b": b, "n_models": int(nm), "score_corr": r, "score_partial": rp,
                  "proxies": dict(zip(proxy_names, vals))}
                 for a, b, nm, r, rp, *vals in zip(self.pairs["a"].astype(str).tolist(),
                                                   self.pairs["b"].astype(str).tolist(),
                                                   self.pairs["n_models"].tolist(), col("score_corr"),
                                                   col("score_partial"), *prox)]
        out = _clean({"n_models": self.n_models, "n_benchmarks": self.n_benchmarks, "n_pairs": self.n_pairs,
                      "control": self.control, "names": list(self.names), "reliability": self.reliability,
                      "proxies": self.proxies, "comparisons": self.comparisons, "pairs": [],
                      "disagreements": self.disagreements, "too_few_models": self.too_few_models,
                      "verdicts": list(self.verdicts), "notes": list(self.notes)})
        out["pairs"] = pairs                          # already clean; _clean over 10^5 dicts would cost seconds
        return out


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _clean(o):
    """NaN -> None and numpy scalars -> Python, recursively (JSON has no NaN)."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return _num(o)
    return o


# ----------------------------------------------------------------------------- input checks
def _label(names: list[str] | None, k: int) -> str:
    return repr(names[k]) if names is not None else f"column {k}"


def _check_scores(S, names: list[str] | None = None) -> tuple[np.ndarray, int]:
    """S as float (models with no score at all removed) and how many were removed; refuses bad tables."""
    try:
        S = np.array(S, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BehaviourError(f"the score table must be numeric (models × benchmarks): {e}; "
                             "convert text cells such as '45.2%' to numbers first") from None
    if S.ndim != 2:
        raise BehaviourError(f"the score table must be 2-D (models × benchmarks), got shape {S.shape}")
    if names is not None and len(names) != S.shape[1]:
        raise BehaviourError(f"{len(names)} benchmark names for {S.shape[1]} score columns; give one name per column")
    if np.isinf(S).any():
        raise BehaviourError("the score table has infinite cells; replace them by the real score or leave them empty (NaN)")
    rows = np.isfinite(S).any(axis=1)
    S = S[rows]
    if S.shape[0] < MIN_MODELS:
        raise BehaviourError(f"only {S.shape[0]} models have any score; score correlations across models need "
                             f"at least {MIN_MODELS} (and at least 5 per benchmark pair by default): add models")
    if S.shape[1] < 3:
        raise BehaviourError(f"{S.shape[1]} benchmarks give fewer than 3 pairs; the analysis needs at least 3 benchmarks")
    cnt = np.isfinite(S).sum(axis=0)
    for k in np.flatnonzero(cnt == 0):
        raise BehaviourError(f"benchmark {_label(names, k)} has no scores; remove its column or add its scores")
    _, _, _, sd = bs.standardise(S)
    for k in np.flatnonzero(~np.isfinite(sd)):
        v = S[np.isfinite(S[:, k]), k]
        raise BehaviourError(f"benchmark {_label(names, k)} has the same score ({v[0]:g}) for all {v.size} models "
                             "that have it, so no correlation with it exists; remove the column or check that "
                             "the right metric was read")
    return S, int((~rows).sum())


def _check_proxies(proxies: dict, K: int, names: list[str]) -> tuple[list[tuple[str, str, str, np.ndarray]], list[str]]:
    """[(name, kind, measure, symmetric (K, K) matrix)], notes."""
    out, notes = [], []
    for name, P in proxies.items():
        kind, sep, measure = str(name).partition(":")
        if not sep or kind not in KINDS or not measure:
            raise BehaviourError(f"proxy name {name!r} must read '<kind>:<measure>' with kind one of "
                                 f"{', '.join(KINDS)} (e.g. 'sae:sym', 'null:sym', 'lexical:tfidf')")
        try:
            P = np.array(P, dtype=np.float64)
        except (TypeError, ValueError):
            raise BehaviourError(f"proxy {name!r} must be a numeric K × K matrix") from None
        if P.shape != (K, K):
            raise BehaviourError(f"proxy {name!r} has shape {P.shape} but there are {K} benchmarks; compute it on "
                                 "the same benchmarks, in the same order as the score columns")
        if np.isinf(P).any():
            raise BehaviourError(f"proxy {name!r} has infinite entries; leave undefined similarities as NaN")
        both = np.isfinite(P) & np.isfinite(P.T)
        if (both & ~np.isclose(P, P.T, rtol=1e-9, atol=1e-12, equal_nan=True)).any():
            notes.append(f"{name} is asymmetric; the analysis uses the mean of both directions")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            P = np.nanmean(np.stack([P, P.T]), axis=0)
        out.append((str(name), kind, measure, P))
    return out, notes


# ----------------------------------------------------------------------------- score correlations
def _prepare(S: np.ndarray, cfg: AgreementConfig):
    if cfg.reference is not None and cfg.reference >= S.shape[1]:
        raise BehaviourError(f"reference column {cfg.reference} does not exist (there are {S.shape[1]} benchmarks)")
    Z, M, _, _ = bs.standardise(S)
    g = bs.general_factor(Z, M, cfg.control, cfg.reference)
    return Z, M, g


def _pairwise(Z, M, g, cfg) -> PairwiseScores:
    r, _ = bs.masked_corr(Z, M)
    Mf = M.astype(np.float64)
    n = np.rint(Mf.T @ Mf).astype(np.int64)
    raw = np.where(n >= cfg.min_pair_models, r, np.nan)
    np.fill_diagonal(raw, np.where(np.diag(n) >= cfg.min_pair_models, 1.0, np.nan))
    if g is None:
        return PairwiseScores(raw, raw.copy(), n)
    E, Mg = bs.residualise(Z, M, g)
    rp, _ = bs.masked_corr(E, Mg)
    Mgf = Mg.astype(np.float64)
    ng = np.rint(Mgf.T @ Mgf)
    return PairwiseScores(raw, np.where(ng >= cfg.min_pair_models, rp, np.nan), n)


def pairwise_scores(S: np.ndarray, cfg: AgreementConfig = AgreementConfig()) -> PairwiseScores:
    """Score correlations of every benchmark pair across models. S: (n_models, K), NaN = missing."""
    S, _ = _check_scores(S)
    Z, M, g = _prepare(S, cfg)
    return _pairwise(Z, M, g, cfg)


def score_agreement(S: np.ndarray, proxies: dict[str, np.ndarray], names: list[str],
                    cfg: AgreementConfig = AgreementConfig()) -> AgreementResult:
    """Agreement of every proxy with the score correlations, with baselines, intervals and verdicts."""
    # hundreds of (n × K)ᵀ(n × K) products of a few ms each: a second OpenBLAS thread only contends
    # (measured at 1000 × 500: 33 s CPU with the default threads, 9 s with one; wall time too drops)
    with threadpool_limits(limits=1, user_api="blas"):
        return _score_agreement(S, proxies, names, cfg)


def _score_agreement(S, proxies, names, cfg) -> AgreementResult:
    names = [str(x) for x in names]
    S, dropped = _check_scores(S, names)
    n, K = S.shape
    specs, notes = _check_proxies(proxies, K, names)
    head = _headline(cfg, specs)
    Z, M, g = _prepare(S, cfg)
    with np.errstate(all="ignore"):
        ps = _pairwise(Z, M, g, cfg)
    iu, ju = np.triu_indices(K, 1)
    npair = ps.n[iu, ju]
    enough = npair >= cfg.min_pair_models
    if enough.sum() < 3:
        raise BehaviourError(f"only {int(enough.sum())} benchmark pairs have at least {cfg.min_pair_models} models "
                             "scored on both; add models that cover more of the benchmarks, or lower min_pair_models")
    headline = "raw" if g is None else "partial"
    beh = {"raw": ps.raw[iu, ju], "partial": ps.partial[iu, ju]}
    pv = {name: P[iu, ju] for name, _, _, P in specs}

    comps = comparison_list(specs)
    masks = _unit_masks(specs, comps, enough, beh, pv)
    rep = bs.Replicator(Z, M, g)
    point, reps = _bootstrap(masks, pv, beh, rep, n, iu, ju, cfg)
    mantel = _mantel(specs, pv, beh, enough, iu, ju, K, cfg)

    q = (1 - cfg.level) / 2
    proxy_rows = []
    for nm, kind, measure, _ in specs:
        row = {"name": nm, "kind": kind, "measure": measure,
               "n_pairs": int(masks[(headline, nm, None)].sum())}
        for side, pre in (("raw", ""), ("partial", "partial_")):
            key = (side, nm, None)
            for s, stat in enumerate(("pearson", "spearman")):
                lo, hi, _ = interval(reps[key][:, s], q, point[key][s])
                row[pre + stat], row[pre + stat + "_lo"], row[pre + stat + "_hi"] = point[key][s], lo, hi
            row[pre + "pearson_benchmark_se"] = jackknife_pearson(pv[nm], beh[side], masks[key], iu, ju, K)
        row["mantel_p"], row["partial_mantel_p"] = mantel.get(nm, (None, None))
        proxy_rows.append(row)

    pairs = pd.DataFrame({"a": np.array(names)[iu], "b": np.array(names)[ju], "n_models": npair,
                          "score_corr": beh["raw"], "score_partial": beh["partial"], **pv})
    rel = bs.reliability(rep, n, cfg, enough, iu, ju, headline)
    comparisons, verdicts = comparisons_and_verdicts(comps, point, reps, masks, proxy_rows, rel, headline, cfg, n,
                                                     pv, beh, iu, ju, K, head)
    dis = disagreements(head, pv, beh[headline], enough, np.array(names), iu, ju, cfg.n_disagree) if head else []
    too_few = [{"a": names[a], "b": names[b], "n_models": int(c)}
               for a, b, c in zip(iu[~enough], ju[~enough], npair[~enough])]
    notes += notes_for(cfg, dropped, M, enough, beh, headline, reps)
    return AgreementResult(n, K, int(enough.sum()), cfg.control, names, rel, proxy_rows, comparisons, pairs,
                           dis, too_few, verdicts, notes)


class _Identity:
    """Stands in for a Generator in mantel_null so its one 'permutation' is the identity (the observed r)."""

    def __init__(self, K):
        self.K = K

    def random(self, shape):
        return np.tile(np.arange(self.K, dtype=np.float64), (shape[0], 1))


def _headline(cfg, specs) -> str | None:
    have = [nm for nm, *_ in specs]
    if cfg.headline is not None:
        if cfg.headline not in have:
            raise BehaviourError(f"headline proxy {cfg.headline!r} is not among the proxies ({', '.join(have)})")
        return cfg.headline
    for nm in ("sae:characteristic", "sae:sym"):
        if nm in have:
            return nm
    sae = [nm for nm, kind, *_ in specs if kind == "sae"]
    return sae[0] if sae else (have[0] if have else None)


def _unit_masks(specs, comps, enough, beh, pv) -> dict[tuple, np.ndarray]:
    """(side, proxy, restricted-to-baseline or None) -> the pairs it is computed on."""
    masks = {}
    for side in ("raw", "partial"):
        units = [(nm, None) for nm, *_ in specs] + [u for a, b in comps for u in ((a, b), (b, a))]
        for nm, other in units:
            m = enough & np.isfinite(beh[side]) & np.isfinite(pv[nm])
            if other is not None:
                m &= np.isfinite(pv[other])
            masks[(side, nm, other)] = m
    return masks


def _bootstrap(masks, pv, beh, rep, n, iu, ju, cfg):
    """Point (Pearson, Spearman) of every unit and its (replicates, 2) bootstrap values over models.

    Units on the same pairs form one group: one ranking of a replicate's behaviour serves them all.
    """
    groups: dict[tuple, list[str]] = {}
    gmask: dict[tuple, np.ndarray] = {}
    where: dict[tuple, tuple[tuple, int]] = {}
    for key, m in masks.items():
        gkey = (key[0], m.tobytes())
        cols = groups.setdefault(gkey, [])
        gmask[gkey] = m
        if key[1] not in cols:
            cols.append(key[1])
        where[key] = (gkey, cols.index(key[1]))
    pgroups = {}
    for gkey, cols in groups.items():
        idx = np.flatnonzero(gmask[gkey])
        if idx.size >= 3:
            pgroups[gkey] = bs.PairGroup(idx, np.column_stack([pv[c][idx] for c in cols]), iu.size)
    gpoint = {gkey: grp.exact(beh[gkey[0]]) for gkey, grp in pgroups.items()}
    greps = {gkey: np.full((cfg.replicates, 2, len(cols)), np.nan) for gkey, cols in groups.items()}
    if cfg.replicates and pgroups:
        rng = np.random.default_rng([cfg.seed, 1])
        draws = [rng.integers(0, n, n) for _ in range(cfg.replicates)]      # drawn in order: same as a serial loop

        def one(b):
            with np.errstate(all="ignore"):
                w = np.bincount(draws[b], minlength=n).astype(np.float64)
                rr = dict(zip(("raw", "partial"), rep(w, iu, ju)))
                for gkey, grp in pgroups.items():
                    greps[gkey][b] = grp.agree(rr[gkey[0]])

        # two replicates at a time, each on one BLAS thread: numpy releases the GIL in its products and loops
        rep.pairs(iu, ju)
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(one, range(cfg.replicates)))
    nan2 = (math.nan, math.nan)
    point = {key: (tuple(gpoint[gk][:, u]) if gk in gpoint else nan2) for key, (gk, u) in where.items()}
    reps = {key: greps[gk][:, :, u] for key, (gk, u) in where.items()}
    return point, reps


def _mantel(specs, pv, beh, enough, iu, ju, K, cfg) -> dict[str, list]:
    """Mantel p of every proxy against raw and partial behaviour.

    The behaviour matrices are relabelled (2 gathers per permutation, however many proxies); the
    null distribution is the same as relabelling each proxy.
    """
    if not cfg.permutations or not specs:
        return {}
    B = np.full((2, K, K), np.nan)
    for v, side in enumerate(("raw", "partial")):
        B[v, iu, ju] = B[v, ju, iu] = np.where(enough, beh[side], np.nan)
    pmat = np.column_stack([pv[nm] for nm, *_ in specs])
    null = bs.mantel_null(B, pmat, cfg.permutations, np.random.default_rng([cfg.seed, 3]))   # (perm, 2, J)
    obs = bs.mantel_null(B, pmat, 1, _Identity(K))[0]
    return {nm: [(1 + np.sum(null[:, v, j] >= obs[v, j] - 1e-12)) / (1 + cfg.permutations)
                 if np.isfinite(obs[v, j]) else None for v in (0, 1)]
            for j, (nm, *_) in enumerate(specs)}
