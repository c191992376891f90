"""The report's "Validation against behaviour" section: charts and HTML from summary["validation"].

summary["validation"] is the `validate --json` document (validation_job.run_validation).
Two charts: R against R̂ and AUC per benchmark (R_null, the value with no real ranking,
beside each), and benchmark-pair score correlation against feature overlap (the null
dictionary's overlap beside the SAE's).
"""

from __future__ import annotations

import math

import altair as alt

ORANGE, BLUE, GREY = "#f28e2b", "#4e79a7", "#8c8c8c"


def _num(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _stat(v: dict, name: str, method: str = "spearman") -> str:
    for a in v.get("agreement") or []:
        if a["name"] == name and a["method"] == method and a["value"] is not None:
            ci = f" [{a['lo']:.2f}, {a['hi']:.2f}]" if a["lo"] is not None else ""
            return f"ρ = {a['value']:.2f}{ci}"
    return "ρ = n/a"


def r_chart(v: dict):
    """R (with model-bootstrap interval) against R̂ and against AUC, one panel each; grey: R_null."""
    rows = [{"benchmark": b["name"], "r": _num(b["r"]), "lo": _num(b["r_lo"]), "hi": _num(b["r_hi"]),
             "r_null": _num(b["r_null"]), "r_hat": _num(b["r_hat"]), "auc": _num(b["auc"]), "items": b["n_items"]}
            for b in v["benchmarks"]]
    data = alt.InlineData(values=rows)
    panels = []
    for field, title, short in (("r_hat", "R-hat (feature redundancy, Eq. 9)", "R-hat"),
                                ("auc", "AUC(c) (feature coverage curve)", "AUC")):
        x = alt.X(f"{field}:Q", title=title, scale=alt.Scale(zero=False))
        tip = ["benchmark:N", alt.Tooltip("r:Q", format=".3f"), alt.Tooltip("r_null:Q", title="R_null", format=".3f"),
               alt.Tooltip(f"{field}:Q", format=".3f"), "items:Q"]
        base = alt.Chart(data)
        err = base.mark_rule(color=ORANGE).encode(x=x, y=alt.Y("lo:Q", title="R (performance-based, Eqs. 4–6)",
                                                               scale=alt.Scale(zero=False)), y2="hi:Q")
        pts = base.mark_circle(size=70, color=ORANGE).encode(x=x, y="r:Q", tooltip=tip)
        null = base.mark_point(shape="diamond", color=GREY).encode(x=x, y="r_null:Q", tooltip=tip)
        lab = base.mark_text(align="left", dx=6, fontSize=10).encode(x=x, y="r:Q", text="benchmark:N")
        panels.append((err + pts + null + lab).properties(width=300, height=240, title=f"R vs {short}: "
                                                          + _stat(v, f"r~{field}")))
    sub = [f"One point per benchmark; bars: {v['level']:.0%} interval over models resampled; grey diamonds: R_null,",
           "R with each item's results shuffled across models (what the definition gives with no real ranking)."]
    return alt.hconcat(*panels, spacing=40).properties(
        title=alt.Title(f"Feature redundancy vs performance-based redundancy ({v['n_models']} models)", subtitle=sub))


def overlap_chart(v: dict):
    """Score correlation of each benchmark pair against its feature overlap (SAE in blue, null dictionary in grey)."""
    rows = []
    for p in v["pairs"]:
        for key, kind in (("overlap_sym", "SAE (Eq. 11)"), ("overlap_null_sym", "null dictionary"),
                          ("overlap_freq_weighted", "SAE, frequency-weighted"), ("overlap_lexical_sym", "prompts' words")):
            if p.get(key) is not None and p.get("score_pearson") is not None:
                rows.append({"pair": f"{p['a']} / {p['b']}", "overlap": p[key], "kind": kind,
                             "score_corr": p["score_pearson"], "models": p["n_models"]})
    data = alt.InlineData(values=rows)
    color = alt.Color("kind:N", title=None, scale=alt.Scale(domain=["SAE (Eq. 11)", "null dictionary", "SAE, frequency-weighted",
                                                                    "prompts' words"],
                                                            range=[BLUE, GREY, ORANGE, "#2ca02c"]))
    chart = alt.Chart(data).mark_circle(size=60, opacity=0.8).encode(
        x=alt.X("overlap:Q", title="feature overlap of the pair"),
        y=alt.Y("score_corr:Q", title="score correlation across models (Pearson)", scale=alt.Scale(domain=[-1, 1])),
        color=color, tooltip=["pair:N", "kind:N", alt.Tooltip("overlap:Q", format=".3f"),
                              alt.Tooltip("score_corr:Q", format=".3f"), "models:Q"])
    null = (f"; null dictionary: {_stat(v, 'null_sym~score_pearson')}" if "null_sym" in (v.get("overlap") or {})
            else "; no null encoder in this database")
    null += (f"; prompts' words: {_stat(v, 'lexical_sym~score_pearson')}" if "lexical_sym" in (v.get("overlap") or {})
             else "; no lexical baseline")
    sub = [f"One point per benchmark pair and measure. Symmetric overlap: {_stat(v, 'sym~score_pearson')}; "
           f"frequency-weighted: {_stat(v, 'freq_weighted~score_pearson')}{null}."]
    return chart.properties(width=520, height=300, title=alt.Title("Overlap vs score correlation", subtitle=sub))


def charts(summary: dict) -> dict:
    """The section's charts by name (empty when the summary has no validation)."""
    v = summary.get("validation")
    if not v or not v.get("benchmarks"):
        return {}
    return {"validation_r": r_chart(v), "validation_overlap": overlap_chart(v)}


def section(summary: dict, e, table, chart_div) -> str:
    """HTML of the section (e: escape, table: (head, rows, cls) -> html, chart_div: name -> html)."""
    v = summary.get("validation")
    if not v:
        return ""
    f = lambda x, d=3: "–" if x is None else f"{x:.{d}f}"  # noqa: E731
    verdicts = "".join(f"<li>{e(line)}</li>" for line in v["verdicts"])
    match_rows = [[e(m["task"]), e(m["benchmark"] or "–"), str(m["n_docs"]), str(m["n_matched"]), str(m.get("by_doc", 0)),
                   e(", ".join(f"{k}: {n}" for k, n in m["unmatched"].items()) or "–")] for m in v["matching"]]
    r_rows = [[e(b["name"]), str(b["n_models"]), str(b["n_items"]), f"{f(b['r'])} ± {f(b['r_se'])}",
               f"[{f(b['r_lo'])}, {f(b['r_hi'])}]", f(b["r_null"]), f(b["r_hat"]), f(b["auc"])] for b in v["benchmarks"]]
    ag_rows = [[e(a["name"]), e(a["method"]), f(a["value"], 2), f"[{f(a['lo'], 2)}, {f(a['hi'], 2)}]",
                str(a["n_units"]), str(a["n_models"])] for a in v["agreement"]]
    notes = "".join(f"<li>{e(n)}</li>" for n in v.get("notes") or [])
    return f"""
<h2>Validation against behaviour ({v['n_models']} models)</h2>
<p class="muted">Per-sample scores from lm-eval logs, matched to the stored prompts by content. R(D) (Qwen-Scope
Eqs. 4–6) = mean over n of E[Kendall τ between the model ranking on a random n-subset and on all of D]:
{v['draws']} Monte Carlo draws per benchmark (± its standard error); intervals resample models
({v['replicates']} replicates). R_null: R with each item's results shuffled across models. The report
found ρ(R, R-hat) ≈ 0.85 and overlap vs score correlation Spearman 0.61 (0.71 partial, controlling for MMLU).</p>
<ul class="lead">{verdicts}</ul>
{table(["logged task", "stored benchmark", "docs", "matched", "by doc fields", "unmatched"], match_rows, "num")}
{table(["benchmark", "models", "items", "R", "R interval", "R_null", "R-hat", "AUC"], r_rows, "num")}
{chart_div("validation_r")}
{table(["statistic", "method", "value", "interval", "benchmarks / pairs", "models"], ag_rows, "num")}
{chart_div("validation_overlap")}
{f'<ul class="muted">{notes}</ul>' if notes else ''}"""
