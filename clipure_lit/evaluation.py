"""Build everything a run needs from its config, run ``trainer.test``, and write the run folder.

The run folder (its lifecycle is :mod:`clipure_lit.run_folder`) holds ``config.yaml`` (fully resolved, written
first), ``environment.json`` (package versions, git commit, sample-id hash, weight-file hashes), ``results.json``
(metrics), ``samples.csv`` (one row per sample) and ``timings.json``, plus the logger's files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException

from clipure_lit.attacks.checks import declared_batch_dependence
from clipure_lit.callbacks.build import eval_callbacks
from clipure_lit.callbacks.resume import check_growth, merge_records, read_progress
from clipure_lit.callbacks.results_writer import ResultsWriter
from clipure_lit.clip.backbone import load_backbone
from clipure_lit.clip.prompts import get_classnames, get_templates
from clipure_lit.clip.zeroshot import TextEmbeddingCache, build_head
from clipure_lit.config.loader import to_plain
from clipure_lit.config.validate import check_accelerator_present, check_evaluated_batches
from clipure_lit.data.datamodule import ZeroShotDataModule
from clipure_lit.errors import ConfigError
from clipure_lit.loggers import RunEnd, build_logger, run_end_for
from clipure_lit.models.classifier import PurifiedZeroShotClassifier
from clipure_lit.models.lit_module import ZeroShotLitModule
from clipure_lit.purifiers import BuildContext, build_purifier
from clipure_lit.purifiers.registry import chosen_sections
from clipure_lit.results import read_json, summarise_finished, table_from_columns, write_json
from clipure_lit.run_folder import (checkpoint_hashes, close_logger, environment_info, exclusive_run_folder, make_run_dir,
                                    run_log, share_run_dir, write_config, write_environment)
from clipure_lit.utils.distributed import launcher_rank_is_zero
from clipure_lit.utils.requeue import UsrSignalStops, requeue_job, requeue_owner
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
    possible, or from ``prompts.class_embeddings``; with ``prompts.blank_embedding`` too, no tokenizer is built); ``cfg.data.classnames``, when set, replaces the dataset's ``classnames``. Phases for ``timer``:
    ``load_backbone``, ``build_text_head``."""
    timer = timer or PhaseTimer()
    text_needed = not (cfg.prompts.class_embeddings and cfg.prompts.blank_embedding)  # both precomputed: no tokenizer
    with timer.phase("load_backbone"):
        backbone, tokenizer = load_backbone(cfg.clip, device=device, with_tokenizer=text_needed)
    if cfg.data.classnames is not None:
        named = get_classnames(cfg.data.classnames)
        if len(named) != len(classnames):
            raise ConfigError(f"data.classnames='{cfg.data.classnames}' has {len(named)} classes but dataset "
                              f"'{cfg.data.name}' has {len(classnames)}. Fix: choose a matching class-name set or null.")
        classnames = named
    cache = TextEmbeddingCache(cfg.prompts.cache_dir)
    with timer.phase("build_text_head"):
        head = build_head(backbone, tokenizer, classnames, get_templates(cfg.prompts.class_templates), cache, cfg.clip.logit_scale,
                          embeddings_file=cfg.prompts.class_embeddings)
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


# Lightning's warning that the test sampler repeats samples across processes does not apply: results are gathered
# and de-duplicated by sample id (run_eval says so in one line instead).
_SAMPLER_WARNING = r"Using `DistributedSampler` with the dataloaders"


class SilenceSamplerWarning(pl.Callback):
    """Filters Lightning's sampler warning in every process of the run, also ``ddp_spawn`` ones (which do not
    inherit the launching process's warning filters); ``setup`` runs before the test dataloader is built."""

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        warnings.filterwarnings("ignore", message=_SAMPLER_WARNING)


def build_trainer(cfg: DictConfig, run_dir: Path, logger, callbacks: list):
    t = cfg.trainer
    kwargs = dict(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                  inference_mode=t.inference_mode, logger=logger, callbacks=[SilenceSamplerWarning(), *callbacks],
                  default_root_dir=str(run_dir), enable_progress_bar=t.enable_progress_bar, enable_model_summary=False,
                  deterministic=False)
    if t.limit_test_batches is not None:
        kwargs["limit_test_batches"] = t.limit_test_batches
    if SLURMEnvironment.detect():
        # Lightning's SLURM auto-requeue saves a model checkpoint on SIGUSR1; an evaluation resumes from its
        # per-batch progress instead (resume=true), so the requeue is left to the job script or submitit.
        kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    return pl.Trainer(**kwargs)


