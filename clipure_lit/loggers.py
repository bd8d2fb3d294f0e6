"""Lightning loggers from config: CSV (default), W&B (offline unless credentials exist), or none."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from clipure_lit.config.schema import LoggerName, WandbMode

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """True when an API key is in the environment or a netrc entry exists (no network call)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_logger(cfg: DictConfig, run_dir: Path, config_dict: dict):
    name = LoggerName(cfg.logger.name)
    if name == LoggerName.none:
        return False
    if name == LoggerName.csv:
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="", version="csv")
    from pytorch_lightning.loggers import WandbLogger

    mode = WandbMode(cfg.logger.mode)
    offline = mode == WandbMode.offline or (mode == WandbMode.auto and not wandb_credentials_present())
    if os.environ.get("WANDB_MODE") == "offline":
        offline = True
    logger = WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
                         tags=list(cfg.logger.tags), name=f"{cfg.name}-{run_dir.name}", save_dir=str(run_dir),
                         offline=offline, config=config_dict)
    log.info("W&B logging %s into %s", "offline" if offline else "online", run_dir)
    return logger
