"""Job ``clip``: train an open_clip ``CLIP`` (built from a model-config JSON) from scratch on a labelled image
dataset, with prompts built from the class names, so that it works as a zero-shot classifier.

Per step, for images ``x`` (uint8, augmented: zero-padded random crop + horizontal flip), labels ``y`` and
unit image embeddings ``z = normalize(f_img(normalize_meanstd(x)))`` ``[B, D]`` (``ClipBackbone.preprocess``, the
normalisation evaluation applies), learned scale ``s = exp(logit_scale)`` (capped):

* classification: ``C_k = normalize(mean_t normalize(f_txt(t(c_k))))`` over the class templates ``t``
  (recomputed through the text tower every step), ``L_cls = CE(s * z C^T, y)``;
* captions: one random template ``t_i`` per image (from ``caption_templates``), ``u_i = normalize(f_txt(t_i(c_{y_i})))``,
  ``S = s * z u^T`` ``[B, B]``, positives ``P(i) = {j : y_j = y_i}`` (same-class captions are not negatives);
  ``L_cap = 1/2 [ -mean_i (LSE_{j in P(i)} S_ij - LSE_j S_ij) - mean_j (LSE_{i in P(j)} S_ij - LSE_i S_ij) ]``;
* blank anchor: ``nb`` random blank prompts ``b_m = normalize(f_txt(t_m("")))`` (templates with an empty class
  name), ``L_blank = mean_{i,m} (z_i . b_m - c0)^2`` with target ``c0 = blank_target``. The classification and
  caption terms are invariant to a component shared by all class embeddings, so without this term the cosine
  to the blank prompt is unconstrained (and came out class-dependent, -0.44..0.59, in the probe).

``loss = w_cls L_cls + w_caption L_cap + w_blank L_blank``. Validation: zero-shot top-1 with the evaluation head
(``prompts.class_templates``) and the distribution of ``cos(z, t_blank)`` for the evaluation's blank anchor
(``prompts.blank_templates`` / ``blank_prompt``), overall and per class.

Output: ``<run_dir>/export/<arch>.safetensors``, an open_clip state dict that loads with
``clip.arch=<arch> clip.model_config=<json> clip.pretrained=<file>``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from clipure_lit.clip.backbone import load_backbone
from clipure_lit.clip.prompts import blank_prompts, format_prompts, get_templates
from clipure_lit.clip.zeroshot import class_embeddings, encode_prompts
from clipure_lit.config.loader import load_config, to_plain
from clipure_lit.data.datamodule import ZeroShotDataModule
from clipure_lit.training.common import (EXPORT_DIR, BudgetedModule, ValidationColumns, attention_kernel,
                                         build_fit_trainer, export_final, export_state_dict, resolve_resume)
from clipure_lit.training.data import training_inputs

log = logging.getLogger(__name__)

BLANK_COS_THRESHOLD = 0.033  # below this angle the released CLIPure-Cos step (eta = 30) overshoots (reference 4.2)


def _unique(seq: list[str]) -> list[str]:
    return list(dict.fromkeys(seq))


def augment_uint8(x: Tensor, padding: int, hflip: bool, generator: torch.Generator | None = None) -> Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [0, 1], randomly cropped from the zero-padded image
    (offsets uniform in [0, 2p]) and flipped left-right with probability 1/2."""
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, H, W]
    b, _, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))  # [B, 3, H+2p, W+2p]
        off = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator)
        rows = (off[:, 0:1] + torch.arange(h))[:, :, None]  # [B, H, 1]
        cols = (off[:, 1:2] + torch.arange(w))[:, None, :]  # [B, 1, W]
        x = xp[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [B, H, W, 3] -> [B, 3, H, W]
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


def multi_positive_ce(scores: Tensor, positives: Tensor) -> Tensor:
    """``-mean_i (LSE_{j: pos_ij} S_ij - LSE_j S_ij)`` for ``scores`` and boolean ``positives`` ``[B, B]``."""
    pos = scores.masked_fill(~positives, float("-inf"))
    return -(torch.logsumexp(pos, dim=1) - torch.logsumexp(scores, dim=1)).mean()


class ClipTrainModule(BudgetedModule, ValidationColumns, pl.LightningModule):
    """The trainable ``ClipBackbone`` plus the tokenised prompts of the objective (module docstring)."""

    def __init__(self, cfg, backbone, tokenizer, classnames: list[str], run_dir: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.ct = cfg.clip_train
        self.backbone = backbone
        self.backbone.model.train().requires_grad_(True)
        self.tokenizer = tokenizer
        self.classnames = list(classnames)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if cfg.clip.pretrained is None:
            self.backbone.model.logit_scale.data.fill_(math.log(self.ct.logit_scale_init))
        k = len(self.classnames)
        class_t = get_templates(self.ct.class_templates)
        cap_t = _unique([t for name in self.ct.caption_templates for t in get_templates(name)])
        blank_t = _unique(blank_prompts(_unique([t for name in self.ct.blank_templates for t in get_templates(name)])))
        self.n_class_templates = len(class_t)
        self.register_buffer("class_tokens", tokenizer([p for c in self.classnames for p in format_prompts(class_t, c)]),
                             persistent=False)  # [K*T, L], class-major
        caps = tokenizer([p for c in self.classnames for p in format_prompts(cap_t, c)])
        self.register_buffer("caption_tokens", caps.view(k, len(cap_t), -1), persistent=False)  # [K, Tc, L]
        self.register_buffer("blank_tokens", tokenizer(blank_t), persistent=False)  # [Nb, L]
        self._t_last: float | None = None
        self.last_val: dict[str, float] = {}

    # ---- objective -------------------------------------------------------------------------------------------
    def encode_images(self, x: Tensor) -> Tensor:
        """``x [B, 3, H, W]`` in [0, 1] -> unit embeddings ``[B, D]`` (fp32), exactly as evaluation computes them."""
        return self.backbone.encode_image(x)

    def losses(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """All terms of the objective for float images ``x [B, 3, H, W]`` and labels ``y [B]``."""
        model, ct = self.backbone.model, self.ct
        b, k, t = x.shape[0], len(self.classnames), self.n_class_templates
        z = self.encode_images(x)  # [B, D]
        tc = self.caption_tokens.shape[1]
        cap_idx = torch.randint(0, tc, (b,), device=y.device)
        cap_tok = self.caption_tokens[y, cap_idx]  # [B, L]
        nb = min(int(ct.blank_per_step), self.blank_tokens.shape[0])
        blank_tok = self.blank_tokens[torch.randperm(self.blank_tokens.shape[0], device=y.device)[:nb]]  # [nb, L]
        text = F.normalize(model.encode_text(torch.cat([self.class_tokens, cap_tok, blank_tok])).float(), dim=-1)
        t_cls, u, blank = text[: k * t], text[k * t: k * t + b], text[k * t + b:]
        class_emb = F.normalize(t_cls.view(k, t, -1).mean(1), dim=-1)  # [K, D]
        scale = model.logit_scale.exp().clamp(max=ct.logit_scale_max)
        logits = scale * z @ class_emb.T  # [B, K]
        out = {"cls": F.cross_entropy(logits, y), "acc": (logits.argmax(1) == y).float().mean()}
        sim = scale * z @ u.T  # [B, B]
        pos = y[:, None] == y[None, :]
        out["caption"] = 0.5 * (multi_positive_ce(sim, pos) + multi_positive_ce(sim.T, pos))
        if nb > 0:
            cos_b = z @ blank.T  # [B, nb]
            out["blank"] = (cos_b - ct.blank_target).square().mean()
            out["cos_blank"] = cos_b.mean()
        else:
            out["blank"] = out["cos_blank"] = torch.zeros((), device=z.device)
        out["loss"] = ct.w_cls * out["cls"] + ct.w_caption * out["caption"] + ct.w_blank * out["blank"]
        out["logit_scale"] = scale.detach()
        return out

    def training_step(self, batch, batch_idx):
        images, y = batch[0], batch[1]  # uint8 [B, H, W, 3], int64 [B]
        x = augment_uint8(images.cpu(), self.ct.crop_padding, self.ct.hflip).to(self.device)
        out = self.losses(x, y)
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/img_per_s", x.shape[0] / max(now - self._t_last, 1e-6), on_step=True, prog_bar=True)
        self._t_last = now
        self.log_dict({f"train/{k}": v.detach().float() for k, v in out.items()}, on_step=True, prog_bar=False)
        self.log("train/loss_", out["loss"].detach(), prog_bar=True, logger=False)
        return out["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.backbone.model.logit_scale.clamp_(max=math.log(self.ct.logit_scale_max))
        super().on_train_batch_end(outputs, batch, batch_idx)

    def configure_optimizers(self):
        return self.optimizers_for(self.backbone.model.parameters())

    # ---- validation ------------------------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx) -> None:
        x, y, ids = batch[0], batch[1], batch[2]  # float [B, 3, H, W] in [0, 1], [B], [B]
        self.collect_validation(ids, z=self.encode_images(x).float(), y=y)

    def on_validation_epoch_end(self) -> None:
        collected = self.take_validation()  # every rank's samples, each once
        if collected is None:
            return
        stats = zero_shot_stats(self.backbone, self.tokenizer, self.classnames, self.cfg.prompts, collected["z"],
                                collected["y"])
        self.last_val = {k: v for k, v in stats.items() if isinstance(v, float)}
        # The same values on every rank (gathered above); sync_dist keeps Lightning's epoch-level reduction explicit.
        self.log_dict({f"val/{k}": v for k, v in self.last_val.items()}, prog_bar=False, sync_dist=True)
        log.info("step %d: val acc %.4f, cos(z, t_blank) mean %.3f min %.3f, class means %.3f..%.3f",
                 self.global_step, stats["acc"], stats["cos_blank_mean"], stats["cos_blank_min"],
                 stats["cos_blank_class_min"], stats["cos_blank_class_max"])

    # ---- checkpoints and export -----------------------------------------------------------------------------
    def export(self, path: Path) -> Path:
        """The open_clip state dict (``model.*`` keys of open_clip's CLIP) as safetensors, in ``export_dtype``."""
        meta = {"arch": self.cfg.clip.arch, "global_step": int(self.global_step), "job": "clip",
                "clip_train": to_plain(self.cfg)["clip_train"], "optim": to_plain(self.cfg)["optim"]}
        return export_state_dict(self.backbone.model.state_dict(), path, self.ct.export_dtype, metadata=meta)


@torch.no_grad()
def zero_shot_stats(backbone, tokenizer, classnames: list[str], prompts_cfg, z: Tensor, y: Tensor) -> dict:
    """Zero-shot top-1 of unit embeddings ``z [N, D]`` with the evaluation head, and ``cos(z, t_blank)`` statistics
    (overall and per class; ``t_blank`` = mean of the unit embeddings of the evaluation's blank prompts)."""
    was_training = backbone.training
    backbone.eval()
    C = class_embeddings(backbone, tokenizer, classnames, get_templates(prompts_cfg.class_templates))  # [D, K]
    prompts = [prompts_cfg.blank_prompt] if prompts_cfg.blank_prompt else blank_prompts(get_templates(prompts_cfg.blank_templates))
    anchor = encode_prompts(backbone, tokenizer, prompts).mean(0)  # [D]
    backbone.train(was_training)
    C, anchor = C.float().cpu(), anchor.float().cpu()
    pred = (z @ C).argmax(1)
    cos = z @ F.normalize(anchor, dim=0)  # [N]
    k = len(classnames)
    per_class = [float(cos[y == c].mean()) if bool((y == c).any()) else float("nan") for c in range(k)]
    present = [v for v in per_class if not math.isnan(v)]
    stats = {"acc": float((pred == y).float().mean()), "cos_blank_mean": float(cos.mean()), "cos_blank_std": float(cos.std()) if len(cos) > 1 else 0.0,
             "cos_blank_min": float(cos.min()), "cos_blank_max": float(cos.max()),
             "cos_blank_frac_above_0.033": float((cos > BLANK_COS_THRESHOLD).float().mean()),
             "cos_blank_class_min": min(present), "cos_blank_class_max": max(present),
             "cos_class_true_mean": float((z * C.T[y]).sum(1).mean())}
    for c, v in enumerate(per_class):
        stats[f"cos_blank_class{c}"] = v
    stats["per_class"] = dict(zip(classnames, per_class))
    return stats


def run_clip(cfg, run_dir: Path, logger) -> dict:
    """Train (or resume) the ``clip`` job; returns final metrics (also in ``results.json``)."""
    classnames, dm, has_val = training_inputs(cfg, cfg.clip_train.image_cache_dir)
    backbone, tokenizer = load_backbone(cfg.clip)
    module = ClipTrainModule(cfg, backbone, tokenizer, classnames, run_dir=run_dir)
    trainer = build_fit_trainer(cfg, run_dir, logger, callbacks=[], has_val=has_val)
    ckpt_path = resolve_resume(cfg, run_dir)
    start = time.perf_counter()
    with attention_kernel(cfg.fit.sdpa_math):
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    elapsed = time.perf_counter() - start
    export, shipped = export_final(module, run_dir / EXPORT_DIR / f"{cfg.clip.arch}.safetensors",
                                   cfg.clip_train.export_to, "clip_train.export_to", cfg.overwrite)
    return {"job": "clip", "global_step": int(trainer.global_step), "epochs": int(trainer.current_epoch),
            "fit_seconds": round(elapsed, 1), "export": str(export), "export_to": shipped,
            "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
            **{f"val/{k}": v for k, v in module.last_val.items()}}


@torch.no_grad()
def measure_blank_geometry(clip_args: list[str], data_args: list[str], batch_size: int = 500) -> dict:
    """Zero-shot accuracy and ``cos(z, t_blank)`` statistics of a CLIP on an evaluation dataset, for three blank
    anchors: the 80 OpenAI ImageNet blank templates (``prompts=cifar10``'s anchor), the 18 CIFAR-10 blank templates,
    and the single prompt "a photo of a .". Also ``cos(t_blank, C_k)`` of the anchor with each class embedding.

    ``clip_args`` / ``data_args`` are eval.py-style overrides, e.g. ``["clip=cifar10_small"]`` and
    ``["data=cifar10_jpeg_shared", "data.num_samples=null"]``. Images are encoded in fp32.
    """
    cfg = load_config([*clip_args, *data_args, "prompts=cifar10"])
    backbone, tokenizer = load_backbone(cfg.clip)
    dm = ZeroShotDataModule(cfg.data)
    dm.setup()
    zs, ys = [], []
    for x, y, _ in torch.utils.data.DataLoader(dm.test_set, batch_size=batch_size):
        zs.append(backbone.encode_image(x))
        ys.append(y)
    z, y = torch.cat(zs), torch.cat(ys)
    C = class_embeddings(backbone, tokenizer, dm.classnames, get_templates("cifar10"))  # [D, K]
    out = {"num_images": int(len(y))}
    anchors = {"openai_imagenet_80": SimpleNamespace(class_templates="cifar10", blank_templates="openai_imagenet_80", blank_prompt=None),
               "cifar10_18": SimpleNamespace(class_templates="cifar10", blank_templates="cifar10", blank_prompt=None),
               "a photo of a .": SimpleNamespace(class_templates="cifar10", blank_templates="cifar10", blank_prompt="a photo of a .")}
    for name, p in anchors.items():
        stats = zero_shot_stats(backbone, tokenizer, dm.classnames, p, z, y)
        prompts = [p.blank_prompt] if p.blank_prompt else blank_prompts(get_templates(p.blank_templates))
        anchor = F.normalize(encode_prompts(backbone, tokenizer, prompts).mean(0), dim=0)
        stats["cos_anchor_class_embeddings"] = [round(float(v), 3) for v in anchor @ C]
        out[name] = {k: v for k, v in stats.items() if not k.startswith("cos_blank_class") or k in ("cos_blank_class_min", "cos_blank_class_max")}
    return out
