"""bench/scale.py end to end on a few CIFAR-10 test JPEGs: eval.py in its own processes at two sizes, peak memory
read, and a run killed by SIGTERM and resumed that must equal the uninterrupted one."""

from __future__ import annotations

import json

import pytest

from bench import scale

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not scale.DATA_ROOT.is_dir(), reason=f"no CIFAR-10 test JPEGs at {scale.DATA_ROOT}")]


def test_scale_smoke_two_sizes_and_kill_resume(tmp_path):
    out = tmp_path / "scale.json"
    assert scale.main(["--sizes", "20,40", "--reps", "2", "--resume-size", "40", "--batch-size", "10", "--threads", "1",
                       "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["images"], r["rep"]) for r in data["rows"]] == [(20, 0), (40, 0), (40, 1), (20, 1)]  # alternating rounds
    for row in data["rows"]:
        assert len(row["batch_s_per_image"]) == row["images"] // 10 and row["peak_rss_mb"] > 100
        assert 0.0 <= row["clean_acc"] <= 1.0 and row["robust_acc"] <= row["clean_acc"]
    resume = data["resume"]
    assert resume["identical_samples_csv"] and resume["identical_results"]
    assert resume["killed_exit"] in (0, 143) and resume["batches_done_at_kill"] >= 2
    figures = {h["figure"]: h for h in data["headline"]}
    steady = figures["seconds per image per batch (steady state), 20 -> 40 images"]
    assert steady["low"] <= steady["ratio"] <= steady["high"] and steady["status"] in ("met", "missed", "undecided")
    memory = figures["peak resident memory, 20 -> 40 images"]
    assert memory["status"] == "undecided" and memory["reps"] == 2  # 2 rounds: no 95% interval yet
    assert data["machine"]["load_avg_1m_at_end"] >= 0
