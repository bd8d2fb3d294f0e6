"""Build everything a run needs from its config, run ``trainer.test``, and write the run folder.

The run folder (its lifecycle is :mod:`clipure_lit.run_folder`) holds ``config.yaml`` (fully resolved, written
first), ``environment.json`` (package versions, git commit, sample-id hash, weight-file hashes), ``results.json``
(metrics), ``samples.csv`` (one row per sample) and ``timings.json``, plus the logger's files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from clipure_lit.callbacks.build import eval_callbacks
from clipure_lit.callbacks.results_writer import ResultsWriter
from clipure_lit.clip.backbone import load_backbone
from clipure_lit.clip.prompts import get_classnames, get_templates
from clipure_lit.clip.zeroshot import TextEmbeddingCache, build_head
from clipure_lit.config.loader import to_plain
from clipure_lit.data.datamodule import ZeroShotDataModule
from clipure_lit.errors import ConfigError
from clipure_lit.loggers import build_logger
from clipure_lit.models.classifier import PurifiedZeroShotClassifier
from clipure_lit.models.lit_module import ZeroShotLitModule
from clipure_lit.purifiers import BuildContext, build_purifier
from clipure_lit.purifiers.registry import chosen_sections
from clipure_lit.results import read_json, write_json
from clipure_lit.run_folder import checkpoint_hashes, close_logger, make_run_dir, run_log, write_config, write_environment
from clipure_lit.utils.timing import PhaseTimer

log = logging.getLogger(__name__)

def check_purifier_files(cfg: DictConfig) -> None:
    """Fail within seconds, before CLIP is loaded, when a chosen purifier's weights are missing (each purifier's
    config says which files it needs: ``PurifierConfig.check_files``)."""
    for where, section in chosen_sections(cfg).items():
        section.check_files(where)


@dataclass
class ClipParts:
    """What every defence of one CLIP model shares: the backbone, its tokenizer, the zero-shot head, the text cache."""

    backbone: Any
    tokenizer: Any
    head: Any
    text_cache: Any
    classnames: list[str]


def load_clip(cfg: DictConfig, classnames: list[str], device: torch.device | str = "cpu",
              timer: PhaseTimer | None = None) -> ClipParts:
    """Backbone and zero-shot head from ``cfg.clip`` / ``cfg.prompts`` (text embeddings from the on-disk cache when
    possible); ``cfg.data.classnames``, when set, replaces the dataset's ``classnames``. Phases for ``timer``:
    ``load_backbone``, ``build_text_head``."""
    timer = timer or PhaseTimer()
    with timer.phase("load_backbone"):
        backbone, tokenizer = load_backbone(cfg.clip, device=device)
    if cfg.data.classnames is not None:
        named = get_classnames(cfg.data.classnames)
        if len(named) != len(classnames):
            raise ConfigError(f"data.classnames='{cfg.data.classnames}' has {len(named)} classes but dataset "
                              f"'{cfg.data.name}' has {len(classnames)}. Fix: choose a matching class-name set or null.")
        classnames = named
    cache = TextEmbeddingCache(cfg.prompts.cache_dir)
    with timer.phase("build_text_head"):
        head = build_head(backbone, tokenizer, classnames, get_templates(cfg.prompts.class_templates), cache, cfg.clip.logit_scale)
    return ClipParts(backbone, tokenizer, head, cache, list(classnames))


def build_defended(cfg: DictConfig, parts: ClipParts, timer: PhaseTimer | None = None):
    """``cfg.purifier``'s purifiers around ``parts`` (phase ``build_purifiers``, which includes a blank anchor's
    text embeddings); ``timer`` also gets the counts ``text_embeddings_cached`` / ``_computed``."""
    timer = timer or PhaseTimer()
    ctx = BuildContext(cfg=cfg, backbone=parts.backbone, tokenizer=parts.tokenizer, text_cache=parts.text_cache,
                       classnames=parts.classnames)
    with timer.phase("build_purifiers"):
        pixel = build_purifier(cfg.purifier.pixel, "pixel", ctx)
        latent = build_purifier(cfg.purifier.latent, "latent", ctx)
    timer.counts.update(text_embeddings_cached=parts.text_cache.hits, text_embeddings_computed=parts.text_cache.misses)
    return PurifiedZeroShotClassifier(parts.backbone, parts.head, pixel=pixel, latent=latent, seed=cfg.purifier.seed)


def build_classifier(cfg: DictConfig, classnames: list[str], device: torch.device | str = "cpu", timer: PhaseTimer | None = None):
    """Backbone + zero-shot head + purifiers, from config (:func:`load_clip` then :func:`build_defended`), after
    checking that the purifiers' weight files exist."""
    timer = timer or PhaseTimer()
    check_purifier_files(cfg)
    return build_defended(cfg, load_clip(cfg, classnames, device, timer), timer)


def build_trainer(cfg: DictConfig, run_dir: Path, logger, callbacks: list):
    t = cfg.trainer
    kwargs = dict(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                  inference_mode=t.inference_mode, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir),
                  enable_progress_bar=t.enable_progress_bar, enable_model_summary=False, deterministic=False)
    if t.limit_test_batches is not None:
        kwargs["limit_test_batches"] = t.limit_test_batches
    return pl.Trainer(**kwargs)


def run_eval(cfg: DictConfig) -> dict:
    """Evaluate the configured classifier; returns the metrics dict that is also written to ``results.json``.
    The run's log goes to ``<run folder>/log.txt``."""
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = make_run_dir(cfg)
    with run_log(run_dir):
        return _evaluate(cfg, run_dir)


def _evaluate(cfg: DictConfig, run_dir: Path) -> dict:
    timer = PhaseTimer()
    # Attacks and resumption are checked before anything is written to the run folder.
    callbacks = eval_callbacks(cfg, run_dir)
    write_config(run_dir, cfg)
    with timer.phase("setup_data"):
        datamodule = ZeroShotDataModule(cfg.data)
        datamodule.setup("test")  # fails now, with the path, if the data is missing
    env = write_environment(run_dir, sample_ids_sha256=datamodule.ids_hash(), num_samples=len(datamodule.sample_ids),
                            checkpoints=checkpoint_hashes(cfg))

    classifier = build_classifier(cfg, datamodule.classnames, timer=timer)
    module = ZeroShotLitModule(classifier)
    writer = ResultsWriter(run_dir, extra={"environment": env,
                                                                  "purifiers": [p.describe() for p in classifier.purifiers]})
    logger = build_logger(cfg, run_dir, to_plain(cfg))
    trainer = build_trainer(cfg, run_dir, logger, callbacks=[*callbacks, writer])
    try:
        with timer.phase("test_loop"):
            trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        if trainer.is_global_zero:  # also after a failure: where the time went up to that point
            write_json(run_dir / "timings.json", {"phases_s": timer.seconds, "counts": timer.counts,
                                                  "note": "wall clock in the launching process; per-sample times of the "
                                                          "test loop's parts are in results.json (time_per_sample_s)"})
        close_logger(logger)

    return read_json(run_dir / "results.json")
