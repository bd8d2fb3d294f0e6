"""LightningModule for zero-shot evaluation: clean accuracy per sample, plus columns added by attack callbacks."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
import torch
from torch import Tensor

from clipure_lit.results import SampleStore, SampleTable, summarise

log = logging.getLogger(__name__)


class ZeroShotLitModule(pl.LightningModule):
    """Wraps an injected :class:`PurifiedZeroShotClassifier`.

    ``test_step`` records ``label`` and ``clean_pred`` per ``sample_id`` in :attr:`store`; attack callbacks add
    ``adv_pred/<attack>`` columns to the same store. At the end of the test epoch the store is gathered from every
    process and de-duplicated (:attr:`table`), metrics are logged (``test/clean_acc``, ``test/robust_acc/<attack>``,
    ``test/robust_acc/worst_case``, counts and 95% Wilson bounds) and kept in :attr:`summary`.
    """

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.store = SampleStore()
        self.timings: dict[str, float] = {}
        self.table: SampleTable | None = None
        self.summary: dict = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    def on_test_epoch_start(self) -> None:
        self.store.reset()
        self.timings.clear()
        self.classifier.reset_generator()

    def test_step(self, batch, batch_idx: int) -> dict:
        x, y, ids = batch  # [B, 3, H, W], [B], [B]
        start = time.perf_counter()
        logits = self.classifier(x)  # [B, K]
        self.add_time("clean", time.perf_counter() - start)
        pred = logits.argmax(dim=-1)
        self.store.add("label", ids, y)
        self.store.add("clean_pred", ids, pred)
        return {"pred": pred}

    def on_test_epoch_end(self) -> None:
        self.table = self.store.gather(self)
        self.summary = summarise(self.table)
        # Time per sample: the slowest rank's wall clock over the samples that rank saw.
        n_local = sum(c[0].numel() for c in self.store._chunks.get("label", []))
        times = {}
        for key, seconds in self.timings.items():
            per_sample = torch.tensor(seconds / max(n_local, 1), device=self.device)
            times[key] = float(self.all_gather(per_sample).max()) if self.trainer.world_size > 1 else float(per_sample)
        self.summary["time_per_sample_s"] = times
        metrics = {"test/clean_acc": self.summary["clean"]["acc"], "test/num_samples": float(self.summary["num_samples"]),
                   "test/clean_acc_ci_low": self.summary["clean"]["ci95"][0], "test/clean_acc_ci_high": self.summary["clean"]["ci95"][1]}
        for name, entry in self.summary["robust"].items():
            metrics[f"test/robust_acc/{name}"] = entry["acc"]
            metrics[f"test/robust_acc_ci_low/{name}"] = entry["ci95"][0]
            metrics[f"test/robust_acc_ci_high/{name}"] = entry["ci95"][1]
        for key, value in times.items():
            metrics[f"test/time_per_sample/{key}"] = value
        # Values are already global (gathered and de-duplicated): no sync_dist reduction.
        self.log_dict(metrics, rank_zero_only=False, sync_dist=False)
