"""The benchmark harness: interleaved timing, ratios, goals and result files (the benchmarks themselves are
scripts, run by `make bench`, never timed in tests)."""

from __future__ import annotations

import json
import time

from bench.harness import Headline, markdown_table, ratios, time_round_robin, write_result


def test_round_robin_runs_every_case_once_per_repetition_after_a_warm_up():
    calls: list[str] = []
    cases = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = time_round_robin(cases, reps=4, min_block_s=0.0)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, in order
    timed = calls[3:]
    assert sorted(timed) == sorted(["a", "b", "c"] * 4)
    assert all(sorted(timed[i:i + 3]) == ["a", "b", "c"] for i in range(0, 12, 3))  # each repetition runs all
    assert len({tuple(timed[i:i + 3]) for i in range(0, 12, 3)}) > 1  # ... in a shuffled order
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert len(calls) == 15 and len(time_round_robin(cases, reps=2, warmup=False)["a"]) == 2


def test_cheap_cases_run_in_blocks_and_report_time_per_call():
    calls = {"cheap": 0, "slow": 0}

    def cheap():
        calls["cheap"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.03)

    times = time_round_robin({"cheap": cheap, "slow": slow}, reps=3, min_block_s=0.02)
    assert calls["slow"] == 1 + 3  # warm-up + one call per repetition: slower than the block
    assert calls["cheap"] > 10 * (1 + 3)  # blocks of back-to-back calls
    assert max(times["cheap"]) < 0.01 < min(times["slow"])  # seconds per call, not per block


def test_ratios_are_medians_over_the_baseline_median():
    got = ratios({"plain": [1.0, 9.0, 2.0], "defended": [3.0, 3.0, 100.0]}, "plain")
    assert got == {"plain": 1.0, "defended": 1.5}


def test_headline_status_and_table():
    met = Headline("purification", "Cos / plain", 1.01, goal=1.02)
    missed = Headline("attack", "Cos full / plain", 1.09, goal=1.05, why="small model")
    info = Headline("pipeline", "samples/s", 2.5, unit="samples/s")
    assert (met.status, missed.status, info.status) == ("met", "MISSED", "")
    table = markdown_table([met, missed, info])
    assert "| attack | Cos full / plain | 1.090x | <= 1.05x | MISSED | small model |" in table
    assert "2.5 samples/s" in table


def test_write_result_records_machine_command_and_headline(tmp_path):
    path = write_result("demo", {"headline": [Headline("x", "y", 1.0, goal=2.0)], "rows": [1]}, tmp_path / "demo.json")
    data = json.loads(path.read_text())
    assert data["benchmark"] == "demo" and data["rows"] == [1]
    assert data["machine"]["cpu_count"] >= 1 and "torch" in data["machine"] and data["command"]
    assert data["headline"][0]["status"] == "met"
