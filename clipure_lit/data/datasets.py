"""Dataset registry. Every dataset exposes ``classnames``, ``labels`` (list[int]) and ``load(i) -> (image, label)``
with the image a ``[3, H, W]`` float tensor in [0, 1] (no normalisation: that happens inside the model).

Sample ids are indices into each dataset's canonical order (documented per dataset), so a subset is the same on
every run and every number of processes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clipure_lit.data.config import DataCfg, OnBadImage, SubsetMode, check_data_values
from clipure_lit.errors import ClipureError, ConfigError, DataNotFoundError
from clipure_lit.utils.paths import find_path, resolve_path

log = logging.getLogger(__name__)

SUBSET_DIR = Path(__file__).resolve().parent / "subsets"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# What Pillow raises for a file that is not an image, is truncated or corrupt: UnidentifiedImageError and "image file
# is truncated" are OSErrors, a broken PNG chunk is a SyntaxError, some decoders raise ValueError.
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# A complete JPEG ends with the end-of-image marker; it is looked for in this many final bytes (trailing padding).
JPEG_TAIL_BYTES = 1024
# Files named in one warning or error message; the rest are counted.
LISTED_FILES = 20


class ImageReadError(ConfigError):
    """An image file cannot be read or converted; the message names the file and the fix.

    Raised where the image is loaded, which may be a DataLoader worker. PyTorch re-raises a worker's exception in
    the main process as ``type(exc)(text)``, with the worker's traceback in ``text``; this class keeps only its own
    one-paragraph message from that text, so entry points still print one paragraph and no traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_own_message(message, type(self).__name__))


def _own_message(text: str, class_name: str) -> str:
    """The message of a worker's ``class_name`` exception inside PyTorch's re-raise text (its last line reads
    ``module.ClassName: message``), or ``text`` unchanged when it is not such a text."""
    if not text.startswith("Caught ") or "Traceback" not in text:
        return text
    _, found, message = text.rstrip().splitlines()[-1].partition(f"{class_name}: ")
    return message if found else text


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _listed(paths: list) -> str:
    shown = ", ".join(f"'{p}'" for p in paths[:LISTED_FILES])
    return shown + (f" and {len(paths) - LISTED_FILES} more" if len(paths) > LISTED_FILES else "")


def _has_jpeg_end(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - JPEG_TAIL_BYTES))
        return b"\xff\xd9" in f.read()


def probe_image(path: Path) -> tuple[int, int]:
    """``(width, height)`` of the image file at ``path``, after checking that it is a complete image, without
    decoding it where the format allows: the header is read lazily; a PNG's chunks are walked with their checksums
    (``verify``); a JPEG must end with its end-of-image marker (it is decoded only when the marker is missing, to
    tell a truncated file from one with trailing bytes); other formats are decoded.

    Raises:
        One of ``READ_ERRORS`` (Pillow's own exception) when the file is missing, not an image, truncated or corrupt.
    """
    with Image.open(path) as image:
        size, fmt = image.size, image.format
        if fmt == "PNG":
            image.verify()
            return size
        if fmt in ("JPEG", "MPO") and _has_jpeg_end(path):
            return size
        image.load()
    return size


def _grey16_as_float(image: Image.Image) -> Image.Image | None:
    """A 16-bit greyscale image (``I;16``, ``I;16B``, ...; also ``I``, which older Pillow versions give for 16-bit
    PNGs) as a float image (mode ``F``) in [0, 1], divided by 65535; None for any other mode.

    Raises:
        ValueError: an ``I`` image with values outside [0, 65535] (a 32-bit integer image has no known range).
    """
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return None
    values = np.asarray(image)
    if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"32-bit integer image (mode I) with values in [{values.min()}, {values.max()}], outside the "
                         "16-bit range [0, 65535]; save it as an 8- or 16-bit image")
    return Image.fromarray(values.astype(np.float32) / np.float32(65535.0))


