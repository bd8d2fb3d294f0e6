"""Step checkpointing for purification loops whose steps differentiate an inner loss (``create_graph``).

``recompute_in_backward(step, *inputs)`` returns ``step(False, *inputs)`` (values only, no graph) and keeps only
``inputs`` for autograd. In the backward pass it runs ``step(True, *inputs)`` with a graph and returns the
vector-Jacobian product through it. ``step(in_graph, *inputs)`` must be a function of its arguments (randomness is
drawn before, not inside) and compute the same values in both modes; ``in_graph`` tells it to keep its inner
gradient in the graph (``create_graph``).

Why not ``torch.utils.checkpoint``: with an ``autograd.grad(..., create_graph=True)`` inside the region, its
non-reentrant variant still keeps part of every step alive (measured on the released prior architecture: about a
tenth of a step's graph per step), so memory was not flat in the number of steps. This keeps two tensors per step.
Supports a first-order backward through the loop (what attacks take), not a double backward.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class _RecomputedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step: Callable[..., tuple[Tensor, ...]], *inputs: Tensor) -> tuple[Tensor, ...]:
        ctx.step = step
        ctx.save_for_backward(*inputs)
        # Values only: the inner gradient without create_graph, exactly as the loop computes it when no gradient
        # is wanted (clean evaluation, AutoAttack's checks), so attack-time and evaluation-time outputs agree bit for
        # bit; create_graph selects other kernels (round-off differences ~1e-7). enable_grad: autograd is off here.
        with torch.enable_grad():
            outputs = step(False, *(t.detach() for t in inputs))
        return tuple(o.detach() for o in outputs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        saved = ctx.saved_tensors
        wanted = ctx.needs_input_grad[1:]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(w) for t, w in zip(saved, wanted)]
            outputs = ctx.step(True, *inputs)
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            targets = [t for t, w in zip(inputs, wanted) if w]
            found = iter(torch.autograd.grad([o for o, _ in pairs], targets, [g for _, g in pairs], allow_unused=True)
                         if pairs and targets else [None] * len(targets))
        return (None, *(next(found) if w else None for w in wanted))


def recompute_in_backward(step: Callable[..., tuple[Tensor, ...]], *inputs: Tensor) -> tuple[Tensor, ...]:
    """``step(False, *inputs)``, differentiable as ``step(True, *inputs)`` by recomputation (see module docstring)."""
    return _RecomputedStep.apply(step, *inputs)