class _SigintSeen:
    """While active (in the main thread), notes every SIGINT before the handler that was in place handles it (by
    default: raising KeyboardInterrupt), so that a Ctrl-C that Lightning turns into another exit is still known as
    a stop. An ignored SIGINT stays ignored; the previous handler is restored on exit."""

    def __init__(self) -> None:
        self.seen = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.seen = True
        previous = self._previous if callable(self._previous) else signal.default_int_handler
        previous(signum, frame)

    def __enter__(self) -> "_SigintSeen":
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self._previous = previous
                signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def finished_so_far(run_dir: Path, total: int) -> dict:
    """What an evaluation that did not finish had finished, for its logger's summary: read from the progress
    files of every rank (``progress/rank<r>.jsonl``: the batches a resumed run keeps), each sample once.

    Returns ``test/samples_done`` (samples with a finished batch), ``test/samples_total`` (``total``, the samples of
    the whole run) and, when a sample is done, ``test/partial``: ``clean_acc`` / ``clean_correct`` and per attack (and
    ``worst_case``) ``robust_acc`` / ``robust_correct`` over the finished samples only. Robust numbers are left out
    when an attack lacks samples that the clean pass has.
    """
    columns = merge_records(read_progress(run_dir))[0]
    if "label" not in columns or "clean_pred" not in columns:
        return {"test/samples_done": 0, "test/samples_total": total}
    table = table_from_columns(columns)
    numbers = summarise_finished(table)  # clean numbers only when an attack lacks some finished samples
    partial = {"clean_acc": numbers["clean"]["acc"], "clean_correct": numbers["clean"]["correct"],
               "robust_acc": {k: v["acc"] for k, v in numbers["robust"].items()},
               "robust_correct": {k: v["correct"] for k, v in numbers["robust"].items()}}
    return {"test/samples_done": len(table), "test/samples_total": total, "test/partial": partial}


def _finished_or_nothing(run_dir: Path, total: int) -> dict:
    """:func:`finished_so_far`, or only ``test/samples_total`` when the progress files cannot be read (a warning):
    the run is ending on another error, which this must not hide."""
    try:
        return finished_so_far(run_dir, total)
    except Exception as exc:  # noqa: BLE001 - the run's own exception is the one to report
        log.warning("Could not read what the run finished from %s (%s: %s).", Path(run_dir) / "progress",
                    type(exc).__name__, exc)
        return {"test/samples_total": total}


