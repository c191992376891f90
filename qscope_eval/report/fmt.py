"""Small HTML formatting helpers shared by the report's page modules (html.py, headline.py)."""

from __future__ import annotations

import html
import math


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _pct(x, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}%"


def _num(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}"
