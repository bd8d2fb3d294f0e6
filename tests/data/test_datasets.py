"""Datasets: order, labels, sample ids and fixed subsets on real images."""

from __future__ import annotations

import shutil

import pytest
import torch

from clipure_lit.data.config import DataCfg, SubsetMode
from clipure_lit.data.datamodule import ZeroShotDataModule
from clipure_lit.data.datasets import SUBSET_DIR, build_dataset, select_ids
from clipure_lit.errors import ConfigError, DataNotFoundError

from conftest import CIFAR_TEST, IMAGENET_SAMPLE, needs_imagenet_sample, needs_shared_cifar


@needs_shared_cifar
def test_image_folder_reads_classes_in_sorted_order():
    ds = build_dataset(DataCfg(name="image_folder", root=str(CIFAR_TEST)))
    assert ds.classnames == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(ds) == 10_000
    image, label = ds.load(0)
    assert image.shape == (3, 32, 32) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert label == 0 and ds.labels[-1] == 9
    assert ds.files[0].parent.name == "airplane"


@needs_shared_cifar
def test_random_subset_is_seeded_class_balanced_and_stable():
    cfg = DataCfg(name="image_folder", root=str(CIFAR_TEST), num_samples=50, subset=SubsetMode.random, subset_seed=3)
    ds = build_dataset(cfg)
    ids = select_ids(cfg, ds)
    assert ids == select_ids(cfg, build_dataset(cfg))  # same on every run (and so on every process)
    assert len(set(ids)) == 50
    counts = torch.bincount(torch.tensor([ds.labels[i] for i in ids]), minlength=10)
    assert counts.tolist() == [5] * 10
    cfg.subset_seed = 4
    assert select_ids(cfg, ds) != ids


@needs_shared_cifar
def test_first_subset_and_ids_file(tmp_path):
    cfg = DataCfg(name="image_folder", root=str(CIFAR_TEST), num_samples=5)
    ds = build_dataset(cfg)
    assert select_ids(cfg, ds) == [0, 1, 2, 3, 4]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# my subset\n7\n3 # a comment\n9000\n")
    cfg.ids_file = str(ids_file)
    assert select_ids(cfg, ds) == [7, 3, 9000]
    ids_file.write_text("10000\n")
    with pytest.raises(ConfigError, match="outside"):
        select_ids(cfg, ds)


@needs_shared_cifar
def test_datamodule_yields_unnormalised_images_labels_and_ids():
    cfg = DataCfg(name="image_folder", root=str(CIFAR_TEST), num_samples=6, subset=SubsetMode.random, batch_size=4)
    dm = ZeroShotDataModule(cfg)
    batches = list(dm.test_dataloader())
    x, y, ids = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    all_ids = torch.cat([b[2] for b in batches]).tolist()
    assert all_ids == dm.sample_ids
    assert [dm.dataset.labels[i] for i in all_ids] == torch.cat([b[1] for b in batches]).tolist()
    assert len(dm.ids_hash()) == 64


@needs_imagenet_sample
def test_imagenet_sample_labels_follow_wnids():
    from open_clip import IMAGENET_CLASSNAMES

    ds = build_dataset(DataCfg(name="imagenet_sample", root=str(IMAGENET_SAMPLE), num_samples=None, image_size=224))
    assert len(ds) == 1000 and sorted(ds.labels) == list(range(1000))
    assert ds.files[0].name.startswith("n01440764") and ds.labels[0] == 0 and ds.classnames == list(IMAGENET_CLASSNAMES)
    grey = next(i for i, f in enumerate(ds.files) if __import__("PIL.Image").Image.open(f).mode != "RGB")
    image, _ = ds.load(grey)
    assert image.shape == (3, 224, 224)


@needs_imagenet_sample
def test_imagenet_follows_robustbench_order(tmp_path):
    """A val/ folder holding the first three listed images: ids and labels follow RobustBench's list."""
    listed = (SUBSET_DIR / "imagenet_robustbench_5000.txt").read_text().split()[:3]
    donor = sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[0]
    for rel in listed:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(donor, tmp_path / rel)
    cfg = DataCfg(name="imagenet", root=str(tmp_path), num_samples=3, image_size=224)
    ds = build_dataset(cfg)
    import json

    wnid_index = json.loads((SUBSET_DIR / "imagenet_wnid_to_index.json").read_text())
    assert select_ids(cfg, ds) == [0, 1, 2]
    assert [ds.labels[i] for i in range(3)] == [wnid_index[p.split("/")[0]] for p in listed]
    assert ds.load(0)[0].shape == (3, 224, 224)
    cfg.num_samples = 4  # the fourth listed image is absent
    with pytest.raises(DataNotFoundError, match="absent"):
        build_dataset(cfg)


@pytest.mark.parametrize("name", ["image_folder", "imagenet", "imagenet_sample"])
def test_missing_dataset_path_names_where_it_looked(name, tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        build_dataset(DataCfg(name=name, root=str(tmp_path / "nowhere")))
    assert "nowhere" in str(info.value) and "Fix" in str(info.value)


def test_missing_cifar_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match="data.download=true"):
        build_dataset(DataCfg(name="cifar10", root=str(tmp_path), download=False))


def test_shipped_cifar10_sample_is_class_balanced_and_loads_offline():
    cfg = DataCfg(name="array_file", root="clipure_lit/assets/cifar10_test_sample.npz", num_samples=100)
    ds = build_dataset(cfg)
    assert len(ds) == 500 and ds.classnames[0] == "airplane" and len(ds.classnames) == 10
    assert torch.bincount(torch.tensor(ds.labels), minlength=10).tolist() == [50] * 10
    prefix = [ds.labels[i] for i in select_ids(cfg, ds)]
    assert torch.bincount(torch.tensor(prefix), minlength=10).tolist() == [10] * 10  # any prefix is balanced
    image, label = ds.load(3)
    assert image.shape == (3, 32, 32) and label == 3


def test_array_file_errors(tmp_path):
    import numpy as np

    with pytest.raises(DataNotFoundError, match="npz"):
        build_dataset(DataCfg(name="array_file", root=str(tmp_path / "none.npz")))
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match="labels"):
        build_dataset(DataCfg(name="array_file", root=str(bad)))
