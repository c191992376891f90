"""The report's "What no benchmark measures" section: reference gaps and each group's feature drill-down.

Renders `summary["gaps"]` (jobs/gaps.py: summary_gaps). Every string from the data (prompts, tokens, names)
goes through `html.escape`; token highlights are <mark> elements whose only style is a computed opacity.
"""

from __future__ import annotations

import html
import math


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _pct(x, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}%"


def gaps_section(summary: dict) -> str:
    """The whole section (heading included)."""
    g = summary.get("gaps")
    head = "<h2>What no benchmark measures: gaps against the reference corpus</h2>"
    if g is None:
        return (head + "<p class='muted'>This suite names no reference corpus. Add a <code>reference:</code> list "
                "(the prompts the model will really see) to find the topics no benchmark covers.</p>")
    if g.get("error"):
        return head + f"<p class='warnings'>Gaps could not be computed: {_e(g['error'])}</p>"
    c, n = g["coverage"], g.get("null")
    null = (f" A random dictionary of the same shape (null encoder) gives {_pct(n['covered_share'])} covered and "
            f"{_pct(n['gap_share'])} on gaps: the difference is what the SAE's features add.") if n else \
        " No null encoder was stored, so there is no baseline for these numbers."
    lx = g.get("lexical")
    null += (f" The prompts' own words (lexical baseline) give {_pct(lx['covered_share'])} covered and "
             f"{_pct(lx['gap_share'])} on gaps." if lx else " No lexical baseline was computed.")
    lead = (f"<p class='lead'>Reference ({_e(', '.join(g['reference']))}; {g['n_reference_samples']} prompts): "
            f"<b>{_pct(c['covered_share'])}</b> of its characteristic firing mass is on features some benchmark "
            f"fires at a comparable rate (at least 1/{_e(g['config']['ratio'])} of the reference's), "
            f"<b>{_pct(c['gap_share'])}</b> on {c['n_gap_features']} gap features in {c['n_groups']} groups, and "
            f"{_pct(c['unresolved_share'])} on features too rare in the reference to call.{null}</p>")
    how = ("<p class='muted'>A gap feature fires in the reference (or one of its named corpora) significantly more "
           f"often than {_e(g['config']['ratio'])}× its frequency in any benchmark (binomial test, FDR "
           f"{_e(g['config']['alpha'])}, at least {_e(g['config']['min_count'])} prompts). Groups are gap features "
           "that fire on the same reference prompts; each shows its most typical prompts, the benchmarks that "
           "come closest (share of the group's reference frequency they reach) and its lead feature's evidence."
           " <code>qscope-eval gaps --export seeds.jsonl</code> writes these prompts as seeds for new eval items."
           "</p>")
    groups = "".join(_group(x) for x in g["groups"]) or "<p>No gap found: every well-supported reference feature " \
                                                         "is fired by some benchmark at a comparable rate.</p>"
    return head + lead + how + groups


def _group(grp: dict) -> str:
    closest = ", ".join(f"{_e(b['benchmark'])} ({_pct(b['matched_share'], 0)})" for b in grp["closest_benchmarks"])
    prompts = "".join(f'<div class="text">{_e(p["text"])}</div>' for p in grp["prompts"])
    feats = ", ".join(str(int(f)) for f in grp["features"][:12]) + (" …" if grp["n_features"] > 12 else "")
    out = (f"<h3>Gap group {grp['group']}: {_pct(grp['excess_share'], 2)} of the reference beyond the benchmarks"
           f" <small class='muted'>({grp['n_features']} features; {grp['n_samples']} reference prompts fire two or more of them)</small></h3>"
           f"<p class='muted'>Features {feats}. Closest benchmarks: {closest or '–'}.</p>"
           f"<p><b>Most typical reference prompts</b></p>{prompts}")
    ev = grp.get("evidence")
    return out + (_evidence(ev) if ev else "")


def _evidence(ev: dict) -> str:
    """One feature's drill-down: frequency per corpus, top samples with the tokens where it fires, co-firing."""
    freq = sorted((f for f in ev["frequency"] if f.get("frequency")), key=lambda f: -f["frequency"])[:6]
    freq_txt = ", ".join(f"{_e(f['name'])}{' (ref)' if f['role'] == 'reference' else ''} {_pct(f['frequency'], 0)}"
                         for f in freq)
    rows = []
    for s in ev["top_samples"]:
        body = _tokens(s["tokens"]) if s.get("tokens") else _e(s["text"])
        rows.append(f'<div class="text">{body}</div><small class="muted">pooled value {s["value"]:.3g} · '
                    f'{_e(", ".join(s["in"]))}</small>')
    note = f"<p class='muted'>{_e(ev['tokens_note'])}</p>" if ev.get("tokens_note") else ""
    co = ", ".join(f"{c['feature']} ({c['jaccard']:.2f})" for c in ev["cofiring"][:8])
    return (f"<details><summary>Evidence for feature {ev['feature']} (fires where highlighted; frequency: "
            f"{freq_txt or '–'})</summary>{''.join(rows)}{note}"
            f"<p class='muted'>Co-fires with (Jaccard of prompt sets): {co or '–'}</p></details>")


def _tokens(tokens: list[dict]) -> str:
    top = max((t["value"] for t in tokens), default=0.0)
    out = []
    for t in tokens:
        if t["value"] > 0 and top > 0:
            alpha = 0.25 + 0.75 * t["value"] / top
            out.append(f'<mark style="background:rgba(255,170,0,{alpha:.2f})" title="{t["value"]:.3g}">'
                       f'{_e(t["token"])}</mark>')
        else:
            out.append(_e(t["token"]))
    return "".join(out)
