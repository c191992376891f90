"""The report's one-sentence answer: does the SAE beat both baselines (null dictionary, prompts' words) here?

Two comparisons, the stronger first (docs/baselines.md, "The headline"):

- with a behaviour validation stored for the encoder (`validate`): the Spearman
  agreement between pairwise feature overlap and pairwise score correlation across
  models, for the SAE (with its bootstrap interval) and for each baseline. The SAE
  beats a baseline when the lower end of its interval is above the baseline's value.
- otherwise, the recommendation's evidence (`selection.baseline_pairs`): of the SAE's
  candidate stand-in pairs (one benchmark shows ≥ τ of another's characteristic mass
  over its ceiling), how many are singled out above the null dictionary and above
  the words (bootstrap lower bound of log(ratio / scaled baseline ratio) > 0).

`baseline_sentence(summary)` returns plain text (the caller escapes it).
"""

from __future__ import annotations


def _agreement(v: dict, name: str) -> dict | None:
    for a in v.get("agreement") or []:
        if a.get("name") == name and a.get("method") == "spearman" and a.get("value") is not None:
            return a
    return None


def _from_validation(v: dict) -> str | None:
    sae = _agreement(v, "sym~score_pearson")
    null, lex = _agreement(v, "null_sym~score_pearson"), _agreement(v, "lexical_sym~score_pearson")
    if sae is None or (null is None and lex is None):
        return None
    lo = sae.get("lo")
    beats = {k: b is not None and lo is not None and lo > b["value"] for k, b in (("null", null), ("words", lex))}
    base = "; ".join(f"{k} ρ = {b['value']:.2f}" for k, b in (("null dictionary", null), ("prompts' words", lex)) if b)
    ci = f" [{lo:.2f}, {sae['hi']:.2f}]" if lo is not None and sae.get("hi") is not None else ""
    what = (f"against the scores of {v.get('n_models')} models (stored validation), pairwise SAE overlap tracks "
            f"pairwise score correlation at ρ = {sae['value']:.2f}{ci} ({base})")
    missing = [k for k, b in (("null dictionary", null), ("prompts' words", lex)) if b is None]
    if all(beats.values()) and not missing:
        return f"The SAE beats both baselines on this suite: {what}, the lower end of its interval above both."
    lost = [k for k, ok in (("null dictionary", beats["null"]), ("prompts' words", beats["words"])) if not ok]
    return (f"The SAE does not beat both baselines on this suite: {what}; not above the "
            f"{' or the '.join(lost)}{' (not computed)' if missing else ''}.")


def _from_selection(s: dict) -> str | None:
    bp = s.get("baseline_pairs")
    if not bp:
        return None
    skipped = [k for k, ok in (("null dictionary", s.get("null_checked")), ("prompts' words", s.get("lexical_checked")))
               if not ok]
    if skipped:
        return (f"Whether the SAE beats both baselines is not known here: no {' and no '.join(skipped)} encoder "
                f"was stored to compare with.")
    n, both = bp["candidates"], bp["above_both"]
    level = f"{(bp.get('level') or 0.9):.0%}"
    pairs = f"{n} candidate stand-in pairs (a benchmark shows ≥ τ of another's characteristic mass)"
    detail = (f"{bp['above_null']} are above the null dictionary, {bp['above_lexical']} above the prompts' words "
              f"and {both} above both at the {level} bootstrap lower bound")
    if n == 0:
        return ("The SAE does not beat both baselines on this suite: it singles out no benchmark pair as a stand-in "
                "(no pair reaches τ), so its evidence shows nothing either baseline could be compared with.")
    if both == 0:
        return f"The SAE does not beat both baselines on this suite: of its {pairs}, {detail}, so no drop rests on it."
    return f"The SAE beats both baselines on {both} of its {pairs} on this suite: {detail}."


def baseline_sentence(summary: dict) -> str | None:
    """One sentence: whether the SAE beats the null dictionary and the prompts' words here, and by what comparison."""
    v = summary.get("validation")
    out = _from_validation(v) if v else None
    return out or _from_selection(summary.get("selection") or {})
