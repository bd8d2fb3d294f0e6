"""The number formatters every table and sentence uses: percentages, intervals, counts, points, milliseconds."""

from __future__ import annotations

import math

from clipure_lit.reporting.format import MISSING, ms, pct, pct_ci_counts, pct_entry, points


def test_pct_plain_with_unit_and_interval():
    assert pct(0.4567) == "45.7"
    assert pct(0.4567, unit="%") == "45.7%"
    assert pct(0.5, (0.2, 0.8)) == "50.0 [20.0, 80.0]"
    assert pct(1.0, [0.9654, 1.0]) == "100.0 [96.5, 100.0]"


def test_missing_values_show_as_a_dash():
    assert MISSING == "-"
    assert pct(None) == pct(math.nan) == pct(None, (0.1, 0.2)) == MISSING
    assert pct_entry(None) == pct_entry({}) == ms(None) == MISSING


def test_entry_with_interval_and_counts():
    entry = {"acc": 0.0312, "ci95": [0.0, 0.108], "correct": 3, "total": 100}
    assert pct_entry(entry) == "3.1 [0.0, 10.8]"
    assert pct_ci_counts(entry) == "  3.12%  [  0.0,  10.8]  (3/100)"
    full = {"acc": 1.0, "ci95": [0.9, 1.0], "correct": 8, "total": 8}
    assert pct_ci_counts(full) == "100.00%  [ 90.0, 100.0]  (8/8)"


def test_points_are_signed_and_ms_has_one_decimal():
    assert points(0.03) == "+3.0" and points(0.0) == "+0.0" and points(-0.051) == "-5.1"
    assert ms(0.01234) == "12.3" and f"{ms(12.0):>8}" == f"{12000.0:8.1f}"
