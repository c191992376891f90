"""The report's "Recommendation from scores" section, from summary["behaviour_selection"] (DESIGN §5c).

summary["behaviour_selection"] is the `select --scores --json` document (jobs/behaviour_select),
computed by the audit when the suite's `selection:` names score tables. One chart: cost kept
against prediction error — the greedy frontier, the band of random kept sets of the same cost,
the feature-only recommendation's point and the chosen point, all measured on models held out
from the choice. Beside it: the sentence with the cost saved and the error bought, the table of
decisions (which evidence decided each), and the pairs where features and scores disagree.
"""

from __future__ import annotations

import math

import altair as alt

BLUE, GREY, ORANGE, RED = "#4e79a7", "#8c8c8c", "#f28e2b", "#b3261e"


def _num(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def frontier_chart(b: dict):
    """Mean dropped error (y) against cost share (x): greedy frontier, random band, feature-only and chosen points."""
    fr = [{"cost": _num(p["cost_share"]), "chosen": _num(p["error_chosen"]), "lo": _num(p["error_random_lo"]),
           "hi": _num(p["error_random_hi"]), "random": _num(p["error_random_mean"]), "kept": p["n_kept"]}
          for p in b.get("frontier") or []]
    data = alt.InlineData(values=fr)
    x = alt.X("cost:Q", title="cost kept (share of the benchmarks decided by scores)", scale=alt.Scale(domain=[0, 1]),
              axis=alt.Axis(format="%"))
    y_title = "mean error of dropped benchmarks (MAE, points, held-out models)"
    band = alt.Chart(data).mark_area(color=GREY, opacity=0.25).encode(x=x, y=alt.Y("lo:Q", title=y_title), y2="hi:Q")
    rand = alt.Chart(data).mark_line(color=GREY, strokeDash=[4, 3]).encode(x=x, y="random:Q")
    tip = [alt.Tooltip("cost:Q", format=".1%"), alt.Tooltip("chosen:Q", format=".2f"),
           alt.Tooltip("random:Q", format=".2f"), "kept:Q"]
    line = alt.Chart(data).mark_line(color=BLUE, point=True).encode(x=x, y="chosen:Q", tooltip=tip)
    layers = [band, rand, line]
    pts = []
    cp, fp = b.get("chosen_point"), b.get("feature_point")
    if cp:
        pts.append({"cost": _num(cp["cost_share"]), "error": _num(cp["error"]), "what": "chosen (scores)"})
    if fp:
        pts.append({"cost": _num(fp["cost_share"]), "error": _num(fp["error"]), "what": "feature-only recommendation"})
    if pts:
        colour = alt.Color("what:N", title=None, scale=alt.Scale(domain=["chosen (scores)", "feature-only recommendation"],
                                                                 range=[RED, ORANGE]))
        layers.append(alt.Chart(alt.InlineData(values=pts)).mark_point(size=160, filled=True, shape="diamond").encode(
            x="cost:Q", y="error:Q", color=colour,
            tooltip=["what:N", alt.Tooltip("cost:Q", format=".1%"), alt.Tooltip("error:Q", format=".2f")]))
    sub = [f"Blue: the search's kept sets at each budget; grey: random kept sets of the same cost (dashed: mean; "
           f"band: {b['cv']['level']:.0%} of draws).",
           f"Errors on the {b['cv']['report_models']} models held out from the choice; diamonds: the chosen set and "
           "the feature-only recommendation."]
    return alt.layer(*layers).properties(width=560, height=300, title=alt.Title(
        "Cost kept vs prediction error of the dropped benchmarks", subtitle=sub))


def charts(summary: dict) -> dict:
    """The section's chart by name (empty without a behaviour selection with a frontier)."""
    b = summary.get("behaviour_selection")
    if not b or not b.get("frontier") or not (b.get("cv") or {}).get("report_models"):
        return {}
    return {"behaviour_selection": frontier_chart(b)}


def _f(x, d: int = 2) -> str:
    return "–" if x is None or not math.isfinite(float(x)) else f"{float(x):.{d}f}"


def lead(b: dict) -> str:
    """One sentence: what is kept, the cost saved, the error bought, beside random subsets (plain text)."""
    n, k = len(b["table"]), len(b["chosen"])
    share = b.get("cost_share")
    txt = (f"Keep {k} of {n} benchmarks at {100 * (share or 0):.1f}% of the cost ({b['cost_kind']}): "
           f"{b['decided_by_scores']} decided by the scores of {b['models']} models, {b['decided_by_features']} by "
           "features.")
    cp, rb = b.get("chosen_point"), b.get("random_baseline")
    if cp and rb and cp["n_kept"] < b["decided_by_scores"]:
        txt += (f" The dropped benchmarks are predicted within {_f(cp['error_reported'])} points on average "
                f"(worst {_f(cp['max_error_reported'])}) on models held out from the choice; random kept sets of the "
                f"same cost: mean {_f(rb['mean_error']['mean'])} ± {_f(rb['mean_error']['sd'])}, worst "
                f"{_f(rb['max_error']['mean'])} ± {_f(rb['max_error']['sd'])} ({rb['trials']} draws).")
    elif cp:
        txt += " No benchmark with scores is predicted within the tolerance by the others: all are kept."
    return txt


def section(summary: dict, e, table, chart_div) -> str:
    """HTML of the section (e: escape, table: (head, rows, cls) -> html, chart_div: name -> html); '' without it."""
    b = summary.get("behaviour_selection")
    if not b:
        return ""
    rows = []
    for r in sorted(b["table"], key=lambda r: (r["decision"] != "keep", r["decided_by"], r["benchmark"])):
        pe = r.get("predicted_error") or {}
        rows.append([f"<b>{e(r['benchmark'])}</b>", f'<span class="badge {e(r["decision"])}">{e(r["decision"])}</span>',
                     e(r["decided_by"]), _f(r["cost"], 0),
                     f"{_f(pe.get('mae'))} [{_f(pe.get('lo'))}, {_f(pe.get('hi'))}]" if pe else "–",
                     _f(r.get("kendall_tau")), _f(r.get("random_error")),
                     e(", ".join(c["benchmark"] for c in r.get("carried_by") or []) or "–"), e(r.get("reason"))])
    dis = [[e(d["benchmark"]), e(d["other"]), e(d["kind"].replace("_", " ")), _f(d.get("feature_ratio")),
            _f(d.get("error")), e(d["reason"])] for d in (b.get("disagreements") or [])[:30]]
    tol = f"max error {_f(b.get('max_error'))} points" if b.get("max_error") is not None else ""
    if b.get("min_tau") is not None:
        tol += (", " if tol else "") + f"Kendall τ ≥ {_f(b['min_tau'])}"
    notes = "".join(f"<li>{e(n)}</li>" for n in b.get("notes") or [])
    fp = b.get("feature_point")
    fp_txt = (f" The feature-only recommendation keeps {100 * fp['cost_share']:.1f}% of the same benchmarks' cost "
              f"and predicts the ones it drops within {_f(fp['error'])} points on average (worst {_f(fp['max_error'])})."
              if fp else "")
    return f"""
<h2>Recommendation from scores</h2>
<p class="lead">{e(lead(b))}</p>
<p class="muted">Tolerance: {e(tol)}. {e(b['cv']['meaning'])}.{e(fp_txt)}</p>
{chart_div("behaviour_selection")}
{table(["benchmark", "decision", "decided by", "cost", "MAE [interval]", "Kendall τ", "random sets", "carried by",
        "reason"], rows, "")}
{"<h3>Where features and scores disagree</h3>" + table(["benchmark", "other", "kind", "feature ratio", "error",
                                                         "reason"], dis, "") if dis else ""}
{f'<ul class="muted">{notes}</ul>' if notes else ''}"""
