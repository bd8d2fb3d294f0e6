"""Hostile input data: each case is refused at ``setup`` with the file or key that fixes it, before any model is
built. Every image folder is written here, so the tests need no downloaded data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipure_lit.config.loader import load_config
from clipure_lit.data.datamodule import ZeroShotDataModule
from clipure_lit.errors import ConfigError

from conftest import PROJECT_ROOT


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size: int = 32) -> Path:
    """``root/<class>/<i>.png``: ``per_class`` random RGB images of ``size`` x ``size`` per class."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def data_cfg(root: Path, *overrides: str):
    """The ``data`` section as ``eval.py`` composes it for an image folder at ``root``."""
    cfg = load_config(["data=image_folder", f"data.root={root}", "data.subset=first", *overrides],
                      conf_dir=PROJECT_ROOT / "conf")
    return cfg.data


def setup_module_for(root: Path, *overrides: str) -> ZeroShotDataModule:
    dm = ZeroShotDataModule(data_cfg(root, *overrides))
    dm.setup("test")
    return dm


def test_num_samples_larger_than_the_dataset_is_refused_with_both_numbers(tmp_path):
    root = make_folder(tmp_path / "imgs")  # 6 images
    with pytest.raises(ConfigError) as info:
        setup_module_for(root, "data.num_samples=7")
    message = str(info.value)
    assert "data.num_samples=7" in message and "(6)" in message
    assert "data.num_samples=null" in message and "<= 6" in message
    assert setup_module_for(root, "data.num_samples=6").num_samples == 6  # exactly the dataset's size is fine
    assert setup_module_for(root, "data.num_samples=null").num_samples == 6
