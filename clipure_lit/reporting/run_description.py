"""The words that say what a run ran, for captions, titles and legends: the model, the defence, each attack (its
sub-attacks, radius, budget and the gradient it followed), the number of images, and the settings a group of runs
shares.

Everything is read from a run's ``results.json`` (``attacks``: the resolved settings of each attack token;
``purifiers``: each purifier's description) and its flattened ``config.yaml``; nothing is looked up elsewhere, so
the words describe the run as it ran.

Gradient families (:func:`gradient_family`) group attack tokens by what their gradient can show:

* ``released``: the defence's own gradient as released (CLIPure's inner step detached, ``@purifier`` on a purifier
  in ``as_released`` mode, or ``@as_released``): masking shows up here first;
* ``exact``: the exact white-box gradient (``@full``, or ``@purifier`` on a purifier in ``full`` mode or on no
  purifier at all);
* ``bpda``: straight-through (``@bpda_identity``); ``eot``: expectation over the purifier's randomness (``@eot``);
* ``transfer``: examples crafted on another model; ``black_box``: gradient-free (Square);
* ``own``: ``@purifier`` on a purifier without gradient modes (e.g. JPEG): its autograd gradient, whatever it is;
* ``unrecorded``: the run's ``results.json`` does not describe the attack.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import PurePath
from typing import Iterable, Sequence

FAMILIES = ("released", "exact", "bpda", "eot", "transfer", "black_box", "own", "unrecorded")
FAMILY_WORDS = {"released": "released gradient", "exact": "exact gradient", "bpda": "BPDA (straight-through)",
                "eot": "EOT (expected gradient)", "transfer": "transfer", "black_box": "black-box (no gradient)",
                "own": "purifier's own gradient", "unrecorded": "gradient not recorded"}
_SUB_ATTACK_WORDS = {"apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T", "fab": "FAB", "fab-t": "FAB-T",
                     "square": "Square"}
_IDENTITY = "IdentityPurifier"
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".npz")


def flat_config(config: dict) -> dict:
    """A config as ``config.yaml`` nests it, flattened to dotted keys (``{"clip.arch": ...}``); an already flat
    config comes back unchanged. Lists become tuples, as in the ablation report's runs."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
        else:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


def gradient_family(info: dict | None, purifiers: Sequence[dict] = ()) -> str:
    """The gradient family (module docstring) of one attack, from its ``results.json`` description and the run's
    purifier descriptions (``results.json`` ``purifiers``); ``unrecorded`` without a description."""
    if not info:
        return "unrecorded"
    if info.get("kind") == "transfer" or info.get("transfer_from"):
        return "transfer"
    if info.get("kind") == "black_box":
        return "black_box"
    mode = info.get("grad_mode")
    if mode == "purifier":
        modes = {p.get("grad_mode") for p in purifiers if p.get("class") != _IDENTITY}
        if not modes and purifiers:
            return "exact"  # no purifier: the classifier's own gradient is the exact one
        if modes == {"as_released"}:
            return "released"
        if modes == {"full"}:
            return "exact"
        return "own"
    return {"as_released": "released", "full": "exact", "bpda_identity": "bpda", "eot": "eot"}.get(mode, "own")


def radius(eps: float | None, norm: str | None) -> str:
    """An attack radius as papers write it: Linf in /255 (``4/255``, ``0.5/255``), other norms as numbers."""
    if eps is None:
        return "?"
    if norm in (None, "Linf"):
        scaled = Fraction(eps * 255).limit_denominator(8)
        value = f"{float(scaled):g}" if abs(float(scaled) - eps * 255) < 1e-6 else f"{eps * 255:.3g}"
        return f"{value}/255"
    return f"{eps:g}"


def budget(info: dict) -> str:
    """Iterations, restarts, queries and gradient samples of an attack: ``20 it. x 5 restarts``, ``500 queries``,
    ``4 gradient draws per step`` (EOT)."""
    subs = info.get("attacks") or []
    parts = []
    if info.get("n_iter") and any(s != "square" for s in subs):
        parts.append(f"{info['n_iter']} it." + (f" x {info['n_restarts']} restarts" if (info.get("n_restarts") or 1) > 1 else ""))
    if info.get("n_queries") and "square" in subs:
        parts.append(f"{info['n_queries']} queries")
    if (info.get("eot_samples") or 1) > 1 and info.get("grad_mode") == "eot":
        parts.append(f"{info['eot_samples']} gradient draws per step")
    return ", ".join(parts)


def attack_fields(info: dict | None, purifiers: Sequence[dict] = ()) -> list[str]:
    """One attack as ``[sub-attacks, radius, budget, gradient]`` (an empty budget left out):
    ``["APGD-CE+APGD-T", "Linf 4/255", "20 it. x 5 restarts", "released gradient"]``."""
    if not info:
        return ["settings not recorded"]
    subs = "+".join(_SUB_ATTACK_WORDS.get(s, s) for s in info.get("attacks") or []) or info.get("version", "?")
    family = gradient_family(info, purifiers)
    how = f"transfer from {info.get('transfer_from')}" if family == "transfer" else FAMILY_WORDS[family]
    return [p for p in (subs, f"{info.get('norm') or 'Linf'} {radius(info.get('eps'), info.get('norm'))}", budget(info), how)
            if p]


