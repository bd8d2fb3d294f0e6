"""Loggers through Lightning: CSV by default, W&B offline without credentials (real wandb, no network); how a job's
end becomes W&B's status and exit code, the W&B run id kept in the run folder, and the preempting mark of a stopped
run that SLURM requeues."""

from __future__ import annotations

import os

import pytest

import eval as eval_script

from conftest import needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`


def _without_logger(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("logger=")]


@needs_shared_cifar
def test_csv_logger_records_the_metrics_and_the_live_numbers_per_batch(tmp_path):
    import csv

    results = eval_script.main(_without_logger(tiny_args(tmp_path, "data.num_samples=8", "data.batch_size=3",
                                                         "attack.run=[apgd_ce]", "attack.n_iter=1"))
                               + ["logger=csv"])
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    live = [r for r in rows if r.get("live/samples_done")]
    assert [float(r["live/samples_done"]) for r in live] == [3, 6, 8]  # batches of 3, 3 and 2: unique samples done
    assert [int(r["step"]) for r in live] == [3, 6, 8]
    assert float(live[-1]["live/clean_acc"]) == pytest.approx(results["clean"]["acc"])
    assert float(live[-1]["live/robust_acc/apgd_ce"]) == pytest.approx(results["robust"]["apgd_ce"]["acc"])
    assert float(live[-1]["live/robust_acc/worst_case"]) == pytest.approx(results["robust"]["worst_case"]["acc"])
    assert any(r.get("test/clean_acc") for r in rows)  # the final numbers, as before


@needs_shared_cifar
def test_live_steps_continue_across_a_resume(tmp_path, monkeypatch):
    """A resumed run's first live step counts the samples its earlier launch finished (W&B refuses decreasing steps),
    and its live numbers cover them: at the end they equal the run's result."""
    import csv

    import clipure_lit.evaluation as evaluation
    from conftest import crash_after_batch

    args = _without_logger(tiny_args(tmp_path, "data.num_samples=8", "data.batch_size=3", "trainer.num_threads=1",
                                     "attack.run=[apgd_ce]", "attack.n_iter=1")) + ["logger=csv"]
    original = evaluation.eval_callbacks
    monkeypatch.setattr(evaluation, "eval_callbacks", lambda cfg, run_dir: [crash_after_batch(2)] + original(cfg, run_dir))
    with pytest.raises(RuntimeError, match="simulated crash"):
        eval_script.main(args)  # batch 1 finished and logged, batch 2 lost
    monkeypatch.undo()
    results = eval_script.main(args + ["resume=true"])
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    live = [r for r in rows if r.get("live/samples_done")]
    # Lightning's CSVLogger starts metrics.csv afresh at each launch: these are the resumed launch's rows, whose
    # steps go on from the 3 samples the first launch finished (batch 2 again, then the last batch of 2).
    assert [int(r["step"]) for r in live] == [6, 8]
    assert [float(r["live/samples_done"]) for r in live] == [6, 8]
    assert float(live[-1]["live/clean_acc"]) == pytest.approx(results["clean"]["acc"])
    assert float(live[-1]["live/robust_acc/worst_case"]) == pytest.approx(results["robust"]["worst_case"]["acc"])


@needs_shared_cifar
def test_wandb_logger_runs_offline_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    from clipure_lit.loggers import wandb_credentials_present

    assert not wandb_credentials_present()
    metrics = eval_script.main(_without_logger(tiny_args(tmp_path, "data.num_samples=8")) + ["logger=wandb"])
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert metrics["clean"]["total"] == 8


def test_online_mode_is_only_used_with_credentials(monkeypatch, tmp_path):
    from clipure_lit.loggers import wandb_credentials_present

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_credentials_present()
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_credentials_present()
    pytest.importorskip("wandb")


@needs_shared_cifar
def test_run_folder_is_self_describing_and_wandb_gets_table_and_plot(tmp_path, monkeypatch):
    import json

    import wandb

    logged = {}
    real_log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, *args, **kwargs):
        logged.update(data)
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    args = _without_logger(tiny_args(tmp_path, "data.num_samples=8")) + ["logger=wandb", "attack.run=[apgd_ce]", "attack.n_iter=2"]
    eval_script.main(args)
    run = tmp_path / "run"
    for name in ("config.yaml", "environment.json", "results.json", "samples.csv", "results.png"):
        assert (run / name).is_file(), name
    env = json.loads((run / "environment.json").read_text())
    assert set(env) >= {"packages", "git_commit", "sample_ids_sha256", "checkpoints"}
    assert isinstance(logged.get("test/samples"), wandb.Table) and isinstance(logged.get("test/results_plot"), wandb.Image)


def test_run_end_maps_how_a_job_ended_to_status_and_exit_code():
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from clipure_lit.errors import ConfigError
    from clipure_lit.loggers import run_end_for

    ends = {name: run_end_for(exc) for name, exc in {
        "returned": None, "sigterm": SIGTERMException(), "ctrl-c": KeyboardInterrupt(), "exit0": SystemExit(0),
        "exit3": SystemExit(3), "user error": ConfigError("bad key"), "bug": ValueError("boom")}.items()}
    assert {k: (e.status, e.exit_code, e.signal) for k, e in ends.items()} == {
        "returned": ("finished", 0, None), "sigterm": ("stopped", 143, "SIGTERM"), "ctrl-c": ("stopped", 130, "SIGINT"),
        "exit0": ("finished", 0, None), "exit3": ("crashed", 3, None), "user error": ("crashed", 2, None),
        "bug": ("crashed", 1, None)}
    assert ends["bug"].error == "ValueError: boom"


def test_wandb_run_id_is_kept_in_the_run_folder_and_a_bad_one_is_refused(tmp_path, monkeypatch):
    from clipure_lit.errors import ConfigError
    from clipure_lit.loggers import WANDB_ID_FILE, wandb_run_id

    for name in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    first = wandb_run_id(tmp_path)
    assert len(first) == 8 and (tmp_path / WANDB_ID_FILE).read_text() == first + "\n"
    assert wandb_run_id(tmp_path) == first  # a later launch of the same run folder: the same W&B run
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    assert wandb_run_id(tmp_path) == "agentrun" and (tmp_path / WANDB_ID_FILE).read_text() == "agentrun\n"
    monkeypatch.delenv("WANDB_SWEEP_ID")
    (tmp_path / WANDB_ID_FILE).write_text("a/b\n")
    with pytest.raises(ConfigError, match=r"wandb_run_id holds 'a/b', which is not a W&B run id.*Fix: delete the file"):
        wandb_run_id(tmp_path)


def test_a_stopped_run_that_slurm_requeues_is_marked_preempting(tmp_path, monkeypatch):
    """Real wandb, offline: the run file records the preempting mark, the exit code and the summary. SLURM does not
    run here; ``scontrol`` is a script printing what ``scontrol show job -o`` prints for a requeueable job."""
    import wandb

    from clipure_lit.loggers import RunEnd, finish_wandb_run, slurm_job_requeues
    from wandb_offline import finished_records, of_type, summary_of

    for name in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "SUBMITIT_EXECUTOR", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not slurm_job_requeues()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text("#!/bin/sh\necho 'JobId=4242 JobName=eval UserId=u(1) Requeue=1 Restarts=0 BatchFlag=1'\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert slurm_job_requeues()
    scontrol.write_text("#!/bin/sh\necho 'JobId=4242 JobName=eval Requeue=0 Restarts=0'\n")
    assert not slurm_job_requeues()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # sweep.py --launcher slurm: submitit requeues the job
    assert slurm_job_requeues()

    run = wandb.init(project="clipure_lit", dir=str(tmp_path), mode="offline", id="slurmstop",
                     settings=wandb.Settings(silent=True))
    finish_wandb_run(run, RunEnd("stopped", 143, signal="SIGTERM", summary={"test/samples_done": 6}))
    [path] = tmp_path.glob("wandb/offline-run-*-slurmstop/run-slurmstop.wandb")
    records = finished_records(path)
    assert len(of_type(records, "preempting")) == 1 and [e.exit_code for e in of_type(records, "exit")] == [143]
    summary = summary_of(records)
    assert {k: summary[k] for k in ("status", "stopped_by", "test/samples_done")} == {
        "status": "stopped", "stopped_by": "SIGTERM", "test/samples_done": 6}
