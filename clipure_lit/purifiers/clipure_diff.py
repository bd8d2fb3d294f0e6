"""CLIPure-Diff: ascent on the log-likelihood of an unconditional diffusion prior over CLIP image embeddings.

The loss is the prior's x0-prediction denoising loss, a one-sample proxy for -log p(z) (reference section 5.4):

    x0 = s * z                       (s = image_embed_scale, sqrt(D) by default)
    t ~ U{t_min, ..., t_max},  eps ~ N(0, I)
    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps
    loss_i = mean_d (net(x_t, t) - x0)^2          (target eps instead of x0 when predict_x_start=false)

averaged over ``n_noise`` fresh (t, eps) draws and over the batch; the step direction is ``-d loss / d z``
through the same sphere ascent as CLIPure-Cos. Released: one t for the whole batch, one draw, t in [900, 999].
All randomness comes from the ``generator`` argument (never the global RNG, which AutoAttack reseeds).
The loss is computed per sample, so with ``norm_scope=sample`` sample i depends only on z_i and its own draws.

Keys: ``purifier.clipure_diff.*`` (:class:`ClipureDiffCfg`), the prior's architecture and weights under
``purifier.clipure_diff.prior.*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.ascent import AscentCfg, AscentPurifier
from clipure_lit.purifiers.base import BuildContext, Space
from clipure_lit.purifiers.prior import DiffPriorCfg, load_prior
from clipure_lit.purifiers.prior_cache import PrefixCache, build_prefix_cache, cached_forward, supports_prefix_cache
from clipure_lit.purifiers.registry import register_purifier
from clipure_lit.utils.paths import resolve_path

KEY = "purifier.clipure_diff"


@dataclass
class ClipureDiffCfg(AscentCfg):
    """``purifier.clipure_diff.*``: the ascent loop's keys, the denoising loss's draws and the prior."""

    # grad_mode=full (or an attack's @full / @eot): recompute each ascent step in the backward pass instead of
    # keeping its graph. Same gradient; memory flat in num_steps (the prior's activations).
    gradient_checkpointing: bool = True
    # Timestep range of the denoising loss (released: uniform in [900, 999], one t per batch).
    t_min: int = 900
    t_max: int = 999
    t_per_sample: bool = False
    # (t, noise) draws averaged per step (released: 1).
    n_noise: int = 1
    prior: DiffPriorCfg = field(default_factory=DiffPriorCfg)

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.n_noise < 1:
            raise ConfigError(f"{where}.n_noise={self.n_noise} must be >= 1 (released: 1).")
        self.prior.validate(f"{where}.prior")
        if not 0 <= self.t_min <= self.t_max < self.prior.timesteps:
            raise ConfigError(f"{where}.t_min={self.t_min} and t_max={self.t_max} must satisfy 0 <= t_min <= t_max < "
                              f"{where}.prior.timesteps={self.prior.timesteps}.")

    def check_files(self, where: str) -> None:
        if self.prior.checkpoint is not None:
            resolve_path(self.prior.checkpoint, f"CLIPure-Diff prior checkpoint ({where}.prior.checkpoint; "
                                                "docs/purifiers.md, 'Prior checkpoints')")

    def weight_files(self, where: str) -> dict[str, str]:
        return {f"{where}.prior.checkpoint": self.prior.checkpoint} if self.prior.checkpoint else {}

    def local_files(self, where: str) -> dict[str, str]:
        # The prior is always a local file (no hub id), so a missing one is refused when the config is composed.
        return self.weight_files(where)


class ClipureDiff(AscentPurifier):
    """Sphere ascent on minus the denoising loss of a frozen ``DiffusionPrior`` (see module docstring)."""

    stochastic = True

    def __init__(self, prior: nn.Module, cfg: ClipureDiffCfg, seed: int = 0) -> None:
        super().__init__(cfg, KEY)
        steps = prior.noise_scheduler.num_timesteps
        if not 0 <= cfg.t_min <= cfg.t_max < steps:
            raise ConfigError(f"{KEY}.t_min={cfg.t_min}, t_max={cfg.t_max}: need 0 <= t_min <= t_max < {steps} "
                              "(the prior's number of timesteps). Fix the range.")
        if cfg.n_noise < 1:
            raise ConfigError(f"{KEY}.n_noise={cfg.n_noise} must be >= 1.")
        self.prior = prior.eval().requires_grad_(False)
        self.t_min, self.t_max, self.t_per_sample, self.n_noise = int(cfg.t_min), int(cfg.t_max), bool(cfg.t_per_sample), int(cfg.n_noise)
        self.seed = int(seed)
        self._fallback: torch.Generator | None = None
        self._step_losses: dict[int, Tensor] = {}

    def train(self, mode: bool = True) -> "ClipureDiff":
        # The prior is frozen: its dropout must stay off (it would also draw from the global RNG).
        super().train(mode)
        self.prior.eval()
        return self

    @property
    def embed_dim(self) -> int:
        return int(self.prior.image_embed_dim)

    def draw(self, batch: int, dim: int, generator: torch.Generator, device: torch.device,
             dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Timesteps ``[n_noise * B]`` and noise ``[n_noise * B, D]`` for one step, draw-major."""
        gdev = generator.device
        n_t = batch if self.t_per_sample else 1
        t = torch.randint(self.t_min, self.t_max + 1, (self.n_noise, n_t), generator=generator, device=gdev)
        t = t.expand(self.n_noise, batch).reshape(-1)  # one t per draw for the whole batch when not per sample
        noise = torch.randn((self.n_noise * batch, dim), generator=generator, device=gdev, dtype=dtype)
        return t.to(device), noise.to(device)

    def denoising_loss(self, z: Tensor, t: Tensor, noise: Tensor, prefix: PrefixCache | None = None) -> Tensor:
        """Per-sample loss ``[n_noise * B]`` for ``z [B, D]`` (repeated over the draws), ``t``, ``noise``.

        ``q_sample`` + the network are called directly: ``DiffusionPrior.forward`` rescales its input in place
        and draws t from the global RNG.
        """
        prior = self.prior
        x0 = (z * prior.image_embed_scale).repeat(self.n_noise, 1)  # [n*B, D]
        x_t = prior.noise_scheduler.q_sample(x_start=x0, t=t, noise=noise)  # [n*B, D]
        target = x0 if prior.predict_x_start else noise
        return (self.predict(x_t, t, prefix) - target).square().mean(dim=-1)

    def predict(self, x_t: Tensor, t: Tensor, prefix: PrefixCache | None = None) -> Tensor:
        """The network's unconditional prediction ``[N, D]`` for ``x_t [N, D]``, ``t [N]``.

        Unconditional: the text tokens are replaced by the learned nulls (probability exactly 1, so no random
        mask is drawn); the noisy embedding is the denoiser's input and is never dropped. ``prefix``: the constant
        null-token prefix (:mod:`prior_cache`), computed once per purification; built here when not given.
        """
        net = self.prior.net
        if not supports_prefix_cache(net):
            return net(x_t, t, text_embed=torch.zeros_like(x_t), text_cond_drop_prob=1.0, image_cond_drop_prob=0.0)
        return cached_forward(net, x_t, t, prefix if prefix is not None else build_prefix_cache(net))

    def make_grad_fn(self, z: Tensor, generator: torch.Generator | None):
        """The step gradient for one purification of ``z [B, D]``.

        The (t, noise) of all T steps are drawn up front, in the order a step-by-step loop draws them (so the
        values are the same), and kept with the prefix cache in this closure: a checkpointed step is recomputed
        in the attack's backward pass, possibly after other purifications (EOT), and must see the same draw.
        """
        gen = self.generator_or_fallback(generator, z.device)
        draws = [self.draw(z.shape[0], z.shape[1], gen, z.device, z.dtype) for _ in range(self.cfg.num_steps)]
        net = self.prior.net
        prefix = build_prefix_cache(net) if supports_prefix_cache(net) else None  # shared by all T steps
        losses: dict[int, Tensor] = {}  # step -> [B]; a recomputed step writes the same values again
        self._step_losses = losses

        def grad_fn(zz: Tensor, in_graph: bool, step: int) -> Tensor:
            t, noise = draws[step]
            keep = in_graph and zz.requires_grad
            # as_released: differentiate at a detached copy, so the direction is a constant for autograd (the
            # official autograd.grad without create_graph); full: differentiate at z itself and keep the graph.
            z_in = zz if keep else zz.detach().requires_grad_(True)
            per_sample = self.denoising_loss(z_in, t, noise, prefix)  # [n*B]
            (g,) = torch.autograd.grad(per_sample.mean(), z_in, create_graph=keep)  # mean: as released (F.mse_loss)
            if self.cfg.diagnostics:
                losses[step] = per_sample.detach().view(self.n_noise, -1).mean(0)  # [B]
            return g

        return grad_fn

    def forward(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``z [B, D]`` -> ``[B, D]``; diagnostics add ``denoise_loss [T, B]``: the loss that drove each step."""
        out = super().forward(z, generator=generator)
        if self._step_losses:
            steps = sorted(self._step_losses)
            self.last_diagnostics["denoise_loss"] = torch.stack([self._step_losses[k] for k in steps]).float().cpu()
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "t_min": self.t_min, "t_max": self.t_max, "t_per_sample": self.t_per_sample,
                "n_noise": self.n_noise, "prior_dim": self.embed_dim}


@register_purifier("clipure_diff", Space.latent, ClipureDiffCfg, "CLIPure-Diff: ascent on a diffusion prior's likelihood proxy")
def build_clipure_diff(cfg: ClipureDiffCfg, ctx: BuildContext) -> ClipureDiff:
    if cfg.prior.dim != ctx.backbone.embed_dim:
        raise ConfigError(
            f"{KEY}.prior.dim={cfg.prior.dim} but the CLIP model clip.arch='{ctx.cfg.clip.arch}' has "
            f"embed_dim={ctx.backbone.embed_dim}: the prior must model this CLIP's embeddings. Fix: use a prior trained "
            f"on this CLIP (the released one is for ViT-L-14, dim 768) or set {KEY}.prior.dim to match."
        )
    prior = load_prior(cfg.prior, init_seed=ctx.seed)
    return ClipureDiff(prior, cfg, seed=ctx.seed).to(ctx.backbone.mean.device)
