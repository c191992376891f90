"""From the store to a benchmark recommendation with evidence for every decision (DESIGN §5).

Glue between the store (arrays, prompt texts) and the pure ``recommend.py``.
Returns plain dicts with stable snake_case keys — the ``selection`` block of
``select --json``, the report and ``summary.json`` — shaped like the union
method's (``chosen``, ``cost``, ``table``, ``random_baseline``...) plus, per
benchmark, the evidence:

- dropped: ``covered_by`` (the kept benchmark), ``covered_share`` (share of its
  characteristic mass the kept one shows), ``ratio`` (that share over its own
  split-half self-coverage) with ``ratio_lo``/``ratio_hi`` (bootstrap),
  ``null_ratio`` (the same on the null dictionary), ``lexical_ratio`` (the same on
  the prompts' words), ``examples`` (its most
  characteristic prompts and their nearest prompt in the covering benchmark);
- kept: ``only_here`` (the share of its characteristic no other kept benchmark
  shows), ``distinctive_features`` and ``only_here_prompt`` (what only it measures),
  ``best_other`` and why it is not enough, ``covers`` (what it stands in for);
  ``template_share`` and ``template_dominated`` (kept: its features are the shared template);
- ``checks_skipped``: the baseline checks this row could not make (no null / lexical encoder).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import scipy.sparse as sp

from qscope_eval.analysis import metrics
from qscope_eval.analysis import recommend as rc
from qscope_eval.analysis import select as sel
from qscope_eval import progress as prog

def _f(x):
    return metrics.finite(x, 4)


def recommend_benchmarks(store, ld, costs: np.ndarray, cost_kind: str, tau: float = rc.RecommendConfig.tau, exact: bool = False,
                         time_limit: float = 30.0, threshold: float = 0.0, examples: int = 3,
                         replicates: int = 100) -> dict:
    """Keep/drop every benchmark so each dropped one has ≥ τ of its characteristic shown by a kept one."""
    es = ld.real
    F = metrics.fired(es.X, threshold)
    a = assess_suite(ld, tau, threshold, replicates)
    with prog.stage("exact selection (HiGHS MILP)") if exact else nullcontext():
        r = rc.recommend(a, costs, exact=exact, time_limit=time_limit)
    g = r if not exact else rc.recommend(a, costs)
    names = es.benchmarks
    inc = sp.csr_matrix(a.covers.T)
    base = sel.random_baseline(inc, cost=r.cost, costs=costs, seed=0)
    s = r.selection
    table = [_row(i, names, a, r, costs, es, F, store, examples) for i in range(len(names))]
    return {
        "kind": "characteristic", "method": s.method, "target": 1.0, "tau": _f(tau),
        "definition": rc.DEFINITION, "chosen": [names[i] for i in r.kept], "cost": _f(r.cost),
        "total_cost": _f(r.total_cost), "cost_share": _f(r.cost / r.total_cost) if r.total_cost else None,
        "covered": _f(s.covered), "coverage": _f(s.coverage), "union": _f(s.union),
        "order": [names[i] for i in s.order], "curve_cost": [float(x) for x in s.curve_cost],
        "curve_coverage": [float(x) for x in s.curve_coverage], "optimal": bool(s.optimal),
        "bound": _f(s.bound), "gap": _f(s.gap), "status": s.status, "greedy_cost": _f(g.cost),
        "random_baseline": {"mean": _f(base.mean), "std": _f(base.std), "trials": base.trials},
        "null_checked": ld.null is not None, "null_scale": _f(a.null_scale), "level": "benchmark", "cost_kind": cost_kind,
        "lexical_checked": ld.lexical is not None, "lexical_scale": _f(a.lexical_scale),
        "template_max": _f(a.config.template_max), "template_share": {names[i]: _f(a.template[i]) for i in range(len(names))},
        "baseline_pairs": baseline_pairs(a),
        "self_coverage": {names[i]: _f(a.self_share[i]) for i in range(len(names))},
        "table": table,
    }


def assess_suite(ld, tau: float = rc.RecommendConfig.tau, threshold: float = 0.0, replicates: int = 100) -> rc.Assessment:
    """The recommendation's assessment of an encoded suite: SAE, null and words in one bootstrap (``rc.assess``).

    Computed once per Loaded and settings and kept on it, so `select`'s recommendation and the feature side of
    `select --scores` (jobs/behaviour_select.py) read the same decisions, and an audit bootstraps once."""
    key = (float(tau), float(threshold), int(replicates))
    if key not in ld.assessments:
        es = ld.real
        F = metrics.fired(es.X, threshold)
        Fn = metrics.fired(ld.null.X, threshold) if ld.null is not None else None
        Fl = metrics.fired(ld.lexical.data.X) if ld.lexical is not None else None
        cfg = rc.RecommendConfig(tau=tau, replicates=replicates)
        ld.assessments[key] = rc.assess(es.M, F, Fn, cfg, F_lexical=Fl,
                                        progress=prog.wrapper("recommendation bootstrap", "replicate"))
    return ld.assessments[key]


def baseline_pairs(a: rc.Assessment) -> dict:
    """How the SAE's candidate stand-in pairs (i ≠ j, ratio ≥ τ, not prompt containment, i not template-dominated)
    fare against the baselines: how many are singled out above the null, above the words, above both. The
    report's headline reads it."""
    n = a.ratio.shape[0]
    cand = (a.ratio >= a.config.tau) & ~np.eye(n, dtype=bool) & ~a.contained & ~a.template_dominated[:, None]
    null = a.null_ratio is not None
    lex = a.lexical_ratio is not None
    return {"candidates": int(cand.sum()), "above_null": int((cand & a.above_null).sum()) if null else None,
            "above_lexical": int((cand & a.above_lexical).sum()) if lex else None,
            "above_both": int((cand & a.above_null & a.above_lexical).sum()) if null and lex else None,
            "level": _f(a.config.level)}