def to_tensor(image: Image.Image, size: int | None) -> Tensor:
    """PIL image -> ``[3, S, S]`` in [0, 1]: shorter side resized to ``size`` (bicubic) and centre-cropped; no
    resizing when ``size`` is None (the open_clip eval transform without Normalize).

    8-bit images go through ``convert("RGB")`` (greyscale replicated, palette expanded, alpha dropped). 16-bit
    greyscale is scaled by its bit depth (divided by 65535), not clipped to 8 bits, resized as floats and replicated
    to 3 channels. (Pillow reads 16-bit RGB files as 8-bit ``RGB``, scaled by their depth.)

    Raises:
        ValueError: a mode ``I`` image outside the 16-bit range.
    """
    # heavy: torchvision takes ~1.5 s to import; config validation imports this module (list_datasets) without images
    from torchvision.transforms import functional as TF

    grey = _grey16_as_float(image)
    image = image.convert("RGB") if grey is None else grey
    if size is not None:
        image = TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC), size)
    tensor = TF.to_tensor(image)  # 8-bit: divided by 255; mode F: the values as they are
    if grey is not None:
        tensor = tensor.clamp(0.0, 1.0).expand(3, -1, -1).contiguous()  # bicubic overshoot; greyscale -> 3 channels
    return tensor


class ImageDataset:
    """Images given either as file paths or as an in-memory uint8 array ``[N, H, W, 3]``, with labels and class
    names. Plain attributes only, so it pickles into DDP-spawned processes and data-loader workers."""

    def __init__(self, classnames: list[str], labels: list[int] | None, size: int | None, files: list[Path] | None = None,
                 array=None, source=None, length: int | None = None, origin: str | None = None) -> None:
        self.classnames = classnames
        self.labels = labels  # None when the source cannot list labels without decoding every image
        self.size = size
        self.files = files
        self.array = array
        self.source = source  # an indexable dataset returning (PIL image, label), e.g. a CLIP_benchmark dataset
        self._length = length if length is not None else len(labels)
        self.origin = origin  # how error messages name a ``source`` dataset ("CLIP_benchmark dataset 'dtd' in ...")

    def __len__(self) -> int:
        return self._length

    def load(self, index: int) -> tuple[Tensor, int]:
        """``(image [3, H, W] in [0, 1], label)`` of sample ``index``.

        Raises:
            ImageReadError: the file (or the source's item) cannot be read, naming it; also inside a DataLoader worker.
        """
        if self.array is not None:
            return to_tensor(Image.fromarray(self.array[index]), self.size), self.labels[index]
        try:
            if self.source is not None:
                image, label = self.source[index]
                return to_tensor(image, self.size), int(label)
            with Image.open(self.files[index]) as image:
                return to_tensor(image, self.size), self.labels[index]
        except ClipureError:
            raise
        except READ_ERRORS as exc:
            if self.source is not None:
                raise ImageReadError(f"Sample id {index} of {self.origin or 'the dataset'} cannot be read: "
                                     f"{_reason(exc)}. Fix: repair or replace that item of the dataset, or leave it out "
                                     "with data.ids_file.") from exc
            raise ImageReadError(f"Image '{self.files[index]}' (sample id {index}) cannot be read: {_reason(exc)}. "
                                 "Fix: replace or delete the file (data.on_bad_image=skip leaves out the files found "
                                 "unreadable when the run starts).") from exc


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
    return ImageDataset(classnames, _known_labels(ds), cfg.image_size or 224, source=ds, length=len(ds),
                        origin=f"CLIP_benchmark dataset '{cfg.benchmark}' in '{root}'")


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


# Datasets read from a local folder (or file) that no download can fill, with the fix their missing-root error names.
_LOCAL_ROOTS = {
    "image_folder": "set data.root to a folder with one sub-folder of images per class.",
    "imagenet": "set data.root to the ImageNet validation folder (one sub-folder per WordNet id).",
    "imagenet_sample": "set data.root to a folder of '<wnid>_<name>.JPEG' images.",
}