def attack_words(info: dict | None, purifiers: Sequence[dict] = ()) -> str:
    """One attack in words: ``APGD-CE+APGD-T, Linf 4/255, 20 it. x 5 restarts, released gradient``."""
    return ", ".join(attack_fields(info, purifiers))


def model_words(config: dict) -> str:
    """The CLIP model of a flattened config: ``clip.arch`` and the file or tag of ``clip.pretrained``."""
    arch = config.get("clip.arch") or "?"
    weights = config.get("clip.pretrained")
    if not weights:
        return f"{arch} (random weights)" if "clip.pretrained" in config else str(arch)
    return f"{arch} ({PurePath(str(weights)).name})"


def defence_words(config: dict, purifiers: Sequence[dict] = ()) -> str:
    """The purification of a run: ``clipure_cos (as_released)``, or ``no purifier``."""
    chosen = [config.get(k) for k in ("purifier.pixel", "purifier.latent") if config.get(k) not in (None, "identity", "none")]
    if not chosen:
        described = [p for p in purifiers if p.get("class") != _IDENTITY]
        if not described:
            return "no purifier"
        return " + ".join(p["class"] + (f" ({p['grad_mode']})" if p.get("grad_mode") else "") for p in described)
    return " + ".join(name + (f" ({config[f'purifier.{name}.grad_mode']})" if config.get(f"purifier.{name}.grad_mode") else "")
                      for name in chosen)


def count_words(counts: Iterable[int], noun: str = "images") -> str:
    """``100 images``, or the range when runs differ: ``60-100 images``."""
    values = sorted(set(counts))
    if not values:
        return f"? {noun}"
    return f"{values[0]} {noun}" if len(values) == 1 else f"{values[0]}-{values[-1]} {noun}"


def one_or_varies(values: Iterable[str], what: str, at_most: int = 3) -> str:
    """The value all runs share, up to ``at_most`` values joined by `` / ``, or ``<what> varies`` (the words of a
    caption that covers several runs)."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) == 1:
        return distinct[0]
    return " / ".join(distinct) if len(distinct) <= at_most else f"{what} varies across runs"


def attack_legend(runs_results: Sequence[dict], token: str) -> str:
    """``token: <words>`` for an attack token over several runs' results; a part of the words that differs between
    runs (a swept radius, budget or gradient) lists its values in braces: ``Linf {1/255, 2/255, 4/255}``."""
    rows = [attack_fields(r.get("attacks", {}).get(token), r.get("purifiers", ())) for r in runs_results
            if token in r.get("robust", {})]
    if len({len(row) for row in rows}) != 1:  # budgets present in some runs only: no field to line up
        return f"{token}: " + " | ".join(dict.fromkeys(", ".join(row) for row in rows))
    merged = []
    for values in zip(*rows):
        distinct = sorted(set(values), key=natural_key)
        merged.append(distinct[0] if len(distinct) == 1 else _braced(distinct))
    return f"{token}: " + ", ".join(merged)


def _braced(values: list[str]) -> str:
    """Values that share a first word (``Linf 1/255``, ``Linf 2/255``) as ``Linf {1/255, 2/255}``, else all braced."""
    heads = {v.split(" ", 1)[0] for v in values}
    if len(heads) == 1 and all(" " in v for v in values):
        return f"{heads.pop()} {{" + ", ".join(v.split(" ", 1)[1] for v in values) + "}"
    return "{" + ", ".join(values) + "}"


def short_key(key: str, keys: Sequence[str]) -> str:
    """The last segments of a dotted key that tell it apart from ``keys``: ``num_steps``, or ``clipure_cos.num_steps``
    when another key ends in ``num_steps`` too."""
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        tail = ".".join(parts[-n:])
        if sum(k == tail or k.endswith("." + tail) for k in keys) <= 1:
            return tail
    return key


def natural_key(value) -> tuple:
    """A sort key that orders numbers by value and text naturally (``run2`` before ``run10``), booleans False
    first, and None last; values of different kinds never compare with each other."""
    if value is None:
        return (3,)
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (1, float(value))
    text = ", ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    return (2, tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in re.split(r"(\d+)", text) if p))


def value_words(value) -> str:
    """A config value as a label: ``10`` for 10.0, lists as ``[a, b]``, None as ``null``, a weight file by its name
    (``checkpoints/vit.safetensors`` -> ``vit.safetensors``)."""
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(value_words, value)) + "]"
    if isinstance(value, str) and "/" in value and PurePath(value).suffix in _WEIGHT_SUFFIXES:
        return PurePath(value).name
    return str(value)
