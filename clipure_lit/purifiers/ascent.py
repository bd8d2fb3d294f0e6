"""The normalised-gradient ascent on the unit sphere shared by CLIPure-Cos and CLIPure-Diff.

Released rule (CLIPure, reference section 4.2), for k = 0 .. T-1, with step ``eta``, momentum ``gamma``:

    r = ||z||  (per row),  u = z / r
    g = d loss / d z                                  (loss: -sum_i cos(z_i, t) for Cos, denoising loss for Diff)
    g_u = r * g
    m = gamma * m - (1 - gamma) * g_u / ||g_u||       (Frobenius norm over the batch, or per row)
    u = normalize(u + eta * m),  z = r * u

so the norm of every embedding is preserved. ``GradMode.as_released`` makes ``g`` a constant for autograd
(the official code calls ``autograd.grad`` without ``create_graph``); ``GradMode.full`` keeps ``g`` in the graph,
which gives attacks the exact white-box gradient of the whole loop.

Memory: in ``full`` mode each step keeps the graph of its inner gradient (for CLIPure-Diff, the prior's
activations) until the attack's backward pass, so memory grows linearly in T. With ``gradient_checkpointing`` each
step runs through :func:`recompute.recompute_in_backward`: only its inputs (z, m) are kept and the step is
recomputed in the backward pass, so memory is flat in T for one more forward of each step. The gradient is the same
because a step draws no randomness of its own: ``grad_fn`` receives the step index, and stochastic losses pre-draw
per step.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clipure_lit.config.schema import GradMode, NormScope
from clipure_lit.purifiers.base import Purifier, Space
from clipure_lit.purifiers.recompute import recompute_in_backward

log = logging.getLogger(__name__)

# Guards the division by ||g_u||; the released code has none (it returns NaN when z is exactly on the anchor).
_NORM_FLOOR = 1e-30


@dataclass(frozen=True)
class AscentSettings:
    """The loop's hyper-parameters (``purifier.*`` keys; defaults are the released values)."""

    num_steps: int = 10
    step_size: float = 30.0
    momentum: float = 0.0
    grad_mode: GradMode = GradMode.as_released
    norm_scope: NormScope = NormScope.batch
    batch_size: int | None = None  # the batch size a batch-coupled run is meant for (warn when it differs)
    diagnostics: bool = False
    gradient_checkpointing: bool = True  # full mode only: recompute each step in the backward pass

    @property
    def checkpoints_steps(self) -> bool:
        """Whether the loop checkpoints its steps (only ``full`` mode keeps a graph worth recomputing)."""
        return self.gradient_checkpointing and self.grad_mode == GradMode.full

    @classmethod
    def from_cfg(cls, cfg: Any) -> "AscentSettings":
        """From a ``PurifierCfg`` (dataclass or DictConfig)."""
        return cls(num_steps=int(cfg.num_steps), step_size=float(cfg.step_size), momentum=float(cfg.momentum),
                   grad_mode=GradMode(cfg.grad_mode), norm_scope=NormScope(cfg.norm_scope),
                   batch_size=None if cfg.batch_size is None else int(cfg.batch_size), diagnostics=bool(cfg.diagnostics),
                   gradient_checkpointing=bool(cfg.gradient_checkpointing))


def normalise_direction(g_u: Tensor, scope: NormScope) -> Tensor:
    """``g_u / ||g_u||``: one Frobenius norm over the whole ``[B, D]`` batch (released, couples the samples)
    or one L2 norm per row."""
    if scope == NormScope.batch:
        return g_u / g_u.norm().clamp_min(_NORM_FLOOR)
    return g_u / g_u.norm(dim=-1, keepdim=True).clamp_min(_NORM_FLOOR)


def ascent_step(z: Tensor, m: Tensor, grad: Tensor, settings: AscentSettings) -> tuple[Tensor, Tensor]:
    """One step of the rule above from ``z``, ``m`` ``[B, D]`` and ``grad = d loss / d z`` at ``z``: ``(z', m')``."""
    # r and u are recomputed from z each step, as released, so the autograd path through them is the same.
    r = z.norm(dim=-1, keepdim=True)  # [B, 1]
    u = z / r  # [B, D]
    g_u = r * grad
    m = settings.momentum * m - (1.0 - settings.momentum) * normalise_direction(g_u, settings.norm_scope)
    return r * F.normalize(u + settings.step_size * m, dim=-1), m


