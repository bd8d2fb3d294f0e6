"""The benchmark harness: interleaved timing, ratios, goals and result files (the benchmarks themselves are
scripts, run by `make bench`, never timed in tests)."""

from __future__ import annotations

import json
import time

from bench.harness import (Headline, goals_decided, markdown_table, median_interval, paired_ratios, ratio_spread, ratios,
                           time_round_robin, verdict, write_result)


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
    assert (met.status, missed.status, info.status) == ("met", "missed", "")
    table = markdown_table([met, missed, info])
    assert "| attack | Cos full / plain | 1.090x | <= 1.05x | missed | small model |" in table
    assert "2.5 samples/s" in table


def test_write_result_records_machine_command_and_headline(tmp_path):
    path = write_result("demo", {"headline": [Headline("x", "y", 1.0, goal=2.0)], "rows": [1]}, tmp_path / "demo.json")
    data = json.loads(path.read_text())
    assert data["benchmark"] == "demo" and data["rows"] == [1]
    assert data["machine"]["cpu_count"] >= 1 and "torch" in data["machine"] and data["command"]
    assert data["headline"][0]["status"] == "met"


def test_median_interval_is_the_order_statistic_interval_with_95_percent_coverage():
    five = median_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (five.low, five.high, five.coverage) == (1.0, 5.0, 1 - 2 / 32)  # too few: the range, coverage 0.9375
    six = median_interval([6.0, 1.0, 5.0, 2.0, 4.0, 3.0])
    assert (six.median, six.low, six.high, six.reps) == (3.5, 1.0, 6.0, 6) and six.coverage == 1 - 2 / 64
    nine = median_interval([float(v) for v in range(1, 10)])  # k = 2: 1 - 2 * (1 + 9) / 512 = 0.961
    assert (nine.low, nine.high) == (2.0, 8.0) and abs(nine.coverage - (1 - 20 / 512)) < 1e-12


def test_ratios_are_paired_per_repetition():
    times = {"plain": [1.0, 2.0, 4.0], "case": [1.1, 2.2, 4.4]}  # the machine slows down; the ratio does not
    assert paired_ratios(times, "case", "plain") == [1.1 / 1.0, 2.2 / 2.0, 4.4 / 4.0]
    assert abs(ratio_spread(times, "case", "plain").median - 1.1) < 1e-12


def _spread(values):
    return median_interval(values)


def test_verdict_met_missed_undecided_on_synthetic_ratios():
    goal = 1.05
    assert verdict(_spread([0.98, 1.00, 1.01, 1.02, 0.99, 1.03]), goal) == "met"  # all below
    assert verdict(_spread([1.20, 1.25, 1.22, 1.30, 1.21, 1.24]), goal) == "missed"  # all above
    # The reported AutoAttack case: 1.085x median with a spread across the goal.
    assert verdict(_spread([0.89, 1.02, 1.085, 1.10, 1.25, 0.95]), goal) == "undecided"
    # Straddling the goal but within 5% of it: decided by the median's side.
    assert verdict(_spread([1.01, 1.03, 1.04, 1.045, 1.06, 1.07]), goal) == "met"
    assert verdict(_spread([1.02, 1.05, 1.06, 1.07, 1.08, 1.09]), goal) == "missed"
    # Fewer than 6 repetitions never decide, however clear the values.
    assert verdict(_spread([1.0, 1.0, 1.0]), goal) == "undecided"
    assert verdict(None, goal, value=0.05) == "met" and verdict(None, 0.1, value=0.2) == "missed"  # single values
    assert verdict(_spread([1.0] * 6), None) == ""


def test_headline_with_a_spread_shows_the_interval_and_its_verdict():
    row = Headline.from_spread("attack", "callback / plain", _spread([0.89, 1.02, 1.085, 1.10, 1.25, 0.95]), goal=1.05)
    assert row.status == "undecided"
    assert "| 1.052x [0.890, 1.250] (n=6) | <= 1.05x | undecided |" in markdown_table([row])
    again = Headline(**{k: v for k, v in row.as_dict().items() if k != "status"})  # as bench/run.py reads it back
    assert again.status == "undecided" and again.spread == row.spread


def test_round_robin_repeats_until_the_goal_is_decided():
    calls = {"base": 0, "case": 0}

    def case(name):
        def fn():
            calls[name] += 1
        return fn

    cases = {"base": case("base"), "case": case("case")}
    # Synthetic per-repetition ratios (deterministic, not the no-op timings): 1.2 each time, goal 1.05.
    goals = {"case": (lambda t: [1.2] * len(t["case"]), 1.05)}
    times = time_round_robin(cases, reps=20, warmup=False, until=goals_decided(goals))
    assert calls == {"base": 6, "case": 6} and len(times["case"]) == 6  # decided (missed) at the first 95% interval
    calls.update(base=0, case=0)
    spread_out = {"case": (lambda t: [0.8, 1.3] * len(t["case"]), 1.05)}  # an interval across the goal, always
    capped = time_round_robin(cases, reps=8, warmup=False, until=goals_decided(spread_out))
    assert len(capped["base"]) == 8  # undecided: stops at the repetition cap
    budget = time_round_robin(cases, reps=50, warmup=False, until=goals_decided(spread_out), budget_s=0.0)
    assert len(budget["base"]) == 1  # ... or when the time budget is spent
