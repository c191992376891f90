"""Score benchmark-recommendation methods on suites of known structure (issue 10, DESIGN §5).

One encode (bench/suites/validation.yaml: MMLU subjects, HumanEval, GSM8K; demo
backbone + SAE, top pooling, null twin) is sliced into several suites with
different topic groupings (SUITES below). For each suite and method it prints:

  groups_dropped   capability groups with no kept benchmark (want 0)
  dup_kept         kept benchmarks beyond the first in a group (lower = fewer same-group duplicates)
  kept             benchmarks kept / in the suite
  nn_purity        share of benchmarks whose most-similar other benchmark (by the method's pairwise
                   measure) is in its own group (benchmarks whose group has >= 2 members)
  stability        Jaccard of the kept sets from two random halves of every benchmark
  sub_alike        mean |s(X, D) - s(X, D10%)| over X, both directions: a benchmark and a 10% subsample
                   of itself judged alike (want ~0)
  size_gain        mean over X of s(X covered by D) - s(X covered by D10%): what 10x the samples adds
                   by size alone (want ~0)

The default ("characteristic (default)") checks each drop against the null dictionary AND the lexical
baseline (the prompts' words: stored by `encode`, or computed from the stored texts of an older database) in
one bootstrap, and keeps template-dominated benchmarks (docs/baselines.md); "characteristic, null only
(before issue 27)" is the rule before the lexical check, for comparison.

Alternatives to the default rule (not default; docs/recommendation.md "Alternatives measured"): --methods
"kept-set coverage τ=0.8", "pair coverage τ=1.0", "nearest only, ratio≥0.6", "ratio_hi ≥ 1 (noise-calibrated)".

Run:  qscope-eval encode bench/suites/validation.yaml --db out/validation.duckdb   (once: 3619 prompts, ~5 min on 2 cores)
      qscope-eval encode bench/suites/holdout.yaml --db out/validation.duckdb      (held-out subjects: 1339, ~2 min)
      python bench/recommend_bench.py --db out/validation.duckdb [--demo-db out/demo.duckdb]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qscope_eval.analysis import metrics, recommend as rc, select as sel  # noqa: E402
from qscope_eval.jobs.summary import load  # noqa: E402
from qscope_eval.store import Store  # noqa: E402

m = lambda *s: ["mmlu_" + x for x in s]
SUITES: dict[str, dict[str, list[str]]] = {
    # the shape: 15 benchmarks, 7 groups of sizes 1-3
    "sciences15": {"math": m("elementary_mathematics", "high_school_mathematics", "college_mathematics"),
                   "chemistry": m("high_school_chemistry", "college_chemistry"),
                   "physics": m("high_school_physics", "college_physics"),
                   "law": m("professional_law", "international_law", "jurisprudence"),
                   "biology": m("high_school_biology", "college_biology", "anatomy"),
                   "code": ["humaneval"], "word_problems": ["gsm8k"]},
    # humanities and social sciences, long and short prompts, 6 groups of 2-4
    "humanities18": {"history": m("high_school_us_history", "high_school_world_history",
                                  "high_school_european_history", "prehistory"),
                     "philosophy": m("philosophy", "moral_disputes", "world_religions"),
                     "politics": m("high_school_government_and_politics", "us_foreign_policy", "security_studies"),
                     "psychology": m("high_school_psychology", "professional_psychology"),
                     "economics": m("high_school_macroeconomics", "high_school_microeconomics", "econometrics"),
                     "business": m("marketing", "management", "professional_accounting")},
    # applied STEM and health, different math members, 6 groups of 1-4
    "stem_health14": {"medicine": m("clinical_knowledge", "college_medicine", "professional_medicine"),
                      "computing": m("college_computer_science", "high_school_computer_science", "machine_learning",
                                     "computer_security"),
                      "math": m("abstract_algebra", "high_school_statistics", "elementary_mathematics"),
                      "physics": m("conceptual_physics", "high_school_physics"),
                      "code": ["humaneval"], "word_problems": ["gsm8k"]},
    # many singleton groups beside a few pairs: unique capabilities must survive
    "singletons12": {"law": m("professional_law", "international_law", "jurisprudence"),
                     "history": m("high_school_world_history", "prehistory"),
                     "math": m("high_school_mathematics", "college_mathematics"),
                     "econometrics": m("econometrics"), "medicine": m("professional_medicine"),
                     "anatomy": m("anatomy"), "ml": m("machine_learning"), "code": ["humaneval"]},
    # everything at once: 43 benchmarks in 15 groups (a lower background: related topics look closer)
    "all43": {"math": m("elementary_mathematics", "high_school_mathematics", "college_mathematics", "abstract_algebra",
                        "high_school_statistics"),
              "word_problems": ["gsm8k"], "code": ["humaneval"],
              "physics": m("high_school_physics", "college_physics", "conceptual_physics"),
              "chemistry": m("high_school_chemistry", "college_chemistry"),
              "biology": m("high_school_biology", "college_biology", "anatomy"),
              "medicine": m("clinical_knowledge", "college_medicine", "professional_medicine"),
              "history": m("high_school_us_history", "high_school_world_history", "high_school_european_history",
                           "prehistory"),
              "law": m("professional_law", "international_law", "jurisprudence"),
              "economics": m("high_school_macroeconomics", "high_school_microeconomics", "econometrics"),
              "computing": m("college_computer_science", "high_school_computer_science", "machine_learning",
                             "computer_security"),
              "philosophy": m("philosophy", "moral_disputes", "world_religions"),
              "psychology": m("high_school_psychology", "professional_psychology"),
              "business": m("marketing", "management", "professional_accounting"),
              "politics": m("high_school_government_and_politics", "us_foreign_policy", "security_studies")},
    # HELD OUT: subjects no suite above uses, encoded (bench/suites/holdout.yaml) after τ was chosen
    "holdout18": {"health": m("virology", "medical_genetics", "nutrition", "human_aging"),
                  "logic": m("formal_logic", "logical_fallacies"),
                  "society": m("sociology", "public_relations", "human_sexuality"),
                  "ethics": m("moral_scenarios", "business_ethics"),
                  "engineering": m("electrical_engineering"), "astronomy": m("astronomy"),
                  "geography": m("high_school_geography"), "trivia": m("global_facts", "miscellaneous"),
                  "code": ["humaneval"], "word_problems": ["gsm8k"]},
}


# everything, held-out subjects included: 59 benchmarks in 23 groups
SUITES["all59"] = {**SUITES["all43"], **{g: b for g, b in SUITES["holdout18"].items() if g not in ("code", "word_problems")}}

# the demo suite (qscope_eval/suites/demo.yaml, its own database): 5 groups
DEMO = {"demo8": {"math": m("high_school_mathematics", "elementary_mathematics"),
                  "history": m("high_school_us_history", "high_school_world_history"),
                  "biology": m("high_school_biology", "college_biology"), "code": ["humaneval"],
                  "word_problems": ["gsm8k"]}}


# ----------------------------------------------------------------------------- methods
def union_method(M, F, Fn, costs):
    """The report's: partial set cover (95 %) of the suite's union of fired features; s = Eq. 10 overlap."""
    B = metrics.benchmark_features(M, F, 1)
    inc = sp.csr_matrix((np.ones(B.nnz, bool), B.indices, B.indptr), shape=B.shape)
    s = sel.greedy_cover(inc, costs, 0.95)
    return np.sort(s.rows), metrics.overlap_matrices(M, F, 1).asym


LEXICAL: dict = {}
"""`Fl`: the lexical baseline's fired words of the suite being scored (rows = F's rows), set by `score`."""


def char_method(M, F, Fn, costs, lexical=True, **kw):
    """This project's default: characteristic share ≥ τ of the noise ceiling, lower bound above the null and the
    lexical baseline (the prompts' words), the covered benchmark not template-dominated."""
    a = rc.assess(M, F, Fn, rc.RecommendConfig(replicates=kw.pop("replicates", 60), **kw),
                  F_lexical=LEXICAL.get("Fl") if lexical else None)
    return rc.recommend(a, costs).kept, a.ratio


def char_null_only(M, F, Fn, costs, **kw):
    """The default before the lexical check (issue 27): above the null only."""
    return char_method(M, F, Fn, costs, lexical=False, **kw)


def char_exact(M, F, Fn, costs):
    a = rc.assess(M, F, Fn, rc.RecommendConfig(replicates=60), F_lexical=LEXICAL.get("Fl"))
    return rc.recommend(a, costs, exact=True).kept, a.ratio


def char_no_null(M, F, Fn, costs, **kw):
    return char_method(M, F, None, costs, **kw)


def freq_overlap(M, F, Fn, costs, tau=0.6):
    """Ablation: plain frequency overlap Σ min(p_D, p_K)/Σ p_D, no background, no ceiling, no null."""
    P = rc.benchmark_profiles(M, F)
    share = rc.covered_share(P)
    cov = share >= tau
    np.fill_diagonal(cov, True)
    s = sel.greedy_cover(sp.csr_matrix(cov.T), costs, 1.0)
    return np.sort(s.rows), share


# ----------------------------------------------------------------------------- measured alternatives (not default)
# Each tried to keep fewer same-group duplicates than the default; none did so without dropping a group
# somewhere (docs/recommendation.md "Validation", "Alternatives measured"). Kept here so the numbers can be re-run.
def _point(M, F, Fn):
    """Point estimates (no bootstrap): E, ratio, ceilings for the SAE and the null, and the null scale."""
    cfg = rc.RecommendConfig()
    _, _, E, _, selfs, ratio = rc._ratios(M, F, cfg)
    if Fn is None:
        return E, selfs, ratio, None, None, 1.0
    _, _, En, _, selfs_n, ratio_n = rc._ratios(M, Fn, cfg)
    return E, selfs, ratio, En, selfs_n, rc.null_scale(ratio, ratio_n)


def _joint_ratio(E, selfs, i, S):
    """Share of E[i] shown by the kept SET: Σ_f min(e_i, max_{K∈S} e_K) / Σ_f e_i, over i's ceiling."""
    if not S:
        return 0.0
    s = selfs[i] if np.isfinite(selfs[i]) and selfs[i] > 0 else 1.0
    return float(np.minimum(E[i], E[sorted(S)].max(axis=0)).sum() / E[i].sum() / s)


def kept_set_method(M, F, Fn, costs, tau=0.8):
    """Idea (a): D is covered when the kept set jointly shows ≥ τ of it (per feature the max over kept
    benchmarks), above the null's joint value on the SAE's scale (point estimates). Irredundant deletion:
    from all benchmarks, repeatedly drop the costliest (then best-covered) one whose drop leaves every
    dropped benchmark covered. Containment still covers outright."""
    E, selfs, ratio, En, selfs_n, scale = _point(M, F, Fn)
    cont = rc.containment(M)
    kept = set(range(M.shape[0]))

    def ok(i, S):
        if any(cont[i, k] for k in S):
            return True
        r = _joint_ratio(E, selfs, i, S)
        return r >= tau and (En is None or r > scale * _joint_ratio(En, selfs_n, i, S))

    while True:
        order = sorted(kept, key=lambda k: (-costs[k], -_joint_ratio(E, selfs, k, kept - {k})))
        drop = next((k for k in order if all(ok(i, kept - {k}) for i in set(range(M.shape[0])) - kept | {k})),
                    None)
        if drop is None:
            return np.array(sorted(kept)), ratio
        kept.discard(drop)


def _pair_shares(E, selfs):
    """J[i, k1, k2]: share of E[i] shown by k1 and k2 together (per feature the larger), over i's ceiling."""
    n = E.shape[0]
    s = np.where(np.isfinite(selfs) & (selfs > 0), selfs, 1.0)
    J = np.zeros((n, n, n))
    for i in range(n):
        A = np.minimum(E[i, E[i] > 0][None, :], E[:, E[i] > 0])  # (n × live): min(e_i, e_k) per feature
        for k in range(n):  # min(e_i, max(e_k, e_l)) = max(min(e_i, e_k), min(e_i, e_l))
            J[i, k] = np.maximum(A[k][None, :], A).sum(axis=1) / (E[i].sum() * s[i])
    return J


def pair_method(M, F, Fn, costs, tau=1.0):
    """Between (a) and the default: D is covered when at most TWO kept benchmarks together show ≥ τ of it,
    above the null's pair value on the SAE's scale (point estimates); irredundant deletion, costliest first."""
    E, selfs, ratio, En, selfs_n, scale = _point(M, F, Fn)
    J = _pair_shares(E, selfs)
    ok = (J >= tau) & ((J > scale * _pair_shares(En, selfs_n)) if En is not None else True)
    n = M.shape[0]
    for i in range(n):
        ok[i, i, :] = ok[i, :, i] = False
    cont = rc.containment(M)
    kept = set(range(n))

    def fine(i, S):
        S = sorted(S)
        return bool(cont[i, S].any() or ok[i][np.ix_(S, S)].any())

    while True:
        drop = next((k for k in sorted(kept, key=lambda k: -costs[k])
                     if all(fine(i, kept - {k}) for i in (set(range(n)) - kept) | {k})), None)
        if drop is None:
            return np.array(sorted(kept)), ratio
        kept.discard(drop)


def _cover_with(M, costs, cov, ratio):
    """Greedy + irredundant set cover on a covers matrix, with the default's containment and size preference."""
    cov = cov | rc.containment(M)
    np.fill_diagonal(cov, True)
    n = np.asarray(M.sum(axis=1)).ravel()
    cov &= ~(cov & cov.T & (n[None, :] < n[:, None]))
    return np.sort(sel.greedy_cover(sp.csr_matrix(cov.T), costs, 1.0).rows), ratio


def nearest_method(M, F, Fn, costs, tau=0.6):
    """Only D's most similar other benchmark may stand in for it, at ratio ≥ τ and above the scaled null."""
    E, selfs, ratio, En, selfs_n, scale = _point(M, F, Fn)
    R = ratio.copy()
    np.fill_diagonal(R, -np.inf)
    cov = np.zeros_like(ratio, bool)
    cov[np.arange(R.shape[0]), R.argmax(axis=1)] = True
    if En is not None:
        cov &= ratio > scale * rc._ratio(rc.covered_share(En), selfs_n)
    return _cover_with(M, costs, cov & (ratio >= tau), ratio)


def noise_method(M, F, Fn, costs, level=1.0):
    """Idea (b), τ from each benchmark's own noise: K stands in for D when the bootstrap upper bound of the
    ratio reaches `level` (K is not distinguishable from a second draw of D), above the null as the default."""
    a = rc.assess(M, F, Fn, rc.RecommendConfig(replicates=60))
    return _cover_with(M, costs, (a.hi >= level) & a.above_null, a.ratio)


METHODS = {"union (report)": union_method, "characteristic (default)": char_method,
           "characteristic, null only (before issue 27)": char_null_only,
           "characteristic, exact": char_exact, "characteristic, no null": char_no_null,
           "freq overlap ≥0.6": freq_overlap}
for _t in (0.8, 1.0):
    METHODS[f"kept-set coverage τ={_t}"] = lambda M, F, Fn, c, _t=_t: kept_set_method(M, F, Fn, c, tau=_t)
for _t in (0.9, 1.0, 1.1, 1.3):
    METHODS[f"pair coverage τ={_t}"] = lambda M, F, Fn, c, _t=_t: pair_method(M, F, Fn, c, tau=_t)
for _t in (0.5, 0.6, 0.7):
    METHODS[f"nearest only, ratio≥{_t}"] = lambda M, F, Fn, c, _t=_t: nearest_method(M, F, Fn, c, tau=_t)
METHODS["ratio_hi ≥ 1 (noise-calibrated)"] = noise_method
for _t in (0.5, 0.6, 0.7, 0.8, 0.9):  # the τ sweep (not in the default run; --methods picks them)
    METHODS[f"characteristic τ={_t}"] = lambda M, F, Fn, c, _t=_t: char_method(M, F, Fn, c, tau=_t)
    METHODS[f"characteristic τ={_t}, no null"] = lambda M, F, Fn, c, _t=_t: char_no_null(M, F, Fn, c, tau=_t)


# ----------------------------------------------------------------------------- scoring
def _slice(es, names):
    rows = [es.benchmarks.index(n) for n in names]
    M = es.M[rows]
    cols = np.flatnonzero(np.asarray(M.sum(axis=0)).ravel() > 0)
    return M[:, cols].tocsr(), cols


def _halve(M, rng):
    return rc._halves(sp.csr_matrix(M, dtype=float), rng)


def _subsample(M, i, share, rng):
    """Append a row: a random `share` of benchmark i's samples (at least 5)."""
    s = M.indices[M.indptr[i]:M.indptr[i + 1]]
    pick = rng.choice(s, max(5, int(round(share * s.size))), replace=False)
    row = sp.csr_matrix((np.ones(pick.size), (np.zeros(pick.size, int), pick)), shape=(1, M.shape[1]))
    return sp.vstack([M, row]).tocsr()


def score(method, es, null, groups, seed=0, lexical=None):
    names = [b for g in groups.values() for b in g]
    group_of = {b: g for g, bs in groups.items() for b in bs}
    M, cols = _slice(es, names)
    F, Fn = metrics.fired(es.X[cols]), metrics.fired(null.X[cols]) if null is not None else None
    LEXICAL["Fl"] = metrics.fired(lexical.data.X[cols]) if lexical is not None else None
    costs = np.asarray(M.sum(axis=1)).ravel().astype(float)
    kept, S = method(M, F, Fn, costs)
    kg = [group_of[names[k]] for k in kept]
    dropped = [g for g in groups if g not in kg]
    dup = sum(max(0, kg.count(g) - 1) for g in groups)
    pure = []
    for i, b in enumerate(names):
        if len(groups[group_of[b]]) < 2:
            continue
        row = S[i].astype(float).copy()
        row[i] = -np.inf
        pure.append(group_of[names[int(np.argmax(row))]] == group_of[b])
    rng = np.random.default_rng(seed)
    MA, MB = _halve(M, rng)
    ka = set(method(MA, F, Fn, np.asarray(MA.sum(axis=1)).ravel())[0])
    kb = set(method(MB, F, Fn, np.asarray(MB.sum(axis=1)).ravel())[0])
    stab = len(ka & kb) / len(ka | kb)
    alike, gain = [], []
    big = [i for i in range(len(names)) if costs[i] >= 100][:3]
    for i in big:  # size robustness: D and a 10% subsample of D, each in the suite alone
        Ms = _subsample(M, i, 0.1, rng)
        keep = np.r_[np.arange(i), np.arange(i + 1, len(names))]
        order = np.r_[keep, len(names)]  # the suite with D replaced by its subsample, D's slot last
        S_sub = method(Ms[order], F, Fn, np.asarray(Ms[order].sum(axis=1)).ravel())[1]
        S_full = S[np.r_[keep, i]][:, np.r_[keep, i]]
        alike.append(0.5 * (np.abs(S_full[-1, :-1] - S_sub[-1, :-1]).mean()
                            + np.abs(S_full[:-1, -1] - S_sub[:-1, -1]).mean()))
        gain.append(float((S_full[:-1, -1] - S_sub[:-1, -1]).mean()))
    return {"groups_dropped": len(dropped), "dropped": dropped, "dup_kept": dup, "kept": f"{len(kept)}/{len(names)}",
            "nn_purity": float(np.mean(pure)) if pure else float("nan"), "stability": stab,
            "sub_alike": float(np.mean(alike)) if alike else float("nan"),
            "size_gain": float(np.mean(gain)) if gain else float("nan"),
            "kept_names": [names[k] for k in kept]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="out/validation.duckdb")
    ap.add_argument("--methods", nargs="*", default=list(METHODS)[:6], help=f"any of: {', '.join(METHODS)}")
    ap.add_argument("--demo-db", default=None, help="also score the demo suite from this database (make demo)")
    ap.add_argument("--verbose", action="store_true", help="print the kept benchmarks too")
    ap.add_argument("--suites", nargs="*", default=None, help=f"a subset of: {', '.join(SUITES)}")
    args = ap.parse_args(argv)
    with Store(args.db, read_only=True) as store:
        ld = load(store)
    n_enc = dict(zip(ld.real.benchmarks, np.asarray(ld.real.M.sum(axis=1)).ravel()))
    enc = lambda gs: {g: [b for b in bs if n_enc.get(b, 0) >= 10] for g, bs in gs.items()}  # noqa: E731
    runs = [(suite, {g: bs for g, bs in enc(groups).items() if bs}, ld) for suite, groups in SUITES.items()
            if args.suites is None or suite in args.suites]  # a subset encode: the benchmarks it holds
    if args.demo_db:
        with Store(args.demo_db, read_only=True) as store:
            runs += [(suite, groups, load(store)) for suite, groups in DEMO.items()]
    print("Definitions")
    print("  union (report):  keep the cheapest benchmarks whose union of fired features holds 95 % of the suite's "
          "union (min_support 1); a dropped benchmark is 'covered' by the kept union (Eq. 10 overlap).")
    print("  characteristic:  " + rc.DEFINITION + f" (τ = {rc.RecommendConfig().tau}).")
    print("  lexical baseline: the prompts' words (analysis/lexical.py), stored by `encode` or computed from the "
          "stored texts; 'null only' is the rule before issue 27.")
    print()
    head = ["suite", "method", "groups_dropped", "dup_kept", "kept", "nn_purity", "stability", "sub_alike",
            "size_gain", "seconds"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    totals: dict[str, list] = {}
    for suite, groups, data in runs:
        for name in args.methods:
            t = time.perf_counter()
            r = score(METHODS[name], data.real, data.null, groups, lexical=data.lexical)
            dt = time.perf_counter() - t
            totals.setdefault(name, []).append(r)
            print(f"| {suite} | {name} | {r['groups_dropped']} {r['dropped'] or ''} | {r['dup_kept']} | {r['kept']} | "
                  f"{r['nn_purity']:.2f} | {r['stability']:.2f} | {r['sub_alike']:.3f} | {r['size_gain']:+.3f} | "
                  f"{dt:.1f} |", flush=True)
            if args.verbose:
                print("    kept:", ", ".join(r["kept_names"]))
    print()
    for name, rs in totals.items():
        print(f"| all | {name} | {sum(r['groups_dropped'] for r in rs)} | {sum(r['dup_kept'] for r in rs)} | "
              f"{sum(int(r['kept'].split('/')[0]) for r in rs)}/{sum(int(r['kept'].split('/')[1]) for r in rs)} | "
              f"{np.nanmean([r['nn_purity'] for r in rs]):.2f} | {np.mean([r['stability'] for r in rs]):.2f} | "
              f"{np.nanmean([r['sub_alike'] for r in rs]):.3f} | {np.nanmean([r['size_gain'] for r in rs]):+.3f} | |")


if __name__ == "__main__":
    main()
