"""The normalised-gradient ascent on the unit sphere shared by CLIPure-Cos and CLIPure-Diff.

Released rule (CLIPure, reference section 4.2), for k = 0 .. T-1: :func:`step.sphere_step` with the step
gradient of the purifier's loss (``-sum_i cos(z_i, t)`` for Cos, the denoising loss for Diff). ``GradMode.as_released``
makes the step gradient a constant for autograd (the official code calls ``autograd.grad`` without
``create_graph``); ``GradMode.full`` keeps it in the graph, which gives attacks the exact white-box gradient of the
whole loop.

Memory: in ``full`` mode each step keeps the graph of its inner gradient (for CLIPure-Diff, the prior's
activations) until the attack's backward pass, so memory grows linearly in T. With ``gradient_checkpointing`` each
step runs through :func:`recompute.recompute_in_backward`: only its inputs (z, m) are kept and the step is
recomputed in the backward pass, so memory is flat in T for one more forward of each step. The gradient is the same
because a step draws no randomness of its own: ``grad_fn`` receives the step index, and stochastic losses pre-draw
per step.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.base import BatchSizeWarning, GradMode, Purifier, PurifierConfig, Space, shallow_copy_with
from clipure_lit.purifiers.recompute import recompute_in_backward
from clipure_lit.purifiers.step import NormScope, sphere_step


@dataclass
class AscentCfg(PurifierConfig):
    """The loop's keys, shared by every CLIPure purifier's section (defaults: the released values)."""

    num_steps: int = 10
    step_size: float = 30.0
    momentum: float = 0.0
    grad_mode: GradMode = GradMode.as_released
    # Frobenius norm over the batch (released; couples the samples) or one norm per sample.
    norm_scope: NormScope = NormScope.batch
    # Batch size a norm_scope=batch run is meant for (released: 2). Composing a run at another data.batch_size or
    # attack.batch_size, or with a partial last batch, is refused. null: batch-dependent results are accepted on
    # purpose (recorded in config.yaml; the results carry the batch_dependent flag).
    batch_size: Optional[int] = None
    # Record per-step statistics (cosines, losses) in the purifier's ``last_diagnostics``.
    diagnostics: bool = False

    def validate(self, where: str) -> None:
        if self.num_steps < 0:
            raise ConfigError(f"{where}.num_steps={self.num_steps} must be >= 0.")
        if not self.step_size >= 0.0:
            raise ConfigError(f"{where}.step_size={self.step_size} must be >= 0.")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"{where}.momentum={self.momentum} must be in [0, 1).")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ConfigError(f"{where}.batch_size={self.batch_size} must be a positive integer or null.")

    def batch_coupled(self) -> bool:
        """``norm_scope=batch``: the step is normalised over the whole batch, so sample i depends on its batch mates."""
        return NormScope(self.norm_scope) == NormScope.batch

    def declared_batch_size(self) -> int | None:
        """``batch_size`` when the norm couples the batch (with a per-sample norm no batch size matters)."""
        return self.batch_size if self.batch_coupled() else None

    def checkpoints_steps(self) -> bool:
        """Whether full-gradient steps are recomputed in the backward pass (a ``gradient_checkpointing`` key,
        declared by the purifiers for which it pays, and ``full`` mode: only it keeps a graph worth recomputing)."""
        return bool(getattr(self, "gradient_checkpointing", False)) and self.grad_mode == GradMode.full


def sphere_ascent(z: Tensor, grad_fn, cfg: AscentCfg, diag_fn=None) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Run the loop from ``z`` ``[B, D]``.

    ``grad_fn(z, in_graph, step)`` returns ``d loss / d z`` ``[B, D]`` at step ``step`` (0-based; the loss is
    *minimised*, so the step goes along ``-g``); with ``in_graph=False`` the result must be detached. It must be a
    function of its arguments (a checkpointed step calls it again in the backward pass). ``diag_fn(z, z0)``, if
    given and ``cfg.diagnostics`` is on, returns per-sample ``[B]`` statistics recorded before the first and
    after every step. Returns the purified ``[B, D]`` tensor and the diagnostics (a list of dicts, one per record).
    """
    in_graph = cfg.grad_mode == GradMode.full

    def step(k: int, keep_graph: bool, z: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        return sphere_step(z, m, grad_fn(z, keep_graph, k), cfg.step_size, cfg.momentum, cfg.norm_scope)

    z0 = z
    records = [diag_fn(z, z0)] if (cfg.diagnostics and diag_fn is not None) else []
    m = torch.zeros_like(z)  # [B, D] momentum
    for k in range(cfg.num_steps):
        if cfg.checkpoints_steps() and z.requires_grad:
            z, m = recompute_in_backward(functools.partial(step, k), z, m)
        else:
            z, m = step(k, in_graph, z, m)
        if records:
            records.append(diag_fn(z, z0))
    return z, records


def stack_records(records: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """List of ``{name: [B]}`` -> ``{name: [len(records), B]}``, detached on the CPU."""
    if not records:
        return {}
    return {k: torch.stack([r[k].detach().float().cpu() for r in records]) for k in records[0]}


class AscentModes:
    """State shared by the CLIPure purifiers (latent and pixel) whose keys are an :class:`AscentCfg`:
    ``batch_coupled`` follows ``norm_scope``, ``differentiable`` follows ``grad_mode``, :meth:`with_grad_mode`
    is a view with ``grad_mode`` replaced, and :meth:`check_evaluation_batch` compares the evaluation's batch with
    ``batch_size``."""

    cfg: AscentCfg

    def init_modes(self, cfg: AscentCfg, key: str) -> None:
        """Call from ``__init__`` (after ``nn.Module.__init__``); ``key`` is the config prefix named in warnings."""
        self.cfg = cfg
        self.batch_coupled = cfg.norm_scope == NormScope.batch
        self.differentiable = cfg.grad_mode == GradMode.full
        self.last_diagnostics: dict[str, Tensor] = {}
        self.batch_warning = BatchSizeWarning(key)

    def check_evaluation_batch(self, batch: int, data_batch: int | None) -> None:
        """Warn once when a ``norm_scope=batch`` purifier is evaluated at another batch size than ``batch_size``."""
        self.batch_warning.check(type(self).__name__, batch, self.cfg.batch_size, self.batch_coupled, data_batch)

    def with_grad_mode(self, mode: GradMode):
        """A shallow copy sharing weights and buffers, with ``grad_mode`` replaced (``differentiable`` follows)."""
        return shallow_copy_with(self, cfg=dataclasses.replace(self.cfg, grad_mode=GradMode(mode)),
                                 differentiable=GradMode(mode) == GradMode.full)


class AscentPurifier(AscentModes, Purifier):
    """Latent purifier that runs :func:`sphere_ascent`; subclasses define the step gradient through :meth:`make_grad_fn`.

    ``batch_coupled`` follows ``norm_scope`` and ``differentiable`` follows ``grad_mode`` (in ``as_released``
    mode the input gradient is masked: autograd returns ~0, see docs/purifiers.md), so both are set per instance.
    ``key`` is the purifier's config prefix, named in warnings.
    """

    space = Space.latent
    needs_grad = True

    def __init__(self, cfg: AscentCfg, key: str) -> None:
        super().__init__()
        self.init_modes(cfg, key)

    def make_grad_fn(self, z: Tensor, generator: torch.Generator | None):  # pragma: no cover
        """``grad_fn(z, in_graph, step) -> d loss / d z [B, D]`` for one purification of ``z`` (see
        :func:`sphere_ascent`); randomness is drawn here, not inside ``grad_fn``."""
        raise NotImplementedError

    def step_diagnostics(self, z: Tensor, z0: Tensor) -> dict[str, Tensor]:
        """Per-sample statistics ``{name: [B]}``; the base records the cosine to the starting embedding."""
        return {"cos_to_start": F.cosine_similarity(z.detach(), z0.detach(), dim=-1)}

    def forward(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``z [B, D]`` -> purified ``[B, D]`` with the same row norms."""
        # enable_grad: AutoAttack's clean pass and Lightning's test loop may run under no_grad.
        with torch.enable_grad():
            out, records = sphere_ascent(z, self.make_grad_fn(z, generator), self.cfg, self.step_diagnostics)
        self.last_diagnostics = stack_records(records)
        return out

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        described = {**super().describe(), "num_steps": c.num_steps, "step_size": c.step_size, "momentum": c.momentum,
                     "grad_mode": c.grad_mode.value, "norm_scope": c.norm_scope.value, "batch_size": c.batch_size}
        if hasattr(c, "gradient_checkpointing"):
            described["gradient_checkpointing"] = c.gradient_checkpointing
        return described