def _row(i, names, a: rc.Assessment, r: rc.Recommendation, costs, es, F, store, n_examples) -> dict:
    kept = set(int(k) for k in r.kept)
    others = [j for j in range(len(names)) if j != i]
    best = max(others, key=lambda j: a.ratio[i, j], default=None)
    row = {"benchmark": names[i], "decision": "keep" if i in kept else "drop", "cost": float(costs[i]),
           "n_features": int((a.char[i] > 0).sum()), "self_coverage": _f(a.self_share[i]),
           "template_share": _f(a.template[i]), "template_dominated": bool(a.template_dominated[i]),
           "checks_skipped": [k for k, r in (("null", a.null_ratio), ("lexical", a.lexical_ratio)) if r is None]}
    if i not in kept:
        j = int(r.covered_by[i])
        row.update(_pair(i, j, a), covered_by=names[j], covered_by_kept=_f(a.share[i, j]),
                   examples=_examples(i, j, a, es, F, store, n_examples))
        if a.contained[i, j]:
            row["reason"] = f"every one of its {a.n_samples[i]} prompts is also a prompt of {names[j]}"
        else:
            row["reason"] = (f"{names[j]} shows {a.ratio[i, j]:.0%} of what characterizes it "
                             f"({a.config.level:.0%} interval {a.lo[i, j]:.0%}–{a.hi[i, j]:.0%}; "
                             f"{_null_txt(a, i, j)}; {_lex_txt(a, i, j)})"
                             + _skipped(row["checks_skipped"]))
        row["contained"] = bool(a.contained[i, j])
        return row
    kept_others = [j for j in kept if j != i]
    only = 1.0 - max((min(1.0, a.ratio[i, j]) for j in kept_others), default=0.0)
    row.update(covered_by=None, covered_by_kept=None, only_here=_f(only),
               covers=[names[d] for d in range(len(names)) if d not in kept and r.covered_by[d] == i],
               best_other=None if best is None else names[best])
    if best is not None:
        row.update(_pair(i, best, a))
    row["reason"] = _keep_reason(i, best, names, a, only)
    row["distinctive_features"] = _distinctive(i, kept_others, a)
    row["only_here_prompt"] = _only_here_prompt(i, kept_others, a, es, F, store)
    return row


def _only_here_prompt(i, kept_others, a: rc.Assessment, es, F, store) -> str:
    """The prompt of benchmark i that fires the most characteristic mass no other kept benchmark shows."""
    Di = es.M[i].indices
    if Di.size == 0:
        return ""
    rest = a.char[kept_others].max(axis=0) if kept_others else np.zeros(a.char.shape[1])
    score = np.asarray(F[Di].astype(np.float32) @ np.maximum(a.char[i] - rest, 0.0)).ravel()
    sid = int(es.sample_ids[Di[int(np.argmax(score))]])
    return store.texts([sid]).get(sid, "")[:300]


def _pair(i, j, a) -> dict:
    lx = a.lexical_ratio
    return {"ratio": _f(a.ratio[i, j]), "ratio_lo": _f(a.lo[i, j]), "ratio_hi": _f(a.hi[i, j]),
            "covered_share": _f(a.share[i, j]), "null_ratio": None if a.null_ratio is None else _f(a.null_ratio[i, j]),
            "null_ratio_scaled": None if a.null_ratio is None else _f(a.null_scale * a.null_ratio[i, j]),
            "above_null": bool(a.above_null[i, j]), "lexical_ratio": None if lx is None else _f(lx[i, j]),
            "lexical_ratio_scaled": None if lx is None else _f(a.lexical_scale * lx[i, j]),
            "above_lexical": bool(a.above_lexical[i, j])}


