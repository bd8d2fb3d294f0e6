"""Writes ``results.json`` and ``samples.csv`` on the global-zero process when testing ends."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

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
        pl_module.table.write_csv(self.run_dir / "samples.csv", order=list(pl_module.attack_info))
        payload = {**pl_module.summary, "run_dir": str(self.run_dir), **self.extra}
        write_json(self.run_dir / "results.json", payload)
