"""From the store to answers: coverage, overlap, selection and the audit summary.

Glue between `store.py` (arrays out of DuckDB) and the pure `metrics.py` /
`select.py`. Everything returns plain dicts with stable snake_case keys: the
CLI prints them (`--json`), the report renders them, `summary.json` is one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from contextlib import nullcontext

import numpy as np
import scipy.sparse as sp

from qscope_eval.analysis import metrics, samples
from qscope_eval.analysis import recommend as rc
from qscope_eval.analysis import select as sel
from qscope_eval.data.suite import COSTS
from qscope_eval.errors import QScopeError
from qscope_eval.jobs.lexical_encoder import LexicalSet, load_lexical
from qscope_eval import progress as prog
from qscope_eval.store import EncodedSet, Store

COST_KINDS = COSTS  # the suite spec owns the list


@dataclass(frozen=True)
class Loaded:
    """One encoder's arrays, with its null twin and its lexical baseline aligned on the same samples (or None)."""

    real: EncodedSet
    null: EncodedSet | None
    lexical: LexicalSet | None = None
    """The prompts' words (jobs/lexical_encoder.py): stored, or computed from the texts for an older database."""
    assessments: dict = field(default_factory=dict, repr=False, compare=False)
    """The recommendation's bootstrap per (tau, threshold, replicates), computed once (jobs/recommendation.assess_suite)."""


def load(store: Store, encoder: str | int | None = None, benchmarks: list[str] | None = None,
         lexical: bool = True) -> Loaded:
    """The encoder's arrays with its baselines (`lexical=False`: without the lexical one)."""
    enc = store.encoder(encoder)
    if enc.kind in ("null", "lexical"):
        raise QScopeError(f"encoder {enc.encoder_id} is a {enc.kind} baseline; pick the SAE encoder it rode along with")
    real = store.load_encoded(enc, benchmarks)
    if real.X.shape[0] == 0:
        raise QScopeError(f"encoder {enc.encoder_id} has no encoded samples for these benchmarks; run `qscope-eval encode` first")
    null_enc = store.null_for(enc)
    null = None
    if null_enc is not None:
        n = store.load_encoded(null_enc, real.benchmarks)
        if np.array_equal(n.sample_ids, real.sample_ids):
            null = n
    return Loaded(real, null, load_lexical(store, real) if lexical else None)


def _null_X(ld: Loaded):
    return ld.null.X if ld.null is not None else None


def lexical_X(ld: Loaded):
    """The lexical baseline's fired-feature matrix (rows = ld.real's samples), or None."""
    return ld.lexical.data.X if ld.lexical is not None else None


def suite_metrics(ld: Loaded, threshold: float = 0.0, min_support: int = 1) -> metrics.SuiteMetrics:
    r = ld.real
    return metrics.summarize(r.X, r.M, r.benchmarks, r.encoder.d_sae, threshold, min_support, _null_X(ld),
                             lexical_X(ld))


def coverage_report(ld: Loaded, threshold: float = 0.0, min_support: int = 1) -> dict:
    """Per-benchmark coverage, R̂/AUC, rarefied coverage and Chao1 (no overlap matrices)."""
    sm = suite_metrics(ld, threshold, min_support).to_dict()
    for b in sm["benchmarks"]:
        b.pop("curve")
    return {"encoder": _encoder_dict(ld), "d_sae": sm["d_sae"], "suite_union": sm["suite_union"],
            "rarefied_n": sm["rarefied_n"], "min_support": min_support, "threshold": threshold,
            "benchmarks": sm["benchmarks"]}


def overlap_report(ld: Loaded, kind: str = "asym", threshold: float = 0.0, min_support: int = 1) -> dict:
    """One overlap matrix (rows: from, columns: to), with the null baseline's beside it when present."""
    if kind not in ("asym", "sym", "jaccard"):
        raise QScopeError(f"overlap kind {kind!r} is not one of asym, sym, jaccard")
    sm = suite_metrics(ld, threshold, min_support).to_dict()
    return {"encoder": _encoder_dict(ld), "kind": kind, "names": sm["names"], "matrix": sm["overlap"][kind],
            "null_matrix": sm["null_overlap"][kind] if sm["null_overlap"] else None,
            "lexical_matrix": sm["lexical_overlap"][kind] if sm["lexical_overlap"] else None}


