"""bench/scale.py's figures from synthetic runs (no eval.py): the steady-state verdict, the load guard, memory."""

from __future__ import annotations

from bench.scale import headlines, ratio_of_medians


def _row(images: int, per_image: list[float], rss: float, load: float) -> dict:
    return {"images": images, "batch_s_per_image": per_image, "batch_s_per_image_median": sorted(per_image)[len(per_image) // 2],
            "test_loop_s_per_image": sum(per_image) / len(per_image), "wall_s_per_image": 0.05, "wall_s": 0.05 * images,
            "peak_rss_mb": rss, "load_avg_1m": [load, load]}


def _figures(rows):
    return {h.figure.split(",")[0]: h for h in headlines(rows, None)}


def test_steady_state_ratio_interval_and_verdicts():
    small = [0.020 + 0.0001 * i for i in range(10)]
    same = _figures([_row(1000, small, 1000.0, 1.0), _row(10000, small * 10, 1050.0, 1.1)])
    steady = same["seconds per image per batch (steady state)"]
    assert steady.low <= 1.0 <= steady.high and steady.status == "met"  # interval within 1.10
    assert same["peak resident memory"].status == "met" and "6 KB per added image" in same["peak resident memory"].why
    slower = _figures([_row(1000, small, 1000.0, 1.0), _row(10000, [x * 1.5 for x in small] * 10, 1500.0, 1.0)])
    assert slower["seconds per image per batch (steady state)"].status == "missed"
    assert slower["peak resident memory"].status == "missed"


def test_runs_under_different_load_are_undecided():
    small = [0.020] * 10
    figures = _figures([_row(1000, small, 1000.0, 5.6), _row(10000, [0.010] * 100, 1000.0, 2.4)])
    steady = figures["seconds per image per batch (steady state)"]
    assert steady.status == "undecided" and "LOAD CHANGED" in steady.why


def test_ratio_of_medians_interval_is_conservative():
    spread = ratio_of_medians([2.0] * 20, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 2.0])
    assert spread.median == 2.0 and spread.low <= 2.0 <= spread.high and spread.coverage >= 0.95
