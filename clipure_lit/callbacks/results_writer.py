"""Writes ``results.json``, ``samples.csv`` and ``results.png`` on the global-zero process when testing ends, and
logs the per-sample table and the plot to W&B when a W&B logger is attached."""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger

from clipure_lit.loggers import offline_sync_paths
from clipure_lit.reporting.plots import plot_results
from clipure_lit.results import write_json


class ResultsWriter(pl.Callback):
    """Runs after the LightningModule has gathered and summarised the per-sample table (``on_test_end`` comes
    after every ``on_test_epoch_end``), so it works the same in one process and under DDP (also ``ddp_spawn``)."""

    def __init__(self, run_dir: Path, extra: dict | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.extra = extra or {}

    def on_test_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or pl_module.table is None:
            return
        _, png = write_results(self.run_dir, pl_module.table, pl_module.summary, list(pl_module.attack_info),
                               {**self.extra, **_wandb_entry(trainer)})
        _log_to_wandb(trainer, self.run_dir / "samples.csv", png)


def write_results(run_dir: Path, table, summary: dict, order: list[str], extra: dict) -> tuple[dict, Path]:
    """Write a run folder's ``samples.csv`` (``table``, attacks in ``order``), ``results.json`` (``summary``, the
    folder, then ``extra``) and ``results.png``; returns ``(results.json's content, the plot's path)``. What a
    finished evaluation writes, and what merging the shards of one writes."""
    run_dir = Path(run_dir)
    table.write_csv(run_dir / "samples.csv", order=order)
    payload = {**summary, "run_dir": str(run_dir), **extra}
    write_json(run_dir / "results.json", payload)
    return payload, plot_results(payload, run_dir / "results.png", config=_run_config(run_dir))


def _run_config(run_dir: Path) -> dict | None:
    """The run's ``config.yaml`` (written when the run folder was made), which names the model in ``results.png``;
    None when the folder has none (a module tested outside ``eval.py``)."""
    path = run_dir / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.is_file() else None


def _wandb_entry(trainer: pl.Trainer) -> dict:
    """``{"wandb": {"offline": bool, "dir": <the W&B run's folder>, "sync": <offline only: what wandb sync needs for
    every launch of the run>, "url": <online only>}}`` with a W&B logger, else nothing: where the run's W&B files are
    and how they reach the server (the summary prints it, W&B stays silent)."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return {}
    run = loggers[0].experiment
    offline = bool(getattr(run.settings, "_offline", False))
    entry = {"offline": offline, "dir": str(Path(run.dir).parent)}
    if offline:
        entry["sync"] = offline_sync_paths(run)
    if not offline and getattr(run, "url", None):
        entry["url"] = run.url
    return {"wandb": entry}


def _log_to_wandb(trainer: pl.Trainer, samples_csv: Path, png: Path) -> None:
    """The per-sample table and the plot as a W&B table and image (only with a W&B logger)."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    import wandb  # heavy: wandb (~0.5 s to import); only a W&B logger needs it

    with open(samples_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    loggers[0].experiment.log({"test/samples": wandb.Table(columns=rows[0], data=rows[1:]), "test/results_plot": wandb.Image(str(png))})
