"""The reading of the Table-2 analysis: paired comparisons with baselines, verdicts in words, the
pairs where proxy and behaviour disagree most, and the leave-one-benchmark-out jackknife.

Split from `behaviour.py` (which computes the figures) to keep each module small; pure numpy/scipy.
Shapes: P benchmark pairs (upper triangle, row-major; pair t joins benchmarks iu[t] < ju[t]).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


# ----------------------------------------------------------------------------- benchmark jackknife
def jackknife_values(p: np.ndarray, r: np.ndarray, m: np.ndarray, iu: np.ndarray, ju: np.ndarray, K: int) -> np.ndarray:
    """(K,) Pearson of p with r over the pairs in mask m, leaving out each benchmark's pairs in turn.

    Every sum behind r is a total minus the benchmark's row of pair sums (two bincounts): O(P).
    """
    mu_p = p[m].mean() if m.any() else 0.0
    mu_r = r[m].mean() if m.any() else 0.0
    x = np.where(m, p - mu_p, 0.0)
    y = np.where(m, r - mu_r, 0.0)
    q = np.stack([m.astype(np.float64), x, y, x * x, y * y, x * y])          # (6, P)
    tot = q.sum(axis=1)[:, None]
    rows = np.stack([np.bincount(iu, w, K) + np.bincount(ju, w, K) for w in q])  # (6, K)
    n, sx, sy, sxx, syy, sxy = tot - rows
    with np.errstate(invalid="ignore", divide="ignore"):
        vx, vy = sxx - sx * sx / n, syy - sy * sy / n
        out = (sxy - sx * sy / n) / np.sqrt(vx * vy)
    return np.where((n >= 3) & (vx > 0) & (vy > 0), out, np.nan)


def jackknife_se(vals: np.ndarray) -> float:
    """Jackknife standard error from leave-one-out values (NaN with fewer than 3)."""
    v = vals[np.isfinite(vals)]
    if v.size < 3:
        return math.nan
    return float(math.sqrt((v.size - 1) / v.size * ((v - v.mean()) ** 2).sum()))


def jackknife_pearson(p, r, m, iu, ju, K) -> float:
    """Leave-one-benchmark-out jackknife standard error of the pair-level Pearson r."""
    return jackknife_se(jackknife_values(p, r, m, iu, ju, K))


# ----------------------------------------------------------------------------- comparisons and verdicts
def interval(v: np.ndarray, q: float, point: float, bound: float = 1.0) -> tuple[float, float, np.ndarray]:
    """Percentile interval of bootstrap values v, re-centred so their median sits on the point estimate.

    Resampling models adds sampling noise to every score correlation, and noise attenuates an
    agreement, so replicates sit systematically below the point estimate (often entirely, with
    many benchmark pairs). The shift removes that, the spread is kept; the ends are clipped to
    [-bound, bound] (1 for a correlation, 2 for a difference of two). Returns (lo, hi, shifted v).
    """
    v = v[np.isfinite(v)]
    if v.size < 20 or not math.isfinite(point):
        return math.nan, math.nan, v
    v = v + (point - float(np.median(v)))
    lo, hi = np.clip(np.quantile(v, [q, 1 - q]), -bound, bound)
    return float(lo), float(hi), v


def _fmt(x: float) -> str:
    return f"{x:+.2f}" if x is not None and math.isfinite(x) else "n/a"


def comparisons_and_verdicts(comps, point, reps, masks, proxy_rows, rel, headline, cfg, n_models, pv, beh, iu, ju, K,
                             head: str | None = None):
    """Paired SAE-minus-baseline differences (same bootstrap replicates) and the verdict sentences."""
    q = (1 - cfg.level) / 2
    stats_ = [("partial_pearson", "partial"), ("pearson", "raw")] if headline == "partial" else [("pearson", "raw")]
    comparisons = []
    for a, base in comps:
        for stat, side in stats_:
            ka, kb = (side, a, base), (side, base, a)
            va, vb = point[ka][0], point[kb][0]
            lo, hi, d = interval(reps[ka][:, 0] - reps[kb][:, 0], q, va - vb, bound=2.0)
            m = masks[ka]
            jk = jackknife_values(pv[a], beh[side], m, iu, ju, K) - jackknife_values(pv[base], beh[side], m, iu, ju, K)
            comparisons.append({
                "proxy": a, "baseline": base, "statistic": stat, "proxy_value": va, "baseline_value": vb,
                "diff": va - vb, "lo": lo, "hi": hi,
                "p_better": (1 + int((d <= 0).sum())) / (1 + d.size) if d.size else math.nan,
                "share_better": float((d > 0).mean()) if d.size else math.nan,
                "n_pairs": int(m.sum()), "benchmark_se": jackknife_se(jk)})
    return comparisons, _verdicts(comparisons, proxy_rows, rel, headline, cfg, n_models, head)


def _verdicts(comparisons, proxy_rows, rel, headline, cfg, n_models, head=None) -> list[str]:
    pre = "partial_" if headline == "partial" else ""
    removed = {"mean": "each model's mean score", "pc1": "the first principal component of the scores",
               "reference": "the reference benchmark's score"}.get(cfg.control, "the general factor")
    what = f"partial score correlation ({removed} partialled out)" if headline == "partial" else "score correlation"
    level = f"{cfg.level:.0%}"
    out = []
    rows = [r for r in proxy_rows if r["kind"] == "sae"] or proxy_rows
    for r in rows:
        v, lo, hi = r[pre + "pearson"], r[pre + "pearson_lo"], r[pre + "pearson_hi"]
        if not math.isfinite(v):
            out.append(f"{r['name']}: too few pairs with a defined value to compare with the {what}")
            continue
        if math.isfinite(lo) and lo > 0:
            how = "tracks"
        elif math.isfinite(hi) and hi < 0:
            how = "runs opposite to"
        elif math.isfinite(lo):
            how = "shows no clear relation to (the interval includes 0)"
        else:
            how = "relates to (no interval)"
        p = r["partial_mantel_p" if headline == "partial" else "mantel_p"]
        floor = 1 / (cfg.permutations + 1) if cfg.permutations else 0.0
        ptxt = "" if p is None else (f", Mantel p = {p:.2g} (the smallest {cfg.permutations} permutations can give)"
                                     if p <= floor * (1 + 1e-9) else f", Mantel p = {p:.2g}")
        ci = f" [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else ""
        out.append(f"On these {n_models} models, {r['name']} {how} the benchmarks' {what}: "
                   f"Pearson r = {v:+.2f}{ci}{ptxt}, over {r['n_pairs']} benchmark pairs.")
    lex = [r for r in proxy_rows if r["kind"] == "lexical" and math.isfinite(r[pre + "pearson"])]
    strongest = max(lex, key=lambda r: r[pre + "pearson"])["name"] if lex else None
    for c in comparisons:
        if c["statistic"] != pre + "pearson":
            continue
        base = c["baseline"] + (" (the strongest lexical baseline)" if c["baseline"] == strongest else "")
        vals = f"r = {_fmt(c['proxy_value'])} vs {_fmt(c['baseline_value'])}, difference {_fmt(c['diff'])}"
        if math.isfinite(c["lo"]):
            vals += (f" ({level} interval {_fmt(c['lo'])} to {_fmt(c['hi'])}, bootstrap over models; "
                     f"p = {c['p_better']:.3g} that it does not beat it)")
        se = c["benchmark_se"]
        if math.isfinite(se):
            z = float(stats.norm.ppf(1 - (1 - cfg.level) / 2))
            beyond = "beyond" if abs(c["diff"]) > z * se else "not beyond"
            vals += (f"; with other benchmarks like these the difference could move by about ±{z * se:.2f} "
                     f"(leave-one-benchmark-out jackknife), so it is {beyond} benchmark-to-benchmark variation")
        if math.isfinite(c["lo"]) and c["lo"] > 0:
            out.append(f"{c['proxy']} beats {base} on these models: {vals}.")
        elif math.isfinite(c["hi"]) and c["hi"] < 0:
            out.append(f"{c['proxy']} does worse than {base} on these models: {vals}.")
        else:
            out.append(f"{c['proxy']} does not clearly beat {base}: {vals}.")
    sb, ceil = rel.get("spearman_brown"), rel.get("ceiling")
    if sb is not None and math.isfinite(sb):
        txt = (f"The {what} is itself only so reliable: split-half over models, Spearman-Brown corrected, "
               f"{sb:.2f}")
        top = next((r for r in proxy_rows if r["name"] == head), rows[0] if rows else None)
        if ceil is not None and math.isfinite(ceil) and top is not None and math.isfinite(top[pre + "pearson"]):
            v = top[pre + "pearson"]
            txt += (f", so a perfect proxy would reach about r = {ceil:.2f}; {top['name']} reaches {v:+.2f} "
                    f"({v / ceil:.0%} of that ceiling)")
        out.append(txt + ".")
    if not any(r["kind"] == "sae" for r in proxy_rows):
        out.append("No SAE proxy was given, so nothing says whether the features beat the baselines.")
    summary = _summary(comparisons, proxy_rows, head, pre, strongest, n_models, ceil)
    return ([summary] if summary else []) + out


def _summary(comparisons, proxy_rows, head, pre, strongest, n_models, ceil) -> str | None:
    """The one sentence read first: the headline SAE proxy against the null's same measure and the strongest
    lexical baseline (the verdict lines below give every comparison with its interval)."""
    top = next((r for r in proxy_rows if r["name"] == head), None)
    if top is None or not math.isfinite(top[pre + "pearson"]):
        return None
    def word(base):
        c = next((c for c in comparisons if c["proxy"] == head and c["baseline"] == base
                  and c["statistic"] == pre + "pearson"), None)
        if c is None or not math.isfinite(c["lo"]):
            return None
        how = "better than" if c["lo"] > 0 else "worse than" if c["hi"] < 0 else "not clearly better than"
        return f"{how} {base} ({_fmt(c['baseline_value'])})"
    measure = head.split(":", 1)[1]
    parts = [w for w in (word(f"null:{measure}"), word(strongest) if strongest else None) if w]
    lo, hi = top[pre + "pearson_lo"], top[pre + "pearson_hi"]
    verb = ("tracks" if math.isfinite(lo) and lo > 0 else "runs opposite to" if math.isfinite(hi) and hi < 0
            else "shows no clear relation to")
    txt = (f"In short: on these {n_models} models the SAE's {measure} similarity {verb} the "
           f"{'partial ' if pre else ''}score correlation (r = {_fmt(top[pre + 'pearson'])})")
    if ceil is not None and math.isfinite(ceil):
        txt += f" (a perfect proxy: about {ceil:.2f})"
    return txt + (", " + " and ".join(parts) if parts else "") + "."


# ----------------------------------------------------------------------------- disagreements
def disagreements(head, pv, bvec, enough, names, iu, ju, n_dis) -> list[dict]:
    """Pairs where the headline proxy's rank and the behaviour's rank differ most, in each direction.

    Ranks run over the pairs both define, 1 = most alike (ties share their mid-rank). rank_gap = behaviour_rank − proxy_rank:
    large and positive = 'features alike, scores not'; large and negative = 'scores alike, features not'.
    """
    p = pv[head]
    m = enough & np.isfinite(p) & np.isfinite(bvec)
    idx = np.flatnonzero(m)
    if idx.size < 3 or n_dis == 0:
        return []
    pr = stats.rankdata(-p[idx])               # mid-ranks: a tie of many pairs sits in its middle
    br = stats.rankdata(-bvec[idx])
    gap = br - pr
    order = np.argsort(-gap, kind="stable")
    pos = [t for t in order[:n_dis] if gap[t] > 0]
    neg = [t for t in order[::-1][:n_dis] if gap[t] < 0]
    out = []
    for t in pos + neg:
        k = idx[t]
        out.append({"a": str(names[iu[k]]), "b": str(names[ju[k]]), "proxy": head,
                    "proxy_rank": float(pr[t]), "behaviour_rank": float(br[t]), "rank_gap": float(gap[t]),
                    "proxy_value": float(p[k]), "score_partial": float(bvec[k]),
                    "direction": "features alike, scores not" if gap[t] > 0 else "scores alike, features not"})
    return out


# ----------------------------------------------------------------------------- small readers
def comparison_list(specs) -> list[tuple[str, str]]:
    """(sae proxy, baseline) pairs: same-measure null and lexical, and every lexical proxy."""
    have = {nm for nm, *_ in specs}
    out = []
    for nm, kind, measure, _ in specs:
        if kind != "sae":
            continue
        for base in [f"null:{measure}", f"lexical:{measure}"] + sorted(x for x in have if x.startswith("lexical:")):
            if base in have and (nm, base) not in out:
                out.append((nm, base))
    return out


def notes_for(cfg, dropped, M, enough, beh, headline, reps) -> list[str]:
    notes = []
    if dropped:
        notes.append(f"{dropped} model rows with no score at all were left out")
    miss = 1 - M.mean()
    if miss > 0:
        notes.append(f"{miss:.1%} of the score cells are missing: every correlation uses the models scored on both "
                     "benchmarks (n_models per pair)")
    if (~enough).any():
        notes.append(f"{int((~enough).sum())} benchmark pairs have fewer than {cfg.min_pair_models} models scored on "
                     "both and are left out (too_few_models)")
    undefined = int((enough & ~np.isfinite(beh[headline])).sum())
    if undefined:
        notes.append(f"{undefined} pairs have an undefined {headline} score correlation (a benchmark fully explained "
                     "by the general factor, e.g. the reference itself) and are left out")
    if cfg.replicates:
        bad = sum(int((~np.isfinite(v[:, 0])).sum()) for v in reps.values())
        if bad:
            notes.append(f"{bad} bootstrap statistics were undefined (a resample without spread) and were left out")
        notes.append("intervals: percentile bootstrap over models (benchmarks fixed), re-centred on the point estimate "
                     "(resampling adds noise that pulls every replicate down); replicates use each benchmark's mean and "
                     "SD over its own models (exact when no cell is missing); *_benchmark_se is a leave-one-benchmark-out "
                     "jackknife for how the figure would move with other benchmarks")
    if cfg.control == "mean":
        notes.append("general factor: each model's mean standardised score over the benchmarks it has")
    elif cfg.control == "pc1":
        notes.append("general factor: first principal component of the score correlations; a model's score is fitted "
                     "on the cells it has (missing cells are skipped, not imputed)")
    return notes
