"""Two-process evaluation (``ddp_spawn`` on CPU): the distributed sampler pads 7 samples to 8, yet every sample is
counted once and the results equal a single-process run's."""

from __future__ import annotations

import csv
import json

import pytest

import eval as eval_script

from conftest import needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

# attack.batch_size=1 makes every attack result a per-sample function (batches differ between 1 and 2 processes).
ARGS = ["data.num_samples=7", "data.batch_size=2", "attack.run=[fast,square]", "attack.entries.fast.base=apgd_ce",
        "attack.n_iter=2", "attack.n_queries=5", "attack.eps=1", "attack.batch_size=1", "trainer.num_threads=1"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_shared_cifar
def test_two_processes_count_each_sample_once_and_match_one_process(tmp_path, capfd):
    one = eval_script.main(tiny_args(tmp_path / "one", *ARGS))
    capfd.readouterr()
    two = eval_script.main(tiny_args(tmp_path / "two", *ARGS, "trainer=ddp_cpu", "trainer.enable_progress_bar=true"))
    # Rank 0's progress shows global numbers (2 processes x 2 batches of 2), the end shows the summary's; the
    # spawned processes print no Lightning set-up lines or upstream warnings, and log into the run folder.
    err = capfd.readouterr().err
    assert "tiny: 7/7 samples (batch 2/2)" in err and "Tip" not in err and "Initializing distributed" not in err
    log = (tmp_path / "two" / "run" / "log.txt").read_text()
    assert f"clean {two['clean']['correct']}/7 " in log.split("tiny: done in")[1]
    assert (tmp_path / "two" / "run" / "log.rank1.txt").is_file()
    for key in ("num_samples", "clean", "robust"):
        assert two[key] == one[key], key
    assert two["num_samples"] == 7 and two["robust"]["fast"]["total"] == 7
    rows = {name: list(csv.DictReader(open(tmp_path / name / "run" / "samples.csv"))) for name in ("one", "two")}
    assert rows["two"] == rows["one"] and len({r["sample_id"] for r in rows["two"]}) == 7
    logged = []
    for path in sorted((tmp_path / "two" / "run" / "progress").glob("rank*.jsonl")):
        logged += [i for line in path.read_text().splitlines() for i in json.loads(line)["columns"]["label"]["ids"]]
    assert len(logged) == 8 and len(set(logged)) == 7  # the sampler's padding duplicate was evaluated, then dropped
