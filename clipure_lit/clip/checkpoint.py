"""Load real-world CLIP checkpoints into an open_clip model, strictly and safely.

Accepted files (``clip.pretrained``):

* an open_clip or OpenAI state dict (``.pt``/``.pth``/``.bin``), keys as in open_clip's model
  (``visual.conv1.weight``, ``transformer.resblocks.0...``, ``text_projection``, ``logit_scale``);
* a training checkpoint that wraps one: ``{"state_dict": ...}`` (Lightning, open_clip's training script),
  ``{"model": ...}`` or ``{"model_state_dict": ...}``, whose keys carry a prefix (``model.backbone.model.``,
  ``module.``): the prefix under which most keys match the architecture is detected and removed;
* a ``.safetensors`` file with either of the above key layouts.

Pickled files are read with ``torch.load(weights_only=True)`` only (tensors and plain containers; never arbitrary
objects), safetensors with ``safetensors.torch.load_file``. Entries named in ``clip.ignore_keys`` are dropped; any
other entry the architecture lacks (unexpected), parameter the file lacks (missing) or shape that differs is a
:class:`ConfigError` of one paragraph naming them.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from clipure_lit.errors import ConfigError

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN = 8  # names listed per kind of mismatch


class CheckpointReadError(Exception):
    """The file could not be read as tensors (not a checkpoint, truncated, or holding pickled objects)."""


def read_tensors(path: str | Path) -> dict[str, Tensor]:
    """The ``{name: tensor}`` mapping stored in ``path`` (a wrapper's ``state_dict``/``model`` entry when present).

    Raises:
        CheckpointReadError: the file is not a safetensors file or a ``weights_only=True``-loadable dict of tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
            raise CheckpointReadError(f"{type(exc).__name__}: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickler raises several types; never retried without weights_only
        detail = " ".join(str(exc).split())
        if "weights_only" in detail or "Unsupported global" in detail:
            detail = ("it holds pickled objects other than tensors (a TorchScript archive or a training checkpoint with "
                      "custom classes); save its state_dict alone with torch.save or safetensors")
        raise CheckpointReadError(f"{type(exc).__name__}: {detail}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointReadError(f"it holds a {type(obj).__name__}, not a mapping of parameter names to tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    dropped = sorted(str(k) for k in obj if not isinstance(obj[k], Tensor))
    if dropped:
        log.info("Checkpoint %s: ignoring %d non-tensor entries (%s)", path, len(dropped), ", ".join(dropped[:_SHOWN]))
    if not tensors:
        raise CheckpointReadError("it holds no tensors")
    return tensors


def detect_prefix(names: list[str], model_keys: set[str]) -> str:
    """The prefix (``""``, ``"module."``, ``"model.backbone.model."``...) that, removed from ``names``, makes the
    most of them parameter names of the model; ties go to the shortest."""
    counts: Counter[str] = Counter()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in model_keys:
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
    if not counts:
        return ""
    return max(counts, key=lambda p: (counts[p], -len(p)))


def _ignored(name: str, stripped: str | None, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or (stripped is not None and fnmatch.fnmatchcase(stripped, p))
               for p in patterns)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def load_into(model: nn.Module, path: str | Path, ignore_keys: list[str] | tuple[str, ...] = (),
              where: str = "clip.pretrained", arch: str = "") -> dict:
    """Load the weights in ``path`` into ``model`` (strict after ``ignore_keys``).

    Returns:
        ``{"prefix": detected prefix, "ignored": [names dropped by ignore_keys]}``.

    Raises:
        CheckpointReadError: unreadable file.
        ConfigError: missing, unexpected or mis-shaped entries, in one paragraph.
    """
    from open_clip.model import convert_to_custom_text_state_dict  # heavy: open_clip (~4 s); only building a model needs it

    patterns = [str(p) for p in ignore_keys]
    tensors = read_tensors(path)
    model_state = model.state_dict()
    model_keys = set(model_state)
    prefix = detect_prefix(list(tensors), model_keys)
    state, ignored, unexpected = {}, [], []
    for name, value in tensors.items():
        stripped = name[len(prefix):] if name.startswith(prefix) else None
        if _ignored(name, stripped, patterns):
            ignored.append(name)
        elif stripped is None:
            unexpected.append(name)
        else:
            state[stripped] = value
    if "positional_embedding" in state and "positional_embedding" not in model_keys:
        state = convert_to_custom_text_state_dict(state)  # old flat text-tower layout -> open_clip's CustomTextCLIP
    if "logit_scale" in state and "logit_scale" in model_state and state["logit_scale"].ndim != model_state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model_state["logit_scale"].shape)
    unexpected += [prefix + k for k in state if k not in model_keys]
    missing = sorted(k for k in model_keys if k not in state)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(model_state[k].shape)}" for k in sorted(state)
              if k in model_state and state[k].shape != model_state[k].shape]
    unused = [p for p in patterns if not any(_ignored(n, n[len(prefix):] if n.startswith(prefix) else None, [p]) for n in tensors)]
    if unused:
        log.warning("%s: clip.ignore_keys entries %s match no entry of %s.", where, unused, path)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"Missing keys ({len(missing)}, parameters of the architecture not in the file): {_listed(missing)}")
        if unexpected:
            parts.append(f"Unexpected keys ({len(unexpected)}, entries of the file the architecture lacks): "
                         f"{_listed(sorted(unexpected))}")
        if shapes:
            parts.append(f"Shape mismatches ({len(shapes)}, file vs architecture): {_listed(shapes)}")
        raise ConfigError(
            f"{where}='{path}' does not match clip.arch='{arch}'"
            + (f" (entries read under the prefix '{prefix}')" if prefix else "") + ". " + ". ".join(parts) + ". "
            "Fix: point clip.arch / clip.model_config at the architecture the file was saved from; list entries that "
            "are not model weights (a vocabulary table, a classifier head) in clip.ignore_keys=[name,...] (fnmatch "
            "patterns such as 'head.*' allowed). Missing parameters and other shapes cannot be ignored: they mean another "
            "architecture or an incomplete file.")
    model.load_state_dict({k: v for k, v in state.items()}, strict=True)
    if prefix or ignored:
        log.info("%s: loaded %d tensors from %s (prefix '%s' removed; ignored: %s)", where, len(state), path, prefix,
                 ignored or "none")
    return {"prefix": prefix, "ignored": ignored}
