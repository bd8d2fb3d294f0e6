"""Every registered purifier keeps the contract of ``clipure_lit.purifiers.base``.

The cases come from the registry at collection time, so a newly registered purifier is covered without editing
this file; each is built from its real config file (``conftest.contract_overrides``) around the tiny CLIP.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clipure_lit.purifiers import Purifier, list_purifiers
from clipure_lit.purifiers.base import GradMode, IdentityPurifier, Space

from conftest import build_purifiers, contract_overrides

CASES = [(space, name) for space in ("latent", "pixel") for name in list_purifiers(space)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Every test of this module runs single-threaded (see conftest.one_thread_module)."""


def inputs(space: str, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if space == "latent":
        return F.normalize(torch.randn(n, 64, generator=g), dim=-1)  # [n, D] unit rows, D of the tiny CLIP
    coarse = torch.rand(n, 3, 8, 8, generator=g)  # smooth images [n, 3, 32, 32] in [0, 1]
    return F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)


def built(space: str, name: str, clip, tmp_path) -> Purifier:
    _, pixel, latent = build_purifiers(clip, tmp_path, *contract_overrides(name))
    purifier = latent if space == "latent" else pixel
    if name != "identity":
        assert not isinstance(purifier, IdentityPurifier), f"{contract_overrides(name)} did not select {name}"
    return purifier


@pytest.mark.parametrize("space,name", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_contract(space, name, tiny_clip, tmp_path):
    p = built(space, name, tiny_clip, tmp_path)
    x = inputs(space)
    flags = {k: getattr(p, k) for k in ("stochastic", "batch_coupled", "differentiable", "needs_grad")}
    assert all(isinstance(v, bool) for v in flags.values()), flags
    assert p.space in (Space(space), Space.any)
    json.dumps(p.describe())  # logged with every run
    rng = torch.get_rng_state()
    with torch.no_grad():  # AutoAttack's clean pass
        a = p(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(rng, torch.get_rng_state()), "purifiers must not touch the global RNG"
    torch.manual_seed(1234)
    b = p(x, generator=torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # reproducible from the generator alone
    if space == "latent":
        torch.testing.assert_close(a.norm(dim=-1), torch.ones(len(x)), rtol=0, atol=1e-5)
    else:
        assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    if not p.stochastic:
        torch.testing.assert_close(a, p(x, generator=torch.Generator().manual_seed(6)), rtol=0, atol=0)
        if not p.batch_coupled:
            # fp32 round-off differs between batched and single matmuls; coupling would be an O(1) change
            torch.testing.assert_close(a, torch.cat([p(x[i:i + 1]) for i in range(len(x))]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("space,name", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_gradient_modes_are_declared_views(space, name, tiny_clip, tmp_path):
    """``with_grad_mode`` returns a purifier of the same kind computing the same values, sharing the weights, with
    ``differentiable`` true in ``full`` mode for every purifier whose forward is differentiable at all."""
    p = built(space, name, tiny_clip, tmp_path)
    x = inputs(space, 2)
    for mode in GradMode:
        view = p.with_grad_mode(mode)
        assert isinstance(view, Purifier) and view.space == p.space and view.stochastic == p.stochastic
        assert all(a is b for a, b in zip(view.parameters(), p.parameters()))
        assert all(a is b for a, b in zip(view.buffers(), p.buffers()))
        with torch.no_grad():
            # Same maths, not always the same float32 operation order (CLIPure-Cos's as_released mode rounds as the
            # released code does, full uses the closed form), and ten steps of 30 amplify rounding to a few 1e-6.
            torch.testing.assert_close(view(x, generator=torch.Generator().manual_seed(1)),
                                       p(x, generator=torch.Generator().manual_seed(1)), rtol=0, atol=1e-5)
    full = p.with_grad_mode(GradMode.full)
    if full is not p:  # a purifier with gradient modes gives the exact gradient in full mode
        assert full.differentiable and not p.with_grad_mode(GradMode.as_released).differentiable
