"""Training data modules: whole-batch indexing of in-memory tensors, plus the evaluation subsets for validation.

``TensorBatches`` yields whole shuffled batches ``tuple(t[idx] for t in tensors)`` in one indexing operation
(no per-sample collate), which matters at hundreds of 32x32 images per step on a CPU.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from clipure_lit.clip.prompts import get_classnames
from clipure_lit.data.datasets import IndexedSubset, build_dataset, select_ids
from clipure_lit.training.image_cache import load_uint8

log = logging.getLogger(__name__)


class TensorBatches(Dataset):
    """``dataset[list_of_indices] -> tuple of tensors [len(idx), ...]``; used with a ``BatchSampler``."""

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorBatches needs tensors of equal length.")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, idx) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def batch_loader(tensors: tuple[Tensor, ...], batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0) -> DataLoader:
    """A DataLoader of whole batches; the shuffling generator is seeded by ``seed``."""
    ds = TensorBatches(*tensors)
    gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
    sampler = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
    return DataLoader(ds, sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last), batch_size=None)


class TrainDataModule(pl.LightningDataModule):
    """Training batches from in-memory tensors; validation batches ``(x [B,3,H,W] in [0,1], y, sample_id)`` from
    an evaluation subset (``IndexedSubset``), or none."""

    def __init__(self, train_tensors: tuple[Tensor, ...], batch_size: int, val_set=None, val_batch_size: int = 256,
                 seed: int = 0, drop_last: bool = True) -> None:
        super().__init__()
        self.train_tensors = train_tensors
        self.batch_size = int(batch_size)
        self.val_set = val_set
        self.val_batch_size = int(val_batch_size)
        self.seed = int(seed)
        self.drop_last = drop_last

    def train_dataloader(self) -> DataLoader:
        drop = self.drop_last and len(self.train_tensors[0]) >= self.batch_size
        return batch_loader(self.train_tensors, self.batch_size, shuffle=True, drop_last=drop, seed=self.seed)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        if isinstance(self.val_set, tuple):
            return batch_loader(self.val_set, self.val_batch_size, shuffle=False, drop_last=False)
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)


def build_eval_subset(data_cfg):
    """The evaluation-style subset ``IndexedSubset`` (and its dataset) for ``data_cfg``."""
    dataset = build_dataset(data_cfg)
    return IndexedSubset(dataset, select_ids(data_cfg, dataset)), dataset


def training_inputs(cfg, image_cache_dir: str | None) -> tuple[list[str], "TrainDataModule", bool]:
    """What every fitting job starts from: the class names (``data.classnames`` or the dataset's), the data module
    (the selected training images decoded once into the uint8 cache at ``image_cache_dir``, and the validation
    subset), and whether validation runs (``fit.val_every_n_steps != 0``)."""
    dataset = build_dataset(cfg.data)
    classnames = get_classnames(cfg.data.classnames) if cfg.data.classnames else dataset.classnames
    ids = select_ids(cfg.data, dataset) if (cfg.data.num_samples is not None or cfg.data.ids_file) else None
    images, labels = load_uint8(dataset, image_cache_dir, ids)  # [N, S, S, 3] uint8, [N]
    log.info("Training data: %s '%s' (%d images, %d classes)", cfg.data.name, cfg.data.root, len(labels), len(classnames))
    has_val = cfg.fit.val_every_n_steps != 0
    val_set = build_eval_subset(cfg.val_data)[0] if has_val else None
    dm = TrainDataModule((images, labels), cfg.data.batch_size, val_set=val_set, val_batch_size=cfg.val_data.batch_size,
                         seed=cfg.seed)
    return list(classnames), dm, has_val
