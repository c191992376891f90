"""Template dominance: how much of a benchmark's firing is what every benchmark's prompts share (the template).

With `last` pooling on templated prompts (every MMLU prompt ends in "Answer:") the
last position holds the template: every benchmark fires nearly the same features,
what characterizes a benchmark is a thin residue, and the recommendation's ratios
(residue over a small self-coverage) are noise that can pass for evidence. This
module measures it so the recommendation keeps such a benchmark (no evidence either
way) and the audit warns.

- ``template_share(P)``: per benchmark D, Σ_f min_D' P[D', f] / Σ_f P[D, f], the share of
  D's firing mass (firing frequencies P, recommend.benchmark_profiles) that every
  benchmark of the suite also fires at least as often: the part all prompts share.
- ``TEMPLATE_SHARE``: the threshold, chosen by measurement (docs/baselines.md, "The
  template check").
- ``template_warning``: the one message for the report and summary.json `warnings`.

Shapes: P (n_bench × d) firing frequencies; shares (n_bench,).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TEMPLATE_SHARE = 0.5
"""A benchmark whose template share is at least this is template-dominated (docs/baselines.md: measured)."""
MIN_BENCHMARKS = 3
"""Fewer benchmarks and what "every benchmark shares" cannot be told from what two same-topic ones share."""


def template_share(P: np.ndarray) -> np.ndarray:
    """(n_bench,) share of each benchmark's firing mass that every benchmark fires at least as often (0 if no mass)."""
    P = np.atleast_2d(np.asarray(P, float))
    shared = P.min(axis=0)  # (d,) the frequency at which every benchmark fires f
    mass = P.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, shared.sum() / mass, 0.0)


def is_template_dominated(shares: np.ndarray, threshold: float = TEMPLATE_SHARE) -> np.ndarray:
    """(n_bench,) bool: template share at or above `threshold` (all False below MIN_BENCHMARKS benchmarks)."""
    shares = np.asarray(shares, float)
    return (shares >= threshold) & (shares.size >= MIN_BENCHMARKS)


def template_warning(names: Sequence[str], shares: np.ndarray, threshold: float = TEMPLATE_SHARE,
                     where: str = "") -> str | None:
    """The audit's warning when some benchmarks' features are mostly what all prompts share, or None."""
    shares = np.asarray(shares, float)
    hit = np.flatnonzero(is_template_dominated(shares, threshold))
    if not hit.size:
        return None
    top = ", ".join(f"{names[i]} {shares[i]:.0%}" for i in hit[np.argsort(-shares[hit])][:5])
    more = f" and {hit.size - 5} more" if hit.size > 5 else ""
    return (f"{hit.size} of {len(names)} benchmarks fire mostly what every benchmark's prompts share (template share "
            f"≥ {threshold:.0%}: {top}{more}){where}: their features are the prompt template, so the recommendation "
            f"keeps them (no evidence either way); read a position that has seen the content (`pooling: top`), or "
            f"strip the shared template from the prompts")
