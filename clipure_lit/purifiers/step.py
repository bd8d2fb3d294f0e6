"""The CLIPure step rule, in one place: the normalised momentum direction, the sphere step of the latent loop,
the cosine-to-anchor gradient, and the reverse-mode (vector-Jacobian) product of a latent step.

Direction (all three CLIPure loops; latent Cos and Diff, pixel CLIPure), step ``eta``, momentum ``gamma``:

    m' = gamma * m - (1 - gamma) * g / N(g)           N: one Frobenius norm over the batch (norm_scope=batch,
                                                      released) or one L2 norm per sample (norm_scope=sample)

Sphere step (latent loops), with ``grad = d loss / d z``:

    r = ||z||, u = z / r, g_u = r * grad,  z' = r * normalize(u + eta * m'(g_u))

so the norm of every embedding is preserved. The pixel loop moves additively instead (``x + eta * m'`` then a
projection, in :mod:`pixel_clipure`).

Cosine objective: loss(z) = -sum_i cos(z_i, a), a unit anchor; ``r * d loss / d z_i = -(a - (u_i . a) u_i)``.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Guards the division by ||g||; the released code has none (it returns NaN when z is exactly on the anchor).
NORM_FLOOR = 1e-30


class NormScope(str, Enum):
    """Scope of the gradient normalisation in the step: ``batch`` (released: Frobenius norm over the whole
    batch, so samples are coupled) or ``sample`` (per-sample L2 norm)."""

    batch = "batch"
    sample = "sample"


def direction_norm(g: Tensor, scope: NormScope) -> Tensor:
    """``N(g)`` for ``g [B, F]``: a scalar (batch) or ``[B, 1]`` (sample), floored at :data:`NORM_FLOOR`."""
    if NormScope(scope) == NormScope.batch:
        return g.norm().clamp_min(NORM_FLOOR)
    return g.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)


def normalise_direction(g: Tensor, scope: NormScope) -> Tensor:
    """``g / N(g)`` for ``g [B, F]``."""
    return g / direction_norm(g, scope)


def momentum_direction(m: Tensor, g: Tensor, momentum: float, scope: NormScope) -> Tensor:
    """``m' = gamma m - (1 - gamma) g / N(g)`` for ``m, g [B, F]``."""
    return momentum * m - (1.0 - momentum) * normalise_direction(g, scope)


def sphere_step(z: Tensor, m: Tensor, grad: Tensor, step_size: float, momentum: float,
                scope: NormScope) -> tuple[Tensor, Tensor]:
    """One latent step from ``z``, ``m`` ``[B, D]`` and ``grad = d loss / d z`` at ``z``: ``(z', m')``."""
    # r and u are recomputed from z each step, as released, so the autograd path through them is the same.
    r = z.norm(dim=-1, keepdim=True)  # [B, 1]
    u = z / r  # [B, D]
    m = momentum_direction(m, r * grad, momentum, scope)
    return r * F.normalize(u + step_size * m, dim=-1), m


def neg_cos_grad(z: Tensor, anchor_unit: Tensor) -> Tensor:
    """Closed-form ``d/dz [-sum_i cos(z_i, a)]`` for ``z [B, D]`` and a unit anchor ``a [D]`` -> ``[B, D]``."""
    norm = z.norm(dim=-1, keepdim=True)  # [B, 1]
    cos = (z @ anchor_unit).unsqueeze(-1) / norm  # [B, 1]
    return -(anchor_unit / norm - cos * z / norm.square())


def released_neg_cos_grad(z: Tensor, anchor: Tensor) -> Tensor:
    """``d/dz [-sum_i cos(z_i, a)]`` for ``z [B, D]`` as the official code computes it: ``autograd.grad`` of
    ``F.cosine_similarity`` without ``create_graph``, so detached. The same maths as :func:`neg_cos_grad`, in the
    released operation order: in float32 the two differ by rounding (~1e-7 per step), which ten steps of a large
    step size amplify to ~1e-5; this one keeps float32 runs within rounding of the released computation."""
    leaf = z.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = -F.cosine_similarity(leaf, anchor.to(leaf.dtype).unsqueeze(0).expand_as(leaf), dim=1)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return grad


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    return (x * y).sum(dim=-1, keepdim=True)  # [B, 1]


def sphere_step_vjp(z: Tensor, m: Tensor, g_u_of: Callable[[Tensor], Tensor],
                    g_u_vjp: Callable[[Tensor, Tensor, Tensor], Tensor], step_size: float, momentum: float, scope: NormScope,
                    z_bar: Tensor, m_bar: Tensor) -> tuple[Tensor, Tensor]:
    """Reverse mode of :func:`sphere_step` for a scale-invariant loss, whose ``g_u = r * d loss / d z`` is a
    function ``g_u_of(u)`` of the direction ``u = z / r`` alone (the cosine objective).

    Given the step's inputs ``z, m [B, D]`` and the cotangents ``z_bar, m_bar`` of its outputs, returns the
    cotangents of ``z`` and ``m``. ``g_u_vjp(u, G_bar, acc)`` returns ``acc`` plus the cotangent of ``u`` through ``g_u_of``. With
    ``<.,.>`` per row (or over the batch for the normalisation when ``scope=batch``):

        ub' = r zb',  rb = u' . zb',  vb = (ub' - u' (u' . ub')) / ||v||
        M = mb' + eta vb,  mb = gamma M,  Db = -(1 - gamma) M,  Gb = (Db - D <D, Db>) / N
        ub = g_u_vjp(u, Gb, vb),  zb = (ub - u (u . ub)) / r + rb u
    """
    r = z.norm(dim=-1, keepdim=True)  # [B, 1]
    u = z / r  # [B, D]
    g_u = g_u_of(u)  # [B, D]
    norm = direction_norm(g_u, scope)
    d = g_u / norm
    v = u + step_size * (momentum * m - (1.0 - momentum) * d)
    v_norm = v.norm(dim=-1, keepdim=True)
    u_next = v / v_norm

    u_next_bar = r * z_bar
    r_bar = _rowdot(u_next, z_bar)
    v_bar = (u_next_bar - u_next * _rowdot(u_next, u_next_bar)) / v_norm
    total_m = m_bar + step_size * v_bar
    d_bar = -(1.0 - momentum) * total_m
    inner = (d * d_bar).sum() if NormScope(scope) == NormScope.batch else _rowdot(d, d_bar)
    g_bar = (d_bar - d * inner) / norm
    u_bar = g_u_vjp(u, g_bar, v_bar)
    return (u_bar - u * _rowdot(u, u_bar)) / r + r_bar * u, momentum * total_m


def cos_g_u(anchor_unit: Tensor) -> Callable[[Tensor], Tensor]:
    """``u -> r * d/dz [-cos(z, a)] = -(a - (u . a) u)`` (rows of ``u [B, D]``)."""
    return lambda u: -(anchor_unit - (u @ anchor_unit).unsqueeze(-1) * u)


def cos_g_u_vjp(anchor_unit: Tensor) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``acc`` plus the cotangent of ``u`` through :func:`cos_g_u`: ``acc + (u . Gb) a + (u . a) Gb``."""
    return lambda u, g_bar, acc: acc + _rowdot(u, g_bar) * anchor_unit + (u @ anchor_unit).unsqueeze(-1) * g_bar
