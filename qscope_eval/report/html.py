"""The audit report: one self-contained HTML page, a PNG per chart, and summary.json.

`render_report(summary, out_dir)` takes the dict `analysis.audit_summary`
returns and writes

- ``report.html``: headline numbers, the keep/drop recommendation, tables and
  the Altair charts of `charts.py`, drawn by Vega/Vega-Lite/vega-embed whose
  JavaScript is inlined from vl-convert's bundle, so the page works offline
  and from a file:// URL, with no CDN;
- ``<chart>.png`` per chart (vl-convert, no browser needed);
- ``summary.json``: the dict itself, NaN/inf written as null.

Benchmark names and sample texts come from users' data and are untrusted:
every value goes through `html.escape`, and the Vega specs embedded in the
page's <script> have every ``<``, ``>`` and ``&`` written as a \\u escape, so
no string can close the script element or open a comment.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from qscope_eval.report import charts as _charts
from qscope_eval.report.fmt import _e, _num, _pct
from qscope_eval.report.behaviour import section as _behaviour_section
from qscope_eval.report.headline import baselines_lead as _baselines_lead, headline as _headline
from qscope_eval.report.style import CSS
from qscope_eval.report.behaviour_select import section as _behaviour_select_section
from qscope_eval.report.validation import section as _validation_section
from qscope_eval.report.gaps import gaps_section as _gaps
from qscope_eval.report.recommendation import recommendation_html, samples_html

__all__ = ["ReportFiles", "render_report", "report_html", "write_summary_json", "to_json_safe", "embed_json",
           "warnings_for"]


@dataclass(frozen=True)
class ReportFiles:
    """Paths `render_report` wrote; ``pngs`` maps chart name -> PNG (empty with png=False)."""
    html: Path
    summary_json: Path
    pngs: dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------- JSON
def to_json_safe(obj):
    """Plain JSON values: NaN/inf -> None, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return to_json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)  # Paths, datetimes: readable rather than a crash