def check_data_paths(cfg: DataCfg) -> None:
    """Refuse a dataset location or sample-id list that does not exist on this machine, without reading any image:
    ``data.ids_file``, and ``data.root`` of the datasets that live in a local folder or file (a torchvision or
    CLIP_benchmark dataset with ``data.download=true`` may still be fetched, so its root is not required). Runs when
    the config is composed and again when the dataset is built.

    Raises:
        DataNotFoundError: naming the key, where it was looked for and the fix.
    """
    if cfg.ids_file:
        resolve_path(cfg.ids_file, "sample-id list (data.ids_file)")
    if cfg.name == "array_file":
        path = find_path(cfg.root)
        if path is None or not path.is_file():
            raise _missing("array_file", Path(cfg.root), "set data.root to an .npz file with images, labels and "
                                                         "classnames (scripts/make_cifar10_sample.py writes one).")
    elif cfg.name in _LOCAL_ROOTS:
        if not _root(cfg).is_dir():
            raise _missing(cfg.name, _root(cfg), _LOCAL_ROOTS[cfg.name])
    elif cfg.name in ("cifar10", "cifar100") and not cfg.download and not Path(cfg.root).exists():
        raise _missing(cfg.name, Path(cfg.root), "set data.download=true to let torchvision fetch it (needs internet), "
                                                 "or point data.root at a folder that holds it.")
    elif cfg.name == "clip_benchmark" and cfg.benchmark and not str(cfg.benchmark).startswith("wds/") \
            and not cfg.download and not _root(cfg).exists():
        raise _missing(cfg.benchmark, _root(cfg), "set data.root to where the dataset lives, or data.download=true where "
                                                  "CLIP_benchmark can download it (ImageNet-R/-Sketch and some others need "
                                                  "a manual download).")


def build_dataset(cfg: DataCfg) -> ImageDataset:
    if cfg.name not in DATASETS:
        raise ConfigError(f"Unknown dataset data.name='{cfg.name}'. Valid choices: {list_datasets()}.")
    check_data_paths(cfg)
    return DATASETS[cfg.name](cfg)


def select_ids(cfg: DataCfg, dataset: ImageDataset) -> list[int]:
    """The evaluated sample ids: from ``ids_file``, else the first N, else N drawn with ``subset_seed``
    (round-robin over classes, so the subset is class-balanced). Independent of the number of processes.

    Raises ``ConfigError`` when ``data.num_samples`` is not positive or exceeds the dataset's size (never a silent
    clamp: ``config.yaml`` would record a number that was not evaluated), or an id of ``ids_file`` is out of range."""
    check_data_values(cfg)  # the checks the config was composed with, for callers that built ``cfg`` themselves
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
                          f"({n_total}). Fix: set data.num_samples=null to evaluate all {n_total}, or a number "
                          f"<= {n_total}.")
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


