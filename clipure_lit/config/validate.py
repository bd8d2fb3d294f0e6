"""Checks of open vocabularies and option combinations, run on every composed config before any model is built."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from clipure_lit.clip.backbone import resolve_normalisation
from clipure_lit.clip.prompts import get_classnames, get_templates, require_class_placeholder
from clipure_lit.clip.tokenizers import is_callable_spec
from clipure_lit.data.datasets import list_datasets
from clipure_lit.errors import ConfigError
from clipure_lit.loggers import LoggerName, WandbMode, wandb_credentials_present
from clipure_lit.purifiers.registry import get_entry, section_of
from clipure_lit.utils.paths import resolve_path

log = logging.getLogger(__name__)


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
    elif not arch.startswith("hf-hub:"):
        known = open_clip.list_models()
        if arch not in known:
            raise ConfigError(
                f"Unknown CLIP architecture clip.arch='{arch}'.{_close(arch, known)} Valid choices are open_clip's model names "
                f"({len(known)}; e.g. ViT-B-32, ViT-B-16, ViT-L-14), an 'hf-hub:<org>/<repo>' id, or a custom config via clip.model_config."
            )
    tokenizer = cfg.clip.get("tokenizer")
    if tokenizer and not is_callable_spec(str(tokenizer)) and not str(tokenizer).startswith("hf-hub:") \
            and open_clip.get_model_config(str(tokenizer)) is None and str(tokenizer) != arch:
        raise ConfigError(f"clip.tokenizer='{tokenizer}' is not an open_clip model name, an 'hf-hub:<org>/<repo>' tokenizer, "
                          f"or a 'module:callable' / 'file.py:callable' path.{_close(str(tokenizer), open_clip.list_models())} "
                          "Fix: one of those, or null for clip.arch's tokenizer.")
    for key in ("class_embeddings", "blank_embedding"):
        value = cfg.prompts.get(key) if "prompts" in cfg else None
        if value:
            resolve_path(value, f"precomputed text embeddings (prompts.{key})")
    fill_normalisation(cfg)


def fill_normalisation(cfg: DictConfig) -> None:
    """Check ``clip.mean`` / ``clip.std`` and fill them in when null (:func:`resolve_normalisation`), so that
    ``config.yaml`` records the statistics the run uses. hf-hub models keep null: their statistics come with the
    weights and are read when the model is built. A local checkpoint without known statistics is logged."""
    c = cfg.clip
    if (c.mean is None) != (c.std is None):
        raise ConfigError(f"clip.mean={c.mean} and clip.std={c.std}: set both (3 values each, in [0, 1] pixel units) or neither.")
    if c.mean is not None:
        if len(c.mean) != 3 or len(c.std) != 3 or not all(v > 0 for v in c.std):
            raise ConfigError(f"clip.mean={list(c.mean)} and clip.std={list(c.std)} must have 3 values each (RGB), std > 0.")
        return
    if str(c.arch).startswith("hf-hub:"):
        return
    mean, std, source = resolve_normalisation(c)
    if source.endswith("(local checkpoint)"):
        log.warning("clip.pretrained='%s' is a local checkpoint with no known normalisation statistics: using OpenAI's "
                    "mean=%s std=%s. If the model was trained with other statistics, set clip.mean and clip.std.",
                    c.pretrained, mean, std)
    c.mean, c.std = mean, std


def check_accelerator_present(cfg: DictConfig) -> None:
    """A GPU accelerator on a machine without one: checked when a run starts, before anything is built (not when
    composing, so that GPU configs still compose and validate on a CPU machine)."""
    accelerator = str(cfg.trainer.accelerator).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={cfg.trainer.accelerator} asks for a CUDA GPU, but none is visible to PyTorch "
                          "(torch.cuda.is_available() is False). Fix: trainer=cpu (or trainer.accelerator=auto), or run on "
                          "a machine with a GPU and a CUDA build of PyTorch.")


def validate_trainer_and_logger(cfg: DictConfig) -> None:
    """Checks Lightning and W&B would make only after the model is built: devices and W&B credentials."""
    t = cfg.trainer
    devices = t.devices
    if devices == 0 or devices == "0" or (OmegaConf.is_list(devices) and len(devices) == 0):
        raise ConfigError(f"trainer.devices={devices} selects no device. Fix: trainer.devices=1 (or N, or -1 for all), "
                          "or a list of device indices such as [0,1].")
    if cfg.logger.name == LoggerName.wandb and cfg.logger.mode == WandbMode.online and not wandb_credentials_present():
        raise ConfigError("logger=wandb with logger.mode=online needs W&B credentials, and none were found (no "
                          "WANDB_API_KEY, no entry in ~/.netrc). Fix: run `wandb login` (or set WANDB_API_KEY), or use "
                          "logger.mode=offline (sync later with `wandb sync`) or logger.mode=auto.")


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
    require_class_placeholder(get_templates(cfg.prompts.class_templates), "prompts.class_templates", cfg.prompts.class_templates)
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
    validate_trainer_and_logger(cfg)
    purifies = cfg.purifier.latent != "identity" or cfg.purifier.pixel != "identity"
    if cfg.trainer.inference_mode and (purifies or len(cfg.attack.run) > 0):
        raise ConfigError(
            "trainer.inference_mode=true is incompatible with gradient-based purifiers and attacks: they run autograd "
            f"inside the test loop (purifier.latent='{cfg.purifier.latent}', purifier.pixel='{cfg.purifier.pixel}', "
            f"attack.run={list(cfg.attack.run)}). "
            "Fix: set trainer.inference_mode=false (the default)."
        )