def write_summary_json(summary: dict, path: Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_json_safe(summary), indent=2, allow_nan=False, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


def embed_json(obj) -> str:
    """JSON that is safe inside an HTML <script> element.

    ``<`` only occurs inside JSON strings, where ``\\u003c`` means the same
    character, so escaping every one makes ``</script>`` and ``<!--`` impossible
    whatever the data; ``>``/``&`` and the JS line separators go the same way.
    """
    s = json.dumps(to_json_safe(obj), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s


# ----------------------------------------------------------------------------- vega runtime
_BUNDLE: dict[str | None, str] = {}


def _vl_version() -> str | None:
    try:  # the Vega-Lite version Altair writes specs for; private helper, so fall back to vl-convert's default
        from altair.utils._importers import vl_version_for_vl_convert
        return vl_version_for_vl_convert()
    except Exception:  # noqa: BLE001
        return None


def _vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one script (sets window.vegaEmbed), from vl-convert; ~0.9 MB."""
    import vl_convert as vlc

    v = _vl_version()
    if v not in _BUNDLE:
        js = vlc.javascript_bundle(vl_version=v) if v else vlc.javascript_bundle()
        # inlined verbatim, so it must not contain what would end the element early
        if "</script" in js.lower() or "<!--" in js:
            raise RuntimeError("vl-convert's JavaScript bundle contains '</script' or '<!--'; cannot inline it")
        _BUNDLE[v] = js
    return _BUNDLE[v]


# ----------------------------------------------------------------------------- formatting
def _name(x) -> str:
    """A benchmark name that may wrap after its underscores (long MMLU names in narrow columns)."""
    return _e(x).replace("_", "_<wbr>")


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Rows are already-escaped HTML cells (callers escape; this only assembles)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    # the box scrolls sideways when the table is wider than the page; the page itself never does
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


# ----------------------------------------------------------------------------- content
def warnings_for(summary: dict) -> list[str]:
    """Plain-text cautions for the reader: the summary's own ``warnings`` plus what we can infer here."""
    out = [str(w) for w in summary.get("warnings") or []]
    m, s = summary["metrics"], summary["selection"]
    sat = [b["name"] for b in m["benchmarks"] if b.get("saturated")]
    if sat:
        out.append(f"Footprint near d_sae (saturated) for {', '.join(sat)}: coverage and overlap stop meaning much "
                   "there; consider `top` or `last` pooling, or a wider SAE.")
    if not m.get("null_overlap"):
        out.append("No null baseline encoder: overlaps are shown without the random-dictionary reference, so part of "
                   "what they show may be residual-stream geometry rather than SAE features.")
    if not m.get("lexical_overlap"):
        out.append("No lexical baseline (`lexical: false`): overlaps are shown without the prompts' own words, so "
                   "part of what they show may be surface vocabulary rather than what the model represents.")
    if "fallback" in str(s.get("status", "")) or (s.get("gap") or 0) > 1e-9:
        out.append(f"Selection status: {s.get('status')} (optimality gap {_pct(s.get('gap'))}).")
    rb = s.get("random_baseline") or {}
    all_kept = s.get("kind") == "characteristic" and len(s.get("chosen") or []) == len(s.get("table") or [])
    if all_kept:
        out.append("Every benchmark is kept: no benchmark shows τ of another's characteristic above what the null "
                   "dictionary and the prompts' words show, so none can be dropped on this evidence.")
    elif rb.get("mean") is not None and s.get("coverage") is not None and rb["mean"] >= s["coverage"] - 1e-9:
        out.append("A random benchmark subset of the same cost keeps as much coverage as the recommendation: "
                   "here the selection adds nothing over chance.")
    if (m.get("rarefied_n") or 0) and m["rarefied_n"] < 20:
        out.append(f"The smallest benchmark has {m['rarefied_n']} samples, so rarefied coverage compares "
                   "benchmarks on very few samples.")
    dup = summary.get("duplicates") or {}
    if dup.get("exact_shared_samples"):
        out.append(f"{dup['exact_shared_samples']} prompt(s) appear verbatim in more than one benchmark.")
    return out


def _layers(summary: dict) -> str:
    """The layers of a multi-layer audit side by side, each linking to its own report ('' for one layer)."""
    rows_in = summary.get("layers") or []
    if len(rows_in) < 2:
        return ""
    here = (summary.get("encoder") or {}).get("encoder_id")
    base = "" if rows_in[0]["encoder_id"] == here else "../"  # `report` paths are relative to the first layer's page
    rows = []
    for r in rows_in:
        name = f"layer {_e(r['layer'])}"
        cell = f"<b>{name}</b> (this report)" if r["encoder_id"] == here else f'<a href="{_e(base + r["report"])}">{name}</a>'
        rows.append([cell, f"{_num(r.get('features'))} of {_num(r.get('d_sae'))}",
                     f"{len(r['kept'])} of {r['n_benchmarks']}: {_e(', '.join(r['kept']))}",
                     _pct(r.get("coverage")), _pct(r.get("cost_saved"))])
    return ("<h2>Layers</h2><p class='muted'>This audit encoded several layers; each has its own report. "
            "Benchmarks redundant at every layer are the safest to drop.</p>"
            + _table(["layer", "features fired", "recommended", "coverage kept", "cost saved"], rows))


def _recommendation(summary: dict) -> str:
    s = summary["selection"]
    if s.get("kind") == "characteristic":
        return recommendation_html(summary)
    n_b = len(summary["metrics"]["benchmarks"])
    rb = s.get("random_baseline") or {}
    saved = None if s.get("cost_share") is None else 1 - s["cost_share"]
    sent = (f"Keep <b>{len(s['chosen'])} of {n_b}</b> benchmarks: they keep <b>{_pct(s.get('coverage'))}</b> of the "
            f"suite's {_num(s.get('union'))} features (target {_pct(s.get('target'), 0)}) at "
            f"{_num(s.get('cost'))} of {_num(s.get('total_cost'))} {_e(s.get('cost_kind', 'cost'))} — "
            f"<b>{_pct(saved)} of the cost saved</b>.")
    if rb.get("mean") is not None:
        sent += (f" Random subsets of the same cost keep {_pct(rb['mean'])} ± {_pct(rb.get('std'))} "
                 f"({_e(rb.get('trials'))} draws).")
    method = f"Method: {_e(s.get('method'))} ({_e(s.get('status'))})"
    if s.get("method") == "exact":
        method += f", optimality gap {_pct(s.get('gap'))}, greedy cost {_num(s.get('greedy_cost'))}"
    rows = [[f"<b>{_e(r['benchmark'])}</b>", f'<span class="badge {_e(r["decision"])}">{_e(r["decision"])}</span>',
             _num(r.get("n_features")), _num(r.get("cost")), _e(r.get("reason"))]
            for r in sorted(s.get("table") or [], key=lambda r: (r["decision"] != "keep", -(r.get("n_features") or 0)))]
    return (f'<p class="lead">{sent}</p><p class="muted">{method}.</p>'
            + _table(["benchmark", "decision", "features", f"cost ({_e(s.get('cost_kind', ''))})", "reason"], rows))


def _benchmark_table(summary: dict) -> str:
    m = summary["metrics"]
    null = any(b.get("null_n_features") is not None for b in m["benchmarks"])
    lex = any(b.get("lexical_n_features") is not None for b in m["benchmarks"])
    head = ["benchmark", "samples", "features", "of union", "of d_sae", f"rarefied (n={_e(m.get('rarefied_n'))})",
            "Chao1", "R̂", "AUC(c)"] + (["null features"] if null else []) + (["words (lexical)"] if lex else [])
    rows = []
    for b in m["benchmarks"]:
        name = f"<b>{_name(b['name'])}</b>" + (' <span class="badge warn">saturated</span>' if b.get("saturated") else "")
        r = [name, _num(b["n_samples"]), _num(b["n_features"]), _pct(b.get("share_of_union")),
             _pct(b.get("share_of_dsae")), _num(b.get("rarefied_coverage"), 1), _num(b.get("chao1"), 1),
             _num(b.get("r_hat"), 3), _num(b.get("auc"), 3)]
        rows.append(r + ([_num(b.get("null_n_features"))] if null else [])
                    + ([_num(b.get("lexical_n_features"))] if lex else []))
    return _table(head, rows, "num")


def _duplicates(summary: dict, limit: int = 20) -> str:
    d = summary.get("duplicates")
    if not d:
        return "<p class='muted'>No duplicate analysis in this summary.</p>"
    head = (f"<p>{_num(d.get('exact_shared_samples'))} prompt(s) appear verbatim in more than one benchmark; "
            f"{_num(d.get('near_duplicate_pairs'))} pair(s) of samples have feature-set Jaccard ≥ "
            f"{_e(d.get('threshold'))}.</p>")
    top = (d.get("top") or [])[:limit]
    if not top:
        return head
    rows = [[_e(p.get("a")), _e(p.get("b")), _num(p.get("jaccard"), 2) + ("" if not p.get("same_benchmark")
                                                                           else "<br><small>same benchmark</small>"),
             f'<div class="text">{_e(p.get("text_a"))}</div>', f'<div class="text">{_e(p.get("text_b"))}</div>']
            for p in top]
    more = f"<p class='muted'>Top {len(top)} shown; the rest are in summary.json / SQL.</p>" \
        if len(d.get("top") or []) > limit else ""
    return head + _table(["benchmark A", "benchmark B", "Jaccard", "text A", "text B"], rows, "dups") + more


def _drift(summary: dict) -> str:
    dr = summary.get("drift")
    if not dr:
        return "<p class='muted'>No earlier completed run of this suite on this encoder to compare with.</p>"
    rows = [[_e(r["benchmark"]), f'<span class="badge {_e(r.get("status"))}">{_e(r.get("status"))}</span>',
             f"+{_num(r.get('gained'))}", f"−{_num(r.get('lost'))}",
             "" if r.get("jaccard") is None else f"{r['jaccard']:.3f}",
             "" if r.get("noise_floor") is None else f"{r['noise_floor']:.3f}" + ("*" if r.get("noise_floor_extrapolated") else "")]
            for r in dr.get("benchmarks") or []]
    nf = dr.get("noise_floor")
    note = ("<p class='muted'>No noise floor measured for this encoder (<code>qscope-eval encode --noise-floor N</code>): "
            "a change may be batch-composition noise.</p>" if not nf else
            f"<p class='muted'>Noise floor: the same {nf['n_samples']} prompts batched vs one at a time agree with mean "
            f"per-sample Jaccard {nf['mean_jaccard']:.3f}; a benchmark whose F(D) Jaccard is at or above the floor for "
            f"its size is <em>noise</em>, not drift (* = larger than the measured unions: the true floor is tighter).</p>")
    return (f"<p>Features gained and lost per benchmark since run <code>{_e(dr.get('previous_run'))}</code>.</p>" + note
            + _table(["benchmark", "status", "gained", "lost", "F(D) Jaccard", "noise floor"], rows, "drift"))


def _chart_div(name: str) -> str:
    return f'<figure class="chart" id="chart-{_e(name)}"></figure>'


_CSS = CSS  # report/style.py

# Runs first: collects uncaught errors (also from the Vega bundle) so the page can report them on <body>.
_ERRORS_JS = """window.__qscopeErrors = [];
addEventListener("error", function (e) { window.__qscopeErrors.push(String(e.message)); });
addEventListener("unhandledrejection", function (e) { window.__qscopeErrors.push(String(e.reason)); });"""

# Embeds every chart with the SVG renderer (marks land in the DOM as <g class="mark-...">), then records
# the outcome on <body>: data-rendered = number of charts drawn, data-js-errors = uncaught errors so far,
# or data-render-error with the message.
_EMBED_JS = """
(function () {
  var specs = %s;
  var opts = {renderer: "svg", actions: false};
  var names = Object.keys(specs);
  Promise.all(names.map(function (n) {
    return vegaEmbed(document.getElementById("chart-" + n), specs[n], opts);
  })).then(function (r) {
    document.body.dataset.jsErrors = String(window.__qscopeErrors.length);
    document.body.dataset.rendered = String(r.length);
  })
    .catch(function (e) {
      document.body.dataset.renderError = String(e);
      var el = document.getElementById("render-error");
      el.textContent = "Charts failed to render: " + e; el.style.display = "block";
    });
})();
"""


# Long on purpose: the page is assembled section by section in reading order; each section's
# HTML comes from its own helper, this function only lays them out.
def report_html(summary: dict, specs: dict[str, dict] | None = None, generated: str | None = None) -> str:
    """The page as a string; ``specs`` (chart name -> Vega-Lite dict) default to `charts.all_charts`."""
    if specs is None:
        specs = {k: c.to_dict() for k, c in _charts.all_charts(summary).items()}
    enc = summary.get("encoder") or {}
    when = generated or summary.get("generated_at") or _dt.datetime.now(_dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    warns = warnings_for(summary)
    warn_html = ("<h2>Warnings</h2><ul class='warnings'>" + "".join(f"<li>{_e(w)}</li>" for w in warns) + "</ul>"
                 ) if warns else ""
    title = f"qscope-eval audit — {summary.get('suite', '')}"
    meta = (f"encoder <code>{_e(enc.get('key'))}</code> · layer {_e(enc.get('layer'))} · pooling "
            f"{_e(enc.get('pooling'))} · d_sae {_num(enc.get('d_sae'))} · "
            f"run <code>{_e(summary.get('run_id'))}</code> · {_e(when)}")
    charts = set(specs)
    div = lambda n: _chart_div(n) if n in charts else ""  # noqa: E731
    body = f"""
<main>
<header><h1>{_e(title)}</h1><div class="meta">{meta}</div></header>
<noscript><p class="warnings">This page draws its charts with JavaScript; the PNG files beside it show the same
charts.</p></noscript>
<p id="render-error"></p>
{_headline(summary)}
{_baselines_lead(summary)}
{warn_html}
{_layers(summary)}
<h2>Recommendation: which benchmarks to keep</h2>
{_recommendation(summary)}
{div("selection")}
{_behaviour_select_section(summary, _e, _table, div)}
<h2>Coverage and redundancy per benchmark</h2>
{_benchmark_table(summary)}
{div("coverage")}
{div("redundancy")}
{div("curves")}
<h2>Overlap between benchmarks</h2>
<p class="muted">O(A → B) = |F(A) ∩ F(B)| / |F(A)|: how much of A is already covered by B (Qwen-Scope Eq. 10).
A high value in row A, column B means B makes A largely redundant; the matrix is not symmetric.</p>
{div("overlap")}
{_validation_section(summary, _e, _table, div)}
{_behaviour_section(summary, _e, _table, div)}
<h2>Sample-level selection</h2>
{samples_html(summary)}
<h2>Duplicates</h2>
{_duplicates(summary)}
{_gaps(summary)}
<h2>Drift since the previous run</h2>
{_drift(summary)}
<h2>Feature frequency</h2>
{div("frequency")}
<footer>Generated by qscope-eval. The numbers behind this page are in <a href="summary.json">summary.json</a>;
F(D) is the set of SAE features fired by a benchmark's samples (Qwen-Scope report §4).</footer>
</main>"""
    scripts = [_ERRORS_JS, f"\n{_vega_bundle()}\n", _EMBED_JS % embed_json(specs)]
    # Content-Security-Policy: only these three scripts (by hash) may run, so even a string that slipped
    # past escaping could not execute (inline handlers such as onerror= are refused), and the page may
    # fetch nothing from the network. 'unsafe-eval': Vega compiles its expressions with Function().
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'"
                      for js in scripts)
    csp = (f"default-src 'none'; script-src {hashes} 'unsafe-eval'; style-src 'unsafe-inline'; "
           "img-src data: blob:; font-src data:")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style>\n"
            f"<script>{scripts[0]}</script>\n<script>{scripts[1]}</script></head>\n<body>{body}\n"
            f"<script>{scripts[2]}</script>\n</body></html>\n")


def render_report(summary: dict, out_dir: Path, png: bool = True, scale: float = 2.0) -> ReportFiles:
    """Write report.html, one PNG per chart (unless png=False) and summary.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = {k: c.to_dict() for k, c in _charts.all_charts(summary).items()}
    pngs: dict[str, Path] = {}
    if png:
        import vl_convert as vlc

        v = _vl_version()
        for name, spec in specs.items():
            data = vlc.vegalite_to_png(spec, scale=scale, vl_version=v) if v else vlc.vegalite_to_png(spec, scale=scale)
            pngs[name] = out / f"{name}.png"
            pngs[name].write_bytes(data)
    page = out / "report.html"
    page.write_text(report_html(summary, specs), encoding="utf-8")
    return ReportFiles(html=page, summary_json=write_summary_json(summary, out / "summary.json"), pngs=pngs)
