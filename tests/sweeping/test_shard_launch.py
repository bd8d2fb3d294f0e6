"""One evaluation as shards for real (``eval.py ... --shards 2``: submitit's local executor, eval.py subprocesses),
merged automatically: samples.csv is byte-identical to the one-process run's and every metric, flag and check of
results.json equal, for a deterministic defence, the batch-coupled CLIPure-Cos (batch normalisation) and a random
CLIPure-Diff under EOT; a shard stopped by SIGTERM mid-run is reported as interrupted, and launching again resumes it
and merges the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import eval as eval_script
from clipure_lit.sweeping.job import read_pid

from conftest import PROJECT_ROOT, needs_shared_cifar

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_shared_cifar]  # about 2 minutes of eval.py processes

BASE = ["experiment=tiny", "logger=none", "trainer.enable_progress_bar=false", "trainer.num_threads=1",
        "data.num_samples=10", "data.batch_size=2", "attack.n_iter=2"]
DEFENCES = {
    "deterministic": ["attack.run=[apgd_ce]"],
    "clipure_cos_batch_coupled": ["purifier=clipure_cos", "attack.run=[apgd_ce@full]"],
    "clipure_diff_eot": ["purifier=clipure_diff_tiny", "purifier.clipure_diff.num_steps=2", "attack.run=[apgd_ce@eot]",
                         "attack.eot_samples=2"],
}
METRICS = ("num_samples", "clean", "robust", "attacks", "flags", "flag_messages", "checks", "purifiers")


def _same_result(merged_dir, one_dir) -> None:
    assert (merged_dir / "samples.csv").read_bytes() == (one_dir / "samples.csv").read_bytes()
    merged, one = (json.loads((d / "results.json").read_text()) for d in (merged_dir, one_dir))
    assert {k: merged[k] for k in METRICS} == {k: one[k] for k in METRICS}
    assert merged["environment"]["sample_ids_sha256"] == one["environment"]["sample_ids_sha256"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("defence", list(DEFENCES))
def test_two_local_shards_merge_into_the_one_process_result(defence, tmp_path):
    args = [*BASE, *DEFENCES[defence], f"prompts.cache_dir={tmp_path / 'text'}"]
    eval_script.main([*args, f"run_dir={tmp_path / 'one'}"])
    merged = eval_script.main([*args, f"run_dir={tmp_path / 'set'}", "--shards", "2", "--parallel", "2"])
    assert merged["shards"]["num_shards"] == 2
    _same_result(tmp_path / "set", tmp_path / "one")


@pytest.mark.timeout(600)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stops the shard's process group")
def test_a_shard_stopped_by_sigterm_resumes_and_merges_the_same_result(tmp_path, capsys):
    # 12 batches of an attack of 10 iterations per shard: long enough to be stopped in the middle.
    args = [*BASE, "data.num_samples=48", "attack.n_iter=10", "attack.run=[apgd_ce]", f"prompts.cache_dir={tmp_path / 'text'}",
            f"run_dir={tmp_path / 'set'}", "--shards", "2"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "eval.py", *args, "--parallel", "2"], cwd=PROJECT_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    progress = tmp_path / "set" / "shards" / "1" / "progress" / "rank0.jsonl"
    deadline = time.monotonic() + 300
    while not (progress.is_file() and progress.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.1)
    os.killpg(read_pid(tmp_path / "set" / "shards" / ".submitit" / "pids" / "1"), signal.SIGTERM)
    assert proc.wait(timeout=300) == 1  # a shard interrupted from outside: nothing merged
    first = (tmp_path / "first.log").read_text()
    assert "interrupted: shard 1" in first and "resume (finished batches are kept): python eval.py" in first
    assert not (tmp_path / "set" / "results.json").exists()
    state = json.loads((tmp_path / "set" / "shards" / "state.json").read_text())
    assert state["0"]["status"] == "finished" and state["1"]["attempts"][0]["signal"] == "SIGTERM"
    done = progress.read_text().count("\n")
    assert 1 <= done < 12

    capsys.readouterr()
    eval_script.main([*args, "--status"])
    status = capsys.readouterr().out
    assert "1 done (0)" in status and "1 stopped (1)" in status and f"samples: {24 + done * 2} of 48 done" in status

    eval_script.main(args)  # shard 0 is skipped, shard 1 resumes, then both are merged
    state = json.loads((tmp_path / "set" / "shards" / "state.json").read_text())
    assert [a["action"] for a in state["1"]["attempts"]] == ["run", "resume"] and len(state["0"]["attempts"]) == 1
    assert "resuming:" in (tmp_path / "set" / "shards" / "1" / "stdout.log").read_text()
    eval_script.main([*args[:-3], f"run_dir={tmp_path / 'one'}"])
    _same_result(tmp_path / "set", tmp_path / "one")
