"""Exact McNemar test for two classifiers scored on the same samples."""

from __future__ import annotations

import math


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact p-value of McNemar's test.

    ``only_a``: samples right under A and wrong under B; ``only_b``: the reverse. Under the null hypothesis (equal
    accuracy) the discordant pairs split as Binomial(n = only_a + only_b, 1/2), so
    ``p = min(1, 2 * P(X <= min(only_a, only_b)))``; ``p = 1`` when there are no discordant pairs.
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)
