"""CLIPure-Cos: pull the image embedding towards the blank-prompt anchor by ascent on their cosine.

loss(z) = -sum_i cos(z_i, t), with t the blank anchor (mean of the unit text embeddings of the blank prompts).
In ``grad_mode=as_released`` its gradient is computed as the official code computes it, ``autograd.grad`` of
``F.cosine_similarity`` without ``create_graph`` (:func:`step.released_neg_cos_grad`: detached, and in the
released operation order, so a float32 run rounds as the released one does). In ``grad_mode=full`` it is the
closed form :func:`step.neg_cos_grad` (the same maths, equal in float64), kept in the graph.

When an attack differentiates the loop in ``full`` mode, :class:`_CosAscent` supplies its backward in closed form:
autograd through the loop records ~20 small operations per step and replays them, several percent of an attack
step on a small CLIP. Its forward runs the loop's own :func:`step.sphere_step` without a graph (bit-identical
values), keeping ``z_k`` and ``m_k`` (``[B, D]`` each) of every step; its backward applies
:func:`step.sphere_step_vjp` in reverse. ``tests/purifiers/test_clipure_cos.py`` checks it against autograd through
the loop in float64, for both norm scopes and with momentum. Only a first-order backward is provided (what attacks
take).

Keys: ``purifier.clipure_cos.*`` (:class:`ClipureCosCfg`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clipure_lit.clip.prompts import blank_prompts, get_templates
from clipure_lit.clip.zeroshot import build_blank_anchor
from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.ascent import AscentCfg, AscentPurifier
from clipure_lit.purifiers.base import BuildContext, GradMode, Space
from clipure_lit.purifiers.registry import register_purifier
from clipure_lit.purifiers.step import (cos_g_u, cos_g_u_vjp, neg_cos_grad, released_neg_cos_grad, sphere_step,
                                       sphere_step_vjp)

KEY = "purifier.clipure_cos"


@dataclass
class ClipureCosCfg(AscentCfg):
    """``purifier.clipure_cos.*``: the ascent loop's keys (released defaults). There is no step checkpointing:
    a step's graph keeps only a few [B, D] tensors, and the full gradient has a closed form."""


class _CosAscent(torch.autograd.Function):
    """The loop from ``z [B, D]`` with its exact (``full``) input gradient in closed form (module docstring)."""

    @staticmethod
    def forward(ctx, z: Tensor, anchor: Tensor, cfg: ClipureCosCfg) -> Tensor:
        zs, ms = [], []
        m = torch.zeros_like(z)  # [B, D]
        for _ in range(cfg.num_steps):
            zs.append(z)
            ms.append(m)
            z, m = sphere_step(z, m, neg_cos_grad(z, anchor), cfg.step_size, cfg.momentum, cfg.norm_scope)
        ctx.cfg = cfg
        ctx.save_for_backward(anchor, *zs, *ms)
        return z

    @staticmethod
    def backward(ctx, z_bar: Tensor):
        c = ctx.cfg
        anchor, *states = ctx.saved_tensors
        zs, ms = states[:c.num_steps], states[c.num_steps:]
        g_u_of, g_u_vjp = cos_g_u(anchor), cos_g_u_vjp(anchor)
        m_bar = torch.zeros_like(z_bar)
        for z, m in zip(reversed(zs), reversed(ms)):
            z_bar, m_bar = sphere_step_vjp(z, m, g_u_of, g_u_vjp, c.step_size, c.momentum, c.norm_scope, z_bar, m_bar)
        return z_bar, None, None


def cos_ascent_closed_form(z: Tensor, anchor_unit: Tensor, cfg: ClipureCosCfg) -> Tensor:
    """CLIPure-Cos's loop from ``z [B, D]``; differentiable with the exact (``full``) gradient in closed form."""
    return _CosAscent.apply(z, anchor_unit.to(z.dtype), cfg)


class ClipureCos(AscentPurifier):
    """Normalised-gradient ascent of ``cos(z, t_blank)`` on the sphere (see module docstring)."""

    stochastic = False

    def __init__(self, anchor: Tensor, cfg: ClipureCosCfg) -> None:
        super().__init__(cfg, KEY)
        if anchor.ndim != 1 or not torch.isfinite(anchor).all() or float(anchor.norm()) == 0.0:
            raise ConfigError(f"CLIPure-Cos needs a finite, non-zero blank anchor of shape [D]; got shape "
                              f"{tuple(anchor.shape)} with norm {float(anchor.norm()):.3g}. Check prompts.blank_*.")
        # Only the anchor's direction enters a cosine, so store it unit-norm: [D].
        self.register_buffer("anchor", F.normalize(anchor.detach().float(), dim=0))

    def make_grad_fn(self, z: Tensor, generator: torch.Generator | None):
        """The gradient of ``-sum_i cos(z_i, anchor)``; deterministic, so the step index is unused. Kept in the
        graph (``full``): the closed form. Detached (``as_released``): autograd of the cosine, the released
        operation order (:func:`step.released_neg_cos_grad`), so float32 runs follow the released rounding."""

        def grad_fn(zz: Tensor, in_graph: bool, step: int) -> Tensor:
            if in_graph:
                return neg_cos_grad(zz, self.anchor)
            return released_neg_cos_grad(zz, self.anchor)

        return grad_fn

    def forward(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``z [B, D]`` -> purified ``[B, D]``. When a ``full`` gradient is wanted, the loop's backward is the closed
        form of :class:`_CosAscent` (same values and gradient as autograd through the loop, at a fraction of the cost)."""
        c = self.cfg
        if (c.grad_mode == GradMode.full and c.num_steps > 0 and not c.diagnostics and torch.is_grad_enabled()
                and z.requires_grad):
            self.last_diagnostics = {}
            return cos_ascent_closed_form(z, self.anchor, c)
        return super().forward(z, generator=generator)

    def step_diagnostics(self, z: Tensor, z0: Tensor) -> dict[str, Tensor]:
        zd = z.detach()
        return {**super().step_diagnostics(z, z0), "cos_to_anchor": (F.normalize(zd, dim=-1) @ self.anchor)}


def blank_prompt_list(prompts_cfg) -> list[str]:
    """The blank prompts: ``prompts.blank_prompt`` alone when set, else ``prompts.blank_templates`` formatted
    with an empty class name (keeping their double spaces and " ." as released)."""
    if prompts_cfg.blank_prompt is not None:
        return [str(prompts_cfg.blank_prompt)]
    return blank_prompts(get_templates(prompts_cfg.blank_templates))


def blank_anchor(ctx: BuildContext) -> Tensor:
    """CLIPure's blank anchor ``[D]`` for the run's prompts (text embeddings from the cache when possible), or
    ``prompts.blank_embedding``'s precomputed one."""
    return build_blank_anchor(ctx.backbone, ctx.tokenizer, blank_prompt_list(ctx.cfg.prompts), ctx.text_cache,
                              embedding_file=ctx.cfg.prompts.get("blank_embedding"))


@register_purifier("clipure_cos", Space.latent, ClipureCosCfg, "CLIPure-Cos: ascent on cos(z, blank-prompt anchor)")
def build_clipure_cos(cfg: ClipureCosCfg, ctx: BuildContext) -> ClipureCos:
    return ClipureCos(blank_anchor(ctx), cfg).to(ctx.backbone.mean.device)
