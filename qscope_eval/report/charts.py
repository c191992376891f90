"""Altair charts of an audit summary (the dict `analysis.audit_summary` returns, i.e. summary.json).

One function per chart, each taking the summary dict and returning an Altair
chart object, so tests and notebooks can inspect the specs; `report.py` lays
them out in the HTML page and writes one PNG per chart. Benchmark names are
data values here, never field names or markup, so any name is safe to plot.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np

from qscope_eval.report.behaviour import charts as _behaviour_charts
from qscope_eval.report.behaviour_select import charts as _behaviour_select_charts
from qscope_eval.report.validation import charts as _validation_charts

__all__ = ["CHARTS", "all_charts", "coverage_chart", "overlap_chart", "redundancy_chart", "curves_chart",
           "selection_chart", "frequency_chart"]

# Categorical palette (Tableau 10): readable on white, distinct in grey-scale too.
BLUE, ORANGE, RED, TEAL, GREEN, GREY = "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#8c8c8c"
MAX_CURVE_ROWS = 4000  # curve points over all benchmarks: keeps the page light, the shape is unchanged


def _data(rows: list[dict]) -> alt.InlineData:
    """Records as inline data: exact Python values, and no 5000-row MaxRowsError on big suites
    (a 71-benchmark overlap matrix has 5041 cells)."""
    return alt.InlineData(values=rows)


def _names(summary: dict) -> list[str]:
    return [str(b["name"]) for b in summary["metrics"]["benchmarks"]]


def _num(x) -> float | None:
    """A finite float, or None (Vega drops nulls; NaN would poison scales)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _style(chart):
    return chart.configure_view(stroke=None).configure_axis(labelFontSize=11, titleFontSize=12, grid=True,
                                                            gridColor="#eee").configure_title(
        fontSize=14, anchor="start", subtitleColor="#555", subtitleFontSize=11)


def _bar_width(n: int, per: int = 48, lo: int = 240, hi: int = 900) -> int:
    return int(min(hi, max(lo, per * n)))


def _angle(n: int) -> int:
    """Slanted category labels read best, but past ~10 benchmarks they collide: go vertical."""
    return -30 if n <= 10 else -90


# ----------------------------------------------------------------------------- coverage
def coverage_chart(summary: dict):
    """|F(D)| per benchmark beside its rarefied value at the common n; null dictionary's |F(D)| as a tick."""
    m = summary["metrics"]
    names = _names(summary)
    n = m.get("rarefied_n")
    rare = f"rarefied to n = {n}"
    rows = []
    for b in m["benchmarks"]:
        rows.append({"benchmark": b["name"], "measure": "all samples", "features": _num(b["n_features"]),
                     "n_samples": b["n_samples"]})
        rows.append({"benchmark": b["name"], "measure": rare, "features": _num(b["rarefied_coverage"]),
                     "n_samples": n})
    nulls = [{"benchmark": b["name"], "features": b["null_n_features"], "measure": "null dictionary"}
             for b in m["benchmarks"] if b.get("null_n_features") is not None]
    domain, rng = ["all samples", rare] + (["null dictionary"] if nulls else []), [BLUE, TEAL, GREY]
    x = alt.X("benchmark:N", sort=names, title=None, axis=alt.Axis(labelAngle=_angle(len(names)), labelLimit=160))
    bars = alt.Chart(_data(rows)).mark_bar().encode(
        x=x, xOffset=alt.XOffset("measure:N", sort=domain[:2]), y=alt.Y("features:Q", title="features |F(D)|"),
        color=alt.Color("measure:N", scale=alt.Scale(domain=domain, range=rng[:len(domain)]),
                        legend=alt.Legend(title=None, orient="top")),
        tooltip=["benchmark:N", "measure:N", alt.Tooltip("features:Q", format=",.1f"), "n_samples:Q"])
    layers = [bars]
    if nulls:
        band = _bar_width(len(names), 64) / max(1, len(names))
        layers.append(alt.Chart(_data(nulls)).mark_tick(thickness=3, size=max(4, min(34, 0.7 * band))).encode(
            x=x, y="features:Q", color=alt.Color("measure:N"),
            tooltip=["benchmark:N", alt.Tooltip("features:Q", title="null |F(D)|")]))
    sub = ["Bars: features fired by all of the benchmark's samples, and the expected number",
           f"with only {n} random samples (a fair comparison across benchmark sizes)."]
    if nulls:
        sub.append("Grey tick: the same count for the random null dictionary.")
    return _style(alt.layer(*layers).properties(
        width=_bar_width(len(names), 64), height=260,
        title=alt.Title("Coverage per benchmark", subtitle=sub)))


