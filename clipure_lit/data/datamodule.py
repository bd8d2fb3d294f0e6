"""The Lightning data module for zero-shot evaluation."""

from __future__ import annotations

import hashlib

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from clipure_lit.data.config import DataCfg
from clipure_lit.data.datasets import IndexedSubset, build_dataset, check_images, select_ids, shard_ids


class ZeroShotDataModule(pl.LightningDataModule):
    """Yields batches ``(x [B, 3, H, W] in [0, 1], y [B], sample_id [B])`` of a fixed subset.

    ``setup`` is idempotent, so ``evaluation.run_eval`` can build the dataset early and Lightning can call it again.
    It raises ``clipure_lit.errors`` classes, before any model is built, for a missing dataset, a
    ``data.num_samples`` above the dataset's size and selected image files that cannot be read
    (``data.on_bad_image=error``; with ``skip`` they are left out, listed in ``skipped_files``, and ``num_samples``
    counts what remains). With ``data.num_shards`` > 1 the run evaluates its shard's whole batches of what remains
    (:func:`~clipure_lit.data.datasets.shard_ids`); :attr:`selected_ids` is the whole selection.
    """

    def __init__(self, cfg: DataCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.dataset = None
        self.test_set: IndexedSubset | None = None
        self.skipped_files: list = []  # selected files left out as unreadable (data.on_bad_image=skip)
        self.selected_ids: list[int] = []  # every shard's ids (the one-process run's); sample_ids: this shard's

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is None:
            dataset = build_dataset(self.cfg)
            ids, self.skipped_files = check_images(self.cfg, dataset, select_ids(self.cfg, dataset))
            self.selected_ids = ids
            mine = shard_ids(ids, int(self.cfg.batch_size), int(getattr(self.cfg, "num_shards", 1) or 1),
                             getattr(self.cfg, "shard", None))
            self.dataset, self.test_set = dataset, IndexedSubset(dataset, mine)

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
