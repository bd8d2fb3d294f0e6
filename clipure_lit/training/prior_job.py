"""Job ``prior``: an unconditional dalle2_pytorch ``DiffusionPrior`` over normalised CLIP image embeddings, the
prior CLIPure-Diff purifies with.

Embeddings ``z [N, D]`` (unit rows) of the training images are computed once with the frozen backbone and cached
(``embed_cache``). The prior is built by the purifier's own ``build_prior`` (``clip=None``, text condition always
dropped, so its state-dict keys are exactly what ``purifier.clipure_diff.prior.checkpoint`` loads strictly). Loss, the
prior's own ``p_losses`` (x0 prediction by default; cosine schedule; scale ``s = image_embed_scale = sqrt(D)``):

    x0 = s * z,   t ~ U{0, ..., T-1},   eps ~ N(0, I),   x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    L = mean_{b,d} (net(x_t, t) - x0)^2            (target eps when predict_x_start=false)

Validation reports the same loss with a fixed generator at ``t ~ U{val_t_min..val_t_max}`` (CLIPure-Diff's
range, [900, 999]) and at ``t ~ U{0..T-1}``, on held-out embeddings, next to the loss of the best constant
predictor (the training mean of ``x0``): at t >= 900 the input is almost pure noise, so that is the level a prior
that learnt nothing but the mean reaches.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from clipure_lit.clip.backbone import load_backbone
from clipure_lit.config.loader import to_plain
from clipure_lit.data.datasets import build_dataset, select_ids
from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.prior import build_prior
from clipure_lit.training.common import (EXPORT_DIR, BudgetedModule, ValidationColumns, attention_kernel,
                                         build_fit_trainer, export_final, export_state_dict, resolve_resume)
from clipure_lit.training.data import TrainDataModule
from clipure_lit.training.embed_cache import cached_image_embeddings
from clipure_lit.training.image_cache import load_uint8
from clipure_lit.utils.paths import find_path

log = logging.getLogger(__name__)


def denoising_loss_per_sample(prior, z: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """``[B]`` losses of unit embeddings ``z [B, D]`` at timesteps ``t [B]`` with noise ``[B, D]`` (unconditional:
    learned null text; the noisy image embedding is never dropped)."""
    x0 = z * prior.image_embed_scale
    x_t = prior.noise_scheduler.q_sample(x_start=x0, t=t, noise=noise)
    pred = prior.net(x_t, t, text_embed=torch.zeros_like(x_t), text_cond_drop_prob=1.0, image_cond_drop_prob=0.0)
    target = x0 if prior.predict_x_start else noise
    return (pred - target).square().mean(dim=-1)


class PriorTrainModule(BudgetedModule, ValidationColumns, pl.LightningModule):
    """Trains ``prior.net`` on batches ``(z [B, D],)`` of unit embeddings and validates on batches ``(z [B, D],
    ids [B])`` (module docstring)."""

    def __init__(self, cfg, prior, train_mean: Tensor | None = None, run_dir: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.pt = cfg.prior_train
        self.prior = prior.train()
        self.prior.net.requires_grad_(True)
        # Fixed rotary frequencies stay fixed: the rotary embedding caches them after the first step, so they would
        # get a gradient in that step only (and DDP, which expects every trainable parameter in every step, stops).
        for module in self.prior.net.modules():
            if isinstance(getattr(module, "freqs", None), torch.nn.Parameter) and not getattr(module, "learned_freq", True):
                module.freqs.requires_grad_(False)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # [D] mean of the scaled training embeddings: the constant predictor of the validation baseline.
        self.register_buffer("x0_mean", (train_mean if train_mean is not None else torch.zeros(prior.image_embed_dim)).float(),
                             persistent=False)
        self.last_val: dict[str, float] = {}

    def training_step(self, batch, batch_idx):
        z = batch[0].float()  # [B, D]
        b, steps = z.shape[0], self.prior.noise_scheduler.num_timesteps
        t = torch.randint(0, steps, (b,), device=z.device)
        # p_losses applies the prior's own drop probabilities (text 1.0 = unconditional, image 0.0).
        loss = self.prior.p_losses(z * self.prior.image_embed_scale, t, text_cond={"text_embed": torch.zeros_like(z)})
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return self.optimizers_for(self.prior.net.parameters())

    def validation_step(self, batch, batch_idx) -> None:
        z, ids = batch[0].float(), batch[1]  # [B, D], [B]
        b, steps = z.shape[0], self.prior.noise_scheduler.num_timesteps
        gen = torch.Generator().manual_seed(1000 + batch_idx)  # same draws at every validation
        t_hi = torch.randint(self.pt.val_t_min, self.pt.val_t_max + 1, (b,), generator=gen).to(z.device)
        t_all = torch.randint(0, steps, (b,), generator=gen).to(z.device)
        noise = torch.randn(z.shape, generator=gen).to(z.device)
        x0 = z * self.prior.image_embed_scale
        base = (x0 - self.x0_mean).square().mean(-1)  # [B]
        columns = {name: denoising_loss_per_sample(self.prior, z, t, noise).float()  # [B] each
                   for name, t in ((f"loss_t{self.pt.val_t_min}_{self.pt.val_t_max}", t_hi), ("loss_all_t", t_all))}
        self.collect_validation(ids, **columns, loss_mean_predictor=base.float())

    def on_validation_epoch_end(self) -> None:
        collected = self.take_validation()  # every rank's samples, each once
        if collected is None:
            return
        self.last_val = {k: float(v.mean()) for k, v in collected.items() if k != "ids"}
        # The same values on every rank (gathered above); sync_dist keeps Lightning's epoch-level reduction explicit.
        self.log_dict({f"val/{k}": v for k, v in self.last_val.items()}, sync_dist=True)
        log.info("step %d: %s", self.global_step, ", ".join(f"{k} {v:.4f}" for k, v in self.last_val.items()))

    def export(self, path: Path) -> Path:
        """The ``DiffusionPrior`` state dict (network weights in ``export_dtype``, schedule buffers in fp32)."""
        buffers = tuple(name for name, _ in self.prior.named_buffers())
        meta = {"job": "prior", "global_step": int(self.global_step), "clip_arch": self.cfg.clip.arch,
                "clip_pretrained": str(self.cfg.clip.pretrained), "prior": to_plain(self.cfg)["prior_train"]["prior"]}
        return export_state_dict(self.prior.state_dict(), path, self.pt.export_dtype, metadata=meta, keep_fp32=buffers)


def _embeddings(cfg, backbone, data_cfg):
    """Cached unit embeddings ``[N, D]`` of the evaluation-style subset of ``data_cfg``."""
    dataset = build_dataset(data_cfg)
    ids = select_ids(data_cfg, dataset) if (data_cfg.num_samples is not None or data_cfg.ids_file) else list(range(len(dataset)))
    root = find_path(data_cfg.root)
    ident = {"name": data_cfg.name, "root": str(root.resolve() if root else data_cfg.root), "split": data_cfg.split,
             "image_size": data_cfg.image_size, "n_total": len(dataset)}
    load_batch = None
    if cfg.prior_train.image_cache_dir and dataset.files is not None:
        images, _ = load_uint8(dataset, cfg.prior_train.image_cache_dir, ids)  # [N, S, S, 3] uint8, decoded once

        def load_batch(start: int, stop: int) -> torch.Tensor:  # same values as dataset.load: uint8 / 255
            return images[start:stop].permute(0, 3, 1, 2).float().div(255.0)

    return cached_image_embeddings(backbone, dataset, ids, ident, cfg.prior_train.embed_cache_dir,
                                   batch_size=cfg.prior_train.embed_batch_size, load_batch=load_batch)


def run_prior(cfg, run_dir: Path, logger) -> dict:
    """Embed (or reuse the cache), train the prior, export it; returns final metrics."""
    pcfg = cfg.prior_train.prior
    backbone, _ = load_backbone(cfg.clip)
    if pcfg.dim != backbone.embed_dim:
        raise ConfigError(f"prior_train.prior.dim={pcfg.dim} but clip.arch='{cfg.clip.arch}' has embed_dim={backbone.embed_dim}. "
                          "Fix: set prior_train.prior.dim to the CLIP embedding size.")
    if cfg.clip.pretrained is None:
        log.warning("clip.pretrained is null: the prior models the embeddings of a RANDOMLY INITIALISED CLIP (tests only).")
    t0 = time.perf_counter()
    train = _embeddings(cfg, backbone, cfg.data)
    embed_s = time.perf_counter() - t0
    has_val = cfg.fit.val_every_n_steps != 0
    val = _embeddings(cfg, backbone, cfg.val_data) if has_val else None
    z = train.embeddings  # [N, D]
    prior = build_prior(pcfg, init_seed=cfg.seed)
    module = PriorTrainModule(cfg, prior, train_mean=(z * prior.image_embed_scale).mean(0), run_dir=run_dir)
    val_set = (val.embeddings, torch.arange(len(val.embeddings))) if val is not None else None  # ([M, D], ids [M])
    dm = TrainDataModule((z,), cfg.data.batch_size, val_set=val_set,
                         val_batch_size=cfg.val_data.batch_size, seed=cfg.seed)
    trainer = build_fit_trainer(cfg, run_dir, logger, callbacks=[], has_val=has_val)
    start = time.perf_counter()
    with attention_kernel(cfg.fit.sdpa_math):
        trainer.fit(module, datamodule=dm, ckpt_path=resolve_resume(cfg, run_dir), weights_only=True)
    fit_s = time.perf_counter() - start
    export, shipped = export_final(module, run_dir / EXPORT_DIR / "prior.safetensors", cfg.prior_train.export_to,
                                   "prior_train.export_to", cfg.overwrite)
    return {"job": "prior", "global_step": int(trainer.global_step), "epochs": int(trainer.current_epoch),
            "num_embeddings": int(z.shape[0]), "embedded_now": int(train.computed), "embed_seconds": round(embed_s, 1),
            "embed_cache": str(train.path), "fit_seconds": round(fit_s, 1), "export": str(export), "export_to": shipped,
            "params": int(sum(p.numel() for p in prior.net.parameters())),
            **{f"val/{k}": v for k, v in module.last_val.items()}}