def _lex_txt(a: rc.Assessment, i, j) -> str:
    if a.lexical_ratio is None:
        return "no lexical baseline computed"
    return f"the prompts' words show {a.lexical_scale * a.lexical_ratio[i, j]:.0%} on this SAE's scale"


def _skipped(skipped: list[str]) -> str:
    what = {"null": "no null encoder (set `null: true`)", "lexical": "no lexical baseline (`lexical: false`)"}
    return "".join(f"; {k} check skipped: {what[k]}" for k in skipped)


def _null_txt(a: rc.Assessment, i, j) -> str:
    if a.null_ratio is None:
        return "no random dictionary encoded"
    return f"a random dictionary shows {a.null_scale * a.null_ratio[i, j]:.0%} on this SAE's scale"


def _keep_reason(i, best, names, a: rc.Assessment, only: float) -> str:
    if best is None:
        return "the only benchmark"
    tau = a.config.tau
    txt = f"no other benchmark shows {tau:.0%} of what characterizes it"
    skipped = _skipped([k for k, r in (("null", a.null_ratio), ("lexical", a.lexical_ratio)) if r is None])
    if a.template_dominated[i]:
        return (f"its features are mostly the prompt template shared by every benchmark (template share "
                f"{a.template[i]:.0%} ≥ {a.config.template_max:.0%}): no evidence either way{skipped}")
    if a.ratio[i, best] >= tau and not a.above_null[i, best]:
        txt = (f"{names[best]} shows {a.ratio[i, best]:.0%} of it, but not more clearly than random directions do "
               f"(lower bound {a.lo[i, best]:.0%}; {_null_txt(a, i, best)}): no evidence beyond chance")
    elif a.ratio[i, best] >= tau and not a.above_lexical[i, best]:
        txt = (f"{names[best]} shows {a.ratio[i, best]:.0%} of it, but not more clearly than the prompts' own words do "
               f"(lower bound {a.lo[i, best]:.0%}; {_lex_txt(a, i, best)}): no evidence beyond the words")
    elif a.ratio[i, best] >= tau:
        txt = (f"{names[best]} shows {a.ratio[i, best]:.0%} of it and could replace it, but the cheapest set that "
               f"measures every benchmark keeps this one instead")
    else:
        txt += f" (closest: {names[best]}, {a.ratio[i, best]:.0%}; {_null_txt(a, i, best)}; {_lex_txt(a, i, best)})"
    return f"{txt}; {only:.0%} of it is measured by no other kept benchmark{skipped}"


def _distinctive(i, kept_others, a: rc.Assessment, k: int = 5) -> list[dict]:
    """Features where this benchmark's characteristic mass most exceeds every other kept benchmark's."""
    rest = a.char[kept_others].max(axis=0) if kept_others else np.zeros(a.char.shape[1])
    gap = a.char[i] - rest
    top = np.argsort(-gap, kind="stable")[:k]
    return [{"feature": int(f), "frequency": _f(a.profiles[i, f]), "best_other_kept": _f(rest[f])}
            for f in top if gap[f] > 0]


def _examples(i, j, a: rc.Assessment, es, F, store, k: int) -> list[dict]:
    """D's k most characteristic prompts, each with its nearest prompt in K by Jaccard of fired features."""
    Di = es.M[i].indices
    Kj = np.setdiff1d(es.M[j].indices, Di)  # a shared prompt is its own neighbour; show a distinct one
    if Di.size == 0 or Kj.size == 0:
        return []
    FD, FK = F[Di].astype(np.float32), F[Kj].astype(np.float32)
    weight = np.asarray(FD @ a.char[i]).ravel()  # characteristic mass each prompt fires
    pick = np.argsort(-weight, kind="stable")[:k]
    inter = (FD[pick] @ FK.T).toarray()
    sd, sk = np.asarray(FD[pick].sum(axis=1)).ravel(), np.asarray(FK.sum(axis=1)).ravel()
    jac = inter / np.maximum(sd[:, None] + sk[None, :] - inter, 1)
    nn = jac.argmax(axis=1)
    ids = np.concatenate([es.sample_ids[Di[pick]], es.sample_ids[Kj[nn]]])
    texts = store.texts([int(x) for x in ids])
    return [{"dropped_prompt": texts.get(int(es.sample_ids[Di[p]]), "")[:300],
             "kept_prompt": texts.get(int(es.sample_ids[Kj[n]]), "")[:300], "jaccard": _f(jac[q, n])}
            for q, (p, n) in enumerate(zip(pick, nn))]
