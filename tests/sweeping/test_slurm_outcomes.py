"""What a second ``sweep.py`` call makes of earlier SLURM submissions, with fake ``sbatch``/``sacct`` on PATH (the
rest is real: submitit's SLURM executor writes and submits its scripts, every run's config is composed): every job
state is classified and reported with its reason, state.json keeps each attempt, interrupted runs are resubmitted,
failed ones only with --retry-failed, out-of-memory ones only with more memory, an unreadable sacct is one
warning, and a run whose command does not compose is never submitted."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import stat

import pytest

import sweep as sweep_script

from conftest import tiny_sweep_yaml

HEADER = "JobID|State|ExitCode|DerivedExitCode|Reason|Elapsed|MaxRSS|ReqMem"

# Every job state SLURM reports, and what the launcher must make of it.
EXPECTED = {
    "PENDING": "active", "CONFIGURING": "active", "RUNNING": "active", "COMPLETING": "active", "STAGE_OUT": "active",
    "SIGNALING": "active", "SUSPENDED": "active", "STOPPED": "active", "RESIZING": "active", "REQUEUED": "active",
    "REQUEUE_FED": "active", "REQUEUE_HOLD": "active", "RESV_DEL_HOLD": "active",
    "COMPLETED": "failed",  # COMPLETED, yet its results.json is missing: a failure of the run
    "FAILED": "failed", "SPECIAL_EXIT": "failed",
    "OUT_OF_MEMORY": "failed-needs-change",
    "TIMEOUT": "interrupted", "PREEMPTED": "interrupted", "CANCELLED": "interrupted", "CANCELLED by 1234": "interrupted",
    "NODE_FAIL": "interrupted", "BOOT_FAIL": "interrupted", "DEADLINE": "interrupted",
    "REVOKED": "unknown",
}
EXIT_CODES = {"FAILED": "1:0", "SPECIAL_EXIT": "1:0", "OUT_OF_MEMORY": "0:125", "CANCELLED": "0:15", "TIMEOUT": "0:15"}


class FakeSlurm:
    """``sbatch`` (job ids 4242, 4243, ...; records each call and its script), ``sacct`` (prints the table the test
    sets, or fails; records each call), and ``srun``/``scontrol``/``squeue`` that only have to exist."""

    def __init__(self, tmp_path, monkeypatch, with_sacct: bool = True):
        self.dir = tmp_path / "bin"
        self.dir.mkdir()
        self.record, self.calls, self.table = tmp_path / "sbatch.txt", tmp_path / "sacct_calls.txt", tmp_path / "sacct.txt"
        self.fail = tmp_path / "sacct_fails"
        counter = tmp_path / "job_counter"
        tools = {"sbatch": f'#!/bin/sh\nn=$(cat "{counter}" 2>/dev/null || echo 4241)\nn=$((n+1))\necho $n > "{counter}"\n'
                           f'{{ echo "ARGS: $*"; cat "$1"; }} >> "{self.record}"\necho "Submitted batch job $n"\n',
                 "srun": "#!/bin/sh\nexit 1\n", "scontrol": "#!/bin/sh\nexit 1\n", "squeue": "#!/bin/sh\nexit 1\n"}
        if with_sacct:
            tools["sacct"] = (f'#!/bin/sh\necho "$*" >> "{self.calls}"\nif [ -f "{self.fail}" ]; then\n'
                              '  echo "sacct: error: Problem talking to the database: Connection refused" >&2\n  exit 1\nfi\n'
                              f'cat "{self.table}"\n')
        for name, text in tools.items():
            (self.dir / name).write_text(text)
            (self.dir / name).chmod((self.dir / name).stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{self.dir}{os.pathsep}{os.environ['PATH']}")
        if not with_sacct and shutil.which("sacct"):
            pytest.skip("a real sacct is on PATH")

    def submissions(self) -> int:
        return self.record.read_text().count("ARGS: ") if self.record.is_file() else 0

    def scripts(self) -> list[str]:
        return self.record.read_text().split("ARGS: ")[1:] if self.record.is_file() else []

    def sacct_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.is_file() else []

    def set_sacct(self, *rows: str) -> None:
        self.table.write_text("\n".join([HEADER, *rows]) + "\n")


def task(job_id: str, state: str, exit_code: str | None = None, reason: str = "None", elapsed: str = "00:03:10",
         max_rss: str = "16252928K", req_mem: str = "16G") -> list[str]:
    """sacct's rows of one finished array task: the task's own, its batch step and its srun step (with MaxRSS)."""
    code = exit_code or EXIT_CODES.get(state.split()[0], "0:0")
    step = state.split()[0]
    return [f"{job_id}|{state}|{code}|0:0|{reason}|{elapsed}||{req_mem}",
            f"{job_id}.batch|{step}|{code}|||{elapsed}|10452K|", f"{job_id}.0|{step}|{code}|||{elapsed}|{max_rss}|"]


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    return FakeSlurm(tmp_path, monkeypatch)


def _sweep(tmp_path, seeds: int) -> list[str]:
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_sweep_yaml(**{"clip.init_seed": list(range(seeds))}))
    return [str(path), "--out", str(tmp_path / "out"), "--launcher", "slurm", "--mem-gb", "16", "attack.run=[apgd_ce]"]


def _main(argv: list[str]) -> int:
    try:
        sweep_script.main(argv)
    except SystemExit as exc:
        return int(exc.code)
    return 0


def _state(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "state.json").read_text())


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """A two-run sweep submitted once (array 4242: run-0000 is task 4242_0, run-0001 is 4242_1); each case of the
    parametrised test below reruns a copy of it."""
    root = tmp_path_factory.mktemp("submitted")
    with pytest.MonkeyPatch.context() as patch:
        slurm = FakeSlurm(root, patch)
        assert _main(_sweep(root, 2)) == 0 and slurm.submissions() == 1
    return root


def _table_row(caplog, run: str) -> str:
    table = next(m for m in caplog.messages if m.startswith("earlier attempts of the selected runs"))
    return next(line.strip() for line in table.splitlines() if line.strip().startswith(run))


@pytest.mark.parametrize("slurm_state", list(EXPECTED))
def test_a_rerun_reports_and_acts_on_every_slurm_job_state(slurm_state, submitted, tmp_path, slurm, caplog, capsys):
    argv = _sweep(tmp_path, 2)
    shutil.copytree(submitted / "out", tmp_path / "out")
    (tmp_path / "job_counter").write_text("4242\n")  # the next submission is job 4243
    slurm.set_sacct(*task("4242_0", slurm_state), "4242_1|PENDING|0:0|0:0|Priority|00:00:00||16G")
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = _main(argv)
    printed = capsys.readouterr().out
    expected = EXPECTED[slurm_state]
    entry = _state(tmp_path)["run-0000"]
    first = entry["attempts"][0]
    row = _table_row(caplog, "run-0000")
    assert slurm.sacct_calls() == ["--parsable2 --format=JobID,State,ExitCode,DerivedExitCode,Reason,Elapsed,End,"
                                   "MaxRSS,ReqMem --jobs=4242"]  # one call for the whole sweep
    assert first["job_id"] == "4242_0" and first["mem_gb"] == 16 and first["launcher"] == "slurm"
    assert "left alone (PENDING)" in _table_row(caplog, "run-0001")
    summary = next(m for m in caplog.messages if m.startswith("sweep tiny_sweep:"))
    assert ", 0 new" in summary  # an earlier run is never counted as new
    if expected == "active":
        assert code == 0 and slurm.submissions() == 0
        assert "outcome" not in first and entry["status"] == "submitted"
        assert f"left alone ({slurm_state})" in row
    elif expected == "unknown":
        assert code == 0 and slurm.submissions() == 0
        assert "left alone (--resubmit)" in row and entry["status"] == "submitted"
    elif expected == "interrupted":  # resumable and not the run's fault: resubmitted without being asked
        assert code == 0 and slurm.submissions() == 1
        assert first["state"] == slurm_state and first["outcome"] == "interrupted" and first["elapsed"] == "00:03:10"
        assert [a["job_id"] for a in entry["attempts"]] == ["4242_0", "4243"] and entry["status"] == "submitted"
        assert f"{slurm_state}  interrupted  start" in row and "1 interrupted (to resume)" in summary
        assert "submitted 1 run(s) as SLURM job 4243" in printed
    else:  # failed: reported with its reason, kept, not resubmitted, exit status 1
        assert code == 1 and slurm.submissions() == 0
        assert first["state"] == slurm_state and first["outcome"] == expected and entry["status"] == "failed"
        assert first["exit_code"] == EXIT_CODES.get(slurm_state, "0:0")
        assert first["reason"] == entry["reason"] and first["reason"].startswith(slurm_state)
        assert "left failed (--retry-failed" in row and "1 failed (not retried: --retry-failed)" in summary
        assert f"failed: run-0000 ({slurm_state}" in printed and "--retry-failed" in printed
        if expected == "failed-needs-change":
            assert first["max_rss"] == "16252928K" and first["req_mem"] == "16G"
            assert "MaxRSS 15.5 GB of ReqMem 16G" in first["reason"] and "--mem-gb 24" in printed


def test_a_rerun_after_failures_resumes_the_interrupted_runs_keeps_every_attempt_and_retries_only_when_asked(
        tmp_path, slurm, caplog, capsys):
    argv = _sweep(tmp_path, 4)
    assert _main(argv) == 0
    out = tmp_path / "out"
    (out / "run-0000").mkdir()
    (out / "run-0000" / "stdout.log").write_text(  # what the job of run-0000 left in its log
        "==== 2025-01-01 10:00:00 launch: python eval.py ...\nsetting up the data\nerror: data.root='/x' does not "
        "exist. Fix: point data.root at the dataset.\n==== 2025-01-01 10:00:14 end: exit status 2\n")
    slurm.set_sacct(*task("4242_0", "FAILED", elapsed="00:00:14"), *task("4242_1", "TIMEOUT"),
                    *task("4242_2", "CANCELLED by 1234"), *task("4242_3", "OUT_OF_MEMORY"))
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        assert _main(argv) == 1  # failed runs are left failed: exit status 1
    printed = capsys.readouterr().out
    assert slurm.submissions() == 2 and "--array=0-1%2" in slurm.scripts()[1]  # the two interrupted runs, one array
    summary = next(m for m in caplog.messages if m.startswith("sweep tiny_sweep:"))
    assert summary == ("sweep tiny_sweep: 4 planned, 4 selected: 0 finished, 0 new, 2 interrupted (to resume), "
                       "2 failed (not retried: --retry-failed)")
    state = _state(tmp_path)
    failed = state["run-0000"]["attempts"][0]
    assert failed["reason"] == ("FAILED, ExitCode 1:0, after 00:00:14; the run's command: exit status 2: error: "
                                "data.root='/x' does not exist. Fix: point data.root at the dataset.")
    assert failed["log_tail"][-1].startswith("error: data.root=") and failed["slurm_reason"] == "None"
    assert _table_row(caplog, "run-0000").startswith("run-0000  1        4242_0  FAILED")
    assert state["run-0002"]["attempts"][0]["state"] == "CANCELLED by 1234"
    assert [a["job_id"] for a in state["run-0001"]["attempts"]] == ["4242_1", "4243_0"]
    assert state["run-0003"]["attempts"][0]["outcome"] == "failed-needs-change"
    assert "failed: run-0000 (FAILED, ExitCode 1:0" in printed and "failed: run-0003 (OUT_OF_MEMORY" in printed
    assert "out of memory: run-0003 (with 16 GB)" in printed
    assert "2 failed run(s) were not launched again; once the cause is fixed: python sweep.py" in printed
    hint = next(line for line in printed.splitlines() if "were not launched again" in line)
    assert hint.endswith("--retry-failed --mem-gb 24") and hint.count("--mem-gb") == 1  # the old value is dropped

    # The same again: nothing changed, nothing resubmitted, nothing lost.
    slurm.set_sacct(*task("4242_0", "FAILED"), *task("4242_3", "OUT_OF_MEMORY"), "4243_[0-1]|PENDING|0:0|0:0|Priority|"
                    "00:00:00||16G")
    assert _main(argv) == 1 and slurm.submissions() == 2
    assert _state(tmp_path)["run-0000"]["attempts"] == state["run-0000"]["attempts"]

    # --retry-failed with the memory that ran out: refused (exit 2), naming the run, its memory and the fix.
    capsys.readouterr()
    assert _main([*argv, "--retry-failed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 run(s) ran out of memory") and "run-0003 (job 4242_3: 16 GB)" in err
    assert "Fix: pass --mem-gb 24" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert slurm.submissions() == 2  # nothing submitted

    # With more memory both failed runs go again, each keeping its first attempt.
    more = [a if a != "16" else "32" for a in argv]
    assert _main([*more, "--retry-failed"]) == 0 and slurm.submissions() == 3
    assert "#SBATCH --mem=32GB" in slurm.scripts()[2]
    state = _state(tmp_path)
    assert [(a["job_id"], a["mem_gb"]) for a in state["run-0003"]["attempts"]] == [("4242_3", 16), ("4244_1", 32)]
    assert [a.get("outcome") for a in state["run-0000"]["attempts"]] == ["failed", None]
    assert state["run-0000"]["launches"] == 2 and state["run-0000"]["status"] == "submitted"


@pytest.mark.parametrize("sacct", ["missing", "failing"])
def test_an_unreadable_sacct_is_one_warning_and_the_states_come_from_submitit(sacct, tmp_path, monkeypatch, caplog,
                                                                              capsys):
    slurm = FakeSlurm(tmp_path, monkeypatch, with_sacct=sacct == "failing")
    slurm.fail.touch()
    argv = _sweep(tmp_path, 3)
    assert _main(argv) == 0
    folder = tmp_path / "out" / ".submitit"
    for job_id, text in (("4242_1", "subprocess.CalledProcessError: Command '['python', 'eval.py']' returned non-zero "
                                    "exit status 2."),
                         ("4242_2", "subprocess.CalledProcessError: Command '['python', 'eval.py']' died with "
                                    "<Signals.SIGKILL: 9>.")):
        (folder / f"{job_id}_0_result.pkl").write_bytes(pickle.dumps(("error", f"Traceback ...\n{text}\n")))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _main(argv) == 1  # run-0001 failed
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot read the SLURM job states of this sweep" in warnings[0].getMessage()
    assert ("sacct is not on PATH" if sacct == "missing" else "exited with status 1") in warnings[0].getMessage()
    assert len(slurm.sacct_calls()) == (1 if sacct == "failing" else 0)
    state = _state(tmp_path)
    assert state["run-0001"]["attempts"][0]["reason"] == "submitit's result file: exit status 2"
    assert state["run-0002"]["attempts"][0]["outcome"] == "interrupted"  # killed: resubmitted
    assert state["run-0002"]["job_id"] == "4243" and slurm.submissions() == 2
    assert state["run-0000"]["status"] == "submitted" and "left alone (--resubmit)" in _table_row(caplog, "run-0000")

    # --resubmit: the run whose state is unknown goes again; its unknown attempt is kept.
    assert _main([*argv, "--resubmit"]) == 1 and slurm.submissions() == 3
    attempts = _state(tmp_path)["run-0000"]["attempts"]
    assert [a.get("outcome") for a in attempts] == ["unknown", None] and attempts[0]["state"] == "UNKNOWN"


def test_nothing_is_submitted_when_a_run_does_not_compose(tmp_path, slurm, capsys):
    argv = _sweep(tmp_path, 2)
    assert _main([*argv, "data=image_folder", "data.root=/nonexistent/images"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "/nonexistent/images" in err and "Traceback" not in err
    assert slurm.submissions() == 0 and not (tmp_path / "out" / "state.json").exists()


def test_an_array_refused_by_sbatch_is_one_error_and_nothing_is_recorded(tmp_path, slurm, capsys):
    (slurm.dir / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: nope" >&2\nexit 1\n')
    argv = _sweep(tmp_path, 2)
    assert _main([*argv, "--partition", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sbatch refused the job array of 2 run(s)") and "invalid partition" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "state.json").exists()


def test_sacct_rows_of_pending_arrays_and_steps_are_read_per_task():
    from clipure_lit.sweeping.outcomes import memory_gb, parse_sacct

    info = parse_sacct("\n".join([HEADER, "4300_[2-4,7%2]|PENDING|0:0|0:0|Priority|00:00:00||8G",
                                  *task("4300_0", "OUT_OF_MEMORY", max_rss="8.2G", req_mem="8Gn"),
                                  "4300_1|CANCELLED by 0|0:15|0:0|None|00:10:00||8G"]))
    assert sorted(info) == ["4300_0", "4300_1", "4300_2", "4300_3", "4300_4", "4300_7"]
    assert info["4300_3"]["state"] == "PENDING" and info["4300_3"]["slurm_reason"] == "Priority"
    assert info["4300_0"]["max_rss"] == "8.2G" and memory_gb(info["4300_0"]["req_mem"]) == 8.0
    assert info["4300_1"]["state"] == "CANCELLED by 0" and "max_rss" not in info["4300_1"]
    assert memory_gb("16000M") == pytest.approx(15.625) and memory_gb("4000Mc") is None


def test_a_sweep_folder_written_before_attempts_were_kept_is_read_and_keeps_its_history(submitted, tmp_path, slurm,
                                                                                       capsys):
    argv = _sweep(tmp_path, 2)
    shutil.copytree(submitted / "out", tmp_path / "out")
    (tmp_path / "job_counter").write_text("4242\n")
    state = _state(tmp_path)
    for entry in state.values():  # the entries an earlier version wrote: no attempts
        del entry["attempts"]
    (tmp_path / "out" / "state.json").write_text(json.dumps(state))
    slurm.set_sacct(*task("4242_0", "NODE_FAIL"), *task("4242_1", "FAILED"))
    assert _main(argv) == 1 and slurm.submissions() == 1  # run-0000 resubmitted, run-0001 failed and kept
    state = _state(tmp_path)
    assert [(a["attempt"], a["job_id"], a.get("state")) for a in state["run-0000"]["attempts"]] == [
        (1, "4242_0", "NODE_FAIL"), (2, "4243", None)]
    assert state["run-0001"]["attempts"][0]["state"] == "FAILED" and state["run-0001"]["status"] == "failed"
    assert "failed: run-0001 (FAILED, ExitCode 1:0" in capsys.readouterr().out


def test_sacct_end_time_is_the_attempts_end_and_a_machine_without_slurm_is_one_error(tmp_path, monkeypatch, capsys):
    from clipure_lit.sweeping.outcomes import parse_sacct

    info = parse_sacct("JobID|State|End\n4300_0|FAILED|2025-01-01T10:00:14\n4300_1|PENDING|Unknown\n")
    assert info["4300_0"]["end"] == "2025-01-01T10:00:14" and "end" not in info["4300_1"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    assert _main(_sweep(tmp_path, 2)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --launcher slurm submits with sbatch") and "--launcher local" in err
    assert "Traceback" not in err
