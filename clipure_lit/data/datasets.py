"""Dataset registry. Every dataset exposes ``classnames``, ``labels`` (list[int]) and ``load(i) -> (image, label)``
with the image a ``[3, H, W]`` float tensor in [0, 1] (no normalisation: that happens inside the model).

Sample ids are indices into each dataset's canonical order (documented per dataset), so a subset is the same on
every run and every number of processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clipure_lit.data.config import DataCfg, SubsetMode
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.utils.paths import find_path, resolve_path

SUBSET_DIR = Path(__file__).resolve().parent / "subsets"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def to_tensor(image: Image.Image, size: int | None) -> Tensor:
    """PIL image -> ``[3, S, S]`` in [0, 1]: RGB, shorter side resized to ``size`` (bicubic) and centre-cropped;
    no resizing when ``size`` is None (the open_clip eval transform without Normalize)."""
    # heavy: torchvision takes ~1.5 s to import; config validation imports this module (list_datasets) without images
    from torchvision.transforms import functional as TF

    image = image.convert("RGB")
    if size is not None:
        image = TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC), size)
    return TF.to_tensor(image)


class ImageDataset:
    """Images given either as file paths or as an in-memory uint8 array ``[N, H, W, 3]``, with labels and class
    names. Plain attributes only, so it pickles into DDP-spawned processes and data-loader workers."""

    def __init__(self, classnames: list[str], labels: list[int] | None, size: int | None, files: list[Path] | None = None,
                 array=None, source=None, length: int | None = None) -> None:
        self.classnames = classnames
        self.labels = labels  # None when the source cannot list labels without decoding every image
        self.size = size
        self.files = files
        self.array = array
        self.source = source  # an indexable dataset returning (PIL image, label), e.g. a CLIP_benchmark dataset
        self._length = length if length is not None else len(labels)

    def __len__(self) -> int:
        return self._length

    def load(self, index: int) -> tuple[Tensor, int]:
        if self.source is not None:
            image, label = self.source[index]
            return to_tensor(image, self.size), int(label)
        image = Image.fromarray(self.array[index]) if self.array is not None else Image.open(self.files[index])
        return to_tensor(image, self.size), self.labels[index]


def _missing(name: str, root: Path, fix: str) -> DataNotFoundError:
    return DataNotFoundError(f"Dataset '{name}' not found: looked for it in '{root.resolve()}'. Fix: {fix}")


def _root(cfg: DataCfg) -> Path:
    """``data.root`` relative to the current directory, else to the project root."""
    return find_path(cfg.root) or Path(cfg.root)


def _cifar(cfg: DataCfg, hundred: bool) -> ImageDataset:
    from torchvision.datasets import CIFAR10, CIFAR100  # heavy: torchvision (~1.5 s); only these datasets need it

    cls, name = (CIFAR100, "cifar100") if hundred else (CIFAR10, "cifar10")
    root = Path(cfg.root)
    if cfg.split not in ("train", "test"):
        raise ConfigError(f"data.split='{cfg.split}' is not a split of {name}; expected 'train' or 'test'.")
    try:
        ds = cls(str(root), train=cfg.split == "train", download=False)
    except RuntimeError:
        if not cfg.download:
            raise _missing(name, root, "set data.download=true to let torchvision fetch it (needs internet), "
                                       "or point data.root at a folder that holds it.") from None
        try:
            ds = cls(str(root), train=cfg.split == "train", download=True)
        except Exception as exc:
            raise _missing(name, root, f"the download failed ({type(exc).__name__}: {exc}). Download it on a machine "
                                       "with internet and copy it there, or set data.root.") from None
    return ImageDataset(list(ds.classes), [int(t) for t in ds.targets], cfg.image_size, array=ds.data)  # uint8 [N, 32, 32, 3]


def _image_folder(cfg: DataCfg) -> ImageDataset:
    """``root/<class>/<image>``: classes are the sorted folder names (underscores read as spaces), images sorted by
    path; sample id = position in that order."""
    root = _root(cfg)
    if not root.is_dir():
        raise _missing("image_folder", root, "set data.root to a folder with one sub-folder of images per class.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    if not files:
        raise _missing("image_folder", root, "the folder has no class sub-folders with images "
                                             f"({', '.join(IMAGE_SUFFIXES)}).")
    names = [d.name.replace("_", " ") for d in class_dirs]
    return ImageDataset(names, labels, cfg.image_size, files=files)


def _wnid_index() -> dict[str, int]:
    return json.loads((SUBSET_DIR / "imagenet_wnid_to_index.json").read_text())


def _imagenet(cfg: DataCfg) -> ImageDataset:
    """ImageNet validation in ``root/<wnid>/<file>.JPEG`` layout, in the order of RobustBench's fixed 5000-image
    list (sample id = position in that list)."""
    from open_clip import IMAGENET_CLASSNAMES  # heavy: ~4 s to import (timm, torchvision); only ImageNet needs it

    root = _root(cfg)
    if not root.is_dir():
        raise _missing("imagenet", root, "set data.root to the ImageNet validation folder (one sub-folder per WordNet id).")
    wnid_index = _wnid_index()
    rel_paths = [line.strip() for line in (SUBSET_DIR / "imagenet_robustbench_5000.txt").read_text().splitlines() if line.strip()]
    missing = [p for p in rel_paths[: (cfg.num_samples or len(rel_paths))] if not (root / p).is_file()]
    if missing:
        raise _missing("imagenet", root, f"{len(missing)} listed images are absent, e.g. '{root / missing[0]}'. "
                                         "data.root must be the val/ folder with wnid sub-folders.")
    labels = [wnid_index[p.split("/")[0]] for p in rel_paths]
    return ImageDataset(list(IMAGENET_CLASSNAMES), labels, cfg.image_size or 224, files=[root / p for p in rel_paths])


def _imagenet_sample(cfg: DataCfg) -> ImageDataset:
    """A flat folder of ``<wnid>_<name>.JPEG`` files (one image per class): label = the standard index of the wnid,
    sample id = position in sorted file order."""
    from open_clip import IMAGENET_CLASSNAMES  # heavy: ~4 s to import (timm, torchvision); only ImageNet needs it

    root = _root(cfg)
    files = sorted(f for f in root.glob("n*_*") if f.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not files:
        raise _missing("imagenet_sample", root, "set data.root to a folder of '<wnid>_<name>.JPEG' images.")
    wnid_index = _wnid_index()
    unknown = [f.name for f in files if f.name.split("_")[0] not in wnid_index]
    if unknown:
        raise ConfigError(f"Files in '{root}' do not start with an ImageNet-1k WordNet id, e.g. '{unknown[0]}'.")
    labels = [wnid_index[f.name.split("_")[0]] for f in files]
    return ImageDataset(list(IMAGENET_CLASSNAMES), labels, cfg.image_size or 224, files=files)


def _known_labels(ds) -> list[int] | None:
    """Labels of a torchvision-style dataset without decoding images, when it keeps them in an attribute."""
    for attr in ("targets", "_labels", "labels", "y"):
        values = getattr(ds, attr, None)
        if values is not None and len(values) == len(ds):
            return [int(v) for v in values]
    samples = getattr(ds, "samples", None)
    if samples is not None and len(samples) == len(ds):
        return [int(s[1]) for s in samples]
    return None


def _materialise_first(ds, n: int) -> tuple[list, list[int]]:
    """The first ``n`` items of an iterable (webdataset) source, in its fixed shard order, kept as uint8 arrays."""
    images, labels = [], []
    for image, label in ds:
        images.append(np.asarray(image.convert("RGB")))
        labels.append(int(label))
        if len(images) >= n:
            break
    return images, labels


def _clip_benchmark(cfg: DataCfg) -> ImageDataset:
    """Any dataset of CLIP_benchmark's builder (``data.benchmark``), read from ``data.root``. Map-style datasets
    keep their own order (sample id = index); webdataset copies (``wds/...``) are read in shard order and the first
    ``data.num_samples`` items are kept."""
    # heavy: CLIP_benchmark's builder takes ~2 s to import (torchvision datasets); only data.name=clip_benchmark needs it
    from clip_benchmark.datasets.builder import build_dataset as cb_build_dataset

    if not cfg.benchmark:
        raise ConfigError("data.name=clip_benchmark needs data.benchmark=<CLIP_benchmark dataset name> (e.g. cars, pets, dtd).")
    root = _root(cfg)
    is_wds = cfg.benchmark.startswith("wds/")
    if not is_wds and not cfg.download and not root.exists():
        raise _missing(cfg.benchmark, root, "set data.root to where the dataset lives, or data.download=true where "
                                            "CLIP_benchmark can download it (ImageNet-R/-Sketch and some others need a manual download).")
    try:
        ds = cb_build_dataset(cfg.benchmark, root=str(root), transform=None, split=cfg.split, download=cfg.download)
    except Exception as exc:  # torchvision raises RuntimeError/FileNotFoundError/URLError, CLIP_benchmark asserts
        raise _missing(cfg.benchmark, root, f"CLIP_benchmark could not build it ({type(exc).__name__}: {str(exc)[:200]}). "
                                            "Download it (data.download=true on a machine with internet, or by hand) and point "
                                            "data.root at it.") from None
    classnames = list(getattr(ds, "classes", []) or [])
    if is_wds:
        images, labels = _materialise_first(ds, cfg.num_samples or 10**9)
        if not images:
            raise _missing(cfg.benchmark, root, "the webdataset shards hold no samples.")
        return ImageDataset(classnames, labels, cfg.image_size or 224, array=images)
    return ImageDataset(classnames, _known_labels(ds), cfg.image_size or 224, source=ds, length=len(ds))


def _array_file(cfg: DataCfg) -> ImageDataset:
    """A compressed NumPy file (``.npz``) with ``images`` (uint8 ``[N, H, W, 3]``), ``labels`` and ``classnames``,
    such as the CIFAR-10 test sample shipped in ``clipure_lit/assets`` (sample id = row)."""
    path = find_path(cfg.root)
    if path is None or not path.is_file():
        raise _missing("array_file", Path(cfg.root), "set data.root to an .npz file with images, labels and classnames "
                                                     "(scripts/make_cifar10_sample.py writes one).")
    with np.load(path) as npz:
        missing = [k for k in ("images", "labels", "classnames") if k not in npz.files]
        if missing:
            raise ConfigError(f"Array file '{path}' lacks {missing}; it needs images (uint8 [N, H, W, 3]), labels and classnames.")
        images, labels, classnames = npz["images"], npz["labels"], [str(c) for c in npz["classnames"]]
    return ImageDataset(classnames, [int(v) for v in labels], cfg.image_size, array=images)


DATASETS: dict[str, Callable[[DataCfg], ImageDataset]] = {
    "array_file": _array_file,
    "clip_benchmark": _clip_benchmark,
    "cifar10": lambda cfg: _cifar(cfg, hundred=False),
    "cifar100": lambda cfg: _cifar(cfg, hundred=True),
    "imagenet": _imagenet,
    "image_folder": _image_folder,
    "imagenet_sample": _imagenet_sample,
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def build_dataset(cfg: DataCfg) -> ImageDataset:
    if cfg.name not in DATASETS:
        raise ConfigError(f"Unknown dataset data.name='{cfg.name}'. Valid choices: {list_datasets()}.")
    return DATASETS[cfg.name](cfg)


def select_ids(cfg: DataCfg, dataset: ImageDataset) -> list[int]:
    """The evaluated sample ids: from ``ids_file``, else the first N, else N drawn with ``subset_seed``
    (round-robin over classes, so the subset is class-balanced). Independent of the number of processes.

    Raises ``ConfigError`` when ``data.num_samples`` is not positive or exceeds the dataset's size (never a silent
    clamp: ``config.yaml`` would record a number that was not evaluated), or an id of ``ids_file`` is out of range."""
    n_total = len(dataset)
    if cfg.ids_file:
        path = resolve_path(cfg.ids_file, "sample-id list (data.ids_file)")
        ids = [int(line.split("#")[0]) for line in path.read_text().splitlines() if line.split("#")[0].strip()]
        bad = [i for i in ids if not 0 <= i < n_total]
        if bad:
            raise ConfigError(f"data.ids_file '{path}' has ids outside [0, {n_total}) for dataset '{cfg.name}', e.g. {bad[0]}.")
        return ids
    n = n_total if cfg.num_samples is None else int(cfg.num_samples)
    if n <= 0:
        raise ConfigError(f"data.num_samples={cfg.num_samples} must be positive (or null for the whole dataset).")
    if n > n_total:
        raise ConfigError(f"data.num_samples={n} asks for more images than dataset '{cfg.name}' at '{cfg.root}' holds "
                          f"({n_total}). Fix: set data.num_samples=null to evaluate all {n_total}, or a number <= {n_total}.")
    if cfg.subset == SubsetMode.first:
        return list(range(n))
    generator = torch.Generator().manual_seed(int(cfg.subset_seed))
    order = torch.randperm(n_total, generator=generator).tolist()
    if dataset.labels is None:  # labels unknown without decoding: a plain seeded draw
        return order[:n]
    per_class: dict[int, list[int]] = {}
    for i in order:
        per_class.setdefault(dataset.labels[i], []).append(i)
    queues = [per_class[k] for k in sorted(per_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for q in queues:
            if depth < len(q) and len(chosen) < n:
                chosen.append(q[depth])
        depth += 1
    return chosen


class IndexedSubset(torch.utils.data.Dataset):
    """Items ``(image [3, H, W] in [0, 1], label, sample_id)`` for the chosen ids."""

    def __init__(self, dataset: ImageDataset, ids: list[int]) -> None:
        self.dataset = dataset
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        sample_id = self.ids[index]
        image, label = self.dataset.load(sample_id)
        return image, label, sample_id