def _encoder_dict(ld: Loaded) -> dict:
    lx = ld.lexical
    return ld.real.encoder.to_dict(ld.null.encoder.encoder_id if ld.null else None,
                                   lexical_encoder_id=lx.encoder_id if lx else None,
                                   lexical_source=lx.source if lx else None,
                                   lexical_definition=lx.definition if lx else None)


# ---- selection ---------------------------------------------------------------------

def benchmark_costs(store: Store, es: EncodedSet, kind: str) -> np.ndarray:
    if kind not in COST_KINDS:
        raise QScopeError(f"cost {kind!r} is not one of {', '.join(COST_KINDS)}")
    if kind == "samples":
        return np.asarray(es.M.sum(axis=1)).ravel().astype(float)
    if kind == "tokens":
        return np.asarray(es.M.astype(np.int64) @ es.n_tokens).ravel().astype(float)
    rows = store.benchmark_costs()
    missing = [b for b in es.benchmarks if not rows.get(b)]
    if missing:
        raise QScopeError(f"--cost custom needs a `cost:` for every benchmark in the suite; missing: {', '.join(missing)}")
    return np.array([rows[b] for b in es.benchmarks], float)


def _selection_dict(s: sel.Selection, names: list[str], costs: np.ndarray, base: sel.RandomBaseline | None) -> dict:
    f = lambda x: None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)
    return {
        "method": s.method, "target": f(s.target), "chosen": [names[i] for i in s.rows], "cost": f(s.cost),
        "total_cost": f(costs.sum()), "cost_share": f(s.cost / costs.sum()) if costs.sum() else None,
        "covered": f(s.covered), "coverage": f(s.coverage), "union": f(s.union),
        "order": [names[i] for i in s.order], "curve_cost": [float(x) for x in s.curve_cost],
        "curve_coverage": [float(x) for x in s.curve_coverage], "optimal": bool(s.optimal),
        "bound": f(s.bound), "gap": f(s.gap), "status": s.status,
        "random_baseline": None if base is None else {"mean": f(base.mean), "std": f(base.std), "trials": base.trials},
    }


METHODS = ("characteristic", "union")


def select_benchmarks(store: Store, ld: Loaded, target: float = 0.95, cost: str = "samples", exact: bool = False,
                      time_limit: float = 30.0, threshold: float = 0.0, min_support: int = 1,
                      method: str = "characteristic", tau: float | None = None) -> dict:
    """Benchmark recommendation with keep/drop reasons.

    ``characteristic`` (default, DESIGN §5): every dropped benchmark has ≥ τ of what
    characterizes it shown by one kept benchmark, above the null (see jobs/recommendation.py).
    ``union`` (the report's): smallest-cost subset keeping ``target`` of the suite's
    feature union (Eq. 10 overlaps in the reasons), for comparison with Qwen-Scope tables.
    """
    if method not in METHODS:
        raise QScopeError(f"selection method {method!r} is not one of {', '.join(METHODS)}")
    es = ld.real
    costs = benchmark_costs(store, es, cost)
    if method == "characteristic":
        if len(es.benchmarks) < 2:
            raise QScopeError("a recommendation needs at least 2 benchmarks; add benchmarks to the suite")
        from qscope_eval.jobs.recommendation import recommend_benchmarks
        kw = {} if tau is None else {"tau": tau}
        return recommend_benchmarks(store, ld, costs, cost, exact=exact, time_limit=time_limit,
                                    threshold=threshold, **kw)
    F = metrics.fired(es.X, threshold)
    B = metrics.benchmark_features(es.M, F, min_support)
    inc = sp.csr_matrix((np.ones(B.nnz, bool), B.indices, B.indptr), shape=B.shape)
    g = sel.greedy_cover(inc, costs, target)
    with prog.stage("exact selection (HiGHS MILP)") if exact else nullcontext():
        s = sel.exact_cover(inc, costs, target, time_limit=time_limit) if exact else g
    base = sel.random_baseline(inc, cost=s.cost, costs=costs, seed=0)
    out = _selection_dict(s, es.benchmarks, costs, base)
    out.update(kind="union", level="benchmark", cost_kind=cost, greedy_cost=float(g.cost))
    out["table"] = _keep_drop(inc, costs, s.rows, es.benchmarks)
    return out