def run_eval(cfg: DictConfig) -> dict:
    """Evaluate the configured classifier; returns the metrics dict that is also written to ``results.json``.

    Under several processes (DDP, nodes) every process uses the same run folder (:func:`make_run_dir`), only rank
    0 writes ``config.yaml``, ``environment.json``, ``results.json``, ``samples.csv`` and ``timings.json``, and every
    rank returns the same metrics. SIGTERM during the test loop stops after the current batch (its progress is on
    disk) and exits with status 143 (so does SIGUSR1 inside a SLURM job; with ``trainer.requeue_on_preempt=true``
    the job then requeues itself, :mod:`clipure_lit.utils.requeue`), SIGINT (Ctrl-C) stops at once with status 130; ``resume=true`` continues. The
    logger's run records how the run ended (:func:`~clipure_lit.run_folder.close_logger`): a W&B run gets the exit
    code, ``status`` and the sample counts, and for a stopped or crashed run what it finished
    (:func:`finished_so_far`). The run's log goes to ``<run folder>/log.txt``.
    """
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    check_accelerator_present(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = make_run_dir(cfg)
    with exclusive_run_folder(run_dir), run_log(run_dir):  # one run per folder (rank 0 holds it); its log.txt
        return _evaluate(cfg, run_dir)


def _add_finding(found, module: ZeroShotLitModule, _summary: dict) -> None:
    """A summary hook: record ``found`` (a :class:`~clipure_lit.attacks.checks.Finding`) in the run's flags."""
    module.add_finding(found.flag, found.raised, None, found.message)


def _evaluate(cfg: DictConfig, run_dir: Path) -> dict:
    """The body of :func:`run_eval`, in its run folder."""
    writes = launcher_rank_is_zero()  # before a process group exists: what the launcher says this process is
    timer = PhaseTimer()
    # Attacks and resumption are checked before anything is written to the run folder.
    callbacks = eval_callbacks(cfg, run_dir)
    if writes:
        write_config(run_dir, cfg)
    with timer.phase("setup_data"):
        datamodule = ZeroShotDataModule(cfg.data)
        datamodule.setup("test")  # fails now, with the path, if the data is missing
        check_evaluated_batches(cfg, datamodule.num_samples, len(datamodule.skipped_files))  # now the count is known
        if writes:  # a larger data.num_samples on a resumed run: its finished samples must be among the new ones
            check_growth(run_dir, to_plain(cfg), datamodule.sample_ids)
    described = dict(sample_ids_sha256=datamodule.ids_hash(), num_samples=len(datamodule.sample_ids),
                     skipped_images=[str(p) for p in datamodule.skipped_files],  # data.on_bad_image=skip
                     checkpoints=checkpoint_hashes(cfg))
    env = write_environment(run_dir, **described) if writes else {**environment_info(), **described}

    classifier = build_classifier(cfg, datamodule.classnames, timer=timer)
    module = ZeroShotLitModule(classifier)
    if classifier.batch_coupled:  # flagged in results.json with or without attacks (whose checks would also raise it)
        found = declared_batch_dependence(classifier)
        # A partial of a module-level function, not a lambda: ddp_spawn pickles the module into its processes.
        module.summary_hooks.append(functools.partial(_add_finding, found))
    writer = ResultsWriter(run_dir, extra={"environment": env,
                                                                  "purifiers": [p.describe() for p in classifier.purifiers]})
    logger = build_logger(cfg, run_dir, to_plain(cfg))
    trainer = build_trainer(cfg, run_dir, logger, callbacks=[*callbacks, writer])
    processes = trainer.num_devices * trainer.num_nodes
    if processes > 1 and writes:
        log.info("%d processes: the distributed sampler pads the last batches with repeated samples; results are "
                 "gathered and de-duplicated by sample id, so every sample counts once.", processes)
    total = len(datamodule.sample_ids)
    wandb_run = type(logger).__name__ == "WandbLogger"
    sigint = _SigintSeen()
    usr1 = UsrSignalStops()  # SLURM's warning signal (--signal=B:USR1@<s>): a stop after the batch in flight
    end = None
    requeue = False
    try:
        # Processes Lightning starts re-run this command line: without run_dir in it, they learn this run's folder
        # from the environment (a suite shares its own folder instead; each of its runs has a run_dir).
        shared = share_run_dir(run_dir) if not cfg.run_dir else contextlib.nullcontext()
        with timer.phase("test_loop"), shared, sigint, usr1:
            trainer.test(module, datamodule=datamodule, verbose=False)
        done = int(module.summary.get("num_samples", 0))
        end = RunEnd(summary={"test/samples_done": done, "test/samples_total": total})
    except BaseException as exc:
        # Lightning turns Ctrl-C (KeyboardInterrupt) into exit status 1; the SIGINT seen says what it was.
        stop = "SIGTERM" if isinstance(exc, SIGTERMException) else "SIGINT" if sigint.seen else None
        owner = requeue_owner() if stop == "SIGTERM" and cfg.trainer.requeue_on_preempt else None
        requeue = owner == "scontrol" and trainer.is_global_zero
        if wandb_run and trainer.is_global_zero:  # what the W&B run records: what was finished, from the disk
            end = run_end_for(KeyboardInterrupt() if stop == "SIGINT" else exc, _finished_or_nothing(run_dir, total))
            if requeue:
                end.requeued_by = f"SLURM job {os.environ['SLURM_JOB_ID']}, requeued by this run (trainer.requeue_on_preempt)"
        if stop is None:
            raise
        if owner == "submitit":
            log.info("trainer.requeue_on_preempt: this job was submitted by sweep.py (submitit), which requeues it.")
        log.warning("Stopped by %s %s; the finished batches are in %s. %s", "SIGUSR1" if usr1.seen else stop,
                    "after the batch in flight" if stop == "SIGTERM" else "(Ctrl-C)", run_dir / "progress",
                    "The SLURM job is requeued and resumes." if requeue else
                    f"Continue with the same arguments plus resume=true run_dir={run_dir}")
        raise SystemExit(128 + (signal.SIGTERM if stop == "SIGTERM" else signal.SIGINT)) from None
    finally:
        if trainer.is_global_zero:  # also after a failure: where the time went up to that point
            write_json(run_dir / "timings.json", {"phases_s": timer.seconds, "counts": timer.counts,
                                                  "note": "wall clock in the launching process; per-sample times of the "
                                                          "test loop's parts are in results.json (time_per_sample_s)"})
        close_logger(logger, end)
        if requeue:  # last: SLURM ends this job when it requeues it
            requeue_job()

    if not trainer.is_global_zero:  # only rank 0 wrote results.json (its file system may not be shared)
        return {**module.summary, "run_dir": str(run_dir)}
    return read_json(run_dir / "results.json")
