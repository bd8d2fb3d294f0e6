"""Preemption of a SLURM job that runs eval.py itself (a user's sbatch script): the warning signal becomes a stop
after the batch in flight, and the job requeues itself when asked to (``trainer.requeue_on_preempt=true``).

SLURM sends the warning signal that ``#SBATCH --signal=B:USR1@<seconds>`` names (SIGUSR1) to the batch shell, or
SIGTERM when it preempts or cancels the job; Lightning stops the test loop after the current batch on SIGTERM only,
so :class:`UsrSignalStops` turns SIGUSR1 into SIGTERM. A job that sweep.py submitted through submitit is requeued
by submitit (``SUBMITIT_EXECUTOR=slurm``): :func:`requeue_owner` leaves it alone, so no job is requeued twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading

from clipure_lit.utils.distributed import slurm_job_id

log = logging.getLogger(__name__)


class UsrSignalStops:
    """While active (main thread, inside a SLURM job), SIGUSR1 is re-sent to this process as SIGTERM, which
    Lightning's handler turns into a stop after the batch in flight; :attr:`seen` records that it came. The
    previous handler is restored on exit. Outside SLURM it does nothing (SIGUSR1 keeps its meaning)."""

    def __init__(self) -> None:
        self.seen = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.seen = True
        os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> "UsrSignalStops":
        if os.environ.get("SLURM_JOB_ID") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None


def requeue_owner() -> str | None:
    """Who requeues this SLURM job after a stop when the run is asked to: None outside SLURM, ``"submitit"`` for
    a job submitit submitted (it requeues it itself), else ``"scontrol"`` (:func:`requeue_job`)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    return "submitit" if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else "scontrol"


def requeue_job() -> bool:
    """``scontrol requeue <job>`` for this job (an array task as ``<array job id>_<task id>``): SLURM puts it back in
    the queue, and its next start (``SLURM_RESTART_COUNT`` > 0) resumes the run. Returns whether scontrol succeeded;
    a failure is logged as a warning (the run's progress is kept either way)."""
    job = slurm_job_id()
    scontrol = shutil.which("scontrol")
    if job is None or scontrol is None:
        log.warning("Cannot requeue SLURM job %s: %s. Resubmit the same script; it resumes with resume=true.", job,
                    "scontrol is not on PATH" if scontrol is None else "SLURM_JOB_ID is not set")
        return False
    try:
        done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("scontrol requeue %s failed (%s). Resubmit the same script; it resumes with resume=true.", job, exc)
        return False
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed with exit status %d: %s. Resubmit the same script; it resumes with "
                    "resume=true.", job, done.returncode, (done.stderr or done.stdout).strip()[:300])
        return False
    log.info("Requeued SLURM job %s (scontrol requeue): its next start resumes this run.", job)
    return True
