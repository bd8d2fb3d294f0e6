"""CLIPure-Cos's loop with its exact input gradient in closed form (the ``grad_mode=full`` backward).

Autograd differentiating the loop (``create_graph`` through the closed-form step) records ~20 small operations per
step and replays them in the backward pass; on a small CLIP that bookkeeping is several percent of an attack step.
Here the forward runs :func:`ascent.ascent_step`, the loop's own step (so the values are bit-identical), without
a graph, keeping ``z_k`` and ``m_k`` (``[B, D]`` each) of every step, and the backward applies each step's
vector-Jacobian product in reverse. Per step, rows i, unit anchor ``a``:

    r = ||z||,  u = z / r,  c = u . a,  G = r * dloss/dz = -(a - c u)     (clipure_cos.neg_cos_grad, times r)
    D = G / N(G)          N: one Frobenius norm over the batch (norm_scope=batch) or one norm per row (sample)
    m' = gamma m - (1 - gamma) D,   v = u + eta m',   u' = v / ||v||,   z' = r u'

Reverse, given the gradients zb', mb' of the loss w.r.t. z' and m' (<.,.> is per row, or over the batch for D):

    ub' = r zb',  rb = u' . zb'
    vb = (ub' - u' (u' . ub')) / ||v||
    M = mb' + eta vb,   mb = gamma M,   Db = -(1 - gamma) M
    Gb = (Db - D <D, Db>) / N
    ub = vb + (u . Gb) a + c Gb                 (G = -(a - (u . a) u))
    zb = (ub - u (u . ub)) / r + rb u

``tests/test_purifier_cos.py`` checks this against autograd through the loop in float64, for both norm scopes and
with momentum. Only a first-order backward is provided (what attacks take).
"""

from __future__ import annotations

import torch
from torch import Tensor

from clipure_lit.config.schema import NormScope
from clipure_lit.purifiers.ascent import _NORM_FLOOR, AscentSettings, ascent_step


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    return (x * y).sum(dim=-1, keepdim=True)  # [B, 1]


class _CosAscent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, anchor: Tensor, settings: AscentSettings) -> Tensor:
        from clipure_lit.purifiers.clipure_cos import neg_cos_grad

        zs, ms = [], []
        m = torch.zeros_like(z)  # [B, D]
        for _ in range(settings.num_steps):
            zs.append(z)
            ms.append(m)
            z, m = ascent_step(z, m, neg_cos_grad(z, anchor), settings)  # the loop's own step: identical values
        ctx.settings = settings
        ctx.save_for_backward(anchor, *zs, *ms)
        return z

    @staticmethod
    def backward(ctx, z_bar: Tensor):
        s = ctx.settings
        anchor, *states = ctx.saved_tensors
        zs, ms = states[:s.num_steps], states[s.num_steps:]
        gamma, eta = s.momentum, s.step_size
        m_bar = torch.zeros_like(z_bar)
        for z, m in zip(reversed(zs), reversed(ms)):
            r = z.norm(dim=-1, keepdim=True)  # [B, 1]
            u = z / r  # [B, D]
            c = u @ anchor  # [B]
            g_u = -(anchor - c.unsqueeze(-1) * u)  # [B, D]
            if s.norm_scope == NormScope.batch:
                norm = g_u.norm().clamp_min(_NORM_FLOOR)
            else:
                norm = g_u.norm(dim=-1, keepdim=True).clamp_min(_NORM_FLOOR)
            d = g_u / norm
            v = u + eta * (gamma * m - (1.0 - gamma) * d)
            v_norm = v.norm(dim=-1, keepdim=True)
            u_next = v / v_norm

            u_next_bar = r * z_bar
            r_bar = _rowdot(u_next, z_bar)
            v_bar = (u_next_bar - u_next * _rowdot(u_next, u_next_bar)) / v_norm
            total_m = m_bar + eta * v_bar
            d_bar = -(1.0 - gamma) * total_m
            inner = (d * d_bar).sum() if s.norm_scope == NormScope.batch else _rowdot(d, d_bar)
            g_bar = (d_bar - d * inner) / norm
            u_bar = v_bar + _rowdot(u, g_bar) * anchor + c.unsqueeze(-1) * g_bar
            z_bar = (u_bar - u * _rowdot(u, u_bar)) / r + r_bar * u
            m_bar = gamma * total_m
        return z_bar, None, None


def cos_ascent_closed_form(z: Tensor, anchor_unit: Tensor, settings: AscentSettings) -> Tensor:
    """CLIPure-Cos's loop from ``z [B, D]``; differentiable with the exact (``full``) gradient in closed form."""
    return _CosAscent.apply(z, anchor_unit.to(z.dtype), settings)
