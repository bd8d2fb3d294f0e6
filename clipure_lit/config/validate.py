"""Checks of open vocabularies and option combinations, run on every composed config before any model is built."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig

from clipure_lit.clip.prompts import get_classnames, get_templates
from clipure_lit.data.datasets import list_datasets
from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.registry import get_entry, section_of


def _close(value: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(value, choices, n=3)
    return f" Closest: {match}." if match else ""


def validate_clip(cfg: DictConfig) -> None:
    import open_clip  # heavy: ~4 s to import (timm, torchvision); `--help` imports this module and never validates

    arch = cfg.clip.arch
    if cfg.clip.model_config:
        stem = Path(cfg.clip.model_config).stem
        if stem != arch:
            raise ConfigError(f"clip.model_config='{cfg.clip.model_config}' registers a model named '{stem}' (its file stem), "
                              f"but clip.arch='{arch}'. Fix: set clip.arch={stem}, or clip.model_config=null for an open_clip model.")
        return
    if arch.startswith("hf-hub:"):
        return
    known = open_clip.list_models()
    if arch not in known:
        raise ConfigError(
            f"Unknown CLIP architecture clip.arch='{arch}'.{_close(arch, known)} Valid choices are open_clip's model names "
            f"({len(known)}; e.g. ViT-B-32, ViT-B-16, ViT-L-14), an 'hf-hub:<org>/<repo>' id, or a custom config via clip.model_config."
        )


def validate_purifiers(cfg: DictConfig) -> None:
    """Each chosen purifier's own value checks (``PurifierConfig.validate``), on its ``purifier.<name>`` section.
    (Missing weight files are reported by ``check_files`` when the run starts, before CLIP is loaded: shipped
    configs must compose on machines that do not have the files.)"""
    for name in (cfg.purifier.latent, cfg.purifier.pixel):
        section = section_of(cfg, name)
        if section is not None:
            section.validate(f"purifier.{name}")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for an unknown dataset, purifier, template set or model, or incompatible options."""
    if cfg.data.name not in list_datasets():
        raise ConfigError(f"Unknown dataset data.name='{cfg.data.name}'.{_close(cfg.data.name, list_datasets())} Valid choices: {list_datasets()}.")
    get_templates(cfg.prompts.class_templates)
    if cfg.prompts.blank_prompt is None:
        get_templates(cfg.prompts.blank_templates)
    if cfg.data.classnames is not None:
        get_classnames(cfg.data.classnames)
    get_entry(cfg.purifier.latent, "latent")
    get_entry(cfg.purifier.pixel, "pixel")
    validate_clip(cfg)
    if cfg.data.batch_size <= 0:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be a positive integer.")
    validate_purifiers(cfg)
    purifies = cfg.purifier.latent != "identity" or cfg.purifier.pixel != "identity"
    if cfg.trainer.inference_mode and (purifies or len(cfg.attack.run) > 0):
        raise ConfigError(
            "trainer.inference_mode=true is incompatible with gradient-based purifiers and attacks: they run autograd "
            f"inside the test loop (purifier.latent='{cfg.purifier.latent}', purifier.pixel='{cfg.purifier.pixel}', "
            f"attack.run={list(cfg.attack.run)}). "
            "Fix: set trainer.inference_mode=false (the default)."
        )
