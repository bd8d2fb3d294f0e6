"""What a submitit job runs for one sweep run: the run's command, as a child process that can always be stopped.

This module is imported inside the job process (it is unpickled there), so it imports only the standard library
at module level.

The command runs in a session (process group) of its own. Whoever stops it signals that whole group, so processes
it starts itself (Lightning's DDP ranks) stop with it. On Linux the child also asks the kernel for SIGTERM when its
parent, the job process, dies (``PR_SET_PDEATHSIG``), so a killed job stops its command too (eval.py finishes the
batch in flight, then exits). The
command's group id is written to ``pid_path`` for the launcher, which stops groups directly when a sweep is stopped.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _prepare_child() -> None:
    """Runs in the child between fork and exec: default Ctrl-C behaviour (the local job controllers ignore SIGINT,
    and ignored signals are inherited), and SIGTERM when the parent dies (Linux)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def group_alive(pgid: int) -> bool:
    """True while any process of process group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace_s: float, reap=None) -> None:
    """SIGTERM to the group, then SIGKILL once ``grace_s`` has passed (at once with ``grace_s=0``); returns when
    no process of the group is left (or 5 s after SIGKILL).

    ``reap()``, given by the parent of the group leader, collects the exited leader (a zombie still counts as a
    member of its group).
    """
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while True:
            if reap is not None:
                reap()
            if not group_alive(pgid):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)


def describe_status(code: int) -> str:
    """``"exit status 2"``, or ``"killed by SIGKILL"`` for a command ended by a signal (a negative status)."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def read_pid(path: str | Path) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class RunCommand:
    """A picklable callable: run ``argv`` in ``cwd`` with output appended to ``log_path``; returns its exit status.

    Args:
        argv: the full command (interpreter, program, arguments).
        cwd: working directory of the command.
        log_path: the run's log (``stdout.log``; task ``k`` > 0 of a multi-task job writes ``stdout.rank<k>.log``).
            Each launch appends a header line (``==== <time> launch: <command>``), so an earlier attempt's output is
            kept, and a closing line when the command has ended (``==== <time> end: exit status 2`` or ``... end:
            killed by SIGKILL``; absent when the job itself was killed first).
        pid_path: where the command's process-group id is written (task ``k`` > 0: ``<pid_path>.rank<k>``).
        env_set / env_unset: changes to the job's environment for the command (e.g. ``CUDA_VISIBLE_DEVICES``).
        grace_s: how long the command may take to stop after SIGTERM before it is killed.
        raise_on_failure: raise ``subprocess.CalledProcessError`` on a non-zero status instead of returning it, so a
            scheduler records the job as failed.
    """

    def __init__(self, argv: list[str], cwd: str, log_path: str, pid_path: str, env_set: dict[str, str] | None = None,
                 env_unset: list[str] | None = None, grace_s: float = 30.0, raise_on_failure: bool = False) -> None:
        self.argv = list(argv)
        self.cwd = str(cwd)
        self.log_path = str(log_path)
        self.pid_path = str(pid_path)
        self.env_set = dict(env_set or {})
        self.env_unset = list(env_unset or [])
        self.grace_s = grace_s
        self.raise_on_failure = raise_on_failure
        self._proc: subprocess.Popen | None = None
        self._status: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_proc": None, "_status": None}

    @staticmethod
    def _task_rank() -> int:
        for name in ("SUBMITIT_LOCAL_GLOBALID", "SLURM_PROCID"):
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
        return 0

    def _paths(self) -> tuple[Path, Path]:
        rank = self._task_rank()
        log, pid = Path(self.log_path), Path(self.pid_path)
        if rank:
            log = log.with_name(f"{log.stem}.rank{rank}{log.suffix}")
            pid = pid.with_name(f"{pid.name}.rank{rank}")
        return log, pid

    def __call__(self) -> int:
        env = {k: v for k, v in os.environ.items() if k not in self.env_unset}
        env.update(self.env_set)
        log_path, pid_path = self._paths()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        pid_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} launch: {shlex.join(self.argv)}\n")
            log.flush()
            self._proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_prepare_child)
            pid_path.write_text(f"{self._proc.pid}\n")
            try:
                code = self._proc.wait()
            finally:
                self.stop()
            if self._status is not None:  # reaped by stop() inside a signal handler
                code = self._status
            log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} end: {describe_status(code)}\n")
        if code and self.raise_on_failure:
            raise subprocess.CalledProcessError(code, self.argv, output=f"see {log_path}")
        return code

    def stop(self) -> None:
        """Stop the command and everything it started (no-op when it has ended)."""
        proc = self._proc
        if proc is None:
            return
        stop_group(proc.pid, self.grace_s, reap=self._reap)

    def _reap(self) -> None:
        """Collect the exited command without blocking. Also works from a signal handler that interrupted
        ``Popen.wait`` (which holds the lock ``Popen.poll`` needs); the status is kept in ``_status``."""
        proc = self._proc
        if proc is None or proc.returncode is not None or self._status is not None:
            return
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == proc.pid:
            self._status = os.waitstatus_to_exitcode(status)


class RequeueableRunCommand(RunCommand):
    """A :class:`RunCommand` that submitit requeues when the scheduler preempts it or its time runs out: the
    command is stopped and the next attempt continues the run (``resume=true``: finished batches are kept)."""

    def checkpoint(self):
        """Called by submitit on preemption/timeout: stop the command, return the resuming resubmission."""
        from submitit.helpers import DelayedSubmission  # the job process already imported submitit

        self.stop()
        argv = [a for a in self.argv if not a.startswith("resume=")] + ["resume=true"]
        again = RequeueableRunCommand(argv, self.cwd, self.log_path, self.pid_path, self.env_set, self.env_unset,
                                      self.grace_s, self.raise_on_failure)
        return DelayedSubmission(again)
