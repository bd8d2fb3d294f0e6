"""Dataclass schema of ``train.py`` (root file ``conf/train.yaml``) and its validation.

It reuses the evaluation sections (``clip``, ``data``, ``prompts``, ``trainer``, ``logger``) so the same group
files work for both entry points, and adds the training loop (``fit``), the optimiser (``optim``), the
validation data (``val_data``) and one section per job (``clip_train``, ``prior_train``, ``adv_train``).
``job`` selects what runs: ``clip`` (contrastive/zero-shot CLIP from scratch), ``prior`` (diffusion prior over
cached image embeddings), ``fare`` / ``tecoa`` (adversarial fine-tuning of the image encoder).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig

from clipure_lit.clip.config import ClipCfg, PromptsCfg
from clipure_lit.clip.prompts import get_templates, require_class_placeholder
from clipure_lit.config.schema import TrainerCfg
from clipure_lit.config.validate import validate_clip, validate_trainer_and_logger
from clipure_lit.data.config import DataCfg
from clipure_lit.data.datasets import list_datasets
from clipure_lit.errors import ConfigError
from clipure_lit.loggers import LoggerCfg
from clipure_lit.purifiers.registry import config_sections
from clipure_lit.utils.console import LogLevel

TRAIN_JOBS = ("clip", "prior", "fare", "tecoa")


def _prior_config_class(purifier: str = "clipure_diff") -> type:
    """The dataclass of ``purifier.<purifier>.prior`` from the purifier registry: the ``prior`` job trains the
    network that purifier loads, described by the same keys (``prior_train.prior.*``)."""
    section = config_sections([purifier])[purifier]
    return next(f.default_factory for f in dataclasses.fields(section) if f.name == "prior")


DiffPriorCfg = _prior_config_class()


@dataclass
class FitCfg:
    """The Lightning fit loop."""

    # Stop after this many epochs / optimiser steps (-1 and null: no limit from that side; one must be set).
    max_epochs: Optional[int] = None
    max_steps: int = -1
    # Lightning precision: "bf16-mixed" (CPU autocast; ~2x on CPUs with AMX/avx512_bf16) or "32-true".
    precision: str = "bf16-mixed"
    # Force the math scaled-dot-product-attention kernel (about 1.5x faster backward on CPU).
    sdpa_math: bool = True
    # Validate every N optimiser steps (null: once per epoch); 0 disables validation.
    val_every_n_steps: Optional[int] = None
    # Save <run_dir>/checkpoints/last.ckpt (and an exported safetensors file) every N steps; always at the end.
    ckpt_every_n_steps: int = 200
    log_every_n_steps: int = 20
    # Wall-clock cap, Lightning's "DD:HH:MM:SS" (null: none). The run then ends early with a checkpoint.
    max_time: Optional[str] = None
    # Time-budgeted schedule (minutes of training, null: off). The LR schedule follows the progress
    # p = max(step / planned_steps, elapsed / budget), and training stops at p = 1, so warm-up and cosine decay
    # complete within the budget on a slow or shared machine. The elapsed time is saved in checkpoints.
    time_budget_min: Optional[float] = None
    # Resume: null (fresh), "last" (<run_dir>/checkpoints/last.ckpt when it exists) or a checkpoint path.
    resume: Optional[str] = None
    gradient_clip_val: Optional[float] = 1.0


@dataclass
class OptimCfg:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr`` over the planned steps."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_frac: float = 0.03
    min_lr_ratio: float = 0.0


@dataclass
class ClipTrainCfg:
    """Objective and export of the ``clip`` job (see clipure_lit/training/clip_job.py for the formulas)."""

    # Templates of the classification head trained with cross-entropy (class embedding = mean over templates).
    class_templates: str = "cifar10"
    # Template sets sampled for the per-image captions of the contrastive term.
    caption_templates: List[str] = field(default_factory=lambda: ["cifar10", "openai_imagenet_80"])
    # Template sets whose blank versions (class name "") form the shared "photo" anchor.
    blank_templates: List[str] = field(default_factory=lambda: ["cifar10", "openai_imagenet_80"])
    # Blank prompts drawn per step for the anchor term.
    blank_per_step: int = 16
    w_cls: float = 1.0
    w_caption: float = 0.5
    w_blank: float = 5.0
    # Target cosine between every image embedding and every blank prompt.
    blank_target: float = 0.25
    # Initial (learned) logit scale and its cap.
    logit_scale_init: float = 10.0
    logit_scale_max: float = 100.0
    # Augmentation of the uint8 training images: random crop after zero padding, horizontal flip.
    crop_padding: int = 4
    hflip: bool = True
    # Decoded training images are cached here as one uint8 array (keyed by the file list).
    image_cache_dir: str = ".cache/clipure_lit/images"
    # Dtype of the exported open_clip state dict: fp16 (half the size) or fp32.
    export_dtype: str = "fp16"
    # Also copy the final exported weights to this path; null: the run folder only (<run_dir>/export/). An existing
    # file there is never replaced unless overwrite=true.
    export_to: Optional[str] = None


@dataclass
class PriorTrainCfg:
    """The ``prior`` job: a dalle2_pytorch DiffusionPrior trained unconditionally on cached image embeddings."""

    prior: DiffPriorCfg = field(default_factory=lambda: DiffPriorCfg(
        dim=128, depth=2, heads=4, dim_head=32, ff_mult=4, normformer=True, attn_dropout=0.0, ff_dropout=0.0,
        max_text_len=1, timesteps=1000))
    embed_cache_dir: str = ".cache/clipure_lit/embeddings"
    embed_batch_size: int = 256
    # Images are read from the decoded uint8 cache (shared with the clip job) to embed them; null: decode with PIL.
    image_cache_dir: Optional[str] = ".cache/clipure_lit/images"
    # Timestep range of the validation loss (CLIPure-Diff's range by default).
    val_t_min: int = 900
    val_t_max: int = 999
    export_dtype: str = "fp16"
    export_to: Optional[str] = None


@dataclass
class AdvTrainCfg:
    """FARE / TeCoA adversarial fine-tuning of the image encoder (RobustVLM)."""

    # Linf budget of the inner attack in units of 1/255 (RobustVLM: 2 or 4).
    eps: float = 4.0
    # Inner PGD steps and step size (units of 1/255).
    pgd_steps: int = 10
    pgd_step_size: float = 1.0
    # Validation under attack (monitoring only): PGD steps on the validation images at the same eps, step eps/4, random
    # start; logged as val/robust_acc. 0 = clean accuracy only.
    val_pgd_steps: int = 0
    # Names of trainable parameters: prefixes of the open_clip state-dict keys ("visual." = the whole image tower).
    trainable: List[str] = field(default_factory=lambda: ["visual."])
    # TeCoA: templates of the zero-shot head whose cross-entropy is minimised on adversarial images.
    class_templates: str = "cifar10"
    export_dtype: str = "fp16"
    export_to: Optional[str] = None
    image_cache_dir: str = ".cache/clipure_lit/images"


@dataclass
class TrainRunCfg:
    job: str = "clip"
    name: str = "train"
    output_root: str = "runs"
    run_dir: Optional[str] = None
    seed: int = 0
    # Allow the job to replace an existing file named by <job>_train.export_to (never implied).
    overwrite: bool = False
    # Console output: info (quiet) or debug (everything, as --verbose); <run folder>/log.txt holds the full log.
    log_level: LogLevel = LogLevel.info
    clip: ClipCfg = field(default_factory=ClipCfg)
    # Training data (a dataset of the registry; data.batch_size is the training batch size).
    data: DataCfg = field(default_factory=lambda: DataCfg(split="train", num_samples=None, batch_size=256))
    # Validation data (null-free: set fit.val_every_n_steps=0 to switch validation off).
    val_data: DataCfg = field(default_factory=lambda: DataCfg(num_samples=1000, batch_size=256))
    prompts: PromptsCfg = field(default_factory=PromptsCfg)
    trainer: TrainerCfg = field(default_factory=lambda: TrainerCfg(accelerator="cpu", inference_mode=False))
    logger: LoggerCfg = field(default_factory=LoggerCfg)
    fit: FitCfg = field(default_factory=FitCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    clip_train: ClipTrainCfg = field(default_factory=ClipTrainCfg)
    prior_train: PriorTrainCfg = field(default_factory=PriorTrainCfg)
    adv_train: AdvTrainCfg = field(default_factory=AdvTrainCfg)


def check_export_destination(dest: str | None, key: str, overwrite: bool) -> None:
    """An export destination must not replace an existing file unless ``overwrite`` (shipped weights are read-only
    to the project's own jobs); checked before training starts and again before the copy."""
    if dest and Path(dest).exists() and not overwrite:
        raise ConfigError(f"{key}='{dest}' exists already, and a training job never replaces a file it did not create "
                          "unless told to (the shipped checkpoints/ are what every evaluation loads). Fix: leave "
                          f"{key}=null (the weights are exported into the run folder, <run_dir>/export/), choose a new "
                          "path, or pass overwrite=true to replace it.")


def _check_dtype(value: str, key: str) -> None:
    if value not in ("fp16", "fp32"):
        raise ConfigError(f"{key}='{value}' is not a valid export dtype. Valid choices: ['fp16', 'fp32'].")


def validate_train_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for an unknown job, dataset, template set or model, or a bad loop setting."""
    if cfg.job not in TRAIN_JOBS:
        close = difflib.get_close_matches(cfg.job, TRAIN_JOBS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown training job job='{cfg.job}'. Valid choices: {list(TRAIN_JOBS)}.{hint}")
    for key in ("data", "val_data"):
        name = cfg[key].name
        if name not in list_datasets():
            raise ConfigError(f"Unknown dataset {key}.name='{name}'. Valid choices: {list_datasets()}.")
        if cfg[key].batch_size <= 0:
            raise ConfigError(f"{key}.batch_size={cfg[key].batch_size} must be a positive integer.")
    validate_clip(cfg)
    validate_trainer_and_logger(cfg)
    require_class_placeholder(get_templates(cfg.prompts.class_templates), "prompts.class_templates", cfg.prompts.class_templates)
    if cfg.prompts.blank_prompt is None:
        get_templates(cfg.prompts.blank_templates)
    ct = cfg.clip_train
    require_class_placeholder(get_templates(ct.class_templates), "clip_train.class_templates", ct.class_templates)
    require_class_placeholder(get_templates(cfg.adv_train.class_templates), "adv_train.class_templates", cfg.adv_train.class_templates)
    for name in list(ct.caption_templates) + list(ct.blank_templates):
        get_templates(name)
    if not -1.0 < ct.blank_target < 1.0:
        raise ConfigError(f"clip_train.blank_target={ct.blank_target} must be a cosine in (-1, 1).")
    if ct.blank_per_step < 0 or ct.crop_padding < 0:
        raise ConfigError("clip_train.blank_per_step and clip_train.crop_padding must be >= 0.")
    section = {"clip": "clip_train", "prior": "prior_train", "fare": "adv_train", "tecoa": "adv_train"}[cfg.job]
    check_export_destination(cfg[section].export_to, f"{section}.export_to", cfg.overwrite)
    for key, value in (("clip_train.export_dtype", ct.export_dtype), ("prior_train.export_dtype", cfg.prior_train.export_dtype),
                       ("adv_train.export_dtype", cfg.adv_train.export_dtype)):
        _check_dtype(value, key)
    fit = cfg.fit
    if (fit.max_epochs is None or fit.max_epochs < 0) and fit.max_steps < 0 and fit.max_time is None and not fit.time_budget_min:
        raise ConfigError("The training loop has no end: set fit.max_epochs, fit.max_steps, fit.max_time or fit.time_budget_min.")
    if fit.precision not in ("bf16-mixed", "32-true", "32", "bf16-true", "16-mixed"):
        raise ConfigError(f"fit.precision='{fit.precision}' is not a Lightning precision; use 'bf16-mixed' or '32-true'.")
    if fit.ckpt_every_n_steps <= 0:
        raise ConfigError(f"fit.ckpt_every_n_steps={fit.ckpt_every_n_steps} must be a positive integer.")
    if cfg.optim.lr <= 0 or not 0.0 <= cfg.optim.warmup_frac < 1.0 or len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim: need lr > 0 (got {cfg.optim.lr}), warmup_frac in [0, 1) (got {cfg.optim.warmup_frac}) "
                          f"and two betas (got {list(cfg.optim.betas)}).")
    pt = cfg.prior_train
    if not 0 <= pt.val_t_min <= pt.val_t_max < pt.prior.timesteps:
        raise ConfigError(f"prior_train.val_t_min={pt.val_t_min}, val_t_max={pt.val_t_max} must satisfy "
                          f"0 <= val_t_min <= val_t_max < prior_train.prior.timesteps={pt.prior.timesteps}.")
    if cfg.job in ("fare", "tecoa"):
        adv = cfg.adv_train
        if adv.eps < 0 or adv.pgd_steps < 0 or adv.val_pgd_steps < 0 or adv.pgd_step_size <= 0 or not adv.trainable:
            raise ConfigError("adv_train: need eps >= 0, pgd_steps >= 0, val_pgd_steps >= 0, pgd_step_size > 0 and at least one "
                              "trainable prefix.")
        if cfg.clip.pretrained is None:
            raise ConfigError(f"job={cfg.job} fine-tunes a trained CLIP, but clip.pretrained is null (random weights). "
                              "Fix: set clip=<a trained model>, e.g. clip=cifar10_small.")