# ----------------------------------------------------------------------------- overlap
def _heatmap(names: list[str], matrix, title: str, other=None, other_label: str = "null"):
    rows = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            v = _num(matrix[i][j])
            o = _num(other[i][j]) if other is not None else None
            rows.append({"from": a, "to": b, "value": v, other_label: o,
                         "label": "" if v is None else f"{v:.2f}"})
    side = int(min(560, max(160, 46 * len(names))))
    base = alt.Chart(_data(rows)).encode(  # grid lines would cut through the cells
        x=alt.X("to:N", title="… is covered by (to)", sort=names,  # steep labels once they would collide
                axis=alt.Axis(labelAngle=_angle(len(names)), labelLimit=140, orient="top",
                              grid=False)),
        y=alt.Y("from:N", title="how much of (from) …", sort=names, axis=alt.Axis(labelLimit=140, grid=False)))
    tip = ["from:N", "to:N", alt.Tooltip("value:Q", format=".3f")]
    if other is not None:
        tip.append(alt.Tooltip(f"{other_label}:Q", format=".3f"))
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", scale=alt.Scale(domain=[0, 1], scheme="blues"), title="overlap"), tooltip=tip)
    layers = [rect]
    if len(names) <= 25:  # beyond that the numbers no longer fit in a cell
        layers.append(base.mark_text(fontSize=11 if len(names) <= 12 else 8).encode(
            text="label:N", color=alt.condition("datum.value > 0.55", alt.value("white"), alt.value("#222"))))
    return alt.layer(*layers).properties(width=side, height=side, title=title)


def overlap_chart(summary: dict, kind: str = "asym"):
    """O(row → column) = share of the row benchmark's features the column benchmark also fires (Eq. 10),
    with the null dictionary's matrix as a second panel when the suite has one."""
    m = summary["metrics"]
    names = _names(summary)
    real = m["overlap"][kind]
    null = (m.get("null_overlap") or {}).get(kind)
    lex = (m.get("lexical_overlap") or {}).get(kind)
    panels = [_heatmap(names, real, "SAE features", null)]
    sub = ["Each cell: share of the row benchmark's features that the column benchmark also fires."]
    if null is not None:
        panels.append(_heatmap(names, null, "null baseline (random dictionary)", real, "sae"))
        sub.append("Next: the same for a random dictionary of the same shape; the SAE's value over the null "
                   "is what the learned features add.")
    if lex is not None:
        panels.append(_heatmap(names, lex, "lexical baseline (the prompts' words)", real, "sae"))
        sub.append("Last: the same with each prompt's words as its features (no model): what the surface alone shows.")
    chart = panels[0] if len(panels) == 1 else alt.hconcat(*panels, spacing=30).resolve_scale(color="shared")
    return _style(chart.properties(title=alt.Title("Asymmetric overlap O(from → to)", subtitle=sub)))


# ----------------------------------------------------------------------------- redundancy
def redundancy_chart(summary: dict):
    """R̂ and AUC(c) per benchmark, two panels (different scales)."""
    names = _names(summary)
    df = _data([{"benchmark": b["name"], "r_hat": _num(b["r_hat"]), "auc": _num(b["auc"]),
                 "n_samples": b["n_samples"], "n_features": b["n_features"]}
                for b in summary["metrics"]["benchmarks"]])
    x = alt.X("benchmark:N", sort=names, title=None, axis=alt.Axis(labelAngle=_angle(len(names)), labelLimit=140))
    tip = ["benchmark:N", alt.Tooltip("r_hat:Q", title="R-hat", format=".3f"),
           alt.Tooltip("auc:Q", title="AUC(c)", format=".3f"), "n_samples:Q", "n_features:Q"]
    w = _bar_width(len(names), 40, 200, 520)
    r = alt.Chart(df).mark_bar(color=ORANGE).encode(x=x, y=alt.Y("r_hat:Q", title="R-hat (report's proxy)"),
                                                    tooltip=tip).properties(width=w, height=220, title="R-hat")
    a = alt.Chart(df).mark_bar(color=GREEN).encode(
        x=x, y=alt.Y("auc:Q", title="AUC(c)", scale=alt.Scale(domain=[0, 1])),
        tooltip=tip).properties(width=w, height=220, title="AUC(c)")
    sub = ["AUC(c) = mean over n of c_n, the share of a benchmark's features that n random samples",
           "already show: 1.0 = one prompt shows everything (fully redundant); comparable across sizes.",
           "R-hat = N·AUC(c)/|F(D)| (Qwen-Scope Eq. 9) grows with samples per feature."]
    return _style(alt.hconcat(r, a, spacing=40).properties(
        title=alt.Title("Redundancy per benchmark", subtitle=sub)))