def sphere_ascent(z: Tensor, grad_fn, settings: AscentSettings, diag_fn=None,
                  recompute: bool = True) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Run the loop from ``z`` ``[B, D]``.

    ``grad_fn(z, in_graph, step)`` returns ``d loss / d z`` ``[B, D]`` at step ``step`` (0-based; the loss is
    *minimised*, so the step goes along ``-g``); with ``in_graph=False`` the result must be detached. It must be a
    function of its arguments (a checkpointed step calls it again in the backward pass). ``diag_fn(z, z0)``, if
    given and ``settings.diagnostics`` is on, returns per-sample ``[B]`` statistics recorded before the first and
    after every step. ``recompute=False`` ignores ``settings.gradient_checkpointing`` (for losses whose step graph
    is no larger than the step's inputs). Returns the purified ``[B, D]`` tensor and the diagnostics (a list of
    dicts, one per record).
    """
    in_graph = settings.grad_mode == GradMode.full

    def step(k: int, keep_graph: bool, z: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        return ascent_step(z, m, grad_fn(z, keep_graph, k), settings)

    z0 = z
    records = [diag_fn(z, z0)] if (settings.diagnostics and diag_fn is not None) else []
    m = torch.zeros_like(z)  # [B, D] momentum
    for k in range(settings.num_steps):
        if recompute and settings.checkpoints_steps and z.requires_grad:
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


class AscentPurifier(Purifier):
    """Latent purifier that runs :func:`sphere_ascent`; subclasses define the step gradient through :meth:`make_grad_fn`.

    ``batch_coupled`` follows ``norm_scope`` and ``differentiable`` follows ``grad_mode`` (in ``as_released``
    mode the input gradient is masked: autograd returns ~0, see docs/purifiers.md), so both are set per instance.
    """

    space = Space.latent
    needs_grad = True
    # Whether full-gradient steps are worth recomputing (``gradient_checkpointing``): False when a step's graph
    # keeps no more than a few [B, D] tensors, as CLIPure-Cos's closed form does.
    recompute_steps = True

    def __init__(self, settings: AscentSettings) -> None:
        super().__init__()
        self.settings = settings
        self.batch_coupled = settings.norm_scope == NormScope.batch
        self.differentiable = settings.grad_mode == GradMode.full
        self.last_diagnostics: dict[str, Tensor] = {}
        self._warned_batch_size = False

    def make_grad_fn(self, z: Tensor, generator: torch.Generator | None):  # pragma: no cover
        """``grad_fn(z, in_graph, step) -> d loss / d z [B, D]`` for one purification of ``z`` (see
        :func:`sphere_ascent`); randomness is drawn here, not inside ``grad_fn``."""
        raise NotImplementedError

    def step_diagnostics(self, z: Tensor, z0: Tensor) -> dict[str, Tensor]:
        """Per-sample statistics ``{name: [B]}``; the base records the cosine to the starting embedding."""
        return {"cos_to_start": F.cosine_similarity(z.detach(), z0.detach(), dim=-1)}

    def _check_batch_size(self, batch: int) -> None:
        expected = self.settings.batch_size
        if self.batch_coupled and expected is not None and batch != expected and not self._warned_batch_size:
            self._warned_batch_size = True
            log.warning("%s normalises its step over the whole batch (purifier.norm_scope=batch), so its output depends "
                        "on the batch: it is evaluated at batch size %d but purifier.batch_size=%d. Results are not "
                        "comparable to a run at %d. Fix: set data.batch_size=%d, or purifier.norm_scope=sample. "
                        "(Warned once.)", type(self).__name__, batch, expected, expected, expected)

    def forward(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``z [B, D]`` -> purified ``[B, D]`` with the same row norms."""
        self._check_batch_size(z.shape[0])
        # enable_grad: AutoAttack's clean pass and Lightning's test loop may run under no_grad.
        with torch.enable_grad():
            out, records = sphere_ascent(z, self.make_grad_fn(z, generator), self.settings, self.step_diagnostics,
                                         recompute=self.recompute_steps)
        self.last_diagnostics = stack_records(records)
        return out

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {**super().describe(), "num_steps": s.num_steps, "step_size": s.step_size, "momentum": s.momentum,
                "grad_mode": s.grad_mode.value, "norm_scope": s.norm_scope.value,
                **({"gradient_checkpointing": s.gradient_checkpointing} if self.recompute_steps else {})}
