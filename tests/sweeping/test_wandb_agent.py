"""A run launched by a W&B agent reports to its sweep. The agent is simulated offline: the environment it gives the
run (``WANDB_SWEEP_ID``, ``WANDB_RUN_ID``, ``WANDB_SWEEP_PARAM_PATH``, ``WANDB_PROJECT``) and the command a shipped
sweep file expands to; the offline run file is then read back record by record. A sweep run stopped by SIGTERM (a
preemption: W&B requeues it) is marked as preempting; one stopped by Ctrl-C is not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from clipure_lit.sweeping.plan import command_args, expand, load_sweep

from conftest import PROJECT_ROOT, needs_shared_cifar
from wandb_offline import (clean_env, finished_batches, history_of, of_type, run_files, stop_eval, summary_of,
                           wandb_records)

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

TINY_ATTACK = ["experiment=tiny", "data.num_samples=4", "data.batch_size=2", "trainer.num_threads=1",
               "trainer.enable_progress_bar=false", "attack.n_iter=1", "attack.entries.aa_clipure.n_restarts=1",
               "attack.entries.aa_clipure.n_target_classes=2", "attack.checks=false"]


@needs_shared_cifar
@pytest.mark.slow  # the live-series test below keeps an agent run in the default tier
@pytest.mark.timeout(300)
def test_agent_launched_run_records_sweep_id_swept_config_and_the_sweep_metric(tmp_path):
    spec = load_sweep(PROJECT_ROOT / "sweeps" / "cos_step_size_x_steps.yaml")
    params = expand(spec)[1]
    params_file = tmp_path / "sweep-abc123" / "config-run7.yaml"  # what the agent writes for each run
    params_file.parent.mkdir()
    params_file.write_text("wandb_version: 1\n\n" + yaml.safe_dump({k: {"value": v} for k, v in params.items()}))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "abc123", "WANDB_RUN_ID": "run7",
           "WANDB_SWEEP_PARAM_PATH": str(params_file), "WANDB_PROJECT": "clipure_lit", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    # The agent runs the sweep's command as is: no logger=wandb in it (eval.py's default logger is CSV).
    argv = command_args(spec, params, python=sys.executable) + TINY_ATTACK + [
        f"run_dir={tmp_path / 'run'}", f"prompts.cache_dir={tmp_path / 'text'}"]
    done = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Launched by a W&B agent (sweep abc123, run run7)" in done.stderr

    files = list((tmp_path / "run" / "wandb").glob("offline-run-*-run7/run-run7.wandb"))
    assert len(files) == 1
    records = list(wandb_records(files[0]))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.sweep_id == "abc123" and run.run_id == "run7"
    assert (tmp_path / "run" / "wandb_run_id").read_text().strip() == "run7"  # a later resume=true continues it
    assert [e.exit_code for e in of_type(records, "exit")] == [0] and of_type(records, "preempting") == []
    assert summary_of(records)["status"] == "finished"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert {k: config[k] for k in params} == params  # the swept parameters, under the sweep's own keys
    summary = {u.key or "/".join(u.nested_key): json.loads(u.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    metric = spec.metric["name"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary[metric] == pytest.approx(results["robust"]["worst_case"]["acc"])


def live_rows(records: list) -> list[dict]:
    """The history rows that carry the live numbers (logged after every batch)."""
    return [row for row in history_of(records) if "live/samples_done" in row]


@needs_shared_cifar
@pytest.mark.timeout(300)
def test_agent_run_logs_the_live_series_that_early_terminate_acts_on_and_the_final_summary(tmp_path):
    """The shipped early-stopping sweep's metric is logged after every batch with the samples done as its step, so
    W&B's hyperband has a history to compare; it ends equal to the final number, and the final summary is kept."""
    spec = load_sweep(PROJECT_ROOT / "sweeps" / "cos_step_size_early_stop.yaml")
    assert spec.raw["early_terminate"]["type"] == "hyperband"
    params = expand(spec, count=1)[0]
    env = clean_env(WANDB_SWEEP_ID="es123", WANDB_RUN_ID="run3", WANDB_PROJECT="clipure_lit")
    run_dir = tmp_path / "run"
    argv = command_args(spec, params, python=sys.executable) + TINY_ATTACK + [
        "data.num_samples=6", f"run_dir={run_dir}", f"prompts.cache_dir={tmp_path / 'text'}"]
    done = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = run_files(run_dir)
    records = list(wandb_records(path))
    rows = live_rows(records)
    metric = spec.metric["name"]
    assert metric == "live/robust_acc/worst_case"
    assert [r["live/samples_done"] for r in rows] == [2, 4, 6]  # three batches of 2
    assert [r["trainer/global_step"] for r in rows] == [2, 4, 6]  # W&B's x-axis for every logged metric
    assert all(0.0 <= r[metric] <= r["live/robust_acc/aa_clipure"] <= 1.0 for r in rows)
    results = json.loads((run_dir / "results.json").read_text())
    assert rows[-1][metric] == pytest.approx(results["robust"]["worst_case"]["acc"])
    assert rows[-1]["live/clean_acc"] == pytest.approx(results["clean"]["acc"])
    summary = summary_of(records)
    assert summary["test/robust_acc/worst_case"] == pytest.approx(results["robust"]["worst_case"]["acc"])
    assert summary[metric] == pytest.approx(results["robust"]["worst_case"]["acc"])
    assert summary["test/clean_acc"] == pytest.approx(results["clean"]["acc"]) and summary["status"] == "finished"


