"""Lightning loggers from config: CSV (default), W&B (offline unless credentials exist), or none.

A run launched by a W&B agent (``wandb agent``) always logs through W&B, whatever ``logger.name`` says: that is
the only way the sweep receives its metric.

W&B prints nothing to the console unless ``log_level=debug`` (``--verbose``): its banners, run summaries and sync
hints are switched off with its own ``silent`` setting, which changes nothing in the run's files (``wandb sync``
works as before). The sync command of an offline run is logged to the run's ``log.txt``.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from clipure_lit.utils.console import CONSOLE, LogLevel

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
    """Log a results table (CSV file), its plot and summary values as one W&B run (for suites and reports)."""
    import wandb  # heavy: wandb (~0.5 s to import); only W&B logging needs it

    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group, tags=list(cfg.logger.tags),
                     name=name, dir=str(run_dir), mode="offline" if wandb_offline(cfg) else "online",
                     config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), settings=wandb_settings(cfg))
    try:
        payload = {"table": wandb.Table(columns=rows[0], data=rows[1:])}
        if png_path is not None and png_path.is_file():
            payload["plot"] = wandb.Image(str(png_path))
        run.log(payload)
        for key, value in summary.items():
            run.summary[key] = value
    finally:
        run.finish()
    log_sync_hint(run)


def log_sync_hint(run) -> None:
    """Log (to the run's log file only) where an offline W&B run's files are and the command that uploads them."""
    if run is not None and getattr(run.settings, "_offline", False):
        folder = Path(run.dir).parent
        log.info("W&B run saved offline in %s; upload it with: wandb sync %s", folder, folder, extra={CONSOLE: False})


def build_logger(cfg: DictConfig, run_dir: Path, config_dict: dict):
    """The run's Lightning logger (``False`` for none). Under a W&B agent: a W&B logger whose config is the
    resolved run config with dotted keys, so the sweep's own parameters (``purifier.clipure_cos.step_size``) and
    the run's keys are the same keys; the metrics the sweep optimises (``test/robust_acc/worst_case``, ...) reach it
    through the run's summary."""
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
    logger = WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
                         tags=list(cfg.logger.tags), name=f"{cfg.name}-{run_dir.name}", save_dir=str(run_dir),
                         offline=offline, config=flatten_config(config_dict) if agent else config_dict,
                         settings=wandb_settings(cfg))
    # Lightning forwards anonymous=None to wandb.init, which W&B >= 0.22 reports as a deprecated setting on the
    # console (before any setting can silence it); anonymous mode no longer exists, so the key is not passed.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    log.info("W&B logging %s into %s", "offline" if offline else "online", run_dir, extra={CONSOLE: False})
    return logger
