"""Pixel-space CLIPure: the CLIPure-Cos objective, ascended by moving the pixels instead of the embedding.

The ablation "purify in CLIP's latent space vs in pixel space". With f the classifier's CLIP image encoder
(resize + normalise + ViT + L2 norm, ``ClipBackbone.encode_image``) and t the blank anchor of CLIPure-Cos:

    loss(x) = -sum_i cos(f(x_i), t)                       (the same objective as the latent CLIPure-Cos)
    g = d loss / d x = J_f(x)^T  dloss/dz                  dloss/dz: step.neg_cos_grad (shared closed form)
    m = gamma * m - (1 - gamma) * g / ||g||                 step.momentum_direction on g flattened to [B, 3HW]
    x = clamp(x0 + clamp(x + eta * m - x0, -eps, eps), 0, 1)

for T steps from x0 = x (no eps: only the [0, 1] box). The keys are ``purifier.clipure_pixel.*``
(:class:`ClipurePixelCfg`): the latent loop's step controls (num_steps, step_size, momentum, norm_scope, grad_mode,
batch_size, diagnostics) with pixel-scale defaults, ``eps``, and ``gradient_checkpointing`` (in ``full`` mode each
step is recomputed in the backward pass, memory flat in T).

Gradient modes: ``full`` keeps g in the graph (``create_graph=True``, the exact white-box gradient, a
second-order backward through the encoder); ``as_released`` detaches g as the official code does. Unlike on the
sphere, a detached direction does not mask the gradient here: the step is additive, so the attack sees the
straight-through gradient (identity, masked by the box and eps projections). It is still not the exact
gradient, so the purifier declares ``differentiable`` only in ``full`` mode.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.ascent import AscentCfg, AscentModes, stack_records
from clipure_lit.purifiers.base import BuildContext, GradMode, Purifier, Space
from clipure_lit.purifiers.clipure_cos import blank_anchor
from clipure_lit.purifiers.recompute import recompute_in_backward
from clipure_lit.purifiers.registry import register_purifier
from clipure_lit.purifiers.step import NormScope, momentum_direction, neg_cos_grad

KEY = "purifier.clipure_pixel"


@dataclass
class ClipurePixelCfg(AscentCfg):
    """``purifier.clipure_pixel.*``: CLIPure-Cos's objective ascended in pixel space, x <- proj(x + step_size * m)."""

    # L2 length of one step in [0, 1] pixel units (per sample with norm_scope=sample; shared by the batch's
    # Frobenius norm with norm_scope=batch).
    step_size: float = 0.25
    grad_mode: GradMode = GradMode.full
    norm_scope: NormScope = NormScope.sample
    # L-infinity budget around the input, in units of 1/255 (null: only the [0, 1] box).
    eps: Optional[float] = 8.0
    # grad_mode=full: recompute each step (a CLIP forward + backward) in the attack's backward pass instead of
    # keeping its second-order graph. Same gradient; memory flat in num_steps.
    gradient_checkpointing: bool = True

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.eps is not None and not self.eps >= 0.0:
            raise ConfigError(f"{where}.eps={self.eps} must be >= 0 (units of 1/255) or null (no budget).")


