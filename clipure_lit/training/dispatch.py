"""``run_train(cfg)``: the run folder, seeding and logger shared by every job, then the job itself.

The run folder (``run_dir``, else ``<output_root>/<name>/<timestamp>``) holds ``config.yaml`` (resolved, written
first), ``environment.json``, ``checkpoints/last.ckpt`` (resumable training state), ``export/`` (the model
weights the evaluation side loads) and ``results.json`` (the returned metrics), plus the logger's files.

Under several processes (``trainer.devices=2 trainer.strategy=ddp``, torchrun, srun) every process uses the one run
folder of :func:`~clipure_lit.run_folder.make_run_dir`; only rank 0 writes ``config.yaml``, ``environment.json``,
the checkpoints, the export and ``results.json`` (its metrics).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from typing import Callable

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from clipure_lit.config.loader import to_plain
from clipure_lit.loggers import build_logger, run_end_for
from clipure_lit.results import write_json
from clipure_lit.config.validate import check_accelerator_present
from clipure_lit.run_folder import (close_logger, exclusive_run_folder, make_run_dir, run_log, share_run_dir, write_config,
                                    write_environment)
from clipure_lit.training.adv_job import run_adv
from clipure_lit.training.clip_job import run_clip
from clipure_lit.training.common import CKPT_DIR, configure_cpu
from clipure_lit.training.prior_job import run_prior
from clipure_lit.utils.distributed import launcher_rank_is_zero

log = logging.getLogger(__name__)


def _jobs() -> dict[str, Callable]:
    return {"clip": run_clip, "prior": run_prior, "fare": run_adv, "tecoa": run_adv}


def run_train(cfg: DictConfig) -> dict:
    """Run ``cfg.job`` and return its metrics (also written to ``<run_dir>/results.json``); the run's log goes to
    ``<run_dir>/log.txt``."""
    configure_cpu(cfg.trainer.num_threads)
    check_accelerator_present(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = make_run_dir(cfg)
    with exclusive_run_folder(run_dir), run_log(run_dir):
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir) -> dict:
    writes = launcher_rank_is_zero()  # before a process group exists: what the launcher says this process is
    if writes:
        write_config(run_dir, cfg)
        write_environment(run_dir)
    logger = build_logger(cfg, run_dir, to_plain(cfg))
    start = time.perf_counter()
    end = None  # how the job ended, for the logger; None: from the exception passing through (or finished)
    # Processes Lightning starts for trainer.devices > 1 re-run this command line: without run_dir in it, they learn
    # this run's folder from the environment.
    shared = share_run_dir(run_dir) if not cfg.run_dir else contextlib.nullcontext()
    try:
        with shared:
            metrics = _jobs()[cfg.job](cfg, run_dir, logger)
    except SIGTERMException as exc:
        end = run_end_for(exc)
        # Lightning's SIGTERM exception is a SystemExit without a code: left alone, a stopped training would exit 0,
        # write no results.json and look finished to a scheduler or a sweep. The state is in last.ckpt.
        log.warning("Stopped by SIGTERM; the training state is in %s. Continue with the same arguments plus run_dir=%s "
                    "(fit.resume=last continues from it).", run_dir / CKPT_DIR / "last.ckpt", run_dir)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        close_logger(logger, end)
    metrics = {**metrics, "run_dir": str(run_dir), "wall_seconds": round(time.perf_counter() - start, 1)}
    if writes:
        write_json(run_dir / "results.json", metrics)
    return metrics


def format_train_summary(metrics: dict) -> str:
    """A short human-readable summary of a training run's metrics."""
    if not metrics:
        return ""
    keys = [k for k in metrics if not k.startswith("val/cos_blank_class")]
    width = max(len(k) for k in keys)
    lines = [f"{k:<{width}}  {json.dumps(metrics[k]) if not isinstance(metrics[k], float) else f'{metrics[k]:.4f}'}" for k in keys]
    return "\n".join(["Training run summary", *lines])
