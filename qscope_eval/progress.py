"""Progress on the terminal for long steps (encode, bootstrap, validate, exact selection), on stderr.

Shown only where someone watches: when stderr is a terminal, never in `--json`/`--csv` mode (the CLI calls
`set_quiet`), and never for a step that ends within DELAY seconds. `QSCOPE_EVAL_PROGRESS=0` turns it off,
`=1` on (also without a terminal and without the delay: tests and log files). Nothing here imports torch,
DuckDB or Prefect; the analysis room does not import this module but takes a `progress` callable
(an iterable wrapper) where a loop is long.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

DELAY = 1.0  # seconds a step must run before it shows anything
_quiet = False


def set_quiet(flag: bool = True) -> None:
    """No progress at all (the CLI's machine-readable modes)."""
    global _quiet
    _quiet = bool(flag)


def _forced() -> str | None:
    return os.environ.get("QSCOPE_EVAL_PROGRESS")


def enabled() -> bool:
    if _quiet or _forced() == "0":
        return False
    return _forced() == "1" or sys.stderr.isatty()


def _delay() -> float:
    return 0.0 if _forced() == "1" else DELAY


def bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar on stderr (disabled when progress is off); use as an iterable wrapper or with .update()."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled(), delay=_delay(), leave=False,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def wrapper(desc: str, unit: str = "it"):
    """`progress=` for an analysis loop: a callable that wraps an iterable in a bar (None when progress is off)."""
    if not enabled():
        return None
    return lambda it, total=None: bar(it, total=total if total is not None else _len(it), desc=desc, unit=unit)


def _len(it) -> int | None:
    try:
        return len(it)
    except TypeError:
        return None


@contextmanager
def stage(desc: str) -> Iterator[None]:
    """One blocking step with no count (a MILP solve): after DELAY s, `desc … N s` ticks until it ends."""
    if not enabled():
        yield
        return
    done, t0, shown = threading.Event(), time.monotonic(), []

    def tick():
        if done.wait(_delay()):
            return
        while True:
            sys.stderr.write(f"\r{desc} … {time.monotonic() - t0:.0f} s ")
            sys.stderr.flush()
            shown.append(True)
            if done.wait(0.5):
                return

    th = threading.Thread(target=tick, daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()
        if shown:
            sys.stderr.write(f"\r{desc}: done in {time.monotonic() - t0:.1f} s\n")
            sys.stderr.flush()
