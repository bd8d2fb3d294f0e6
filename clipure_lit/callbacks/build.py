"""The evaluation callbacks a config asks for, in the order Lightning must call them."""

from __future__ import annotations

import logging
from pathlib import Path

from clipure_lit.attacks.presets import resolve_attacks
from clipure_lit.callbacks.data_timing import DataWaitTimer
from clipure_lit.callbacks.progress import EvalProgress
from clipure_lit.callbacks.resume import ResumableProgress, prepare_progress, relaunch_resumes
from clipure_lit.callbacks.robust_eval import RobustEvalCallback
from clipure_lit.callbacks.running import RunningAccuracy
from clipure_lit.config.loader import to_plain
from clipure_lit.errors import ConfigError
from clipure_lit.loggers import wandb_agent_run
from clipure_lit.utils.console import LogLevel
from clipure_lit.utils.distributed import slurm_job_folder

log = logging.getLogger(__name__)


def eval_callbacks(cfg, run_dir: Path) -> list:
    """``[RobustEvalCallback (if attack.run is set), ResumableProgress, RunningAccuracy, EvalProgress (if
    trainer.enable_progress_bar), DataWaitTimer]`` (the running counts after the attacks, whose outcomes they
    count, and before the display that shows them; the counts log the live numbers to the run's logger; the timer
    last: it marks the end of a batch after the attacks, the progress files and the display).

    Resolves every attack and checks the run folder for resumption *before* anything is written to it, so a bad
    attack name or a config that differs from the run being resumed fails at once.

    A SLURM job requeued or a W&B agent's run relaunched continues its folder's run without ``resume=true``
    (:func:`~clipure_lit.callbacks.resume.relaunch_resumes`, logged).

    Raises:
        ConfigError: unknown attack or option, ``resume=true`` without ``run_dir`` (outside a SLURM job or W&B agent), or a resume config mismatch.
    """
    derived = slurm_job_folder() or wandb_agent_run()  # the folder is named after the job: found again without run_dir
    if cfg.resume and not cfg.run_dir and not derived:
        raise ConfigError("resume=true needs the folder of the run to continue. Fix: pass run_dir=<that folder> as well.")
    specs = resolve_attacks(cfg.attack)
    relaunch = None if cfg.resume else relaunch_resumes(run_dir)
    if relaunch:
        log.info("%s: continuing the run in %s from its finished batches (as with resume=true).", relaunch, run_dir)
    resume = prepare_progress(run_dir, to_plain(cfg), bool(cfg.resume) or relaunch is not None)
    callbacks = []
    if specs:
        callbacks.append(RobustEvalCallback(specs, run_dir=run_dir, save_adversarial=bool(cfg.attack.save_adversarial),
                                            checks=bool(cfg.attack.checks)))
    callbacks.append(ResumableProgress(run_dir, resume=resume))
    callbacks.append(RunningAccuracy(log_live=True))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(EvalProgress(title=str(cfg.name), log_file=Path(run_dir) / "log.txt",
                                      verbose=LogLevel(cfg.log_level) == LogLevel.debug))
    callbacks.append(DataWaitTimer())
    return callbacks