class ClipurePixel(AscentModes, Purifier):
    """Normalised-gradient ascent of ``cos(f(x), t_blank)`` on the pixels (see module docstring).

    Args:
        encoder: has ``encode_image(x [B, 3, H, W] in [0, 1]) -> unit [B, D]`` (the classifier's backbone). It is
            *not* registered as a submodule: the classifier owns it (no duplicate parameters in state dicts).
        anchor: blank anchor ``[D]`` (only its direction is used).
        cfg: the ``purifier.clipure_pixel`` keys (its ``eps`` is ignored here: the ``eps`` argument is used).
        eps: L-infinity budget around the input in [0, 1] units (None: only the [0, 1] box).
    """

    space = Space.pixel
    needs_grad = True

    def __init__(self, encoder: Any, anchor: Tensor, cfg: ClipurePixelCfg, eps: float | None = None) -> None:
        super().__init__()
        if anchor.ndim != 1 or not torch.isfinite(anchor).all() or float(anchor.norm()) == 0.0:
            raise ConfigError(f"Pixel CLIPure needs a finite, non-zero blank anchor of shape [D]; got shape "
                              f"{tuple(anchor.shape)} with norm {float(anchor.norm()):.3g}. Check prompts.blank_*.")
        if eps is not None and not eps >= 0.0:
            raise ConfigError(f"{KEY}.eps={eps} must be >= 0 (in 1/255 units) or null.")
        self.__dict__["encoder"] = encoder  # plain attribute: shared with the classifier, not a submodule
        self.register_buffer("anchor", F.normalize(anchor.detach().float(), dim=0))  # [D]
        self.init_modes(cfg, KEY)
        self.eps = None if eps is None else float(eps)

    def objective_grad(self, x: Tensor, in_graph: bool) -> tuple[Tensor, Tensor]:
        """``(d loss / d x [B, 3, H, W], cos(f(x), t) [B])``; the gradient is detached unless ``in_graph``."""
        keep = in_graph and x.requires_grad
        x_in = x if keep else x.detach().requires_grad_(True)
        # An outer backward differentiates this gradient again (create_graph): the fused CPU/flash attention
        # kernels have no double backward, the math kernel (plain matmul + softmax) has.
        with sdpa_kernel([SDPBackend.MATH]) if keep else contextlib.nullcontext():
            z = self.encoder.encode_image(x_in)  # [B, D], unit rows
        anchor = self.anchor.to(z.dtype)
        dz = neg_cos_grad(z, anchor) if keep else neg_cos_grad(z.detach(), anchor)  # [B, D]
        (g,) = torch.autograd.grad(z, x_in, grad_outputs=dz, create_graph=keep)
        return g, (z.detach() @ anchor)

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        """Back into the eps-ball around ``x0`` (when set), then into [0, 1]."""
        if self.eps is not None:
            x = x0 + (x - x0).clamp(-self.eps, self.eps)
        return x.clamp(0.0, 1.0)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``x [B, 3, H, W]`` in [0, 1] -> purified ``[B, 3, H, W]`` in [0, 1] (within eps of ``x``)."""
        s = self.cfg
        in_graph = s.grad_mode == GradMode.full
        records: list[dict[str, Tensor]] = []
        x0 = x

        def step(keep_graph: bool, x: Tensor, m: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            g, cos = self.objective_grad(x, keep_graph)
            m = momentum_direction(m.flatten(1), g.flatten(1), s.momentum, s.norm_scope).view_as(g)  # [B, 3, H, W]
            return self.project(x + s.step_size * m, x0), m, cos

        with torch.enable_grad():  # AutoAttack's clean pass and Lightning's test loop may run under no_grad
            m = torch.zeros_like(x)  # [B, 3, H, W] momentum
            for _ in range(s.num_steps):
                before = x
                if s.checkpoints_steps() and x.requires_grad:
                    # Deterministic step: the recomputation in the backward pass gives the same graph.
                    x, m, cos = recompute_in_backward(step, x, m, x0)
                else:
                    x, m, cos = step(in_graph, x, m, x0)
                if s.diagnostics:
                    records.append({"cos_to_anchor": cos, "linf_moved": (before - x0).detach().flatten(1).abs().amax(1)})
            if s.diagnostics:
                with torch.no_grad():
                    cos = self.encoder.encode_image(x.detach()) @ self.anchor
                records.append({"cos_to_anchor": cos, "linf_moved": (x - x0).detach().flatten(1).abs().amax(1)})
        self.last_diagnostics = stack_records(records)  # {name: [T + 1, B]}
        return x

    def describe(self) -> dict[str, Any]:
        s = self.cfg
        return {**super().describe(), "num_steps": s.num_steps, "step_size": s.step_size, "momentum": s.momentum,
                "grad_mode": s.grad_mode.value, "norm_scope": s.norm_scope.value, "batch_size": s.batch_size,
                "gradient_checkpointing": s.gradient_checkpointing, "eps_255": None if self.eps is None else round(self.eps * 255.0, 6)}


@register_purifier("clipure_pixel", Space.pixel, ClipurePixelCfg, "CLIPure-Cos objective ascended in pixel space")
def build_clipure_pixel(cfg: ClipurePixelCfg, ctx: BuildContext) -> ClipurePixel:
    eps = None if cfg.eps is None else float(cfg.eps) / 255.0
    return ClipurePixel(ctx.backbone, blank_anchor(ctx), cfg, eps=eps).to(ctx.backbone.mean.device)
