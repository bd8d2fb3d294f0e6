"""One ``eval.py`` run in a process of its own, as a user starts it: wall clock, peak memory, exit status, and an
optional SIGTERM sent once a condition holds (for kill-and-resume measurements)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.harness import REPO

ENV = {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
POLL_S = 0.1  # wall clock resolution; a poll costs microseconds


@dataclass(frozen=True)
class ProcessRun:
    """``wall_s``: from start to exit, as seen from outside (imports, model building, the test loop, reports);
    ``peak_rss_mb``: the largest resident set of the process or of any descendant it waited for (``ru_maxrss`` of
    ``wait4``; DDP ranks started by Lightning's launcher count as descendants); ``terminated``: whether
    ``stop_when`` fired and SIGTERM was sent."""

    argv: list[str]
    wall_s: float
    peak_rss_mb: float
    returncode: int
    terminated: bool


def eval_command(argv: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "eval.py"), *argv]


def run_eval_process(argv: list[str], log_path: Path, stop_when: Callable[[], bool] | None = None,
                     extra_env: dict[str, str] | None = None) -> ProcessRun:
    """Run ``eval.py argv`` from the repository root with its output in ``log_path``; with ``stop_when``, poll it
    every POLL_S and send SIGTERM once it holds (eval.py then finishes the batch in flight and exits 143)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    terminated = False
    with open(log_path, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(eval_command(argv), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **ENV, **(extra_env or {})})
        while True:
            # wait4 on this pid: its own resource usage (peak RSS), not that of every child this process ever had.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if stop_when is not None and not terminated and stop_when():
                proc.send_signal(signal.SIGTERM)
                terminated = True
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped above: keep Popen from waiting again
    return ProcessRun(list(argv), wall, usage.ru_maxrss / 1024, proc.returncode, terminated)


def log_tail(log_path: Path, chars: int = 3000) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return text[-chars:]
