"""The cells every report table shares: flags by short name (unambiguous within the run), ``none`` when checks
found nothing, and times per sample in the steady state, marked when only the warm-up-inclusive mean exists."""

from __future__ import annotations

from clipure_lit.reporting.run_cells import WARMUP_MARK, flags_text, raised_flags, seconds_per_sample, time_cell

ROBUST = {"aa@purifier": {}, "aa@full": {}, "square": {}, "worst_case": {}}


def test_flags_by_short_name_in_results_order():
    results = {"robust": ROBUST, "flags": {"purifier_near_identity": 0.0, "weak_grad/aa@purifier": 1.0,
                                           "zero_grad/square": 1.0, "robust_near_clean": 1.0}}
    assert raised_flags(results) == ["weak_grad@purifier", "zero_grad/square", "robust_near_clean"]
    assert flags_text(results) == "weak_grad@purifier, zero_grad/square, robust_near_clean"


def test_a_mode_suffix_shared_by_two_attacks_keeps_the_full_name():
    results = {"robust": {"aa@full": {}, "apgd@full": {}}, "flags": {"weak_grad/aa@full": 1.0}}
    assert raised_flags(results) == ["weak_grad/aa@full"]


def test_no_flag_raised_reads_none_and_no_check_reads_not_checked():
    assert flags_text({"robust": ROBUST, "flags": {"weak_grad/aa@full": 0.0}}) == "none"
    assert flags_text({"robust": {}}) == "not checked"


def test_times_prefer_the_steady_state_and_mark_the_warm_up_mean():
    steady = {"time_per_sample_s": {"clean": 0.07, "attack/aa@full": 0.5},
              "steady_time_per_sample_s": {"clean": 0.0028, "attack/aa@full": 0.4}}
    assert seconds_per_sample(steady, ["clean"]) == (0.0028, True)
    assert time_cell(steady, ["clean"]) == "2.8" and time_cell(steady, ["attack/aa@full"]) == "400.0"
    older = {"time_per_sample_s": {"clean": 0.07}}
    assert seconds_per_sample(older, ["clean"]) == (0.07, False)
    assert time_cell(older, ["clean"]) == "70.0" + WARMUP_MARK
    assert time_cell(older, []) == "-"