def shard_batches(num_batches: int, num_shards: int) -> list[range]:
    """The batch indices of each shard: ``num_batches`` batches (in the one-process run's order) split into
    ``num_shards`` contiguous ranges, shard ``k`` holding ``[floor(k B / N), floor((k + 1) B / N))`` (sizes differ by
    at most one batch; the earlier shards get the smaller ones). Deterministic: it depends on the counts only."""
    return [range(k * num_batches // num_shards, (k + 1) * num_batches // num_shards) for k in range(num_shards)]


def shard_ids(ids: list[int], batch_size: int, num_shards: int, shard: int | None) -> list[int]:
    """The ids of ``shard`` out of ``num_shards``: ``ids`` (the evaluated selection, in order) cut into blocks of
    ``batch_size`` (exactly the one-process run's batches, the last one possibly short), and the blocks of the
    shard's range (:func:`shard_batches`). A batch's random draws are seeded from its sample ids and batch-coupled
    purifiers see the whole batch, so every shard's batches, and therefore its per-sample results, are those of the
    one-process run. ``shard=None`` (with one shard): all of ``ids``.

    Raises:
        ConfigError: more shards than batches (a shard would be empty), or a shard outside ``[0, num_shards)``.
    """
    if shard is None and num_shards == 1:
        return list(ids)
    num_batches = -(-len(ids) // batch_size)
    if num_shards > num_batches:
        raise ConfigError(f"data.num_shards={num_shards} is more than the {num_batches} batch(es) of the {len(ids)} "
                          f"evaluated images at data.batch_size={batch_size}: a shard is a range of whole batches, so "
                          f"some shards would be empty. Fix: at most --shards {num_batches}, or more samples.")
    if shard is None or not 0 <= shard < num_shards:
        raise ConfigError(f"data.shard={shard} is not one of the {num_shards} shards (0..{num_shards - 1}). "
                          f"Fix: set data.shard=<0..{num_shards - 1}>.")
    batches = shard_batches(num_batches, num_shards)[shard]
    return list(ids[batches.start * batch_size:batches.stop * batch_size])


def check_images(cfg: DataCfg, dataset: ImageDataset, ids: list[int]) -> tuple[list[int], list[Path]]:
    """Check the files of the selected ``ids`` before anything else is built (:func:`probe_image`: headers and
    end markers, no full decode where the format allows) and return ``(ids to evaluate, files left out)``.

    A file that cannot be read raises ``ImageReadError`` naming it (``data.on_bad_image=error``), or is left out
    with one warning listing the files (``skip``; ``ConfigError`` when none remains). With ``data.image_size`` null
    the images are batched at their native size, so one whose size differs from the most common one raises
    ``ConfigError`` naming the file, both sizes and ``data.image_size``. Datasets held in memory or read through
    another library (CIFAR, array files, CLIP_benchmark) have no files to check and pass unchanged.
    """
    ids = list(ids)
    if dataset.files is None:
        return ids, []
    sizes: dict[int, tuple[int, int]] = {}
    bad: list[tuple[Path, str]] = []
    for i in ids:
        try:
            sizes[i] = probe_image(dataset.files[i])
        except READ_ERRORS as exc:
            bad.append((dataset.files[i], _reason(exc)))
    paths = [path for path, _ in bad]
    if bad and OnBadImage(cfg.on_bad_image) == OnBadImage.error:
        others = (f"; {len(bad) - 1} more of the {len(ids)} selected images cannot either: {_listed(paths[1:])}"
                  if len(bad) > 1 else "")
        raise ImageReadError(f"Image '{paths[0]}' cannot be read ({bad[0][1]}){others}. Fix: replace or delete the "
                             "file(s), or set data.on_bad_image=skip to evaluate without them.")
    kept = [i for i in ids if i in sizes]
    if bad and not kept:
        raise ConfigError(f"None of the {len(ids)} selected images of '{cfg.root}' can be read, e.g. '{paths[0]}' "
                          f"({bad[0][1]}). Fix: point data.root at a folder of images.")
    if bad:
        log.warning("data.on_bad_image=skip: left out %d of the %d selected images, which cannot be read; evaluating "
                    "the other %d. Files: %s", len(bad), len(ids), len(kept), _listed(paths))
    _check_native_sizes(dataset, kept, sizes)
    return kept, paths


def _check_native_sizes(dataset: ImageDataset, ids: list[int], sizes: dict[int, tuple[int, int]]) -> None:
    """Without ``data.image_size`` a batch stacks images at their native size: every selected one must share it."""
    if dataset.size is not None or not ids:
        return
    common = Counter(sizes[i] for i in ids).most_common(1)[0][0]
    odd = [i for i in ids if sizes[i] != common]
    if not odd:
        return
    (width, height), (common_w, common_h) = sizes[odd[0]], common
    others = (f" ({len(odd)} of the {len(ids)} selected images differ: {_listed([dataset.files[i] for i in odd])})"
              if len(odd) > 1 else "")
    raise ConfigError(f"Image '{dataset.files[odd[0]]}' is {width}x{height} but the other selected images are "
                      f"{common_w}x{common_h}{others}; with data.image_size=null images keep their native size and a "
                      f"batch needs one size. Fix: set data.image_size=<N> (e.g. data.image_size={min(common)}) to "
                      "resize and centre-crop every image to NxN, or remove the odd files.")


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
