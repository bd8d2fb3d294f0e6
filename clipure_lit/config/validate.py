"""Checks of open vocabularies and option combinations, run on every composed config before any model is built."""

from __future__ import annotations

import difflib

from omegaconf import DictConfig

from clipure_lit.errors import ConfigError


def _close(value: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(value, choices, n=3)
    return f" Closest: {match}." if match else ""


def validate_clip(cfg: DictConfig) -> None:
    import open_clip

    arch = cfg.clip.arch
    if cfg.clip.model_config:
        from pathlib import Path

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


_BETA_SCHEDULES = ("cosine", "linear", "quadratic", "jsd", "sigmoid")  # dalle2_pytorch NoiseScheduler


def validate_purifier(cfg: DictConfig) -> None:
    """Value checks of the CLIPure-Cos / CLIPure-Diff keys. (A missing prior checkpoint is reported when the
    purifier is built: shipped configs must compose on machines that do not have the file.)"""
    p = cfg.purifier
    if not p.step_size >= 0.0:
        raise ConfigError(f"purifier.step_size={p.step_size} must be >= 0 (released: 30).")
    if p.batch_size is not None and p.batch_size <= 0:
        raise ConfigError(f"purifier.batch_size={p.batch_size} must be a positive integer or null.")
    if p.diff.n_noise < 1:
        raise ConfigError(f"purifier.diff.n_noise={p.diff.n_noise} must be >= 1 (released: 1).")
    prior = p.diff.prior
    for key in ("dim", "depth", "heads", "dim_head", "ff_mult", "max_text_len", "timesteps"):
        if prior[key] < 1:
            raise ConfigError(f"purifier.diff.prior.{key}={prior[key]} must be >= 1.")
    if prior.beta_schedule not in _BETA_SCHEDULES:
        raise ConfigError(f"purifier.diff.prior.beta_schedule='{prior.beta_schedule}' is not one of {list(_BETA_SCHEDULES)} "
                          "(released: cosine).")
    if prior.image_embed_scale is not None and not prior.image_embed_scale > 0:
        raise ConfigError(f"purifier.diff.prior.image_embed_scale={prior.image_embed_scale} must be > 0, or null for sqrt(dim).")


def validate_pixel_purifiers(cfg: DictConfig) -> None:
    """Value checks of the pixel-purifier keys (``purifier.diffpure|clipure_pixel|jpeg|bit_depth|gaussian_noise``).
    A missing diffusion checkpoint is reported by ``runner.check_purifier_files``, before CLIP is loaded, not here:
    shipped configs must compose on machines that do not have the file."""
    from clipure_lit.purifiers.pixel_diffusion import diffusion_timesteps

    p = cfg.purifier
    d = p.diffpure
    diffusion_timesteps(d.num_train_timesteps, d.t_star, d.num_steps, d.sampler)
    if not d.ddim_eta >= 0.0:
        raise ConfigError(f"purifier.diffpure.ddim_eta={d.ddim_eta} must be >= 0 (0: deterministic DDIM).")
    levels = {len(d.unet.block_out_channels), len(d.unet.down_block_types), len(d.unet.up_block_types)}
    if d.unet.sample_size < 8 or len(levels) != 1:
        raise ConfigError(f"purifier.diffpure.unet: sample_size={d.unet.sample_size} must be >= 8 and block_out_channels, "
                          "down_block_types and up_block_types must have one entry per resolution level.")
    c = p.clipure_pixel
    if c.num_steps < 0 or not c.step_size >= 0.0 or not 0.0 <= c.momentum < 1.0:
        raise ConfigError(f"purifier.clipure_pixel: num_steps={c.num_steps} must be >= 0, step_size={c.step_size} >= 0 "
                          f"and momentum={c.momentum} in [0, 1).")
    if c.eps is not None and not c.eps >= 0.0:
        raise ConfigError(f"purifier.clipure_pixel.eps={c.eps} must be >= 0 (units of 1/255) or null (no budget).")
    if c.batch_size is not None and c.batch_size <= 0:
        raise ConfigError(f"purifier.clipure_pixel.batch_size={c.batch_size} must be a positive integer or null.")
    if not 1 <= p.jpeg.quality <= 100:
        raise ConfigError(f"purifier.jpeg.quality={p.jpeg.quality} must be in [1, 100] (75 is the usual baseline).")
    if not 1 <= p.bit_depth.bits <= 8:
        raise ConfigError(f"purifier.bit_depth.bits={p.bit_depth.bits} must be in [1, 8].")
    if not p.gaussian_noise.sigma >= 0.0:
        raise ConfigError(f"purifier.gaussian_noise.sigma={p.gaussian_noise.sigma} must be >= 0 (pixel units).")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for an unknown dataset, purifier, template set or model, or incompatible options."""
    from clipure_lit.clip.prompts import get_classnames, get_templates
    from clipure_lit.data.datasets import list_datasets
    from clipure_lit.purifiers import get_entry

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
    if cfg.purifier.num_steps < 0:
        raise ConfigError(f"purifier.num_steps={cfg.purifier.num_steps} must be >= 0.")
    if not 0.0 <= cfg.purifier.momentum < 1.0:
        raise ConfigError(f"purifier.momentum={cfg.purifier.momentum} must be in [0, 1).")
    diff = cfg.purifier.diff
    if not 0 <= diff.t_min <= diff.t_max < diff.prior.timesteps:
        raise ConfigError(f"purifier.diff.t_min={diff.t_min} and t_max={diff.t_max} must satisfy 0 <= t_min <= t_max < "
                          f"purifier.diff.prior.timesteps={diff.prior.timesteps}.")
    validate_purifier(cfg)
    validate_pixel_purifiers(cfg)
    purifies = cfg.purifier.latent != "identity" or cfg.purifier.pixel != "identity"
    if cfg.trainer.inference_mode and (purifies or len(cfg.attack.run) > 0):
        raise ConfigError(
            "trainer.inference_mode=true is incompatible with gradient-based purifiers and attacks: they run autograd "
            f"inside the test loop (purifier.latent='{cfg.purifier.latent}', purifier.pixel='{cfg.purifier.pixel}', "
            f"attack.run={list(cfg.attack.run)}). "
            "Fix: set trainer.inference_mode=false (the default)."
        )
