"""Which config keys a report names: the settings a group of runs holds fixed (for captions), and the fewest varying
keys that tell the runs apart (for table columns and panel titles).

A group of runs with different defences varies in dozens of keys that move together (every ``purifier.clipure_diff.*``
key is set for the CLIPure-Diff runs and null for the others); naming them all gives a table no page can hold.
:func:`distinguishing_keys` keeps the keys a reader recognises first (model, weights, defence, data, attack radius),
then the shorter ones, and adds a key only when it separates runs that the keys kept so far do not.

Keys that describe where or how a run was launched rather than what it computed (``name``, ``run_dir``, the logger,
caches, ``resume``) are never listed as held fixed, nor are unset (null) values and empty lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from clipure_lit.reporting.ablation import Run

_LAUNCH_KEYS = ("name", "run_dir", "output_root", "logger.", "log_level", "prompts.cache_dir", "trainer.", "resume",
                "clip.cache_dir", "data.download", "data.num_workers", "data.on_bad_image", "attack.save_adversarial",
                "attack.checks", "suite.")
# What a reader needs to repeat the numbers, in the order a caption names it; purifier keys are added for the
# purifiers the runs chose.
CAPTION_KEYS = ("clip.arch", "clip.pretrained", "clip.precision", "clip.resize_mode", "data.name", "data.benchmark",
                "data.split", "data.subset", "data.subset_seed", "data.image_size", "data.batch_size",
                "prompts.class_templates", "prompts.blank_templates", "prompts.blank_prompt", "purifier.latent",
                "purifier.pixel", "attack.run", "attack.norm", "attack.eps", "attack.grad_mode", "attack.n_iter",
                "attack.n_queries", "attack.eot_samples", "attack.batch_size", "attack.precision", "attack.seed", "seed")
# The keys a reader recognises first when runs differ in many at once.
FIRST_KEYS = ("clip.arch", "clip.pretrained", "purifier.latent", "purifier.pixel", "data.name", "data.benchmark",
              "attack.eps", "attack.run", "attack.grad_mode")


def _launch_key(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in _LAUNCH_KEYS)


def _empty(value) -> bool:
    return value is None or value == () or value == [] or value == {}


def held_fixed(runs: Sequence["Run"]) -> dict:
    """``{key: value}`` of every config key set to the same value in every run (launch keys, nulls and empty
    lists left out), keys in sorted order."""
    keys = sorted(set.intersection(*(set(r.config) for r in runs))) if runs else []
    fixed = {}
    for key in keys:
        values = {repr(r.config.get(key)) for r in runs}
        value = runs[0].config.get(key)
        if len(values) == 1 and not _launch_key(key) and not _empty(value):
            fixed[key] = value
    return fixed


def caption_settings(runs: Sequence["Run"]) -> dict:
    """The held-fixed settings worth a caption (:data:`CAPTION_KEYS`, then every held-fixed key of the chosen
    purifiers' sections), in that order."""
    fixed = held_fixed(runs)
    chosen = [fixed.get("purifier.pixel"), fixed.get("purifier.latent")]
    purifier_keys = [k for k in fixed for name in chosen if name and k.startswith(f"purifier.{name}.")]
    return {k: fixed[k] for k in (*CAPTION_KEYS, *purifier_keys) if k in fixed}


def distinguishing_keys(configs: Sequence[dict], keys: Sequence[str]) -> list[str]:
    """The fewest of ``keys`` (in their given order) whose values tell apart every pair of ``configs`` (flattened)
    that ``keys`` as a whole tells apart: :data:`FIRST_KEYS` are tried first, then the others from the shortest,
    and a key is kept only when it splits configs the kept keys do not."""
    def classes(chosen: list[str]) -> int:
        return len({tuple(repr(c.get(k)) for k in chosen) for c in configs})

    wanted = classes(list(keys))
    order = sorted(keys, key=lambda k: (FIRST_KEYS.index(k) if k in FIRST_KEYS else len(FIRST_KEYS), k.count("."), k))
    chosen: list[str] = []
    for key in order:
        if classes(chosen) == wanted:
            break
        if classes([*chosen, key]) > classes(chosen):
            chosen.append(key)
    return [k for k in keys if k in chosen]