@needs_shared_cifar
@pytest.mark.slow  # two launches stopped mid-run by signals
@pytest.mark.timeout(600)
def test_agent_run_stopped_by_sigterm_is_marked_preempting_and_one_stopped_by_ctrl_c_is_not(tmp_path):
    """SIGTERM to a sweep's run is how a scheduler preempts it (W&B requeues a preempting run); Ctrl-C, or a stop
    from W&B's web page (a KeyboardInterrupt in the run), is a user's stop: exit 130, failed, not requeued."""
    run_dir = tmp_path / "run"
    env = clean_env(WANDB_SWEEP_ID="abc123", WANDB_RUN_ID="run8", WANDB_PROJECT="clipure_lit")
    args = ["experiment=tiny", f"run_dir={run_dir}", f"prompts.cache_dir={tmp_path / 'text'}", "data.num_samples=60",
            "data.batch_size=2", "attack.run=[apgd_ce]", "attack.n_iter=40", "attack.eps=1", "attack.checks=false",
            "trainer.num_threads=1", "trainer.enable_progress_bar=false"]
    assert stop_eval(args, run_dir, signal.SIGINT, after=1, env=env, log=tmp_path / "first.log") == 130
    assert stop_eval(args + ["resume=true"], run_dir, signal.SIGTERM, after=len(finished_batches(run_dir)) + 1,
                     env=env, log=tmp_path / "second.log") == 143
    first, second = run_files(run_dir)
    assert first.name == second.name == "run-run8.wandb"
    records = [list(wandb_records(f)) for f in (first, second)]
    assert [[e.exit_code for e in of_type(r, "exit")] for r in records] == [[130], [143]]
    assert [len(of_type(r, "preempting")) for r in records] == [0, 1]
    assert [summary_of(r)["stopped_by"] for r in records] == ["SIGINT", "SIGTERM"]
    assert summary_of(records[1])["test/samples_done"] == len({i for b in finished_batches(run_dir)
                                                                 for i in b["columns"]["label"]["ids"]})
    log = (tmp_path / "first.log").read_text()
    assert "Stopped by SIGINT (Ctrl-C)" in log and "Traceback" not in log
    # The live series continues across the stop: the resumed launch counts the samples finished before it.
    before, after = ([r["live/samples_done"] for r in live_rows(r)] for r in records)
    steps = before + after
    assert before and after and all(a < b for a, b in zip(steps, steps[1:]))  # W&B refuses a decreasing step


@needs_shared_cifar
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_shard_sweep_run_by_agents_one_shard_preempted_merges_into_the_one_process_run(tmp_path):
    """The shipped shard sweep under simulated agents: each run evaluates one shard in its agent folder
    (``<output_root>/wandb/<sweep id>/<run id>``); one is preempted after its first batch and relaunched with the same
    run id (W&B's requeue), continuing its folder; ``eval.py ... --shards 4 --merge --from`` that sweep's folder then
    equals the one-process run byte for byte."""
    spec = load_sweep(PROJECT_ROOT / "sweeps" / "shards.yaml")
    plan = expand(spec)
    assert [p["data.shard"] for p in plan] == [0, 1, 2, 3] and {p["data.num_shards"] for p in plan} == {4}
    # 12 batches of 2, 3 per shard. A 20-step DiffPure purifies every image (the tiny CLIP's clean accuracy is near 0,
    # so an attack, which skips misclassified images, would not keep a batch busy): about half a second per batch, so
    # a stop sent once the first batch is recorded lands in the second and leaves the third undone. Clean accuracy
    # only: shards with attacks are merged in tests/sweeping/test_shard_launch.py.
    args = ["experiment=tiny", "purifier=diffpure_tiny", "purifier.diffpure.num_steps=20", "data.num_samples=24",
            "data.batch_size=2", "trainer.num_threads=1", "trainer.enable_progress_bar=false", "attack.run=[]",
            f"output_root={tmp_path / 'runs'}", f"prompts.cache_dir={tmp_path / 'text'}"]
    sweep_dir = tmp_path / "runs" / "wandb" / "sh123"
    for k, params in enumerate(plan):
        env = clean_env(WANDB_SWEEP_ID="sh123", WANDB_RUN_ID=f"r{k}x", WANDB_PROJECT="clipure_lit")
        argv = command_args(spec, params, python=sys.executable) + args  # as the agent expands the command
        assert argv[1:3] == ["eval.py", "suite=none"]
        if k == 1:
            assert stop_eval(argv[2:], sweep_dir / "r1x", signal.SIGTERM, after=1, env=env,
                             log=tmp_path / "preempted.log") == 143
            assert len(finished_batches(sweep_dir / "r1x")) == 2
        done = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)
        assert done.returncode == 0, done.stderr[-3000:]
        if k == 1:
            assert "continuing the run in" in done.stderr  # the requeued run resumed, not started over
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["r0x", "r1x", "r2x", "r3x"]

    env = clean_env()
    one = subprocess.run([sys.executable, "eval.py", "suite=none", *args, f"run_dir={tmp_path / 'one'}"],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert one.returncode == 0, one.stderr[-3000:]
    merge = ["eval.py", "suite=none", *args, f"run_dir={tmp_path / 'merged'}", "--shards", "4"]
    status = subprocess.run([sys.executable, *merge, "--status", "--from", str(sweep_dir)], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "shards: 4: 4 done (0, 1, 2, 3)" in status.stdout, status.stderr[-3000:]
    merged = subprocess.run([sys.executable, *merge, "--merge", "--from", str(sweep_dir)], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=280)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (tmp_path / "merged" / "samples.csv").read_bytes() == (tmp_path / "one" / "samples.csv").read_bytes()
    results = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert results["shards"]["folders"] == [str(sweep_dir / f"r{k}x") for k in range(4)]
    expected = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["clean"] == expected["clean"] and results["robust"] == expected["robust"]
