"""Features and behaviour together: which evidence decides each benchmark (DESIGN §5c, issue 25).

``decide(Y, costs, cfg, stand_in, ratio, feature_kept)``:

- a benchmark with scores for at least ``min_models`` models is decided by
  behaviour: the cheapest kept set whose dropped benchmarks are predicted within
  tolerance (``behaviour_select.search`` on the selection models), each dropped
  one's error reported on held-out models (``predict.report_errors``);
- a benchmark with no or too few scores is decided by the feature evidence as
  today: it may only go if the feature recommendation drops it *and* a benchmark
  of the final kept set stands in for it (``stand_in[i, j]``: j may stand in for
  i, ``recommend.stand_ins``); otherwise it stays;
- disagreements between the two kinds of evidence, on benchmarks with scores:
  features say j stands in for i but i predicted from j alone misses the
  tolerance on held-out models; or scores drop i (predicted within tolerance)
  while no kept benchmark stands in for it by the features.

Y is (n_models × n_bench) in points with NaN for missing cells, its columns
aligned with ``costs``; stand_in/ratio are (n_bench × n_bench), row = the
benchmark covered, column = the one covering it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qscope_eval.analysis import behaviour_select as bsel
from qscope_eval.analysis import predict as pr

__all__ = ["Disagreement", "Decision", "decide", "MIN_MODELS"]

MIN_MODELS = 10  # a benchmark needs scores for this many models to be decided by behaviour


@dataclass(frozen=True)
class Disagreement:
    """A pair on which the feature evidence and the scores disagree."""

    benchmark: int              # the benchmark judged
    other: int                  # the feature stand-in (features_redundant) or the main carrier (scores_redundant)
    kind: str                   # "features_redundant_scores_not" | "scores_redundant_features_not"
    feature_ratio: float        # share of benchmark's characteristic the other shows (over its noise ceiling)
    error: float                # MAE (points, held-out models): from `other` alone, or from the kept set
    tau: float                  # Kendall τ of the same prediction


@dataclass(frozen=True)
class Decision:
    """Keep/drop of every benchmark with the evidence behind it (indices are columns of Y)."""

    kept: np.ndarray                       # sorted
    scored: np.ndarray                     # (n,) bool: decided by scores
    n_models: np.ndarray                   # (n,) models with a score
    search: bsel.Search | None             # over the scored benchmarks (indices into `scored_idx`)
    scored_idx: np.ndarray                 # columns of Y that are scored
    predictions: dict[int, pr.Prediction]  # dropped scored benchmark -> its reported error (Prediction.index: column of Y)
    kept_error: dict[int, tuple[float, list[int]]]  # kept scored -> (its search-CV MAE without it, others it is needed for)
    forced: dict[int, str]                 # scored benchmarks kept because they cannot be judged, with why
    feature_cover: dict[int, int]          # feature-decided dropped benchmark -> its kept stand-in
    baseline: bsel.Baseline | None         # random equal-cost sets (scored part, report models)
    chosen_errors: tuple[float, float]     # (mean, max) dropped MAE of the chosen set on the baseline's evaluator
    frontier: list[bsel.FrontierPoint]
    feature_point: dict | None             # the feature-only kept set on the same curve
    disagreements: list[Disagreement]
    split: pr.ModelSplit | None            # rows of Y (models): selection / report
    notes: list[str] = field(default_factory=list)


def _feature_point(ev: pr.FastCV, costs: np.ndarray, K: np.ndarray) -> dict:
    mean, mx, _ = bsel.set_errors(ev, K)
    return {"kept": [int(k) for k in K], "cost_share": float(costs[K].sum() / costs.sum()), "error": mean,
            "max_error": mx}


def decide(Y, costs, cfg: bsel.SelectConfig | None = None, stand_in: np.ndarray | None = None,
           ratio: np.ndarray | None = None, feature_kept=None, min_models: int = MIN_MODELS) -> Decision:
    """Keep/drop every benchmark: by scores where at least ``min_models`` models have one, else by features."""
    from threadpoolctl import threadpool_limits

    # thousands of small eigh/svd/solve calls: BLAS threads only contend (measured 10-30x slower under load)
    with threadpool_limits(limits=1, user_api="blas"):
        return _decide(Y, costs, cfg, stand_in, ratio, feature_kept, min_models)


def _decide(Y, costs, cfg, stand_in, ratio, feature_kept, min_models) -> Decision:
    cfg = cfg or bsel.SelectConfig()
    Y = pr._check(Y)
    costs = np.asarray(costs, float)
    n = Y.shape[1]
    if costs.shape != (n,) or not np.all(costs > 0):
        raise pr.PredictError(f"costs must be {n} positive numbers, one per benchmark")
    if min_models < 4:
        raise pr.PredictError(f"min_models must be >= 4 (models with a score to judge a benchmark), got {min_models}")
    n_models = (~np.isnan(Y)).sum(axis=0)
    scored = n_models >= min_models
    S = np.flatnonzero(scored)
    notes: list[str] = []
    empty = Decision(np.arange(n), scored, n_models, None, S, {}, {}, {}, {}, None, (np.nan, np.nan), [], None, [], None)
    if S.size < 2:
        notes.append(f"fewer than 2 benchmarks have scores for {min_models} or more models: the feature evidence "
                     "decides every benchmark")
        scored[:] = False
        S = np.array([], np.int64)
        kept_S, d = np.array([], np.int64), empty
    else:
        rows = np.flatnonzero((~np.isnan(Y[:, S])).any(axis=1))
        Ys = Y[np.ix_(rows, S)]
        sp0 = pr.split_models(Ys, cfg.predict.holdout, cfg.predict.seed)
        split = pr.ModelSplit(rows[sp0.select], rows[sp0.report])
        forced = {}
        for j in range(S.size):
            a, b = (~np.isnan(Ys[sp0.select, j])).sum(), (~np.isnan(Ys[sp0.report, j])).sum()
            if min(a, b) < 3:
                forced[j] = (f"only {a} of the models that choose and {b} of those that measure have it: too few "
                             "to show it predicted")
        pc = cfg.predict
        ev_sel = pr.FastCV(Ys, sp0.select, (), pc.search_folds, pc.search_repeats, pc.alphas, pc.seed)
        ev_rep = pr.FastCV(Ys, sp0.report, sp0.select, pc.folds, pc.repeats, pc.alphas, pc.seed + 1)
        rng = np.random.default_rng(pc.seed + 2)
        srch = bsel.search(ev_sel, costs[S], cfg, list(forced), Ys[sp0.select])
        base = bsel.baseline(ev_rep, costs[S], srch.cost, cfg, rng, list(forced))
        chosen = bsel.set_errors(ev_rep, srch.kept)[:2]
        front = bsel.frontier(ev_sel, ev_rep, costs[S], cfg, rng, list(forced), order=srch.order)
        kept_err = _kept_errors(ev_sel, srch, cfg)
        preds = {int(S[p.index]): p for p in pr.report_errors(Ys, srch.kept, sp0, pc)}
        fpoint = None
        if feature_kept is not None:
            fk = np.flatnonzero(np.isin(S, np.asarray(feature_kept, np.int64)))
            fpoint = _feature_point(ev_rep, costs[S], fk)
        kept_S = S[srch.kept]
        d = Decision(kept_S, scored, n_models, srch, S, preds,
                     {int(S[j]): (e, [int(S[o]) for o in others]) for j, (e, others) in kept_err.items()},
                     {int(S[j]): why for j, why in forced.items()}, {}, base, chosen, front, fpoint, [], split)
        if cfg.max_error is not None:
            over = [i for i, p in preds.items() if p.mae > cfg.max_error]
            if over:
                notes.append(f"{len(over)} dropped benchmark(s) exceed max_error on the held-out models although "
                             "within it on the models that chose them (estimation noise; see their intervals)")
    kept, cover = _feature_decisions(n, scored, kept_S, stand_in, feature_kept, ratio)
    dis = _disagreements(Y, d, S, kept, stand_in, ratio, cfg) if stand_in is not None and S.size >= 2 else []
    if stand_in is None and (~scored).any():
        notes.append("no feature evidence was given: every benchmark without scores is kept")
    return Decision(np.sort(kept), scored, n_models, d.search, S, d.predictions, d.kept_error, d.forced, cover,
                    d.baseline, d.chosen_errors, d.frontier, d.feature_point, dis, d.split, notes)


def _kept_errors(ev_sel: pr.FastCV, srch: bsel.Search, cfg: bsel.SelectConfig) -> dict:
    """Per kept benchmark: its selection-CV MAE from the other kept ones, and the benchmarks that would leave the
    tolerance without it (why the clean-up could not drop it)."""
    out = {}
    for j in srch.kept:
        rest = [int(k) for k in srch.kept if k != j]
        e = ev_sel.errors(rest)
        v = bsel.violations(e, None, cfg, rest) if cfg.max_error is not None else np.zeros(ev_sel.p)
        out[int(j)] = (float(e.mae[j]), [int(o) for o in np.flatnonzero(v > 0) if o != j])
    return out


def _feature_decisions(n: int, scored: np.ndarray, kept_S: np.ndarray, stand_in, feature_kept, ratio):
    """Benchmarks without scores: dropped only if the feature recommendation drops them and a benchmark of the
    final kept set stands in for them. Returns (kept indices, {dropped: stand-in})."""
    kept = set(int(k) for k in kept_S)
    F = [int(i) for i in np.flatnonzero(~scored)]
    fk = set(range(n)) if feature_kept is None else set(int(k) for k in feature_kept)
    if stand_in is None:
        return np.array(sorted(kept | set(F)), np.int64), {}
    kept |= {i for i in F if i in fk}
    todo = [i for i in F if i not in fk]
    changed = True
    while changed:  # a benchmark kept here may be the stand-in of another: iterate to the fixed point
        changed = False
        for i in todo:
            if i not in kept and not any(stand_in[i, j] for j in kept if j != i):
                kept.add(i)
                changed = True
    cover = {}
    for i in F:
        if i not in kept:
            js = [j for j in kept if j != i and stand_in[i, j]]
            cover[i] = max(js, key=lambda j: (ratio[i, j] if ratio is not None else 0.0, -j))
    return np.array(sorted(kept), np.int64), cover


def _disagreements(Y, d: Decision, S, kept, stand_in, ratio, cfg: bsel.SelectConfig) -> list[Disagreement]:
    """Pairs where features and scores disagree (both benchmarks scored); measured on the held-out models."""
    if d.split is None:
        return []
    Ys = Y[:, S]
    pc = cfg.predict
    ev = pr.FastCV(Ys, d.split.report, d.split.select, pc.folds, pc.repeats, pc.alphas, pc.seed + 3)
    pos = {int(s): k for k, s in enumerate(S)}
    out = []
    r = ratio if ratio is not None else np.full(stand_in.shape, np.nan)
    bad = lambda mae, tau: ((cfg.max_error is not None and mae > cfg.max_error)  # noqa: E731
                            or (cfg.min_tau is not None and not tau >= cfg.min_tau))
    with_tau = cfg.min_tau is not None
    for j in S:
        covered = [int(i) for i in S if i != j and stand_in[i, j]]
        if not covered:
            continue
        e = ev.errors([pos[int(j)]], with_pred=with_tau)
        taus = ev.taus(e.pred) if with_tau else np.full(e.mae.shape, np.nan)
        for i in covered:
            mae, tau = float(e.mae[pos[i]]), float(taus[pos[i]])
            if np.isfinite(mae) and bad(mae, tau):
                out.append(Disagreement(i, int(j), "features_redundant_scores_not", float(r[i, j]), mae, tau))
    kept_set = set(int(k) for k in kept)
    for i, p in d.predictions.items():
        if any(stand_in[i, k] for k in kept_set if k != i) or not p.weights.size:
            continue
        carrier = int(S[d.search.kept[int(np.argmax(p.weights))]])  # the kept benchmark with the largest weight
        if not bad(p.mae, p.tau):
            out.append(Disagreement(int(i), carrier, "scores_redundant_features_not", float(r[i, carrier]), p.mae, p.tau))
    return sorted(out, key=lambda x: (x.kind, -x.error))
