"""Decode a dataset once into a uint8 array on disk, so training never decodes JPEGs per epoch.

``load_uint8(dataset, cache_dir, ids)`` returns ``(images uint8 [N, S, S, 3], labels int64 [N])`` for the sample
ids ``ids`` (all when None). File-based datasets are decoded with the same PIL steps as evaluation (``to_tensor``:
RGB, optional bicubic resize of the shorter side + centre crop) and written to ``<cache_dir>/<key>.npy`` (+ ``.json``
metadata); ``key`` hashes the selected files (paths, sizes, modification times) and the image size, so a changed
folder is decoded again. Array-based datasets (torchvision CIFAR) are indexed directly. Processes sharing the cache
(the ranks of a multi-process run, concurrent runs) take ``<key>.lock`` in turn: the first decodes, the others
read its file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

log = logging.getLogger(__name__)


def _key(files: list, size: int | None) -> str:
    h = hashlib.sha256(f"size={size}".encode())
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).resolve()}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:20]


def _decode(path: Path, size: int | None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if size is not None:
        image = TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC), size)
    return np.asarray(image, dtype=np.uint8)


def load_uint8(dataset, cache_dir: str | Path | None, ids: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """``(images [N, S, S, 3] uint8, labels [N] int64)`` of samples ``ids`` of an ``ImageDataset`` (module docstring)."""
    ids = list(range(len(dataset))) if ids is None else list(ids)
    labels = torch.as_tensor([dataset.labels[i] for i in ids], dtype=torch.long)
    if dataset.array is not None and dataset.size is None:
        return torch.from_numpy(np.ascontiguousarray(dataset.array[ids])), labels
    if dataset.files is None:
        raise ValueError("load_uint8 needs a file-based dataset, or an array-based one at its native size.")
    files = [dataset.files[i] for i in ids]
    if cache_dir is None:
        return _decode_all(files, dataset.size, None), labels
    path = Path(cache_dir) / f"{_key(files, dataset.size)}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        meta_path = path.with_suffix(".json")
        if path.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("complete") and meta.get("n") == len(files):
                log.info("Decoded-image cache hit: %s (%d images)", path, len(files))
                return torch.from_numpy(np.load(path)), labels
        return _decode_all(files, dataset.size, path), labels


def _decode_all(files: list, size: int | None, path: Path | None) -> Tensor:
    """uint8 ``[N, S, S, 3]`` of ``files``, also written to ``path`` (+ ``.json``) when given."""
    log.info("Decoding %d images once into a uint8 cache (%s)", len(files), path or "memory only")
    first = _decode(files[0], size)
    images = np.empty((len(files), *first.shape), dtype=np.uint8)  # [N, S, S, 3]
    for i, f in enumerate(files):
        img = first if i == 0 else _decode(f, size)
        if img.shape != first.shape:
            raise ValueError(f"Image '{f}' has shape {img.shape}, expected {first.shape}; set data.image_size to resize.")
        images[i] = img
    if path is not None:
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, images)
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps({"n": len(files), "shape": list(images.shape), "complete": True,
                                                         "first_file": str(files[0])}))
    return torch.from_numpy(images)
