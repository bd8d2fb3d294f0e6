"""Pixel-space CLIPure on a tiny random CLIP: one step against a literal autograd re-statement, the objective
going up, budgets, gradient modes, and the code it shares with the latent CLIPure-Cos."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clipure_lit.purifiers.base import GradMode

from clipure_lit.purifiers.step import NormScope
from clipure_lit.purifiers.pixel_clipure import ClipurePixel, ClipurePixelCfg


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Every test of this module runs single-threaded (see conftest.one_thread_module)."""


@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return tiny_clip[0]


@pytest.fixture(scope="module")
def anchor():
    return torch.randn(64, generator=torch.Generator().manual_seed(1))


def purifier(backbone, anchor, eps=None, **kw) -> ClipurePixel:
    return ClipurePixel(backbone, anchor, ClipurePixelCfg(**{"step_size": 0.5, "grad_mode": GradMode.full,
                                                             "norm_scope": NormScope.sample, **kw}), eps=eps)


def images(n=3, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def test_one_step_matches_a_literal_autograd_restatement(backbone, anchor):
    """x1 = clamp(x0 - eta * g / ||g||), g = d/dx [-sum_i cos(f(x_i), t)], per-sample norm."""
    x = images(3)
    xr = x.clone().requires_grad_(True)
    loss = -F.cosine_similarity(backbone.encode_image(xr), anchor.expand(3, -1), dim=-1).sum()
    (g,) = torch.autograd.grad(loss, xr)
    expected = (x - 0.5 * g / g.flatten(1).norm(dim=1).view(3, 1, 1, 1)).clamp(0, 1)
    out = purifier(backbone, anchor, num_steps=1)(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # Batch scope: one Frobenius norm for the batch (as the released latent loop).
    batch = purifier(backbone, anchor, num_steps=1, norm_scope=NormScope.batch)(x)
    torch.testing.assert_close(batch, (x - 0.5 * g / g.norm()).clamp(0, 1), rtol=1e-5, atol=1e-6)


def test_objective_rises_within_budget_and_range(backbone, anchor):
    x = images(4)
    p = purifier(backbone, anchor, eps=4 / 255, num_steps=5, step_size=0.05, diagnostics=True)
    out = p(x)
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - x).abs().max()) <= 4 / 255 + 1e-6
    cos = p.last_diagnostics["cos_to_anchor"]  # [T + 1, B]
    assert cos.shape == (6, 4) and bool((cos[-1] > cos[0]).all())
    assert float(p.last_diagnostics["linf_moved"].max()) <= 4 / 255 + 1e-6
    json.dumps(p.describe())
    assert p.describe()["eps_255"] == pytest.approx(4.0)


def test_contract_flags_and_determinism(backbone, anchor):
    x = images(4)
    p = purifier(backbone, anchor, num_steps=2)
    assert p.space.value == "pixel" and p.needs_grad and not p.stochastic and p.differentiable and not p.batch_coupled
    rng = torch.get_rng_state()
    with torch.no_grad():  # AutoAttack's clean pass: the ascent still runs (enable_grad inside)
        a = p(x)
    assert torch.equal(rng, torch.get_rng_state()) and not torch.equal(a, x)
    torch.testing.assert_close(a, p(x, generator=torch.Generator().manual_seed(3)), rtol=0, atol=0)
    torch.testing.assert_close(a, torch.cat([p(x[i:i + 1]) for i in range(4)]), rtol=0, atol=1e-5)  # per-sample
    assert purifier(backbone, anchor, norm_scope=NormScope.batch).batch_coupled
    # The encoder is the classifier's: not registered twice.
    assert not any(name.startswith("encoder") for name, _ in p.named_parameters())


def test_gradient_modes(backbone, anchor):
    x = images(2)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    full = purifier(backbone, anchor, num_steps=2, step_size=0.05)
    released = full.with_grad_mode(GradMode.as_released)
    assert full.differentiable and not released.differentiable and released.anchor is full.anchor
    grads = {}
    for name, p in (("full", full), ("as_released", released)):
        xr = x.clone().requires_grad_(True)
        (grads[name],) = torch.autograd.grad((p(xr) * w).sum(), xr)
        assert torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0
    # as_released detaches the direction: with no clamp active the Jacobian is the identity (straight-through).
    torch.testing.assert_close(grads["as_released"], w, rtol=0, atol=1e-6)
    assert (grads["full"] - w).abs().max() > 1e-4  # full also differentiates the direction (second order)


def test_builds_from_config_with_the_cos_anchor(tmp_path):
    from clipure_lit.config.loader import load_config
    from clipure_lit.evaluation import build_classifier

    loaded = load_config(["experiment=tiny", "purifier=clipure_pixel", f"prompts.cache_dir={tmp_path}"])
    classifier = build_classifier(loaded, ["cat", "dog", "ship"])
    pixel = classifier.pixel
    assert isinstance(pixel, ClipurePixel) and pixel.encoder is classifier.backbone
    assert pixel.describe()["eps_255"] == pytest.approx(8.0) and pixel.cfg.step_size == 0.25
    with torch.no_grad():
        assert classifier(images(2)).shape == (2, 3)


def test_gradient_checkpointing_same_gradient_and_diagnostics(backbone, anchor):
    x = images(2)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    grads, diags = {}, {}
    for ckpt in (False, True):
        p = purifier(backbone, anchor, eps=8.0 / 255, num_steps=3, step_size=0.05, gradient_checkpointing=ckpt,
                     diagnostics=True)
        xr = x.clone().requires_grad_(True)
        (grads[ckpt],) = torch.autograd.grad((p(xr) * w).sum(), xr)
        diags[ckpt] = p.last_diagnostics
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-6)
    assert (grads[True] - w).abs().max() > 1e-4  # the second-order part is there
    for key in diags[False]:  # the checkpointed forward runs without create_graph: round-off apart, the same path
        torch.testing.assert_close(diags[True][key], diags[False][key], rtol=1e-5, atol=1e-6)
