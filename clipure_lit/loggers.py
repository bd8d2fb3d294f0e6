"""Lightning loggers from config: CSV (default), W&B (offline unless credentials exist), or none.

A run launched by a W&B agent (``wandb agent``) always logs through W&B, whatever ``logger.name`` says: that is
the only way the sweep receives its metric.

W&B prints nothing to the console unless ``log_level=debug`` (``--verbose``): its banners, run summaries and sync
hints are switched off with its own ``silent`` setting, which changes nothing in the run's files (``wandb sync``
works as before). The sync command of an offline run is logged to the run's ``log.txt``.

One run folder is one W&B run: its id is kept in ``<run folder>/wandb_run_id`` (:func:`wandb_run_id`), so a run
continued with ``resume=true`` writes to the same W&B run, online or offline (each launch writes its own
``offline-run-<time>-<id>`` folder; ``wandb sync`` uploads the folders of one id as one run, in order of start).
How a run ended is recorded by :func:`finish_wandb_run` (:class:`RunEnd`): the exit code, ``status`` in the summary,
and for a stopped or crashed run what it finished; a run stopped by SIGTERM that its launcher will continue is also
marked as preempting (:func:`requeue_reason`).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from clipure_lit.errors import ClipureError, ConfigError
from clipure_lit.utils.console import CONSOLE, LogLevel
from clipure_lit.utils.distributed import launcher_rank_is_zero

log = logging.getLogger(__name__)


class LoggerName(str, Enum):
    csv = "csv"
    wandb = "wandb"
    none = "none"


class WandbMode(str, Enum):
    """``auto``: online when W&B credentials are configured, offline otherwise (never blocks on the network)."""

    auto = "auto"
    online = "online"
    offline = "offline"


@dataclass
class LoggerCfg:
    """The ``logger.*`` section: which Lightning logger records the run, and W&B's project settings."""

    name: LoggerName = LoggerName.csv
    project: str = "clipure_lit"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    mode: WandbMode = WandbMode.auto


def wandb_settings(cfg: DictConfig):
    """``wandb.Settings`` for a run: silent (no console output from W&B) unless ``cfg.log_level`` is ``debug``."""
    import wandb  # heavy: wandb (~0.5 s to import); only W&B logging needs it

    return wandb.Settings(silent=LogLevel(cfg.get("log_level", LogLevel.info)) != LogLevel.debug)


