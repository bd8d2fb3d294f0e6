"""Steady-state time per sample: the seconds timed inside batches after the first one (the warm-up's), next to the
all-batch mean that keeps it; waiting for data and the first-batch checks are not part of it."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clipure_lit.attacks.adapters import classifier_from_model
from clipure_lit.callbacks.data_timing import DataWaitTimer
from clipure_lit.models.lit_module import ZeroShotLitModule


class _SlowFirstBatch(pl.Callback):
    """Stands in for an attack: 1 s on the first batch (warm-up), 0.1 s on every later one, and checks once."""

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        pl_module.add_time("attack/fake", 1.0 if batch_idx == 0 else 0.1)
        if batch_idx == 0:
            pl_module.add_time("checks", 5.0)


def _run(batch_size: int) -> dict:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).eval()
    x = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, torch.zeros(10, dtype=torch.long), torch.arange(10)), batch_size=batch_size)
    module = ZeroShotLitModule(classifier_from_model(net))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_model_summary=False, enable_checkpointing=False,
                         enable_progress_bar=False, inference_mode=False, callbacks=[_SlowFirstBatch(), DataWaitTimer()])
    trainer.test(module, loader, verbose=False)
    return module.summary


def test_steady_state_leaves_the_first_batch_out_and_the_mean_keeps_it(tmp_path):
    summary = _run(batch_size=4)  # batches of 4, 4, 2
    steady, mean = summary["steady_time_per_sample_s"], summary["time_per_sample_s"]
    assert set(steady) == {"clean", "attack/fake"}  # not data_loading (between batches), not checks (first batch)
    assert steady["attack/fake"] == pytest.approx(0.2 / 6)
    assert mean["attack/fake"] == pytest.approx(1.2 / 10) and mean["checks"] == pytest.approx(0.5)  # float32 on the way
    assert 0 < steady["clean"] and "data_loading" in mean


def test_a_single_batch_has_no_steady_state():
    assert _run(batch_size=10)["steady_time_per_sample_s"] == {}
