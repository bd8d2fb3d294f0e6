"""CLIPure-Cos: pull the image embedding towards the blank-prompt anchor by ascent on their cosine.

loss(z) = -sum_i cos(z_i, t), with t the blank anchor (mean of the unit text embeddings of the blank prompts).
Its gradient has the closed form

    d loss / d z_i = -( t_hat / ||z_i||  -  cos(z_i, t) * z_i / ||z_i||^2 ),    t_hat = t / ||t||,

which is what ``autograd.grad`` of ``F.cosine_similarity`` returns, at a fraction of the cost. It is detached in
``grad_mode=as_released`` (the official code's ``autograd.grad`` without ``create_graph``) and kept in the graph
in ``grad_mode=full``. The ascent loop itself is :func:`clipure_lit.purifiers.ascent.sphere_ascent`; when an
attack differentiates it in ``full`` mode, :mod:`cos_vjp` supplies the loop's backward in closed form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clipure_lit.config.schema import GradMode
from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.ascent import AscentPurifier, AscentSettings
from clipure_lit.purifiers.cos_vjp import cos_ascent_closed_form
from clipure_lit.purifiers.base import Space
from clipure_lit.purifiers.registry import register_purifier


def neg_cos_grad(z: Tensor, anchor_unit: Tensor) -> Tensor:
    """Closed-form ``d/dz [-sum_i cos(z_i, t)]`` for ``z [B, D]`` and a unit anchor ``[D]`` -> ``[B, D]``."""
    norm = z.norm(dim=-1, keepdim=True)  # [B, 1]
    cos = (z @ anchor_unit).unsqueeze(-1) / norm  # [B, 1]
    return -(anchor_unit / norm - cos * z / norm.square())


class ClipureCos(AscentPurifier):
    """Normalised-gradient ascent of ``cos(z, t_blank)`` on the sphere (see module docstring)."""

    stochastic = False
    recompute_steps = False  # a step's graph is a few [B, D] tensors: recomputing it would save nothing

    def __init__(self, anchor: Tensor, settings: AscentSettings) -> None:
        super().__init__(settings)
        if anchor.ndim != 1 or not torch.isfinite(anchor).all() or float(anchor.norm()) == 0.0:
            raise ConfigError(f"CLIPure-Cos needs a finite, non-zero blank anchor of shape [D]; got shape "
                              f"{tuple(anchor.shape)} with norm {float(anchor.norm()):.3g}. Check prompts.blank_*.")
        # Only the anchor's direction enters a cosine, so store it unit-norm: [D].
        self.register_buffer("anchor", F.normalize(anchor.detach().float(), dim=0))

    def make_grad_fn(self, z: Tensor, generator: torch.Generator | None):
        """The closed-form gradient of ``-sum_i cos(z_i, anchor)``; deterministic, so the step index is unused."""

        def grad_fn(zz: Tensor, in_graph: bool, step: int) -> Tensor:
            if in_graph:
                return neg_cos_grad(zz, self.anchor)
            with torch.no_grad():
                return neg_cos_grad(zz.detach(), self.anchor)

        return grad_fn

    def forward(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``z [B, D]`` -> purified ``[B, D]``. When a ``full`` gradient is wanted, the loop's backward is the closed
        form of :mod:`cos_vjp` (same values and gradient as autograd through the loop, at a fraction of the cost)."""
        s = self.settings
        if (s.grad_mode == GradMode.full and s.num_steps > 0 and not s.diagnostics and torch.is_grad_enabled()
                and z.requires_grad):
            self._check_batch_size(z.shape[0])
            self.last_diagnostics = {}
            return cos_ascent_closed_form(z, self.anchor, s)
        return super().forward(z, generator=generator)

    def step_diagnostics(self, z: Tensor, z0: Tensor) -> dict[str, Tensor]:
        zd = z.detach()
        return {**super().step_diagnostics(z, z0), "cos_to_anchor": (F.normalize(zd, dim=-1) @ self.anchor)}


def blank_prompt_list(prompts_cfg) -> list[str]:
    """The blank prompts: ``prompts.blank_prompt`` alone when set, else ``prompts.blank_templates`` formatted
    with an empty class name (keeping their double spaces and " ." as released)."""
    from clipure_lit.clip.prompts import blank_prompts, get_templates

    if prompts_cfg.blank_prompt is not None:
        return [str(prompts_cfg.blank_prompt)]
    return blank_prompts(get_templates(prompts_cfg.blank_templates))


@register_purifier("clipure_cos", Space.latent, "CLIPure-Cos: ascent on cos(z, blank-prompt anchor)")
def build_clipure_cos(ctx) -> ClipureCos:
    from clipure_lit.clip.zeroshot import build_blank_anchor

    anchor = build_blank_anchor(ctx.backbone, ctx.tokenizer, blank_prompt_list(ctx.cfg.prompts), ctx.text_cache)  # [D]
    return ClipureCos(anchor, AscentSettings.from_cfg(ctx.cfg.purifier)).to(ctx.backbone.mean.device)
