"""bench/scale.py's figures from synthetic runs (no eval.py): the steady-state verdict, the load guard, memory."""

from __future__ import annotations

from bench.scale import headlines, ratio_of_medians


def _row(images: int, per_image: list[float], rss: float, load: float, rep: int = 0) -> dict:
    return {"images": images, "rep": rep, "batch_s_per_image": per_image, "batch_s_per_image_median": sorted(per_image)[len(per_image) // 2],
            "test_loop_s_per_image": sum(per_image) / len(per_image), "wall_s_per_image": 0.05, "wall_s": 0.05 * images,
            "peak_rss_mb": rss, "load_avg_1m": [load, load]}


def _figures(rows):
    return {h.figure.split(",")[0]: h for h in headlines(rows, None)}


def test_steady_state_ratio_interval_and_verdicts():
    small = [0.020 + 0.0001 * i for i in range(10)]
    same = _figures([_row(1000, small, 1000.0, 1.0), _row(10000, small * 10, 1050.0, 1.1)])
    steady = same["seconds per image per batch (steady state)"]
    assert steady.low <= 1.0 <= steady.high and steady.status == "met"  # interval within 1.10
    slower = _figures([_row(1000, small, 1000.0, 1.0), _row(10000, [x * 1.5 for x in small] * 10, 1500.0, 1.0)])
    assert slower["seconds per image per batch (steady state)"].status == "missed"


def test_peak_memory_is_decided_by_rounds_not_by_one_run():
    """One run per size cannot decide (identical runs' peaks differ by up to ~25%); 6 rounds give a 95% interval
    of the per-round ratios."""
    small = [0.020] * 10
    one = _figures([_row(1000, small, 1000.0, 1.0), _row(10000, small * 10, 1050.0, 1.0)])["peak resident memory"]
    assert one.status == "undecided" and "one round cannot decide" in one.why

    def rounds(ratios):
        rows = []
        for rep, ratio in enumerate(ratios):
            rows += [_row(1000, small, 1200.0 + 10 * rep, 1.0, rep), _row(10000, small * 10, (1200.0 + 10 * rep) * ratio, 1.0, rep)]
        return _figures(rows)["peak resident memory"]

    flat = rounds([1.00, 1.02, 0.98, 1.04, 1.01, 0.97])
    assert flat.status == "met" and flat.low == 0.97 and flat.high == 1.04 and "peaks [1200, 1210" in flat.why
    grows = rounds([1.30, 1.25, 1.40, 1.20, 1.35, 1.28])
    assert grows.status == "missed"


def test_runs_under_different_load_are_undecided():
    small = [0.020] * 10
    figures = _figures([_row(1000, small, 1000.0, 5.6), _row(10000, [0.010] * 100, 1000.0, 2.4)])
    steady = figures["seconds per image per batch (steady state)"]
    assert steady.status == "undecided" and "LOAD CHANGED" in steady.why


def test_ratio_of_medians_interval_is_conservative():
    spread = ratio_of_medians([2.0] * 20, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 2.0])
    assert spread.median == 2.0 and spread.low <= 2.0 <= spread.high and spread.coverage >= 0.95
