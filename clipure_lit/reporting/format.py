"""The number formatters of every table and sentence the project prints or writes.

Accuracies are fractions in [0, 1] and are shown as percentages with one decimal; intervals are the 95% Wilson
intervals of ``results.json`` (``ci95``); differences between accuracies are percentage points with a sign; times
are seconds shown as milliseconds. A missing value (None, NaN, an absent entry) is shown as :data:`MISSING`.
"""

from __future__ import annotations

import math
from typing import Sequence

MISSING = "-"


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value: float | None, ci: Sequence[float] | None = None, unit: str = "") -> str:
    """A fraction as a percentage with one decimal, followed by ``unit``: ``pct(0.4567) == '45.7'``,
    ``pct(0.4567, unit='%') == '45.7%'``. With ``ci=(low, high)`` the interval follows in brackets:
    ``pct(0.5, (0.2, 0.8)) == '50.0 [20.0, 80.0]'``. None or NaN gives :data:`MISSING`."""
    if _missing(value):
        return MISSING
    text = f"{100 * value:.1f}{unit}"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def pct_entry(entry: dict | None) -> str:
    """An accuracy entry of ``results.json`` (keys ``acc``, ``ci95``) as :func:`pct` with its interval;
    no entry gives :data:`MISSING`."""
    return pct(entry["acc"], entry["ci95"]) if entry else MISSING


def pct_ci_counts(entry: dict) -> str:
    """An accuracy entry (keys ``acc``, ``ci95``, ``correct``, ``total``) in fixed width for aligned columns, two
    decimals, interval and counts: ``' 45.67%  [ 40.1,  51.3]  (45/100)'``."""
    lo, hi = entry["ci95"]
    return f"{100 * entry['acc']:6.2f}%  [{100 * lo:5.1f}, {100 * hi:5.1f}]  ({entry['correct']}/{entry['total']})"


def points(difference: float) -> str:
    """A difference of two accuracies in percentage points, always signed: ``points(0.03) == '+3.0'``,
    ``points(-0.051) == '-5.1'``."""
    return f"{100 * difference:+.1f}"


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds with one decimal: ``ms(0.01234) == '12.3'``; None gives :data:`MISSING`."""
    return MISSING if seconds is None else f"{1000 * seconds:.1f}"
