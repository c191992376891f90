"""The report's headline: the cards, the one sentence a release engineer reads first, and what the baselines' numbers
beside it mean (the null dictionary, the prompts' own words)."""

from __future__ import annotations

from qscope_eval.report.fmt import _e, _num, _pct


def headline(summary: dict) -> str:
    m, s, ss = summary["metrics"], summary["selection"], summary.get("sample_selection") or {}
    n_b = len(m["benchmarks"])
    union = m.get("suite_union")
    d = m.get("d_sae")
    cards = [("benchmarks", _num(n_b)),
             ("unique samples", _num(ss.get("n_candidates"))),
             ("features fired (suite)",
              f"{_num(union)}<small> of {_num(d)} ({_pct(union / d if union is not None and d else None)})</small>"),
             ("recommended", f"{len(s['chosen'])}<small> of {n_b} benchmarks</small>"),
             ("benchmarks kept or covered" if s.get("kind") == "characteristic" else "coverage kept",
              _pct(s.get("coverage"))),
             ("cost saved", _pct(None if s.get("cost_share") is None else 1 - s["cost_share"]))]
    gc = (summary.get("gaps") or {}).get("coverage")
    if gc:  # the share of the reference corpus the suite covers, beside the null encoder's
        gn = summary["gaps"].get("null") or {}
        gl = summary["gaps"].get("lexical") or {}
        base = [f"{what} {_pct(g['covered_share'])}" for what, g in (("random dictionary", gn), ("prompts' words", gl))
                if g.get("covered_share") is not None]
        cards.append(("reference covered" + (f" ({', '.join(base)})" if base else ""), _pct(gc["covered_share"])))
    return (f'<p class="headline">{_headline_sentence(summary)}</p><div class="cards">' + "".join(
        f'<div class="card"><div class="v">{v}</div><div class="k">{_e(k)}</div></div>' for k, v in cards) + "</div>"
        + _null_note(summary))


def _headline_sentence(summary: dict) -> str:
    """What a release engineer needs from the page, in one sentence (HTML, escaped)."""
    s, n_b = summary["selection"], len(summary["metrics"]["benchmarks"])
    k = len(s["chosen"])
    saved = None if s.get("cost_share") is None else 1 - s["cost_share"]
    cost = _e(s.get("cost_kind") or "cost")
    if s.get("kind") == "characteristic":
        txt = (f"<b>Keep all {n_b} benchmarks</b>: none is measured by another clearly enough to drop it"
               if k == n_b else
               f"<b>Keep {k} of {n_b} benchmarks</b> and save {_pct(saved)} of the {cost}: each benchmark dropped is "
               "measured by one that is kept")
    else:
        txt = (f"<b>Keep {k} of {n_b} benchmarks</b>: they fire {_pct(s.get('coverage'))} of the features the whole "
               f"suite fires, for {_pct(saved)} less {cost}")
    gc = (summary.get("gaps") or {}).get("coverage")
    if gc:
        txt += (f". Some benchmark exercises {_pct(gc['covered_share'])} of the reference corpus; "
                f"{_pct(gc['gap_share'])} of it falls in {_num(gc['n_groups'])} groups no benchmark exercises "
                "(“What no benchmark measures”, below)")
    return txt + "."


def _null_note(summary: dict) -> str:
    """What the null encoder's number beside 'reference covered' means, said where it is shown."""
    g = summary.get("gaps") or {}
    gc, gn = g.get("coverage"), g.get("null") or {}
    if not gc or gn.get("covered_share") is None:
        return ""
    diff = gn["covered_share"] - gc["covered_share"]
    reading = ("so the SAE's features tell the reference apart from the benchmarks more sharply than random "
               "directions do" if diff > 0.02 else
               "so on this SAE the gaps are not clearer than random directions make them: read the gap groups "
               "with care")
    return ("<p class='muted'><b>Reference covered</b> is the share of the reference corpus (prompts the model will "
            "really see) that some benchmark fires at a comparable rate. The <b>random dictionary</b> (null encoder: "
            "random directions of the same shape, same prompts) usually calls more of it covered, because random "
            "directions fire broadly on every kind of prompt and see fewer differences. Here it calls "
            f"{_pct(gn['covered_share'])} covered against the SAE's {_pct(gc['covered_share'])}, {reading}.</p>")


def baselines_lead(summary: dict) -> str:
    """The one sentence on whether the SAE beats the null dictionary and the prompts' words (report/baselines.py)."""
    from qscope_eval.report.baselines import baseline_sentence

    sent = baseline_sentence(summary)
    return f'<p class="lead">{_e(sent)}</p>' if sent else ""
