"""On-disk cache of CLIP image embeddings of a dataset, computed once with a frozen backbone.

Layout: ``<cache_dir>/<key>/embeddings.npy`` (float32 ``[N, D]``, unit rows, written in place through a memory
map) and ``meta.json`` (``{"n", "dim", "done", "fingerprint", "dataset"}``). ``key`` hashes the backbone's
weights fingerprint (every parameter and buffer, plus resize mode, input size, mean/std and input dtype) and the
dataset identity (name, root, split, image size, number of images), so any change to the backbone gives a new
entry. Rows are computed in dataset order in chunks; ``done`` is advanced after each chunk is flushed, so an
interrupted run resumes at the first missing row. Processes sharing an entry (the ranks of a multi-process run,
concurrent runs) hold ``<key>/.lock`` in turn: the first computes the rows, the others find them done.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from clipure_lit.training.common import weights_fingerprint

log = logging.getLogger(__name__)


@dataclass
class CacheResult:
    """The embeddings (``[N, D]`` float32, memory-mapped) and how many rows this call had to compute."""

    embeddings: Tensor
    computed: int
    path: Path


def backbone_fingerprint(backbone) -> str:
    """Fingerprint of everything that maps pixels to embeddings in a ``ClipBackbone``."""
    extra = {"size": backbone.image_size, "resize": backbone.resize_mode, "dtype": str(backbone.input_dtype),
             "mean": backbone.mean.flatten().tolist(), "std": backbone.std.flatten().tolist()}
    return weights_fingerprint(backbone.model, extra)


def _write_meta(path: Path, meta: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)


@torch.no_grad()
def cached_image_embeddings(backbone, dataset, ids: list[int], dataset_id: dict, cache_dir: str | Path,
                            batch_size: int = 256, chunk: int = 2048,
                            load_batch: Callable[[int, int], Tensor] | None = None) -> CacheResult:
    """Unit image embeddings ``[len(ids), D]`` of ``dataset.load(i)`` for ``i`` in ``ids`` (see module docstring).

    Args:
        backbone: a frozen ``ClipBackbone`` (its ``encode_image`` takes images in [0, 1]).
        dataset: an ``ImageDataset`` (``load(i) -> (image [3, H, W] in [0, 1], label)``).
        ids: the sample ids, in the order of the returned rows.
        dataset_id: anything that identifies the data (name, root, split, ...); part of the key.
        load_batch: optional fast path ``(start, stop) -> images [stop - start, 3, H, W]`` in [0, 1] for the rows
            ``ids[start:stop]`` (e.g. from the decoded uint8 cache); it must give what ``dataset.load`` gives.
    """
    fp = backbone_fingerprint(backbone)
    ident = {"fingerprint": fp, "dataset": dataset_id, "ids_sha": hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = Path(cache_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        return _fill(backbone, dataset, ids, ident, folder, batch_size, chunk, load_batch)


def _fill(backbone, dataset, ids: list[int], ident: dict, folder: Path, batch_size: int, chunk: int,
          load_batch: Callable[[int, int], Tensor] | None) -> CacheResult:
    """The body of :func:`cached_image_embeddings` in the entry's ``folder``, with its lock held."""
    arr_path, meta_path = folder / "embeddings.npy", folder / "meta.json"
    n, dim = len(ids), backbone.embed_dim
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is None or meta.get("n") != n or meta.get("dim") != dim or not arr_path.is_file():
        arr = np.lib.format.open_memmap(arr_path, mode="w+", dtype=np.float32, shape=(n, dim))
        del arr
        meta = {"n": n, "dim": dim, "done": 0, **ident}
        _write_meta(meta_path, meta)
    done = int(meta["done"])
    computed = n - done
    if done < n:
        log.info("Embedding cache %s: computing rows %d..%d of %d", folder, done, n, n)
        arr = np.load(arr_path, mmap_mode="r+")
        device = backbone.mean.device
        while done < n:
            stop = min(n, done + chunk)
            for start in range(done, stop, batch_size):
                end = min(stop, start + batch_size)
                x = load_batch(start, end) if load_batch is not None else torch.stack([dataset.load(i)[0] for i in ids[start:end]])
                sel = ids[start:end]
                x = x.to(device)  # [b, 3, H, W]
                arr[start:start + len(sel)] = backbone.encode_image(x).float().cpu().numpy()  # [b, D]
            arr.flush()
            done = stop
            meta["done"] = done
            _write_meta(meta_path, meta)
        del arr
    else:
        log.info("Embedding cache hit: %s (%d x %d)", folder, n, dim)
    emb = torch.from_numpy(np.array(np.load(arr_path, mmap_mode="r")))  # [N, D], read into memory
    return CacheResult(emb, computed, arr_path)
