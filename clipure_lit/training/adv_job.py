"""Jobs ``fare`` and ``tecoa``: adversarial fine-tuning of a trained CLIP's image encoder (RobustVLM; Schlarmann et
al. 2024, FARE; Mao et al. 2023, TeCoA). The text tower stays frozen, so the zero-shot head is unchanged.

With ``f`` the image encoder being tuned (unnormalised embedding, ``[B, D]``), ``f0`` a frozen copy of the
original encoder, images ``x`` in [0, 1] and the Linf ball ``||d||_inf <= eps`` (``x + d`` kept in [0, 1]):

* FARE (unsupervised):  ``L(x') = mean_b ||f(x')_b - f0(x)_b||_2^2``;  inner PGD maximises ``L`` over ``x' = x + d``,
  the outer step minimises ``L(x_adv)``: the adversarial embedding stays close to the *original* clean embedding,
  so the encoder keeps working with the original text tower and any downstream model built on it.
* TeCoA (supervised):  ``L(x') = CE(s * normalize(f(x')) C^T, y)`` with the frozen zero-shot head ``C`` (class
  templates ``adv_train.class_templates``) and the model's logit scale ``s``; PGD maximises it, the outer step
  minimises it at ``x_adv``.

PGD: random start uniform in the ball, ``pgd_steps`` signed-gradient steps of ``pgd_step_size``, projection on the
ball and on [0, 1]; the encoder is in eval mode during the attack. Trainable parameters: open_clip state-dict
names starting with one of ``adv_train.trainable``. Output: the full open_clip state dict as safetensors
(``clip.pretrained=<file>`` on the evaluation side).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from clipure_lit.clip.backbone import load_backbone
from clipure_lit.clip.prompts import get_templates
from clipure_lit.clip.zeroshot import class_embeddings
from clipure_lit.config.loader import to_plain
from clipure_lit.errors import ConfigError
from clipure_lit.training.clip_job import augment_uint8
from clipure_lit.training.common import (EXPORT_DIR, BudgetedModule, ValidationColumns, attention_kernel,
                                         build_fit_trainer, export_final, export_state_dict, resolve_resume)
from clipure_lit.training.data import training_inputs

log = logging.getLogger(__name__)


def pgd_linf(loss_fn: Callable[[Tensor], Tensor], x: Tensor, eps: float, steps: int, step_size: float,
             generator: torch.Generator | None = None) -> Tensor:
    """Maximise ``loss_fn(x')`` over ``||x' - x||_inf <= eps``, ``x'`` in [0, 1]: random start, ``steps`` signed
    gradient steps. Returns ``x_adv`` (detached, ``x.shape``)."""
    noise = torch.rand(x.shape, generator=generator, device=x.device) if generator is not None else torch.rand_like(x)
    delta = (noise * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(x + delta), delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


class AdvTrainModule(BudgetedModule, ValidationColumns, pl.LightningModule):
    """FARE / TeCoA fine-tuning of ``backbone.model.visual`` (module docstring)."""

    def __init__(self, cfg, backbone, tokenizer, classnames: list[str], run_dir: Path | None = None) -> None:
        super().__init__()
        self.cfg, self.at, self.kind = cfg, cfg.adv_train, cfg.job
        self.backbone, self.tokenizer, self.classnames = backbone, tokenizer, list(classnames)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.original = copy.deepcopy(backbone).eval().requires_grad_(False)  # f0, frozen
        prefixes = tuple(self.at.trainable)
        names = [n for n, p in backbone.model.named_parameters()]
        for name, p in backbone.model.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
        if not any(n.startswith(prefixes) for n in names):
            raise ConfigError(f"adv_train.trainable={list(prefixes)} matches no parameter of clip.arch='{cfg.clip.arch}' "
                              f"(names look like {names[:3]}).")
        with torch.no_grad():
            C = class_embeddings(backbone, tokenizer, self.classnames, get_templates(self.at.class_templates))
        self.register_buffer("class_emb", C.float(), persistent=False)  # [D, K]
        self.last_val: dict[str, float] = {}

    def features(self, x: Tensor) -> Tensor:
        """Unnormalised image embedding ``[B, D]`` of the encoder being tuned (x in [0, 1])."""
        return self.backbone.model.encode_image(self.backbone.preprocess(x)).float()

    def loss_fn(self, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        """The objective ``L(x')`` of the job for clean images ``x`` and labels ``y`` (module docstring)."""
        if self.kind == "fare":
            with torch.no_grad():
                target = self.original.model.encode_image(self.original.preprocess(x)).float()  # f0(x), [B, D]
            return lambda xp: (self.features(xp) - target).square().sum(-1).mean()
        return self.zero_shot_ce(y, self.backbone.logit_scale)

    def zero_shot_ce(self, y: Tensor, scale: float) -> Callable[[Tensor], Tensor]:
        """``L(x') = CE(scale * normalize(f(x')) C^T, y)`` on the frozen zero-shot head (TeCoA's objective)."""
        return lambda xp: F.cross_entropy(scale * F.normalize(self.features(xp), dim=-1) @ self.class_emb, y)

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        was = self.backbone.training
        self.backbone.eval()
        fn = self.loss_fn(x, y)
        x_adv = pgd_linf(fn, x, self.at.eps / 255, int(self.at.pgd_steps), self.at.pgd_step_size / 255)
        self.backbone.train(was)
        return x_adv

    def training_step(self, batch, batch_idx):
        images, y = batch[0], batch[1]  # uint8 [B, H, W, 3], [B]
        ct = self.cfg.clip_train
        x = augment_uint8(images.cpu(), ct.crop_padding, ct.hflip).to(self.device)
        x_adv = self.attack(x, y)
        loss = self.loss_fn(x, y)(x_adv)
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return self.optimizers_for(self.backbone.model.parameters())

    def validation_step(self, batch, batch_idx) -> None:
        x, y, ids = batch[0], batch[1], batch[2]  # [B, 3, H, W] in [0, 1], [B], [B]
        columns = {"z": self.backbone.encode_image(x).float(), "y": y}  # z: [B, D] unit embeddings
        steps = int(self.at.val_pgd_steps)
        if steps:
            # The zero-shot cross-entropy (unit scale) for both jobs: what val/robust_acc measures is classification.
            head = self.zero_shot_ce(y, 1.0)
            gen = torch.Generator(device=x.device).manual_seed(int(self.cfg.seed) * 1000 + batch_idx)
            x_adv = pgd_linf(head, x, self.at.eps / 255, steps, self.at.eps / 4 / 255, generator=gen)
            z_adv = F.normalize(self.features(x_adv), dim=-1)
            columns["robust"] = (z_adv @ self.class_emb).argmax(1) == y  # [B] bool
        self.collect_validation(ids, **columns)

    def on_validation_epoch_end(self) -> None:
        collected = self.take_validation()  # every rank's samples, each once
        if collected is None:
            return
        z, y = collected["z"], collected["y"]
        acc = float(((z @ self.class_emb.cpu()).argmax(1) == y).float().mean())
        self.last_val = {"clean_acc": acc}
        if "robust" in collected:
            self.last_val["robust_acc"] = float(collected["robust"].float().mean())
        # The same values on every rank (gathered above); sync_dist keeps Lightning's epoch-level reduction explicit.
        self.log_dict({f"val/{k}": v for k, v in self.last_val.items()}, sync_dist=True)
        log.info("step %d: val %s", self.global_step, ", ".join(f"{k} {v:.4f}" for k, v in self.last_val.items()))

    def export(self, path: Path) -> Path:
        meta = {"job": self.kind, "arch": self.cfg.clip.arch, "base": str(self.cfg.clip.pretrained),
                "global_step": int(self.global_step), "adv_train": to_plain(self.cfg)["adv_train"]}
        return export_state_dict(self.backbone.model.state_dict(), path, self.at.export_dtype, metadata=meta)


def run_adv(cfg, run_dir: Path, logger) -> dict:
    """Fine-tune (or resume) with FARE or TeCoA; returns final metrics."""
    classnames, dm, has_val = training_inputs(cfg, cfg.adv_train.image_cache_dir)
    backbone, tokenizer = load_backbone(cfg.clip)
    module = AdvTrainModule(cfg, backbone, tokenizer, classnames, run_dir=run_dir)
    trainer = build_fit_trainer(cfg, run_dir, logger, callbacks=[], has_val=has_val,
                                val_needs_grad=cfg.adv_train.val_pgd_steps > 0)
    start = time.perf_counter()
    with attention_kernel(cfg.fit.sdpa_math):
        trainer.fit(module, datamodule=dm, ckpt_path=resolve_resume(cfg, run_dir), weights_only=True)
    fit_s = time.perf_counter() - start
    export, shipped = export_final(module, run_dir / EXPORT_DIR / f"{cfg.clip.arch}_{cfg.job}.safetensors",
                                   cfg.adv_train.export_to, "adv_train.export_to", cfg.overwrite)
    return {"job": cfg.job, "global_step": int(trainer.global_step), "fit_seconds": round(fit_s, 1), "export": str(export),
            "export_to": shipped, **{f"val/{k}": v for k, v in module.last_val.items()}}
