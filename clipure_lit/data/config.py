"""The ``data.*`` config section: which images are evaluated and how they are batched."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from clipure_lit.errors import ConfigError


class SubsetMode(str, Enum):
    """How ``data.num_samples`` images are chosen: the first N in the dataset's canonical order, or N drawn
    with ``data.subset_seed`` (class-balanced when the dataset exposes its labels)."""

    first = "first"
    random = "random"


class OnBadImage(str, Enum):
    """What happens to a selected image file that cannot be read (not an image, truncated): ``error`` refuses the
    run at setup naming the file; ``skip`` leaves it out with one warning listing the files, and the run evaluates
    (and records) the images that remain."""

    error = "error"
    skip = "skip"


@dataclass
class DataCfg:
    # Dataset registry name: cifar10, cifar100, imagenet, image_folder, imagenet_sample.
    name: str = "cifar10"
    # Where the dataset lives (a torchvision root for CIFAR, the val/ folder for ImageNet, a class-per-folder tree).
    root: str = "data/cifar10"
    # Allow torchvision to download CIFAR-10/100 into ``root`` when it is missing.
    download: bool = True
    split: str = "test"
    # Number of evaluated samples (null: all of them).
    num_samples: Optional[int] = 1000
    subset: SubsetMode = SubsetMode.first
    subset_seed: int = 0
    # A text file with one sample id per line; overrides ``num_samples``/``subset``.
    ids_file: Optional[str] = None
    # Attack resolution: images are resized (shorter side) and centre-cropped to this size before the attack.
    # null: the dataset's native size (32 for CIFAR); ImageNet-style datasets default to 224.
    image_size: Optional[int] = None
    # A selected image file that cannot be read: ``error`` (refuse the run, naming it) or ``skip`` (leave it out).
    on_bad_image: OnBadImage = OnBadImage.error
    # Class names: a set name (``cifar10``, ``imagenet1k``, any CLIP_benchmark dataset), a JSON file
    # (``path.json`` or ``path.json:key``), or null for the dataset's own.
    classnames: Optional[str] = None
    # For data.name=clip_benchmark: the CLIP_benchmark dataset name (``cars``, ``pets``, ``imagenet-r``,
    # ``wds/vtab/pcam``, ...); its builder loads the data from ``root``.
    benchmark: Optional[str] = None
    batch_size: int = 32
    num_workers: int = 0
    # Shards of one evaluation (``eval.py --shards N`` sets both): the selected ids, cut into ``batch_size`` blocks
    # (the batches of the one-process run), are split into ``num_shards`` contiguous ranges of whole batches, and a
    # run evaluates range ``shard`` (0-based). ``num_shards=1``, ``shard=null``: the whole selection.
    num_shards: int = 1
    shard: Optional[int] = None


def check_data_values(cfg: Any, key: str = "data") -> None:
    """Refuse ``data.*`` values no run can use; needs neither the files nor the dataset (the dataset's size is
    checked when it is set up). Called when the config is composed and again where the samples are chosen.

    Raises:
        ConfigError: naming the key, the value, what is expected and the fix.
    """
    if cfg.num_samples is not None and int(cfg.num_samples) < 1:
        raise ConfigError(f"{key}.num_samples={cfg.num_samples} must be a positive number of images, or null for the "
                          f"whole dataset. Fix: set {key}.num_samples=<N> with N >= 1, or {key}.num_samples=null.")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"{key}.batch_size={cfg.batch_size} must be a positive integer (images per batch). "
                          f"Fix: set {key}.batch_size=<N> with N >= 1.")
    if int(cfg.num_workers) < 0:
        raise ConfigError(f"{key}.num_workers={cfg.num_workers} must be >= 0 (0: load in the main process). "
                          f"Fix: set {key}.num_workers=0 or a positive number of loader processes.")
    check_shard_values(cfg, key)
    if cfg.image_size is not None and int(cfg.image_size) < 1:
        raise ConfigError(f"{key}.image_size={cfg.image_size} must be a positive size in pixels, or null for the "
                          f"dataset's native size. Fix: e.g. {key}.image_size=224, or {key}.image_size=null.")


def check_shard_values(cfg: Any, key: str = "data") -> None:
    """``data.num_shards`` >= 1, ``data.shard`` in ``[0, num_shards)`` when there are several shards (null with
    one), and, when the sample count is known before the data is set up, no more shards than batches.

    Raises:
        ConfigError: naming the key, the value, what is expected and the fix.
    """
    shards, shard = int(getattr(cfg, "num_shards", 1) or 0), getattr(cfg, "shard", None)
    if shards < 1:
        raise ConfigError(f"{key}.num_shards={getattr(cfg, 'num_shards', None)} must be a positive number of shards (1: the whole "
                          f"selection in one run). Fix: set {key}.num_shards=1, or use eval.py --shards N, which sets "
                          f"{key}.num_shards and {key}.shard for each of its N runs.")
    if shard is None:
        if shards > 1:
            raise ConfigError(f"{key}.num_shards={shards} without {key}.shard: a run of a sharded evaluation must say "
                              f"which shard it evaluates. Fix: set {key}.shard=<0..{shards - 1}>, or run all shards with "
                              f"eval.py --shards {shards} (without {key}.num_shards).")
        return
    if not 0 <= int(shard) < shards:
        raise ConfigError(f"{key}.shard={shard} is outside [0, {shards}) for {key}.num_shards={shards} (shards are "
                          f"numbered from 0). Fix: set {key}.shard to 0..{shards - 1}, or {key}.shard=null with "
                          f"{key}.num_shards=1 for the whole selection.")
    count = None if getattr(cfg, "ids_file", None) else getattr(cfg, "num_samples", None)
    if count is not None and int(count) >= 1:
        batches = -(-int(count) // int(cfg.batch_size))
        if shards > batches:
            raise ConfigError(f"{key}.num_shards={shards} is more than the {batches} batch(es) of {key}.num_samples="
                              f"{count} at {key}.batch_size={cfg.batch_size}: a shard is a range of whole batches, so "
                              f"some shards would be empty. Fix: at most --shards {batches}, or more samples.")