def wandb_credentials_present() -> bool:
    """True when an API key is in the environment or a netrc entry exists (no network call)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_offline(cfg: DictConfig) -> bool:
    """Offline unless online mode is asked for, or ``auto`` finds credentials; ``WANDB_MODE=offline`` always wins."""
    mode = WandbMode(cfg.logger.mode)
    offline = mode == WandbMode.offline or (mode == WandbMode.auto and not wandb_credentials_present())
    return offline or os.environ.get("WANDB_MODE") == "offline"


def wandb_agent_run() -> dict | None:
    """``{"sweep_id", "run_id"}`` when a W&B agent launched this process, detected as wandb itself does (the agent
    exports ``WANDB_SWEEP_ID`` and the run's ``WANDB_RUN_ID``); None otherwise."""
    sweep_id, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    return {"sweep_id": sweep_id, "run_id": run_id} if sweep_id and run_id else None


WANDB_ID_FILE = "wandb_run_id"  # in the run folder: the id of the run's W&B run
_ID_CHARS = string.ascii_lowercase + string.digits  # W&B's own alphabet for run ids
_RESERVED_ID_CHARS = set(":;,#?/'")  # characters W&B refuses in a run id


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of the run in ``run_dir``: the agent's (``WANDB_RUN_ID``) when a W&B agent launched this
    process, else the id an earlier launch of this run kept in ``<run_dir>/wandb_run_id``, else a new random one
    (8 characters of ``[a-z0-9]``, W&B's format). The first process of a launch (see
    :func:`~clipure_lit.utils.distributed.launcher_rank_is_zero`) writes the id it uses to that file, so that a
    later ``resume=true`` launch continues the same W&B run.

    Raises:
        ConfigError: ``wandb_run_id`` exists but does not hold a usable W&B run id.
    """
    path = Path(run_dir) / WANDB_ID_FILE
    agent = wandb_agent_run()
    if agent is not None:
        run_id = agent["run_id"]
    elif path.is_file():
        run_id = path.read_text().strip()
        if not run_id or any(c in _RESERVED_ID_CHARS or c.isspace() for c in run_id) or len(run_id) > 128:
            raise ConfigError(f"{path} holds {run_id[:40]!r}, which is not a W&B run id (the id of this run folder's W&B "
                              "run, written when the run started). Fix: delete the file to log this run to a new W&B "
                              "run, or write the id of its W&B run into it.")
    else:
        run_id = "".join(secrets.choice(_ID_CHARS) for _ in range(8))
    if launcher_rank_is_zero() and (not path.is_file() or path.read_text().strip() != run_id):
        path.write_text(run_id + "\n")
    return run_id


@dataclass
class RunEnd:
    """How a run ended, as its logger records it.

    ``status``: ``finished``; ``stopped`` (by the signal named in ``signal``: the finished batches are kept and
    ``resume=true`` continues); ``crashed`` (an exception, described in ``error``). ``exit_code``: the process's
    exit status (0 only for ``finished``; 128 + the signal number for ``stopped``; 2 for a user error, 1 for any
    other exception). ``summary``: further values for the run's summary (an evaluation's sample counts and, for a
    run that did not finish, its partial numbers).
    """

    status: str = "finished"
    exit_code: int = 0
    signal: Optional[str] = None
    error: Optional[str] = None
    summary: dict = field(default_factory=dict)
    # Who continues a stopped run (set when the run requeues its own SLURM job); None: see requeue_reason.
    requeued_by: Optional[str] = None


def run_end_for(exc: BaseException | None, summary: dict | None = None) -> RunEnd:
    """The :class:`RunEnd` of a job that ended with ``exc`` propagating (None: it returned).

    Lightning's ``SIGTERMException`` is a stop by SIGTERM (exit 143) and ``KeyboardInterrupt`` one by SIGINT
    (exit 130); a ``SystemExit`` keeps its code (0 or None: finished); a user error (``ClipureError``) is a crash
    with exit status 2, any other exception one with status 1.
    """
    summary = dict(summary or {})
    if exc is None:
        return RunEnd(summary=summary)
    if type(exc).__name__ == "SIGTERMException":  # Lightning's, a SystemExit (not imported: it is heavy)
        return RunEnd("stopped", 128 + signal.SIGTERM, signal="SIGTERM", summary=summary)
    if isinstance(exc, KeyboardInterrupt):
        return RunEnd("stopped", 128 + signal.SIGINT, signal="SIGINT", summary=summary)
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0:
            return RunEnd(summary=summary)
        return RunEnd("crashed", code, error=f"exit status {code}", summary=summary)
    error = f"{type(exc).__name__}: {exc}"
    return RunEnd("crashed", 2 if isinstance(exc, ClipureError) else 1, error=error[:500], summary=summary)


def slurm_job_requeues() -> bool:
    """True inside a SLURM job that will be requeued after a preemption or its time limit: a job submitted by
    submitit (``sweep.py --launcher slurm``: ``SUBMITIT_EXECUTOR=slurm``, which requeues it itself), or one whose
    ``scontrol show job`` says ``Requeue=1`` (``sbatch --requeue``, or the cluster's default). False outside SLURM
    or when ``scontrol`` cannot answer within 10 s."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return True
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return False
    try:
        shown = subprocess.run([scontrol, "show", "job", "-o", job], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return shown.returncode == 0 and re.search(r"(^|\s)Requeue=1(\s|$)", shown.stdout) is not None


def requeue_reason(run) -> str | None:
    """Why the W&B ``run``, stopped by SIGTERM, will be continued by whoever launched it, or None: it belongs to a
    W&B sweep (a W&B agent launched it, or ``run.sweep_id`` is set; W&B requeues preempting runs of a sweep), or
    its SLURM job will be requeued (:func:`slurm_job_requeues`)."""
    agent = wandb_agent_run()
    sweep_id = (agent or {}).get("sweep_id") or getattr(run, "sweep_id", None)
    if sweep_id:
        return f"W&B sweep {sweep_id}"
    if slurm_job_requeues():
        return f"SLURM job {os.environ['SLURM_JOB_ID']}, which is requeued"
    return None


# Summary keys that only a run that did not finish has; a finished launch of the same W&B run removes them.
_UNFINISHED_KEYS = ("test/partial", "stopped_by", "error")


def finish_wandb_run(run, end: RunEnd) -> None:
    """Record ``end`` in the W&B ``run``, then finish it with ``end.exit_code``.

    The summary gets ``status`` (``finished``, ``stopped``, ``crashed``), ``stopped_by`` (the signal) or ``error``
    (the exception), and ``end.summary``. A finished run removes the keys of an earlier launch that did not
    finish (``test/partial``, ``stopped_by``, ``error``). A run stopped by SIGTERM that will be continued
    (``end.requeued_by``, else :func:`requeue_reason`) is also marked as preempting (``run.mark_preempting()``), which tells W&B to requeue a
    sweep's run; a non-zero exit code alone marks it failed.
    """
    summary = {"status": end.status, **end.summary}
    if end.signal:
        summary["stopped_by"] = end.signal
    if end.error:
        summary["error"] = end.error
    run.summary.update(summary)
    if end.status == "finished":
        for key in _UNFINISHED_KEYS:
            if key not in summary:
                del run.summary[key]
    reason = (end.requeued_by or requeue_reason(run)) if end.status == "stopped" and end.signal == "SIGTERM" else None
    if reason is not None:
        run.mark_preempting()
    log.info("W&B run %s ends %s with exit code %d%s", run.id, end.status, end.exit_code,
             f" (marked preempting: {reason})" if reason else "", extra={CONSOLE: False})
    run.finish(exit_code=end.exit_code)


def flatten_config(config: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted keys a sweep file names its parameters with."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_table_to_wandb(cfg: DictConfig, run_dir: Path, name: str, csv_path: Path, png_path: Path | None, summary: dict) -> None:
    """Log a results table (CSV file), its plot and summary values as one W&B run (for suites and reports); the
    folder's W&B run id (:func:`wandb_run_id`) makes a run of the same folder again update the same W&B run."""
    import wandb  # heavy: wandb (~0.5 s to import); only W&B logging needs it

    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group, tags=list(cfg.logger.tags),
                     name=name, dir=str(run_dir), mode="offline" if wandb_offline(cfg) else "online",
                     id=wandb_run_id(run_dir), resume="allow",
                     config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), settings=wandb_settings(cfg))
    end = None
    try:
        payload = {"table": wandb.Table(columns=rows[0], data=rows[1:])}
        if png_path is not None and png_path.is_file():
            payload["plot"] = wandb.Image(str(png_path))
        run.log(payload)
        for key, value in summary.items():
            run.summary[key] = value
    except BaseException as exc:
        end = run_end_for(exc)
        raise
    finally:
        finish_wandb_run(run, end or RunEnd())
    log_sync_hint(run)


def offline_sync_paths(run) -> str:
    """What to give ``wandb sync`` for every launch of the offline W&B ``run``: its folder, or, when earlier launches
    of the same run id (a resumed run) left folders beside it, the pattern ``offline-run-*-<id>`` matching them all
    (``wandb sync`` uploads the folders of one id as one run, in order of start)."""
    folder = Path(run.dir).parent
    launches = list(folder.parent.glob(f"offline-run-*-{run.id}"))
    return str(folder.parent / f"offline-run-*-{run.id}") if len(launches) > 1 else str(folder)


def log_sync_hint(run) -> None:
    """Log (to the run's log file only) where an offline W&B run's files are and the command that uploads them."""
    if run is not None and getattr(run.settings, "_offline", False):
        log.info("W&B run saved offline in %s; upload it with: wandb sync %s", Path(run.dir).parent,
                 offline_sync_paths(run), extra={CONSOLE: False})


def build_logger(cfg: DictConfig, run_dir: Path, config_dict: dict):
    """The run's Lightning logger (``False`` for none). A W&B logger logs to the run folder's W&B run
    (:func:`wandb_run_id`), created or continued. Under a W&B agent: a W&B logger whose config is the resolved run
    config with dotted keys, so the sweep's own parameters (``purifier.clipure_cos.step_size``) and the run's keys
    are the same keys; the metrics the sweep optimises (``test/robust_acc/worst_case``, ...) reach it through the
    run's summary."""
    name = LoggerName(cfg.logger.name)
    agent = wandb_agent_run()
    if name == LoggerName.none and agent is None:
        return False
    # heavy: Lightning takes ~4.5 s to import; the config schema imports this module for LoggerCfg (--help, --cfg)
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    if name == LoggerName.csv and agent is None:
        return CSVLogger(save_dir=str(run_dir), name="", version="csv")
    if agent is not None and name != LoggerName.wandb:
        log.info("Launched by a W&B agent (sweep %s, run %s): logging through W&B so that the sweep receives its metric "
                 "(logger.name=%s is not used).", agent["sweep_id"], agent["run_id"], name.value)
    offline = wandb_offline(cfg)
    # The folder's W&B run id: a resumed run continues its W&B run (Lightning passes resume="allow" with it).
    logger = WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
                         tags=list(cfg.logger.tags), name=f"{cfg.name}-{run_dir.name}", save_dir=str(run_dir),
                         id=wandb_run_id(run_dir), offline=offline,
                         config=flatten_config(config_dict) if agent else config_dict, settings=wandb_settings(cfg))
    # Lightning forwards anonymous=None to wandb.init, which W&B >= 0.22 reports as a deprecated setting on the
    # console (before any setting can silence it); anonymous mode no longer exists, so the key is not passed.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    log.info("W&B logging %s into %s", "offline" if offline else "online", run_dir, extra={CONSOLE: False})
    return logger
