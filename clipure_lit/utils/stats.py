"""Accuracy with a 95% Wilson score interval (good behaviour near 0% and 100%, unlike the normal approximation)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson interval ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` for ``p = k/n``.
    Returns ``(nan, nan)`` when ``total`` is 0."""
    if total <= 0:
        return float("nan"), float("nan")
    p = successes / total
    denom = 1.0 + z * z / total
    centre = p + z * z / (2 * total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)
