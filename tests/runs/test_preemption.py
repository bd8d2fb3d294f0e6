"""Preemption loses nothing. A plain eval.py in a SLURM job of its own (simulated: the job's environment and a fake
``scontrol`` on PATH that records its arguments) stopped by SIGUSR1 (``#SBATCH --signal=B:USR1@120``) or SIGTERM
requeues its job with ``trainer.requeue_on_preempt=true``; the requeued start (``SLURM_RESTART_COUNT=1``, same job
id, no run_dir, no resume=true) finds the folder named after the job and ends with an uninterrupted run's numbers.
A run a W&B agent launched, stopped and relaunched with the same ids, resumes in its folder and one W&B run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import eval as eval_script

from conftest import PROJECT_ROOT, needs_shared_cifar
from wandb_offline import clean_env, of_type, run_files, stop_eval, summary_of, wandb_records

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# 16 batches of a 40-iteration attack: a signal after the second batch lands mid-run.
RUN = ["experiment=tiny", "data.num_samples=32", "data.batch_size=2", "attack.run=[apgd_ce]", "attack.n_iter=40",
       "attack.eps=1", "attack.checks=false", "trainer.num_threads=1", "trainer.enable_progress_bar=false"]


def _numbers(results: dict) -> dict:
    return {k: results[k] for k in ("num_samples", "clean", "robust", "flags")}


def _fake_scontrol(tmp_path) -> tuple[str, os.PathLike]:
    """A bin folder with an ``scontrol`` that appends its arguments to ``scontrol.calls`` (``show job`` answers
    nothing: the job is not requeueable by the cluster's default)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" = requeue ]\n')
    script.chmod(0o755)
    return str(bin_dir), calls


@needs_shared_cifar
@pytest.mark.timeout(900)
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_slurm_job_stopped_requeues_itself_and_the_requeued_start_resumes(tmp_path, signum):
    base = [*RUN, f"prompts.cache_dir={tmp_path / 'text'}"]
    reference = eval_script.main([*base, "logger=none", f"run_dir={tmp_path / 'reference'}"])

    bin_dir, calls = _fake_scontrol(tmp_path)
    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "eval", "SLURM_NTASKS": "1", "SLURM_NNODES": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = [*base, "logger=wandb", f"output_root={tmp_path / 'runs'}", "name=paper", "trainer.requeue_on_preempt=true"]
    run_dir = tmp_path / "runs" / "paper" / "slurm-4242"  # named after the job: the requeued job finds it
    code = stop_eval(args, run_dir, signum, after=2, env=clean_env(**job), log=tmp_path / "first.log")
    first_log = (tmp_path / "first.log").read_text()
    assert code == 143, first_log[-3000:]
    assert calls.read_text().splitlines() == ["requeue 4242"], first_log[-3000:]
    assert f"Stopped by {signal.Signals(signum).name} after the batch in flight" in first_log

    again = subprocess.run([sys.executable, "eval.py", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           env=clean_env(**job, SLURM_RESTART_COUNT="1"), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "SLURM job 4242 was requeued (SLURM_RESTART_COUNT=1): continuing the run" in (run_dir / "log.txt").read_text()
    import json

    assert _numbers(json.loads((run_dir / "results.json").read_text())) == _numbers(reference)
    assert (run_dir / "samples.csv").read_text() == (tmp_path / "reference" / "samples.csv").read_text()
    assert calls.read_text().splitlines() == ["requeue 4242"]  # the finished start requeues nothing

    first, second = run_files(run_dir)  # one W&B run, continued: marked preempting when stopped, then finished
    records = [list(wandb_records(f)) for f in (first, second)]
    assert first.name == second.name == f"run-{(run_dir / 'wandb_run_id').read_text().strip()}.wandb"
    assert [[e.exit_code for e in of_type(r, "exit")] for r in records] == [[143], [0]]
    assert [len(of_type(r, "preempting")) for r in records] == [1, 0]
    assert summary_of(records[1])["status"] == "finished"


@needs_shared_cifar
@pytest.mark.timeout(900)
def test_wandb_agent_run_stopped_and_relaunched_resumes_in_its_folder_as_one_wandb_run(tmp_path):
    env = clean_env(WANDB_SWEEP_ID="abc123", WANDB_RUN_ID="run9", WANDB_PROJECT="clipure_lit")
    args = [*RUN, f"prompts.cache_dir={tmp_path / 'text'}", f"output_root={tmp_path / 'runs'}"]  # no run_dir
    run_dir = tmp_path / "runs" / "wandb" / "abc123" / "run9"
    assert stop_eval(args, run_dir, signal.SIGTERM, after=2, env=env, log=tmp_path / "first.log") == 143
    again = subprocess.run([sys.executable, "eval.py", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           env=env, timeout=600)  # W&B's requeue: the same command and run id, no resume=true
    assert again.returncode == 0, again.stderr[-3000:]
    assert "W&B sweep abc123 relaunched run run9: continuing the run" in (run_dir / "log.txt").read_text()
    assert list((tmp_path / "runs").rglob("results.json")) == [run_dir / "results.json"]
    first, second = run_files(run_dir)
    records = [list(wandb_records(f)) for f in (first, second)]
    assert first.name == second.name == "run-run9.wandb"
    assert {r.run.run_id for rs in records for r in rs if r.WhichOneof("record_type") == "run"} == {"run9"}
    assert [[e.exit_code for e in of_type(r, "exit")] for r in records] == [[143], [0]]
    assert [len(of_type(r, "preempting")) for r in records] == [1, 0]
