"""Attacked views of a classifier: the same forward function, with the backward pass an attack should see.

A view is a new :class:`PurifiedZeroShotClassifier` that shares the backbone and head with the defended one (no
copy of the weights, except a float32 backbone copy for ``attack.precision=fp32`` on a half-precision model) and
wraps its purifiers:

* ``purifier``: purifiers as configured (their own ``purifier.<name>.grad_mode``);
* ``as_released`` / ``full`` / ``eot``: the purifiers' gradient semantics overridden for the attack only
  (``eot`` uses ``full``; AutoAttack then averages ``eot_samples`` gradients, each forward drawing fresh
  randomness from the view's generator);
* ``bpda_identity``: :class:`StraightThrough`, i.e. forward = purified value, backward = identity, so the
  gradient is that of the unpurified path evaluated at the purified point (BPDA, Athalye et al. 2018).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from clipure_lit.attacks.config import AttackGradMode, AttackPrecision
from clipure_lit.models.classifier import PurifiedZeroShotClassifier
from clipure_lit.purifiers.base import GradMode, IdentityPurifier, Purifier


class _StraightThroughFn(torch.autograd.Function):
    """Returns ``purified`` in the forward pass and passes the incoming gradient to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor, purified: Tensor) -> Tensor:
        return purified.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class StraightThrough(Purifier):
    """BPDA with the identity: ``forward(x) = inner(x)`` computed without a graph, ``d out / d x = I``.

    Requires the inner purifier to preserve shapes (every purifier does: pixel -> pixel, latent -> latent).
    """

    def __init__(self, inner: Purifier) -> None:
        super().__init__()
        self.inner = inner
        self.space = inner.space
        self.stochastic = inner.stochastic
        self.batch_coupled = inner.batch_coupled
        self.needs_grad = inner.needs_grad
        self.differentiable = True

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            purified = self.inner(x.detach(), generator=generator)
        if purified.shape != x.shape:
            raise RuntimeError(f"bpda_identity needs a shape-preserving purifier; {type(self.inner).__name__} maps "
                               f"{tuple(x.shape)} to {tuple(purified.shape)}.")
        return _StraightThroughFn.apply(x, purified.to(x.dtype))

    def describe(self) -> dict:
        return {**self.inner.describe(), "attack_wrapper": "bpda_identity"}


def wrap_purifier(purifier: Purifier, mode: AttackGradMode) -> Purifier:
    """The purifier as the attack in ``mode`` sees it."""
    mode = AttackGradMode(mode)
    if mode == AttackGradMode.purifier or isinstance(purifier, IdentityPurifier):
        return purifier
    if mode == AttackGradMode.bpda_identity:
        return StraightThrough(purifier)
    return purifier.with_grad_mode(GradMode.as_released if mode == AttackGradMode.as_released else GradMode.full)


def is_full_precision(module: torch.nn.Module) -> bool:
    """True when every floating-point parameter and buffer is float32 (or wider)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return all(t.dtype in (torch.float32, torch.float64) for t in tensors if t.is_floating_point())


def float32_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A float32 deep copy of a backbone (also sets its ``input_dtype`` to float32 when it has one)."""
    clone = copy.deepcopy(backbone).float()
    if hasattr(clone, "input_dtype"):
        clone.input_dtype = torch.float32
    return clone.eval()


def make_view(classifier, mode: AttackGradMode, precision: AttackPrecision, *, undefended: bool = False,
              fp32_backbone: torch.nn.Module | None = None):
    """The classifier an attack differentiates (see module docstring).

    Args:
        classifier: a ``PurifiedZeroShotClassifier`` (also what :mod:`clipure_lit.attacks.adapters` builds).
        mode: the gradient mode; ignored when ``undefended``.
        precision: ``fp32`` uses ``fp32_backbone`` (or a new float32 copy) if the backbone is not float32.
        undefended: identity purifiers (the transfer source and the masking checks' reference).
        fp32_backbone: a float32 copy to share between views.

    Returns:
        The classifier itself when nothing changes, else a new classifier sharing weights, in eval mode.
    """
    backbone = classifier.backbone
    if AttackPrecision(precision) == AttackPrecision.fp32 and not is_full_precision(backbone):
        backbone = fp32_backbone if fp32_backbone is not None else float32_copy(backbone)
    if undefended:
        pixel, latent = IdentityPurifier(), IdentityPurifier()
    else:
        pixel, latent = wrap_purifier(classifier.pixel, mode), wrap_purifier(classifier.latent, mode)
    if backbone is classifier.backbone and pixel is classifier.pixel and latent is classifier.latent:
        return classifier
    return PurifiedZeroShotClassifier(backbone, classifier.head, pixel=pixel, latent=latent, seed=classifier.seed).eval()