def _keep_drop(inc: sp.csr_matrix, costs: np.ndarray, chosen: np.ndarray, names: list[str]) -> list[dict]:
    """Why each benchmark is kept or dropped, in features and cost."""
    B = inc.astype(np.int32).tocsr()
    kept = np.zeros(B.shape[0], bool)
    kept[chosen] = True
    per_feature_kept = np.asarray(B[kept].sum(axis=0)).ravel()
    union_kept = per_feature_kept > 0
    inter = (B @ B.T).toarray()
    rows = []
    for i, name in enumerate(names):
        feats = B.indices[B.indptr[i]:B.indptr[i + 1]]
        n = feats.size
        if kept[i]:
            unique = int((per_feature_kept[feats] == 1).sum())
            reason = f"adds {unique} features no other kept benchmark has"
            covered = None
        else:
            covered = float(union_kept[feats].mean()) if n else 1.0
            others = [(inter[i, j] / n if n else 0.0, names[j]) for j in np.flatnonzero(kept)]
            best = max(others, default=(0.0, "-"))
            reason = f"{covered:.0%} of its features are covered by the kept set (most by {best[1]}: {best[0]:.0%})"
        rows.append({"benchmark": name, "decision": "keep" if kept[i] else "drop", "reason": reason,
                     "n_features": int(n), "cost": float(costs[i]), "covered_by_kept": covered})
    return rows


def select_samples(store: Store, ld: Loaded, target: float | None = 0.95, benchmark: str | None = None,
                   n: int | None = None, token_budget: int | None = None, exact: bool = False,
                   time_limit: float = 30.0, threshold: float = 0.0, method: str = "characteristic") -> dict:
    """Fewest samples keeping `target` of the features (of one benchmark or the suite), or the best n / token budget.

    ``characteristic`` (default) weighs each feature by how much more often the benchmark
    (suite: any benchmark) fires it than the suite at large, so the target is a share of what
    characterizes it and one-off features weigh ~1/N; ``union`` counts every fired feature once.
    """
    if method not in METHODS:
        raise QScopeError(f"selection method {method!r} is not one of {', '.join(METHODS)}")
    es = ld.real
    row = None
    if benchmark is not None:
        if benchmark not in es.benchmarks:
            raise QScopeError(f"no benchmark {benchmark!r}; known: {', '.join(es.benchmarks)}")
        row = es.benchmarks.index(benchmark)
        cols = es.M[row].indices
    else:
        cols = np.flatnonzero(np.asarray(es.M.sum(axis=0)).ravel() > 0)
    F = F_full = metrics.fired(es.X[cols], threshold)
    w = None
    if method == "characteristic":
        P = rc.benchmark_profiles(es.M, metrics.fired(es.X, threshold))
        b = rc.background(P)
        wt = rc.sample_weights(P, b, row)
        live = np.flatnonzero(wt > 0)
        F, w = F[:, live], wt[live]  # features nothing characterizes weigh 0: out of the cover
    ids = es.sample_ids[cols]
    tokens = es.n_tokens[cols].astype(float)
    if n is not None or token_budget is not None:
        if n is not None and token_budget is not None:
            raise QScopeError("give either --n or --token-budget, not both")
        costs = tokens if token_budget is not None else None
        budget = float(token_budget if token_budget is not None else n)
        s = sel.max_coverage(F, budget, costs, weights=w)
        base = sel.random_baseline(F, k=None if costs is not None else int(n), cost=budget if costs is not None else None,
                                   costs=costs, seed=0, weights=w)
    else:
        with prog.stage("exact sample selection (HiGHS MILP)") if exact else nullcontext():
            s = (sel.exact_cover(F, None, target, time_limit=time_limit, weights=w) if exact
                 else sel.greedy_cover(F, None, target, weights=w))
        base = sel.random_baseline(F, k=len(s.rows), seed=0, weights=w)
    out = _selection_dict(s, [str(int(i)) for i in ids], tokens if token_budget is not None else np.ones(len(ids)), base)
    out.update(level="sample", kind=method, benchmark=benchmark, n_candidates=int(len(ids)),
               chosen_tokens=int(tokens[s.rows].sum()), total_tokens=int(tokens.sum()))
    if method == "characteristic":
        E = rc.characteristic(P, b)
        Mc = es.M[:, cols].tocsr()
        groups = [(d, Mc[d].indices) for d in ([row] if row is not None else range(len(es.benchmarks)))]
        out["profile_check"] = _profile_check(F_full, s.rows, E, b, groups)
    out["chosen"] = [int(i) for i in ids[s.rows]]
    out.pop("order")
    return out


