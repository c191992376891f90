"""`select --scores`: keep/drop every benchmark by behaviour where scores exist, by features where not (DESIGN §5c).

Glue: data/scores reads and matches the score tables, the store gives costs and
the feature evidence (analysis/recommend: which benchmark may stand in for which),
analysis/behaviour_decide decides, and this module writes the plain dict with
stable keys that `select --scores --json`, the report and summary.json share
(keys in docs/select-behaviour.md):

``{kind: "behaviour", definition, max_error, min_tau, cost_kind, chosen, cost, total_cost, cost_share,
models, min_models, cv, table, random_baseline, frontier, chosen_point, feature_point, disagreements,
matching, notes}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from qscope_eval.analysis import behaviour_decide as bd
from qscope_eval.analysis import metrics
from qscope_eval.analysis import behaviour_select as bsel
from qscope_eval.analysis import predict as pr
from qscope_eval.analysis import recommend as rc
from qscope_eval.errors import QScopeError
from qscope_eval.jobs import summary as sm

DEFINITION = ("a benchmark with scores for enough models is dropped when the kept benchmarks predict its score "
              "(ridge regression, cross-validated over models) within max_error points (and/or rank models at "
              "Kendall tau >= min_tau); the subset is chosen on some models and its error measured on others; a "
              "benchmark without enough scores is dropped only when the feature evidence lets a kept one stand in")


def _f(x, nd: int = 4):
    return metrics.finite(x, nd)


def feature_evidence(ld: sm.Loaded, costs: np.ndarray, tau: float | None = None, replicates: int = 100):
    """(stand_in, ratio, feature-only kept indices) from the encoded benchmarks: the `select` recommendation's own
    assessment (null and words checked, template-dominated benchmarks kept), shared with it when already computed."""
    from qscope_eval.jobs.recommendation import assess_suite

    a = assess_suite(ld, rc.RecommendConfig.tau if tau is None else tau, replicates=replicates)
    return rc.stand_ins(a), a.ratio, rc.recommend(a, costs).kept


def select_with_scores(store, ld: sm.Loaded, paths: Sequence[str | Path], *, cost: str = "samples",
                       max_error: float | None = 2.0, min_tau: float | None = None, metric: str | None = None,
                       mapping=None, folds: int = 5, repeats: int = 2, min_models: int = bd.MIN_MODELS,
                       tau: float | None = None, seed: int = 0) -> dict:
    """Read the score tables (ScoreTableError on bad input), match them to the stored benchmarks, and decide."""
    from qscope_eval.data.scores import read_scores

    names = list(ld.real.benchmarks)
    table = read_scores(paths, benchmarks=names, tasks=store.benchmark_tasks(), metric=metric, mapping=mapping)
    costs = sm.benchmark_costs(store, ld.real, cost)
    matching = [{"source": m.source, "column": m.column, "benchmark": m.benchmark, "how": m.how, "reason": m.reason,
                 "scale": m.scale or None, "n_models": m.n_models} for m in table.matching]
    return behaviour_selection(ld, costs, cost, table.matched(), max_error=max_error, min_tau=min_tau, folds=folds,
                               repeats=repeats, min_models=min_models, tau=tau, seed=seed, matching=matching,
                               notes=list(table.notes))


def behaviour_selection(ld: sm.Loaded | None, costs, cost_kind: str, scores: pd.DataFrame, *,
                        names: list[str] | None = None, max_error: float | None = 2.0, min_tau: float | None = None,
                        folds: int = 5, repeats: int = 2, min_models: int = bd.MIN_MODELS, tau: float | None = None,
                        seed: int = 0, matching: list | None = None, notes: Sequence[str] = (),
                        evidence=None) -> dict:
    """The `select --scores` document from a models × benchmarks score frame (points, NaN missing).

    ``ld``: the encoded suite (feature evidence, None: none); ``evidence``: a precomputed
    (stand_in, ratio, feature_kept) instead; ``names``: benchmark order (default: ld's).
    """
    names = list(names if names is not None else ld.real.benchmarks)
    costs = np.asarray(costs, float)
    extra = [str(c) for c in scores.columns if c not in names]
    Y = scores.reindex(columns=names).to_numpy(float)
    cfg = bsel.SelectConfig(max_error=max_error, min_tau=min_tau,
                            predict=pr.PredictConfig(folds=folds, repeats=repeats, seed=seed))
    if evidence is None and ld is not None:
        evidence = feature_evidence(ld, costs, tau)
    stand, ratio, fkept = evidence if evidence is not None else (None, None, None)
    d = bd.decide(Y, costs, cfg, stand, ratio, fkept, min_models=min_models)
    kept = set(int(k) for k in d.kept)
    table = [_row(i, names, costs, d, stand, ratio, kept, cfg, min_models) for i in range(len(names))]
    total = float(costs.sum())
    cost = float(costs[d.kept].sum())
    pc = cfg.predict
    split = d.split
    out = {
        "kind": "behaviour", "level": "benchmark", "definition": DEFINITION, "max_error": max_error, "min_tau": min_tau,
        "cost_kind": cost_kind, "chosen": [names[i] for i in d.kept], "cost": _f(cost), "total_cost": _f(total),
        "cost_share": _f(cost / total) if total else None,
        "models": int(np.sum((~np.isnan(Y)).any(axis=1))), "min_models": min_models,
        "decided_by_scores": int(d.scored.sum()), "decided_by_features": int((~d.scored).sum()),
        "cv": {"folds": pc.folds, "repeats": pc.repeats, "search_folds": pc.search_folds,
               "search_repeats": pc.search_repeats, "nested": False, "scheme": "held-out split",
               "selection_models": None if split is None else int(split.select.size),
               "report_models": None if split is None else int(split.report.size), "level": pc.level,
               "alphas": [float(a) for a in pc.alphas], "seed": pc.seed, "margin": cfg.margin,
               "meaning": "the subset is chosen by K-fold CV over the selection models; every error shown is measured "
                          "on the report models, which took no part in choosing it (K-fold over them, the ridge "
                          "trained on the other folds plus the selection models)"},
        "table": table,
        "random_baseline": _baseline(d, cfg),
        "frontier": [_point(p) for p in d.frontier],
        "chosen_point": _chosen_point(d, costs),
        "feature_point": None if d.feature_point is None else {
            **{k: _f(v) for k, v in d.feature_point.items() if k != "kept"},
            "kept": [names[d.scored_idx[k]] for k in d.feature_point["kept"]]},
        "disagreements": [_disagreement(x, names) for x in d.disagreements],
        "matching": matching,
        "notes": list(notes) + list(d.notes) + ([f"score columns not in this suite, ignored: {', '.join(extra)}"]
                                                if extra else []),
    }
    return out


def _carried(p: pr.Prediction, d: bd.Decision, names: list[str], k: int = 3) -> list[dict]:
    """Kept benchmarks with the largest share of |standardised coefficient|, together at least 80 % (at most k)."""
    order = np.argsort(-p.weights, kind="stable")
    out, acc = [], 0.0
    for o in order[:k]:
        if p.weights[o] <= 0:
            break
        out.append({"benchmark": names[d.scored_idx[d.search.kept[o]]], "weight": _f(p.weights[o], 3)})
        acc += p.weights[o]
        if acc >= 0.8:
            break
    return out


def _row(i, names, costs, d: bd.Decision, stand, ratio, kept, cfg: bsel.SelectConfig, min_models) -> dict:
    name = names[i]
    row = {"benchmark": name, "decision": "keep" if i in kept else "drop",
           "decided_by": "scores" if d.scored[i] else "features", "cost": float(costs[i]),
           "n_models": int(d.n_models[i]), "predicted_error": None, "kendall_tau": None, "carried_by": [],
           "random_error": None, "feature": None}
    if stand is not None:
        others = [j for j in kept if j != i]
        best = max(others, key=lambda j: (bool(stand[i, j]), ratio[i, j]), default=None)
        if best is not None:
            row["feature"] = {"ratio": _f(ratio[i, best]), "covered_by": names[best] if stand[i, best] else None,
                              "closest_kept": names[best]}
    if d.scored[i]:
        p = d.predictions.get(i)
        if p is not None:
            row.update(predicted_error={"mae": _f(p.mae, 3), "rmse": _f(p.rmse, 3), "lo": _f(p.lo, 3),
                                        "hi": _f(p.hi, 3), "n_models": p.n_models},
                       kendall_tau=_f(p.tau, 3), carried_by=_carried(p, d, names))
            pos = int(np.searchsorted(d.scored_idx, i))
            if d.baseline is not None and d.baseline.dropped_in[pos]:
                row["random_error"] = _f(d.baseline.per_benchmark[pos], 3)
            by = ", ".join(c["benchmark"] for c in row["carried_by"]) or "the kept benchmarks' mean"
            row["reason"] = (f"predicted within {p.mae:.2f} points (MAE on {p.n_models} held-out models, "
                             f"{cfg.predict.level:.0%} interval {p.lo:.2f}–{p.hi:.2f}; Kendall τ {_txt(p.tau)}), "
                             f"carried mostly by {by}")
        elif i in d.forced:
            row["reason"] = f"kept: {d.forced[i]}"
        else:
            e, needed = d.kept_error.get(i, (np.nan, []))
            if needed:
                row["reason"] = (f"kept: without it {len(needed)} dropped benchmark(s) would leave the tolerance "
                                 f"({', '.join(names[o] for o in needed[:4])}{'…' if len(needed) > 4 else ''})")
            else:
                row["reason"] = (f"kept: the other kept benchmarks would predict it with an error of {e:.2f} points "
                                 f"(tolerance {_txt(cfg.max_error)}; on the models that chose the subset)")
            row["search_error"] = _f(e, 3)
        return row
    why = f"fewer than {min_models} models have a score for it ({int(d.n_models[i])})"
    if i in d.feature_cover:
        j = d.feature_cover[i]
        row["reason"] = (f"{why}; the features drop it: {names[j]} shows {ratio[i, j]:.0%} of what characterizes it")
    elif stand is None:
        row["reason"] = f"{why}, and no feature evidence: kept"
    else:
        row["reason"] = f"{why}; the features keep it: no kept benchmark stands in for it"
    return row


def _txt(x) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{x:.2f}"


def _stats(x: np.ndarray, level: float) -> dict:
    q = (1 - level) / 2
    return {"mean": _f(x.mean()), "sd": _f(x.std(ddof=1)) if x.size > 1 else None, "lo": _f(np.quantile(x, q)),
            "median": _f(np.median(x)), "hi": _f(np.quantile(x, 1 - q))}


def _baseline(d: bd.Decision, cfg: bsel.SelectConfig) -> dict | None:
    b = d.baseline
    if b is None:
        return None
    mean_c, max_c = d.chosen_errors
    return {"trials": int(b.max_error.size), "cost": _f(b.cost), "cost_mean": _f(b.cost_mean),
            "tolerance": cfg.tolerance, "max_error": _stats(b.max_error, cfg.predict.level),
            "mean_error": _stats(b.mean_error, cfg.predict.level), "chosen_max_error": _f(max_c),
            "chosen_mean_error": _f(mean_c),
            "share_random_better_max": _f(float(np.mean(b.max_error <= max_c))),
            "share_random_better_mean": _f(float(np.mean(b.mean_error <= mean_c))),
            "scope": "benchmarks decided by scores",
            "evaluator": "closed-form ridge (penalty by generalised CV in each training fold) on the held-out models; "
                         "the chosen set is measured the same way here (chosen_*)"}


def _point(p: bsel.FrontierPoint) -> dict:
    return {"budget_share": _f(p.budget_share), "cost_share": _f(p.cost_share), "n_kept": int(p.kept.size),
            "error_chosen": _f(p.error_chosen), "max_error_chosen": _f(p.max_error_chosen),
            "error_random_mean": _f(p.error_random_mean), "error_random_lo": _f(p.error_random_lo),
            "error_random_hi": _f(p.error_random_hi), "max_error_random_mean": _f(p.max_error_random_mean)}


def _chosen_point(d: bd.Decision, costs: np.ndarray) -> dict | None:
    if d.search is None:
        return None
    S = d.scored_idx
    maes = [p.mae for p in d.predictions.values() if math.isfinite(p.mae)]
    return {"cost_share": _f(costs[S][d.search.kept].sum() / costs[S].sum()), "n_kept": int(d.search.kept.size),
            "error": _f(d.chosen_errors[0]), "max_error": _f(d.chosen_errors[1]),
            "error_reported": _f(np.mean(maes)) if maes else 0.0, "max_error_reported": _f(max(maes)) if maes else 0.0,
            "start": d.search.start, "evaluations": d.search.evaluations}


def _disagreement(x: bd.Disagreement, names: list[str]) -> dict:
    if x.kind == "features_redundant_scores_not":
        why = (f"features: {names[x.other]} stands in for {names[x.benchmark]} (ratio {_txt(x.feature_ratio)}); "
               f"scores: predicted from it alone with an error of {x.error:.2f} points")
    else:
        why = (f"scores: predicted within {x.error:.2f} points (mostly by {names[x.other]}); features: no kept "
               f"benchmark stands in for it ({names[x.other]} shows ratio {_txt(x.feature_ratio)})")
    return {"benchmark": names[x.benchmark], "other": names[x.other], "kind": x.kind,
            "feature_ratio": _f(x.feature_ratio), "error": _f(x.error, 3), "kendall_tau": _f(x.tau, 3), "reason": why}


def require_scores(paths) -> None:
    """A clear error for an empty --scores list (the CLI and the suite both call this)."""
    if not paths:
        raise QScopeError("give at least one score table with --scores PATH (a CSV/TSV/Parquet/JSON table or a folder "
                          "of lm-eval results_*.json)")
