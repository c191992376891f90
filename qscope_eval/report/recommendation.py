"""The report's recommendation section for the characteristic method: the sentence, one row of evidence per
benchmark, and example prompt pairs for every dropped one (summary["selection"], see jobs/recommendation.py);
and the sample-level selection paragraph (summary["sample_selection"])."""

from __future__ import annotations

import html
import math


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(x, digits: int = 0) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:,.{digits}f}"


def _pct(x, digits: int = 0) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}%"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _evidence(r: dict) -> str:
    if r["decision"] == "drop":
        if r.get("contained"):
            return f"all its prompts are in <b>{_e(r['covered_by'])}</b>"
        return (f"<b>{_e(r['covered_by'])}</b> shows {_pct(r.get('ratio'))} of it "
                f"(interval {_pct(r.get('ratio_lo'))}–{_pct(r.get('ratio_hi'))}); random dictionary "
                f"{_pct(r.get('null_ratio_scaled'))}, prompts' words {_pct(r.get('lexical_ratio_scaled'))}")
    covers = ", ".join(r.get("covers") or [])
    txt = f"{_pct(r.get('only_here'))} measured only here"
    if r.get("template_dominated"):
        txt = f"template share {_pct(r.get('template_share'))}: no evidence either way; " + txt
    txt += f"; stands in for {_e(covers)}" if covers else ""
    if r.get("only_here_prompt"):
        txt += (f"<details><summary>a prompt only it measures</summary>"
                f"<div class='muted'>{_e(r['only_here_prompt'][:300])}</div></details>")
    return txt


def _examples(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        if r["decision"] != "drop" or not r.get("examples"):
            continue
        pairs = [[_e(x["dropped_prompt"][:220]), _e(x["kept_prompt"][:220]), f"{x['jaccard']:.2f}"]
                 for x in r["examples"]]
        parts.append(f"<details><summary>{_e(r['benchmark'])} → {_e(r['covered_by'])}: its most characteristic "
                     f"prompts and their nearest prompt in {_e(r['covered_by'])}</summary>"
                     + _table(["dropped prompt", "nearest kept prompt", "Jaccard (features)"], pairs) + "</details>")
    return "".join(parts)


def recommendation_html(summary: dict) -> str:
    s = summary["selection"]
    rows = s.get("table") or []
    n_b = len(rows)
    rb = s.get("random_baseline") or {}
    saved = None if s.get("cost_share") is None else 1 - s["cost_share"]
    sent = (f"Keep <b>{len(s['chosen'])} of {n_b}</b> benchmarks ({_pct(saved)} of the {_e(s.get('cost_kind'))} "
            f"saved). A benchmark is dropped only when one kept benchmark shows at least {_pct(s.get('tau'))} of what "
            "characterizes it (100% = as much as a second half of the benchmark itself shows), more clearly than both a "
            "random dictionary and the prompts' own words do, or when all its prompts are prompts of a kept benchmark; "
            "a benchmark whose features are mostly the prompt template is kept.")
    if rb.get("mean") is not None:
        sent += (f" Dropping benchmarks at random for the same saving would leave {_pct(1 - rb['mean'])} ± "
                 f"{_pct(rb.get('std'))} of them measured by no kept benchmark.")
    if not s.get("null_checked"):
        sent += " <b>No null encoder in this database: the null check was skipped.</b>"
    if "lexical_checked" in s and not s.get("lexical_checked"):
        sent += " <b>No lexical baseline (`lexical: false`): the check against the prompts' words was skipped.</b>"
    method = (f"Method: {_e(s.get('method'))} set cover over benchmarks ({_e(s.get('status'))}); the null "
              f"dictionary's values are shown on this SAE's scale (×{s.get('null_scale') or 1:.2f}), and so are "
              f"the prompts' words' (×{s.get('lexical_scale') or 1:.2f}; docs/baselines.md). "
              "The shares are of each benchmark's split-half self-coverage, so 100% means "
              "“as much as a second half of itself shows”.")
    rule = f"<details><summary>The rule, exactly</summary>{_e(s.get('definition'))}; τ = {_pct(s.get('tau'))}.</details>"
    body = [[f"<b>{_e(r['benchmark']).replace('_', '_<wbr>')}</b>", f'<span class="badge {_e(r["decision"])}">{_e(r["decision"])}</span>',
             _e(f"{r.get('cost', 0):,.0f}"), _evidence(r).replace("_", "_<wbr>"),
             _e(r.get("reason")).replace("_", "_<wbr>")]
            for r in sorted(rows, key=lambda r: (r["decision"] != "keep", r["benchmark"]))]
    return (f'<p class="lead">{sent}</p><p class="muted">{method}</p>{rule}'
            + _table(["benchmark", "decision", f"cost ({_e(s.get('cost_kind', ''))})", "evidence", "why"], body)
            + _examples(rows))


def samples_html(summary: dict) -> str:
    """The sample-level selection paragraph: what the chosen samples keep, beside random samples."""
    ss = summary.get("sample_selection")
    if not ss:
        return "<p class='muted'>No sample-level selection in this summary.</p>"
    rb = ss.get("random_baseline") or {}
    k, n = ss.get("cost"), ss.get("n_candidates")
    what = ("the characteristic mass of the suite's features" if ss.get("kind") == "characteristic"
            else f"the suite's {_num(ss.get('union'))} features")
    txt = (f"<b>{_num(k)}</b> of {_num(n)} unique samples ({_pct(k / n if k is not None and n else None)}) keep "
           f"<b>{_pct(ss.get('coverage'))}</b> of {what}")
    if ss.get("target") is not None:
        txt += f" (target {_pct(ss['target'], 0)})"
    if ss.get("total_tokens"):
        txt += (f", with {_num(ss.get('chosen_tokens'))} of {_num(ss['total_tokens'])} prompt tokens "
                f"({_pct(ss.get('chosen_tokens', 0) / ss['total_tokens'])})")
    txt += "."
    if rb.get("mean") is not None:
        txt += f" The same number of random samples keeps {_pct(rb['mean'])} ± {_pct(rb.get('std'))}."
    if ss.get("kind") == "characteristic":
        txt += (" Features are weighted by how much more often a benchmark fires them than the suite at large "
                "(what characterizes it), so one-off features weigh little.")
    pc = ss.get("profile_check")
    if pc:
        txt += (f" In firing-frequency terms the chosen samples show {_pct(pc['chosen_share'])} of what characterizes "
                f"the benchmark; random subsets of the same size show {_pct(pc['random_mean'])} ± "
                f"{_pct(pc['random_std'])}.")
    return f"<p>{txt}</p><p class='muted'>Method: {_e(ss.get('method'))} ({_e(ss.get('status'))}).</p>"