def _profile_check(F_full: sp.csr_matrix, rows: np.ndarray, E: np.ndarray, b: np.ndarray, groups: list,
                   trials: int = 20) -> dict:
    """Do the chosen samples show each benchmark's characteristic in frequency terms, vs random subsets as large?

    ``groups``: (benchmark row in E, positions of its samples among F_full's rows). Per benchmark D
    the chosen samples of D are compared with random subsets of D of the same size.
    """
    rng = np.random.default_rng(0)
    chosen = np.zeros(F_full.shape[0], bool)
    chosen[np.asarray(rows, np.int64)] = True
    per = []
    for d, pos in groups:
        k = int(chosen[pos].sum())
        if k == 0 or k == pos.size:
            continue
        rand = [rc.subset_share(F_full[rng.choice(pos, k, replace=False)], E[d], b) for _ in range(trials)]
        per.append((rc.subset_share(F_full[pos[chosen[pos]]], E[d], b), float(np.mean(rand)), float(np.std(rand))))
    if not per:
        return {}
    c, m, sd = (float(np.mean(x)) for x in zip(*per))
    return {"chosen_share": c, "random_mean": m, "random_std": sd, "trials": trials, "benchmarks": len(per),
            "meaning": "share of each benchmark's characteristic firing profile its chosen samples show "
                       "(Σ min(e_D, e_S) / Σ e_D), mean over benchmarks, beside random subsets of the same size"}


# ---- the audit summary ---------------------------------------------------------------------

def feature_sets(es: EncodedSet, threshold: float = 0.0, min_support: int = 1) -> dict[str, np.ndarray]:
    """F(D) of every benchmark (sorted feature ids), from one pass over the stored activations."""
    C = metrics.benchmark_features(es.M, metrics.fired(es.X, threshold), min_support)
    C.sort_indices()
    return {name: C.indices[C.indptr[b]:C.indptr[b + 1]].copy() for b, name in enumerate(es.benchmarks)}


def drift(store: Store, ld: Loaded, run_id: str, suite: str, threshold: float = 0.0, min_support: int = 1) -> dict | None:
    """Features gained/lost per benchmark since the previous completed run of the suite on this encoder.

    Each changed benchmark carries the Jaccard of its F(D) then and now. Where the encoder's
    batch-composition noise floor was measured (`encode --noise-floor`), a change whose Jaccard is at
    or above the floor for a union of that many samples is reported as `noise`, not `changed`.
    """
    prev = store.previous_run(suite, ld.real.encoder.encoder_id, before_run=run_id)
    if prev is None:
        return None
    before = store.run_features(prev, ld.real.encoder.encoder_id)
    floor = _noise_floor(store, ld.real.encoder.encoder_id)
    sizes = dict(zip(ld.real.benchmarks, np.asarray(ld.real.M.sum(axis=1)).ravel().tolist()))
    rows = []
    for name, now in feature_sets(ld.real, threshold, min_support).items():
        old = before.get(name)
        if old is None:
            rows.append({"benchmark": name, "status": "new", "gained": int(now.size), "lost": 0})
            continue
        row = {"benchmark": name, "status": "changed" if not np.array_equal(now, old) else "same",
               "gained": int(np.setdiff1d(now, old).size), "lost": int(np.setdiff1d(old, now).size)}
        union = np.union1d(now, old).size
        row["jaccard"] = float(np.intersect1d(now, old).size / union) if union else 1.0
        if floor is not None:
            row["noise_floor"], row["noise_floor_extrapolated"] = floor.union_floor(int(sizes.get(name, 1)))
            if row["status"] == "changed" and row["jaccard"] >= row["noise_floor"]:
                row["status"] = "noise"
        rows.append(row)
    for name in sorted(set(before) - set(ld.real.benchmarks)):
        rows.append({"benchmark": name, "status": "removed", "gained": 0, "lost": int(before[name].size)})
    return {"previous_run": prev, "benchmarks": rows, "noise_floor": floor.to_dict() if floor else None}


