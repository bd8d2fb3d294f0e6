"""The Lightning data module for zero-shot evaluation."""

from __future__ import annotations

import hashlib

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from clipure_lit.data.config import DataCfg
from clipure_lit.data.datasets import IndexedSubset, build_dataset, select_ids


class ZeroShotDataModule(pl.LightningDataModule):
    """Yields batches ``(x [B, 3, H, W] in [0, 1], y [B], sample_id [B])`` of a fixed subset.

    ``setup`` is idempotent, so ``evaluation.run_eval`` can build the dataset early (to fail fast on a missing path) and
    Lightning can call it again.
    """

    def __init__(self, cfg: DataCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.dataset = None
        self.test_set: IndexedSubset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is None:
            self.dataset = build_dataset(self.cfg)
            self.test_set = IndexedSubset(self.dataset, select_ids(self.cfg, self.dataset))

    @property
    def classnames(self) -> list[str]:
        self.setup()
        return self.dataset.classnames

    @property
    def sample_ids(self) -> list[int]:
        self.setup()
        return self.test_set.ids

    @property
    def num_samples(self) -> int:
        """How many images are evaluated: what ``environment.json`` and ``results.json`` record."""
        return len(self.sample_ids)

    def ids_hash(self) -> str:
        """SHA-256 of the evaluated id list: identical runs evaluate identical samples."""
        return hashlib.sha256(",".join(map(str, self.sample_ids)).encode()).hexdigest()

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.test_set, batch_size=self.cfg.batch_size, shuffle=False, num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0)
