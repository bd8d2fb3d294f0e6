"""Pieces shared by the training jobs: CPU speed settings, the Lightning trainer, the LR schedule, resuming,
weight fingerprints and safetensors export.

Checkpoints: ``<run_dir>/checkpoints/last.ckpt`` is Lightning's full training state (weights, optimiser, loop
counters) and holds only tensors and plain containers, so it loads with ``torch.load(weights_only=True)``;
``<run_dir>/export/*.safetensors`` is the model alone, in the format the evaluation side loads by path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from clipure_lit.config.loader import to_yaml
from clipure_lit.config.train_schema import check_export_destination
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.utils.distributed import gather_varlen, unique_by_id

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
EXPORT_DIR = "export"
_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def configure_cpu(num_threads: int | None) -> None:
    """Set the intra-op thread count. (``OMP_WAIT_POLICY=PASSIVE`` must be set before torch starts; train.py
    does it.)"""
    if num_threads:
        torch.set_num_threads(int(num_threads))
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        log.info("OMP_WAIT_POLICY is not PASSIVE: small ops can slow down a lot when other processes share the cores.")


@contextlib.contextmanager
def attention_kernel(math_only: bool) -> Iterator[None]:
    """Restrict scaled-dot-product attention to the math kernel (faster backward on CPU for short sequences)."""
    if not math_only:
        yield
        return

    with sdpa_kernel(SDPBackend.MATH):
        yield


def warmup_cosine(p: float, warmup_frac: float, min_ratio: float, min_warm: float = 0.0) -> float:
    """LR multiplier at training progress ``p`` in [0, 1]: linear warm-up ``max(p, min_warm) / w`` for
    ``p < w = warmup_frac``, then ``min_ratio + (1 - min_ratio) * (1 + cos(pi * q)) / 2``, ``q = (p - w) / (1 - w)``."""
    w = float(warmup_frac)
    if p < w:
        return max(p, min_warm) / w
    q = min(1.0, max(0.0, (p - w) / max(1e-12, 1.0 - w)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * q))


class ScheduleClock:
    """Training progress ``p = max(step / total_steps, elapsed / budget)`` (the time term only when a budget is
    set). ``elapsed`` counts wall-clock seconds since ``start()`` plus ``offset`` (restored on resume), or is the
    value last given to :meth:`pin`."""

    def __init__(self, total_steps: float, budget_s: float | None = None) -> None:
        self.total_steps = max(1.0, float(total_steps))
        self.budget_s = budget_s
        self.offset = 0.0
        self._t0: float | None = None
        self._pinned: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def measured(self) -> float:
        """Seconds since ``start()`` plus ``offset``, whatever is pinned."""
        return self.offset + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def pin(self, elapsed: float) -> None:
        """Hold ``elapsed()`` at ``elapsed`` until the next pin (several processes take rank 0's time)."""
        self._pinned = float(elapsed)

    def elapsed(self) -> float:
        return self._pinned if self._pinned is not None else self.measured()

    def progress(self, step: int) -> float:
        p = step / self.total_steps
        if self.budget_s:
            p = max(p, self.elapsed() / self.budget_s)
        return min(1.0, p)

    def done(self, step: int) -> bool:
        return bool(self.budget_s) and self.elapsed() >= self.budget_s


def adamw_with_schedule(params, optim_cfg, clock: ScheduleClock) -> dict:
    """Lightning ``configure_optimizers`` return value: AdamW + per-step ``LambdaLR`` following
    ``warmup_cosine(clock.progress(step))``. Parameters with ndim < 2 (biases, norms, scalars) get no weight decay."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": optim_cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))
    warmup, min_ratio = float(optim_cfg.warmup_frac), float(optim_cfg.min_lr_ratio)
    first = 1.0 / clock.total_steps  # the first step already gets a non-zero LR

    def factor(step: int) -> float:
        return warmup_cosine(clock.progress(step), warmup, min_ratio, min_warm=first)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_clock(cfg, trainer) -> ScheduleClock:
    """The schedule clock of a fit: planned steps from Lightning, budget from ``fit.time_budget_min``."""
    budget = cfg.fit.time_budget_min
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        if not budget:
            raise ConfigError("The LR schedule needs a planned length: set fit.max_steps or fit.max_epochs "
                              "(or fit.time_budget_min).")
        total = 1e12
    return ScheduleClock(total, budget * 60.0 if budget else None)


def resolve_resume(cfg, run_dir: Path) -> str | None:
    """The checkpoint to resume from: ``fit.resume`` = null | "last" | a path."""
    resume = cfg.fit.resume
    if resume is None:
        return None
    if resume == "last":
        last = run_dir / CKPT_DIR / "last.ckpt"
        if last.is_file():
            log.info("Resuming from %s", last)
            return str(last)
        log.info("fit.resume=last: no %s yet, starting fresh.", last)
        return None
    path = Path(resume)
    if not path.is_file():
        raise DataNotFoundError(f"fit.resume='{resume}' is not a checkpoint file. Fix: give an existing .ckpt path, 'last' "
                                "(with the run_dir of the run to continue) or null.")
    return str(path)


class CheckpointOnStop(Checkpoint):
    """Writes ``<run_dir>/checkpoints/last.ckpt`` when the fit is stopped by SIGTERM (a scheduler's stop, ``scancel``,
    a sweep's stop), so that ``fit.resume=last`` continues from the step reached, not from the last periodic
    checkpoint. Lightning raises its SIGTERM exception only at a batch's end, after the optimiser step, so the state
    saved is consistent; other exceptions can strike mid-step and save nothing."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(str(self.path))
            log.info("Stopped at step %d: training state saved to %s", trainer.global_step, self.path)


def build_fit_trainer(cfg, run_dir: Path, logger, callbacks: list, has_val: bool, val_needs_grad: bool = False):
    """A ``pl.Trainer`` from ``cfg.trainer`` (devices) and ``cfg.fit`` (loop), checkpointing every
    ``fit.ckpt_every_n_steps`` steps to ``<run_dir>/checkpoints/last.ckpt``. ``val_needs_grad``: validation
    computes input gradients (an attack), so it runs under ``no_grad`` instead of ``inference_mode``."""
    fit, t = cfg.fit, cfg.trainer
    ckpt = ModelCheckpoint(dirpath=str(run_dir / CKPT_DIR), filename="step{step}", auto_insert_metric_name=False,
                           every_n_train_steps=int(fit.ckpt_every_n_steps), save_top_k=1, save_last=True)
    kwargs = dict(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                  logger=logger, callbacks=[ckpt, CheckpointOnStop(run_dir / CKPT_DIR / "last.ckpt"), *callbacks], default_root_dir=str(run_dir),
                  enable_progress_bar=t.enable_progress_bar, enable_model_summary=False, precision=fit.precision,
                  max_epochs=fit.max_epochs if fit.max_epochs is not None else -1, max_steps=fit.max_steps,
                  max_time=fit.max_time, log_every_n_steps=fit.log_every_n_steps, num_sanity_val_steps=0,
                  gradient_clip_val=fit.gradient_clip_val, deterministic=False, use_distributed_sampler=True,
                  inference_mode=not val_needs_grad)
    if not has_val or fit.val_every_n_steps == 0:
        kwargs["limit_val_batches"] = 0
    elif fit.val_every_n_steps is not None:
        kwargs.update(val_check_interval=int(fit.val_every_n_steps), check_val_every_n_epoch=None)
    return pl.Trainer(**kwargs)


def weights_fingerprint(module: nn.Module, extra: dict | None = None) -> str:
    """SHA-256 (first 16 hex digits) of every parameter and buffer (names, shapes, dtypes, bytes) plus ``extra``:
    any change to the weights gives a different key."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if extra:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def export_state_dict(state: dict[str, Tensor], path: Path, dtype: str, metadata: dict | None = None,
                      keep_fp32: tuple[str, ...] = ()) -> Path:
    """Write ``state`` as safetensors: floating tensors cast to ``dtype`` except keys starting with one of
    ``keep_fp32``; every tensor cloned (safetensors refuses shared storage). Atomic (temp file + rename)."""
    if dtype not in _DTYPES:
        raise ConfigError(f"Unknown export dtype '{dtype}'; valid: {sorted(_DTYPES)}.")
    out = {}
    for key, value in state.items():
        v = value.detach().cpu()
        if v.is_floating_point() and not key.startswith(keep_fp32):
            v = v.to(_DTYPES[dtype])
        out[key] = v.contiguous().clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {k: (v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in (metadata or {}).items()}
    save_file(out, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def copy_export(src: Path, dest: str | None, key: str, overwrite: bool) -> str | None:
    """Copy the exported file to ``dest`` (a path the user named in ``key``); returns the destination or None.
    An existing ``dest`` is replaced only with ``overwrite`` (:func:`check_export_destination`)."""
    if not dest:
        return None
    check_export_destination(dest, key, overwrite)
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    log.info("Copied %s -> %s", src, target)
    return str(target)


def export_final(module, path: Path, dest: str | None, key: str, overwrite: bool) -> tuple[Path, str | None]:
    """The job's last step: ``module.export(path)`` and :func:`copy_export` to ``dest``, written by rank 0 only
    (the other ranks of a multi-process run hold the same weights); returns ``(path, the copy or None)`` on
    every rank."""
    if not module.trainer.is_global_zero:
        return Path(path), str(dest) if dest else None
    export = module.export(path)
    return export, copy_export(export, dest, key, overwrite)


class ValidationColumns:
    """Mixin collecting per-sample validation columns (e.g. embeddings ``z [B, D]``, labels ``y [B]``) keyed by
    sample id over an epoch, on the CPU. :meth:`take_validation` returns every rank's rows, each sample once (the
    distributed sampler pads a rank's share with repeated samples), so that every rank computes the same metrics,
    over the whole validation set."""

    def collect_validation(self, ids: Tensor, **columns: Tensor) -> None:
        """Add one batch: sample ids ``[B]`` and columns whose first dimension is ``B``."""
        self.__dict__.setdefault("_val", []).append((ids.cpu(), {k: v.cpu() for k, v in columns.items()}))

    def take_validation(self) -> dict[str, Tensor] | None:
        """The epoch's columns (``"ids"`` included, sorted by id), gathered from every rank and de-duplicated by
        sample id, and the store emptied; None when nothing was collected. Under several processes every rank must
        call it (it gathers)."""
        collected = self.__dict__.pop("_val", [])
        if not collected:
            return None
        ids = torch.cat([i for i, _ in collected])  # [N]
        columns = {k: torch.cat([c[k] for _, c in collected]) for k in collected[0][1]}
        ids = gather_rows(self, ids)
        out = {}
        for name, values in columns.items():
            kept_ids, out[name] = unique_by_id(ids, gather_rows(self, values))
        out["ids"] = kept_ids
        return out


def gather_rows(module, rows: Tensor) -> Tensor:
    """Every rank's ``rows [N_r, ...]`` concatenated in rank order ``[sum_r N_r, ...]`` (``N_r`` may differ; the
    trailing dimensions may not); ``rows`` itself under one process. Booleans travel as uint8 (gloo has no bool)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1:
        return rows
    flat = rows.to(torch.uint8) if rows.dtype == torch.bool else rows
    gathered = gather_varlen(module, flat.reshape(-1).to(module.device)).cpu()  # [sum_r N_r * prod(trailing)]
    gathered = gathered.to(rows.dtype) if rows.dtype == torch.bool else gathered
    return gathered.view(-1, *rows.shape[1:])


class BudgetedModule:
    """Mixin for LightningModules using :class:`ScheduleClock`: starts the clock at ``on_train_start``, saves and
    restores the elapsed time in checkpoints (``clipure_elapsed_s``), stops the fit when the time budget is spent
    and logs ``train/progress`` and ``train/lr``. Call :meth:`optimizers_for` in ``configure_optimizers``."""

    clock: ScheduleClock | None = None
    _elapsed_offset: float = 0.0

    def optimizers_for(self, params) -> dict:
        self.clock = make_clock(self.cfg, self.trainer)
        self.clock.offset = self._elapsed_offset
        return adamw_with_schedule(params, self.cfg.optim, self.clock)

    def on_train_start(self) -> None:
        if self.clock is not None:
            self.clock.offset = self._elapsed_offset
            self.clock.start()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.budget_step_end()

    def on_before_optimizer_step(self, optimizer) -> None:
        # Under several processes, each rank's own clock would give each its own LR (the replicas would drift apart)
        # and its own stop decision (one rank would stop while the others wait for it at the next gradient
        # exchange): every rank takes rank 0's time before the step whose LR the schedule sets.
        if self.clock is not None and self.clock.budget_s and self.trainer.world_size > 1:
            self.clock.pin(self.trainer.strategy.broadcast(self.clock.measured(), src=0))

    def budget_step_end(self) -> None:
        if self.clock is None:
            return
        self.log("train/progress", self.clock.progress(self.global_step), on_step=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        if self.clock.done(self.global_step):
            log.info("Time budget fit.time_budget_min=%s reached at step %d: stopping.", self.cfg.fit.time_budget_min,
                     self.global_step)
            self.trainer.should_stop = True

    def save_clock(self, checkpoint: dict) -> None:
        checkpoint["clipure_elapsed_s"] = float(self.clock.elapsed()) if self.clock is not None else self._elapsed_offset

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every checkpoint carries the resolved config and the elapsed time, and refreshes the exported weights
        (``<run>/export/last.safetensors``, by rank 0 only, which also writes the checkpoint) so an interrupted run
        still leaves loadable weights."""
        checkpoint["clipure_config_yaml"] = to_yaml(self.cfg)
        self.save_clock(checkpoint)
        if self.run_dir is not None and self.trainer.is_global_zero:
            self.export(self.run_dir / EXPORT_DIR / "last.safetensors")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._elapsed_offset = float(checkpoint.get("clipure_elapsed_s", 0.0))