def _noise_floor(store: Store, encoder_id: int):
    from qscope_eval.analysis.noise import NoiseFloor

    d = store.noise_floor(encoder_id)
    return NoiseFloor.from_dict(d) if d else None


def duplicates_report(store: Store, ld: Loaded, threshold: float = 0.9, limit: int = 50) -> dict:
    """Exact duplicates (one prompt in several benchmarks) and near-duplicate feature sets."""
    es = ld.real
    per_sample = np.asarray(es.M.sum(axis=0)).ravel()
    exact = int((per_sample > 1).sum())
    nd = samples.near_duplicates(metrics.fired(es.X), es.M, threshold)
    order = np.argsort(-nd.jaccard, kind="stable")[:limit]
    texts = store.texts(es.sample_ids[np.concatenate([nd.i[order], nd.j[order]])]) if order.size else {}
    MT = es.M.T.tocsr()
    bench = lambda s: ",".join(es.benchmarks[b] for b in MT[s].indices)
    pairs = [{"a": bench(nd.i[k]), "b": bench(nd.j[k]), "jaccard": float(nd.jaccard[k]),
              "same_benchmark": bool(nd.same_benchmark[k]),
              "text_a": texts.get(int(es.sample_ids[nd.i[k]]), "")[:300], "text_b": texts.get(int(es.sample_ids[nd.j[k]]), "")[:300]}
             for k in order]
    return {"exact_shared_samples": exact, "near_duplicate_pairs": int(nd.i.size), "threshold": threshold, "top": pairs}


def audit_summary(store: Store, ld: Loaded, suite: str, run_id: str | None = None, target: float = 0.95,
                  cost: str = "samples", threshold: float = 0.0, min_support: int = 1, exact: bool = False,
                  method: str = "characteristic", tau: float | None = None) -> dict:
    """Everything the report shows, as one JSON-able dict (this is summary.json)."""
    sm = suite_metrics(ld, threshold, min_support)
    F = metrics.fired(ld.real.X, threshold)
    freq = metrics.feature_frequency(F)
    out = {
        "suite": suite, "run_id": run_id, "encoder": _encoder_dict(ld), "metrics": sm.to_dict(),
        "selection": select_benchmarks(store, ld, target, cost, exact=exact, threshold=threshold, min_support=min_support,
                                       method=method, tau=tau),
        "sample_selection": select_samples(store, ld, target, threshold=threshold, method=method),
        "feature_frequency": {"n_samples_per_feature": [int(x) for x in freq[freq > 0]], "dead": int((freq == 0).sum())},
        "duplicates": duplicates_report(store, ld),
        "drift": drift(store, ld, run_id, suite, threshold, min_support) if run_id else None,
        "warnings": template_warnings(ld, F),
    }
    out["sample_selection"].pop("chosen")  # ids live in SQL; the report needs the counts
    return out


def template_warnings(ld: Loaded, F) -> list[str]:
    """The audit's warning when the pooling's features are mostly what every benchmark's prompts share."""
    from qscope_eval.analysis.template import template_share, template_warning

    es = ld.real
    if len(es.benchmarks) < 2:
        return []
    w = template_warning(es.benchmarks, template_share(rc.benchmark_profiles(es.M, F)),
                         where=f" at layer {es.encoder.layer} with {es.encoder.pooling} pooling")
    return [w] if w else []


def layer_overview(summaries: list[dict]) -> list[dict]:
    """One row per layer of a multi-layer audit (the first is the main report; layer L's sits in `layer{L}/`)."""
    rows = []
    for i, s in enumerate(summaries):
        enc, sel, m = s["encoder"], s["selection"], s["metrics"]
        share = sel.get("cost_share")
        rows.append({"layer": enc["layer"], "encoder_id": enc["encoder_id"], "d_sae": enc["d_sae"],
                     "features": m.get("suite_union"), "kept": list(sel["chosen"]), "n_benchmarks": len(sel["table"]),
                     "coverage": sel.get("coverage"), "cost_saved": None if share is None else 1 - share,
                     "report": "report.html" if i == 0 else f"layer{enc['layer']}/report.html"})
    return rows
