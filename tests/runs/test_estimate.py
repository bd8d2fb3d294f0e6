"""``eval.py --estimate``: the run's models built and a few passes timed, nothing written; absent data and weights
stood in for and said so; and (slow) the estimate against the wall clock of the run it estimates."""

from __future__ import annotations

import json

import pytest

import eval as eval_entry

SMALL_RUN = ["clip=cifar10_small", "data=cifar10_sample", "prompts=cifar10", "trainer=cpu", "logger=none",
             "trainer.num_threads=1", "trainer.enable_progress_bar=false"]


def _only(result: dict) -> dict:
    assert len(result["runs"]) == 1
    return result["runs"][0]


@pytest.mark.slow  # ~10 s: each pass kind is timed for at least 1 s
def test_estimate_times_the_configured_attacks_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    result = eval_entry.main([*SMALL_RUN, "data.num_samples=20", "data.batch_size=10", "attack.run=[apgd_ce]", "attack.n_iter=2",
                              f"output_root={out}",
                              f"prompts.cache_dir={tmp_path / 'text'}", "--estimate"])
    run = _only(result)
    assert run["num_images"] == 20 and run["num_images_source"] == "data.num_samples"
    assert run["weights"] == [] and 0 < run["clean_accuracy"] <= 1 and run["clean_accuracy_images"] == 20
    (apgd,) = run["attacks"]
    assert (apgd["name"], apgd["grad_passes"], apgd["parts"]) == ("apgd_ce", 3, {"apgd-ce": [3, 1]})
    assert apgd["grad_pass_s"] > 0 and apgd["upper_s_per_image"] >= apgd["expected_s_per_image"] > 0
    assert run["test_loop_s"] == pytest.approx(20 * run["expected_s_per_image"] + run["checks_s"])
    assert not out.exists()  # no run folder
    printed = capsys.readouterr().out
    assert "apgd_ce (batch 10)" in printed and "test loop:" in printed and "Nothing was written" in printed


@pytest.mark.slow  # ~10 s: CLIPure-Diff passes
def test_estimate_stands_in_for_absent_data_and_weights_and_says_so(tmp_path, capsys):
    """CIFAR-10 not on this machine (its known size: 10000 test images) and a prior checkpoint that does not exist:
    synthetic images, a random prior at the configured architecture, both in the report; no clean accuracy."""
    result = eval_entry.main([*SMALL_RUN, "data=cifar10", f"data.root={tmp_path / 'no-cifar'}", "data.num_samples=null", "data.batch_size=2",
                              "purifier=clipure_diff_cifar10_small",
                              f"purifier.clipure_diff.prior.checkpoint={tmp_path / 'missing_prior.pt'}",
                              "purifier.clipure_diff.num_steps=1", "attack.run=[apgd_ce]", "attack.n_iter=1",
                              f"output_root={tmp_path / 'runs'}", f"prompts.cache_dir={tmp_path / 'text'}", "--estimate"])
    run = _only(result)
    assert (run["num_images"], run["num_images_source"]) == (10000, "the known size of cifar10")
    assert run["images"].startswith("synthetic images 32x32")
    assert run["weights"] == [f"purifier.clipure_diff: random weights (purifier.clipure_diff.prior.checkpoint="
                              f"'{tmp_path / 'missing_prior.pt'}' does not exist here)"]
    assert run["clean_accuracy"] is None
    assert run["attacks"][0]["expected_s_per_image"] == run["attacks"][0]["upper_s_per_image"]
    printed = capsys.readouterr().out
    assert "random weights" in printed and "the estimate is of cost, not accuracy" in printed


ACCURACY_RUNS = {
    # CLIPure-Cos under its own gradient, APGD-CE (1 restart, 10 iterations): every clean-correct image attacked once.
    "clipure_cos_apgd": ["purifier=clipure_cos", "purifier.clipure_cos.norm_scope=sample", "attack.run=[apgd_ce]"],
    # The TeCoA-robust CLIP under APGD-CE (5 restarts) + APGD-T (9 targets) at 1/255: most clean-correct images survive
    # every restart, so the budget is spent on them.
    "tecoa_aa_clipure_eps1": ["clip=cifar10_small_tecoa", "attack.run=[aa_clipure]", "attack.eps=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ACCURACY_RUNS))
def test_estimate_is_within_30_percent_of_the_test_loop_it_estimates(name, tmp_path):
    """The estimate's expected test loop against timings.json's test_loop of the same run: an accuracy check of
    the cost model (pass budget x timed pass), not a check of speed."""
    args = [*SMALL_RUN, *ACCURACY_RUNS[name], "data.num_samples=30", "data.batch_size=10", "attack.n_iter=10",
            f"prompts.cache_dir={tmp_path / 'text'}"]
    estimated = _only(eval_entry.main([*args, f"output_root={tmp_path / 'runs'}", "--estimate"]))["test_loop_s"]
    eval_entry.main([*args, f"run_dir={tmp_path / 'run'}"])
    measured = json.loads((tmp_path / "run" / "timings.json").read_text())["phases_s"]["test_loop"]
    assert 0.7 <= estimated / measured <= 1.3, (estimated, measured)


@pytest.mark.slow  # ~10 s: each pass kind is timed for at least 1 s
def test_estimate_of_a_sharded_launch_counts_every_shard_and_gives_the_time_per_shard(tmp_path, capsys):
    """``--shards N`` and launcher options on an estimate: the images of the whole evaluation, and its time per shard."""
    result = eval_entry.main([*SMALL_RUN, "data.num_samples=40", "data.batch_size=10", "attack.run=[apgd_ce]",
                              "attack.n_iter=2", f"prompts.cache_dir={tmp_path / 'text'}", f"output_root={tmp_path / 'runs'}",
                              "--shards", "2", "--launcher", "slurm", "--parallel", "2", "--estimate"])
    run = _only(result)
    assert run["num_images"] == 40 and run["num_shards"] == 2
    assert "per shard (data.num_shards=2)" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