# ----------------------------------------------------------------------------- coverage curves
def curves_chart(summary: dict):
    """Expected coverage curve c_n per benchmark (Eq. 7), log n axis."""
    benches = summary["metrics"]["benchmarks"]
    names = _names(summary)
    per = max(10, MAX_CURVE_ROWS // max(1, len(benches)))
    rows = []
    for b in benches:
        ns, cs = b["curve"]["n"], b["curve"]["c"]
        keep = np.unique(np.linspace(0, len(ns) - 1, min(len(ns), per)).round().astype(int)) if ns else []
        rows += [{"benchmark": b["name"], "n": int(ns[k]), "c": _num(cs[k])} for k in keep]
    return _style(alt.Chart(_data(rows)).mark_line(strokeWidth=2).encode(
        x=alt.X("n:Q", scale=alt.Scale(type="log", nice=False), title="random subset size n (samples, log scale)"),
        y=alt.Y("c:Q", scale=alt.Scale(domain=[0, 1]), title="expected share of F(D) seen, c_n"),
        color=alt.Color("benchmark:N", sort=names, legend=alt.Legend(title=None, labelLimit=200)),
        tooltip=["benchmark:N", "n:Q", alt.Tooltip("c:Q", format=".3f")],
    ).properties(width=520, height=280, title=alt.Title(
        "Expected coverage curves", subtitle="A curve that rises early means a few samples already show most of "
                                             "the benchmark's features (redundant samples).")))


# ----------------------------------------------------------------------------- selection
def selection_chart(summary: dict):
    """Greedy coverage vs cumulative cost, target rule, recommended subset and the random baseline."""
    s = summary["selection"]
    cost_kind = s.get("cost_kind", "cost")
    curve = [{"cost": 0.0, "coverage": 0.0, "label": "", "tag": "", "step": 0}]
    steps = len(s["curve_cost"])
    for k, (c, v) in enumerate(zip(s["curve_cost"], s["curve_coverage"])):
        name = s["order"][k] if k < len(s.get("order", [])) else ""
        # past a dozen steps the labels pile up: name the first picks and the last, the rest in tooltips
        tag = f"+ {name}" if steps <= 12 or k < 8 or k == steps - 1 else ""
        curve.append({"cost": _num(c), "coverage": _num(v), "label": f"+ {name}", "tag": tag, "step": k + 1})
    series = ["greedy order", "recommended subset", "random subset, same cost (mean ± std)", "target"]
    scale = alt.Scale(domain=series, range=[BLUE, RED, GREY, ORANGE])
    legend = alt.Legend(title=None, orient="bottom", labelLimit=300)
    # every layer's data carries its series name, so one colour scale gives one legend for all layers
    color = alt.Color("series:N", scale=scale, legend=legend)
    cdf = _data([{**r, "series": series[0]} for r in curve])
    x = alt.X("cost:Q", title=f"cumulative cost ({cost_kind})")
    char = s.get("kind") == "characteristic"
    y = alt.Y("coverage:Q", title="share of benchmarks kept or covered" if char else "share of the suite's features", scale=alt.Scale(domain=[0, 1.05], nice=False),
              axis=alt.Axis(format="%"))
    tip = [alt.Tooltip("label:N", title="added"), alt.Tooltip("cost:Q", format=",.0f"),
           alt.Tooltip("coverage:Q", format=".1%")]
    base = alt.Chart(cdf).encode(x=x, y=y)
    layers = [base.mark_line(point=True).encode(color=color, tooltip=tip),
              base.mark_text(align="left", dx=6, dy=10, fontSize=10, color="#333").encode(text="tag:N")]
    if _num(s.get("target")) is not None:
        target = _data([{"coverage": s["target"], "series": series[3]}])
        layers.append(alt.Chart(target).mark_rule(strokeDash=[6, 4]).encode(
            y="coverage:Q", color=color, tooltip=[alt.Tooltip("coverage:Q", title="target", format=".0%")]))
    rec = _data([{"cost": _num(s["cost"]), "coverage": _num(s["coverage"]),
                  "label": f"recommended: {len(s['chosen'])} benchmark(s)", "series": series[1]}])
    layers.append(alt.Chart(rec).mark_point(shape="diamond", size=260, filled=True, opacity=0.85).encode(
        x=x, y=y, color=color, tooltip=tip))
    layers.append(alt.Chart(rec).mark_text(align="right", dx=-12, dy=-12, fontWeight="bold", color=RED).encode(
        x=x, y=y, text="label:N"))
    rb = s.get("random_baseline")
    if rb and _num(rb.get("mean")) is not None:
        mean, std = rb["mean"], rb.get("std") or 0.0
        bdf = _data([{"cost": _num(s["cost"]), "coverage": mean, "lo": max(0.0, mean - std),
                      "hi": min(1.0, mean + std), "trials": rb.get("trials"), "series": series[2]}])
        btip = [alt.Tooltip("coverage:Q", title="random mean", format=".1%"),
                alt.Tooltip("lo:Q", format=".1%"), alt.Tooltip("hi:Q", format=".1%"), "trials:Q"]
        bb = alt.Chart(bdf).encode(x=x)  # drawn 14 px right of the recommendation, which sits at the same cost
        layers.append(bb.mark_rule(strokeWidth=2, xOffset=14).encode(y="lo:Q", y2="hi:Q", color=color,
                                                                     tooltip=btip))
        layers.append(bb.mark_point(shape="square", size=90, filled=True, xOffset=14).encode(
            y=y, color=color, tooltip=btip))
    return _style(alt.layer(*layers).properties(
        width=560, height=300, title=alt.Title(
            "Benchmark selection: coverage kept vs cost",
            subtitle=("Greedy adds the benchmark that keeps or covers the most benchmarks per unit cost; the "
                      "recommended subset covers every benchmark." if char else
                      "Greedy adds the benchmark with the most new features per unit cost; the recommended "
                      "subset is the irredundant set that reaches the target."))))


# ----------------------------------------------------------------------------- feature frequency
def frequency_chart(summary: dict):
    """Histogram of how many samples each live feature fires on (log-spaced bins); dead features in the title."""
    ff = summary["feature_frequency"]
    counts = np.asarray(ff["n_samples_per_feature"], dtype=np.int64)
    counts = counts[counts > 0]
    top = int(counts.max()) if counts.size else 1
    edges = np.unique(np.round(np.logspace(0, math.log10(top + 1), 24)).astype(np.int64))
    if edges.size < 2:
        edges = np.array([1, 2])
    edges[-1] = max(edges[-1], top + 1)  # last bin must include the max
    hist, _ = np.histogram(counts, bins=edges)
    df = _data([{"lo": int(lo), "hi": int(hi), "features": int(n),
                 "range": f"{lo}" if hi - lo == 1 else f"{lo}–{hi - 1}"}
                for lo, hi, n in zip(edges[:-1], edges[1:], hist)])
    d_sae = summary.get("metrics", {}).get("d_sae") or summary.get("encoder", {}).get("d_sae")
    dead = int(ff.get("dead", 0))
    of = f" of {d_sae:,}" if d_sae else ""
    return _style(alt.Chart(df).mark_rect(color=BLUE, stroke="white", strokeWidth=0.5).encode(
        x=alt.X("lo:Q", scale=alt.Scale(type="log", nice=False), title="samples the feature fires on (log scale)"),
        x2="hi:Q", y=alt.Y("features:Q", title="features"), y2=alt.datum(0),
        tooltip=[alt.Tooltip("range:N", title="samples"), "features:Q"],
    ).properties(width=520, height=240, title=alt.Title(
        f"Feature frequency — {dead:,}{of} features never fired (dead)",
        subtitle=f"{counts.size:,} live features; a long right tail = features most prompts fire.")))


CHARTS = {"selection": selection_chart, "coverage": coverage_chart, "redundancy": redundancy_chart,
          "curves": curves_chart, "overlap": overlap_chart, "frequency": frequency_chart}


def all_charts(summary: dict) -> dict:
    """Every chart of the report, by name (the PNG file stem and the HTML element id)."""
    # the validation sections' charts exist only when summary["validation"] / ["score_validation"] do
    return {**{name: fn(summary) for name, fn in CHARTS.items()}, **_validation_charts(summary),
            **_behaviour_charts(summary), **_behaviour_select_charts(summary)}
