"""A local sweep for real (submitit's local executor, eval.py subprocesses): a run killed mid-way is reported as
interrupted with its log; the rerun resumes it; SIGTERM to the launcher stops it with no process left behind; the
whole grid then finishes, writes offline W&B runs that the printed sync command finds, and reports; a rerun with
another extra argument reruns the runs whose resolved config changed. A run that fails is reported with its
reason, kept in state.json, and launched again only with --retry-failed."""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import report as report_script
import sweep as sweep_script
from clipure_lit.sweeping.job import read_pid

from conftest import PROJECT_ROOT, needs_shared_cifar, tiny_sweep_yaml

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

SWEEP = tiny_sweep_yaml(**{"clip.init_seed": [0, 1]})
# 24 batches of a 40-iteration attack: long enough to be stopped in the middle, even on an idle machine (at 5
# iterations a resumed run finished its last 16 batches before the launcher's SIGTERM reached it).
RUN_ARGS = ["data.num_samples=48", "data.batch_size=2", "attack.run=[apgd_ce]", "attack.n_iter=40", "attack.eps=1",
            "trainer.num_threads=1", "trainer.enable_progress_bar=false"]


def _env() -> dict:
    """The launcher's environment: this checkout first on the path (subprocesses must import it, not an install)."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "sweep.py", *argv], cwd=PROJECT_ROOT, env=_env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_lines(path: Path, lines: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= lines:
            return
        assert proc.poll() is None, f"the launcher ended (status {proc.returncode}) before {path} had {lines} lines"
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{path} did not reach {lines} lines in {timeout} s")


def _processes_mentioning(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if (entry / "stat").read_text().split(") ")[-1].startswith("Z"):
                continue  # a zombie waiting for its parent to collect it computes nothing
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow  # about a minute: the default suite stays under 5 minutes; `make test-slow` (and CI) runs it
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find leftover processes")
@pytest.mark.timeout(600)
@needs_shared_cifar
def test_local_sweep_kill_sigterm_resume_report_and_staleness(tmp_path, capsys):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(SWEEP)
    out = tmp_path / "out"
    common = [str(sweep_file), "--out", str(out), f"prompts.cache_dir={tmp_path / 'text'}", *RUN_ARGS]
    progress = out / "run-0000" / "progress" / "rank0.jsonl"

    # 1. The run is killed outright (SIGKILL: the kernel's out-of-memory killer, a lost node): the launcher reports
    #    it as interrupted (not the run's own failure: the next call resumes it), with its log file, and exits 1.
    proc = _start([*common, "--runs", "0", "--wandb", "off"], tmp_path / "first.log")
    _wait_for_lines(progress, 1, proc)
    os.kill(read_pid(out / ".submitit" / "pids" / "run-0000"), signal.SIGKILL)
    assert proc.wait(timeout=120) == 1
    first = (tmp_path / "first.log").read_text()
    assert "interrupted: run-0000 (killed by SIGKILL" in first and f"log: {out / 'run-0000' / 'stdout.log'}" in first
    attempt = json.loads((out / "state.json").read_text())["run-0000"]["attempts"][0]
    assert (attempt["state"], attempt["outcome"], attempt["exit_code"], attempt["signal"]) == (
        "SIGNALED", "interrupted", -9, "SIGKILL")

    # 2. The rerun resumes it (resume=true); SIGTERM to the launcher (what a scheduler sends) stops the run after its
    #    batch, records it as interrupted, prints how to resume, exits 143 and leaves no process behind.
    done = len(progress.read_text().splitlines())
    proc = _start([*common, "--runs", "0", "--wandb", "off"], tmp_path / "second.log")
    _wait_for_lines(progress, done + 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert _processes_mentioning(str(tmp_path)) == []
    second = (tmp_path / "second.log").read_text()
    assert "interrupted: run-0000" in second and "resume (finished batches are kept): python sweep.py" in second
    assert "Traceback" not in second
    state = json.loads((out / "state.json").read_text())
    assert state["run-0000"]["status"] == "interrupted" and state["run-0000"]["launches"] == 2
    assert [a["state"] for a in state["run-0000"]["attempts"]] == ["SIGNALED", "STOPPED"]
    assert [a["action"] for a in state["run-0000"]["attempts"]] == ["run", "resume"]
    run_log = (out / "run-0000" / "stdout.log").read_text()
    launches = [line for line in run_log.splitlines() if line.startswith("==== ") and " launch: " in line]
    assert len(launches) == 2 and launches[1].endswith("resume=true") and "resuming:" in run_log  # appended, not overwritten

    # 3. The whole grid, two at a time: run-0000 resumes, run-0001 starts; offline W&B runs by default.
    capsys.readouterr()
    state = sweep_script.main([*common, "--parallel", "2"])
    assert {k: v["status"] for k, v in state.items()} == {"run-0000": "finished", "run-0001": "finished"}
    ids = [i for line in progress.read_text().splitlines() if line.startswith("{") and line.endswith("}")
           for i in json.loads(line)["columns"]["label"]["ids"]]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 48  # every batch evaluated once over three launches
    assert json.loads((out / "run-0000" / "results.json").read_text())["num_samples"] == 48
    printed = capsys.readouterr().out
    sync = next(line for line in printed.splitlines() if "wandb sync " in line).split("wandb sync ", 1)[1]
    assert len(glob.glob(sync)) == 2  # the printed command matches the offline runs that exist

    # 4. Nothing left to do; another extra argument changes the resolved config of every run: rerun (dry run here).
    stamp = (out / "run-0000" / "results.json").stat().st_mtime_ns
    assert sweep_script.main(common) == state
    assert (out / "run-0000" / "results.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    sweep_script.main([*common, "data.num_samples=40", "--dry-run"])
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["[rerun]", "[rerun]"]

    summary = report_script.main([str(out)])
    assert summary["runs"] == 2 and summary["varying_keys"] == ["clip.init_seed"]
    assert len(list(csv.DictReader(open(out / "report.csv")))) == 2


@pytest.mark.slow  # two eval.py launches that fail when loading the model (about 20 s each)
@pytest.mark.timeout(600)
@needs_shared_cifar
def test_a_failed_local_run_is_reported_kept_and_launched_again_only_with_retry_failed(tmp_path, capsys, caplog):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(tiny_sweep_yaml(**{"clip.init_seed": [0]}))
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")  # composes (the file exists); eval.py refuses it when it loads the model
    out = tmp_path / "out"
    common = [str(sweep_file), "--out", str(out), "--wandb", "off", f"prompts.cache_dir={tmp_path / 'text'}",
              "data.num_samples=4", "attack.run=[apgd_ce]", f"clip.pretrained={garbage}"]

    def call(*extra: str) -> int:
        with pytest.raises(SystemExit) as info:
            sweep_script.main([*common, *extra])
        return info.value.code

    # 1. It fails (eval.py's exit status 2): reported with eval.py's own error line, recorded with its log tail.
    assert call() == 1
    printed = capsys.readouterr().out
    assert f"failed: run-0000 (exit status 2: error: clip.pretrained='{garbage}' could not be loaded" in printed
    attempt = json.loads((out / "state.json").read_text())["run-0000"]["attempts"][0]
    assert (attempt["state"], attempt["outcome"], attempt["exit_code"]) == ("FAILED", "failed", 2)
    assert attempt["log_tail"][-1].startswith("error: clip.pretrained=")
    assert (out / "run-0000" / "stdout.log").read_text().splitlines()[-1].endswith(" end: exit status 2")

    # 2. Again: not launched, listed with its reason, exit status 1 (never "new").
    log_size = (out / "run-0000" / "stdout.log").stat().st_size
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert call() == 1
    assert (out / "run-0000" / "stdout.log").stat().st_size == log_size
    summary = next(m for m in caplog.messages if m.startswith("sweep tiny_sweep:"))
    assert summary.endswith("0 finished, 0 new, 1 failed (not retried: --retry-failed)")
    table = next(m for m in caplog.messages if m.startswith("earlier attempts"))
    row = next(line.split() for line in table.splitlines() if line.strip().startswith("run-0000"))
    assert row[:2] == ["run-0000", "1"] and row[3:9] == ["FAILED", "failed", "left", "failed", "(--retry-failed)", "exit"]
    hint = next(line for line in capsys.readouterr().out.splitlines() if "were not launched again" in line)
    assert hint.startswith("1 failed run(s)") and hint.endswith(" --retry-failed") and "python sweep.py" in hint

    # 3. --retry-failed launches it again (it fails again): both attempts are kept.
    assert call("--retry-failed") == 1
    state = json.loads((out / "state.json").read_text())["run-0000"]
    assert [(a["attempt"], a["state"]) for a in state["attempts"]] == [(1, "FAILED"), (2, "FAILED")]
    assert state["launches"] == 2 and state["reason"].startswith("exit status 2: error: clip.pretrained=")
