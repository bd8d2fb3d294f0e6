"""Precomputed text embeddings (``prompts.class_embeddings``, ``prompts.blank_embedding``): the zero-shot head and
CLIPure's blank anchor without the text tower or a tokenizer.

File format (``.safetensors``, or ``.pt`` read with ``torch.load(weights_only=True)``):

* class embeddings: tensor ``embeddings`` ``[K, D]``, one row per class (any norm: rows that are not unit are
  L2-normalised on loading, as open_clip's zero-shot weights are), and the K class names: in a ``.pt`` file a list of strings under
  ``classnames``; in a ``.safetensors`` file a JSON list in the metadata entry ``classnames``;
* blank embedding: tensor ``embedding`` ``[D]``, the anchor direction (only its direction matters to CLIPure-Cos).

:func:`save_class_embeddings` and :func:`save_blank_embedding` write these files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from clipure_lit.errors import ConfigError
from clipure_lit.utils.paths import resolve_path

log = logging.getLogger(__name__)


def save_class_embeddings(path: str | Path, embeddings: Tensor, classnames: list[str]) -> Path:
    """Write ``embeddings [K, D]`` and their class names in the documented format (by ``path``'s suffix)."""
    path = Path(path)
    value = embeddings.detach().float().cpu().contiguous()
    if path.suffix == ".safetensors":
        save_file({"embeddings": value}, str(path), metadata={"classnames": json.dumps(list(classnames))})
    else:
        torch.save({"embeddings": value, "classnames": list(classnames)}, path)
    return path


def save_blank_embedding(path: str | Path, embedding: Tensor) -> Path:
    """Write a blank anchor ``[D]`` in the documented format."""
    path = Path(path)
    value = embedding.detach().float().cpu().contiguous()
    if path.suffix == ".safetensors":
        save_file({"embedding": value}, str(path))
    else:
        torch.save({"embedding": value}, path)
    return path


def _read(path: Path, key: str, where: str) -> tuple[dict, Tensor]:
    """``(other entries / metadata, the tensor under key)`` of an embedding file."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = dict(fh.metadata() or {})
                if key not in fh.keys():
                    raise KeyError(key)
                return meta, fh.get_tensor(key)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except KeyError:
        obj = None
    except Exception as exc:  # unreadable, truncated, or pickled objects other than tensors
        raise ConfigError(f"{where}='{path}' could not be read ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}). "
                          "Expected a .safetensors file or a .pt file loadable with torch.load(weights_only=True), in the "
                          "documented format (README, 'Your own CLIP').") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), Tensor):
        raise ConfigError(f"{where}='{path}' has no tensor '{key}'. Expected the documented format (README, 'Your own CLIP'): "
                          "embeddings): 'embeddings' [K, D] with 'classnames' for class embeddings, 'embedding' [D] for "
                          "the blank anchor.")
    return obj, obj[key]


def load_class_embeddings(path: str, classnames: list[str], embed_dim: int | None) -> Tensor:
    """The ``[D, K]`` class-embedding matrix (unit columns) stored in ``path``, in the order of ``classnames``.

    The file's class names must be the run's, in any order (rows are reordered to the run's).

    Raises:
        ConfigError: unreadable file, wrong shape or dimension, class names that differ.
    """
    where = "prompts.class_embeddings"
    file = resolve_path(path, f"precomputed class embeddings ({where})")
    extra, value = _read(file, "embeddings", where)
    names = extra.get("classnames")
    if isinstance(names, str):  # safetensors metadata: a JSON list
        try:
            names = json.loads(names)
        except json.JSONDecodeError:
            names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}='{path}' does not list its class names (a list of strings under 'classnames'; in a "
                          ".safetensors file a JSON list in the metadata). Without them the rows cannot be matched to the "
                          "dataset's classes.")
    if value.ndim != 2 or value.shape[0] != len(names):
        raise ConfigError(f"{where}='{path}' holds embeddings of shape {tuple(value.shape)} for {len(names)} class names; "
                          f"expected [{len(names)}, D], one row per class.")
    if embed_dim is not None and value.shape[1] != embed_dim:
        raise ConfigError(f"{where}='{path}' has {value.shape[1]}-dimensional embeddings, but the CLIP's image embeddings "
                          f"are {embed_dim}-dimensional. Fix: embeddings computed with this model's text tower.")
    if names != list(classnames):
        missing = [c for c in classnames if c not in names]
        extra_names = [c for c in names if c not in classnames]
        if missing or extra_names or len(set(names)) != len(names):
            raise ConfigError(f"{where}='{path}' lists class names that are not the run's: missing {missing[:10]}, "
                              f"not in the dataset {extra_names[:10]} (run: {len(classnames)} classes, file: {len(names)}). "
                              "Fix: embeddings for the dataset's classes (or data.classnames=<set> naming the file's).")
        log.info("%s: rows reordered to the dataset's class order.", where)
        value = value[[names.index(c) for c in classnames]]
    if not torch.isfinite(value).all() or (value.norm(dim=1) == 0).any():
        raise ConfigError(f"{where}='{path}' holds non-finite or all-zero rows.")
    value = value.float()
    norms = value.norm(dim=1)
    if (norms - 1).abs().max() > 1e-6:  # unit rows are kept bit for bit: the logits of the text tower's own matrix
        value = F.normalize(value, dim=1)
    return value.t().contiguous()  # [D, K]


def load_blank_embedding(path: str, embed_dim: int | None) -> Tensor:
    """The blank anchor ``[D]`` stored in ``path`` (not renormalised; only its direction matters)."""
    where = "prompts.blank_embedding"
    file = resolve_path(path, f"precomputed blank embedding ({where})")
    _, value = _read(file, "embedding", where)
    value = value.float().flatten() if value.ndim == 2 and value.shape[0] == 1 else value.float()
    if value.ndim != 1 or (embed_dim is not None and value.shape[0] != embed_dim):
        raise ConfigError(f"{where}='{path}' holds a tensor of shape {tuple(value.shape)}; expected [{embed_dim}] (the "
                          "CLIP's embedding size).")
    if not torch.isfinite(value).all() or float(value.norm()) == 0:
        raise ConfigError(f"{where}='{path}' is non-finite or zero: it has no direction.")
    return value
