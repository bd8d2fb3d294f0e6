"""CLIPure-Cos: parity with a literal re-statement of the released rule, its geometry, and gradient masking.

The reference implementation below is written from docs/clipure_reference.md section 4.2, with autograd (not
the closed form the library uses), so that the two are independent.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from clipure_lit.purifiers.base import GradMode

from clipure_lit.purifiers.step import NormScope
from clipure_lit.purifiers.clipure_cos import ClipureCos, ClipureCosCfg
from clipure_lit.purifiers.step import neg_cos_grad

from conftest import tiny_cfg

D = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Every test of this module runs single-threaded (see conftest.one_thread_module)."""


def released_rule(z, t, n_iter=10, step=30.0, gamma=0.0, per_sample=False, create_graph=False):
    """Section 4.2, literally: autograd.grad of -cos without create_graph, Frobenius norm over the batch."""
    if not z.requires_grad:
        z = z.clone().requires_grad_(True)
    m = torch.zeros_like(z)
    for _ in range(n_iter):
        r = torch.norm(z, dim=1, keepdim=True)
        u = z / r
        loss = -F.cosine_similarity(z, t.unsqueeze(0).expand_as(z), dim=1)
        g = torch.autograd.grad(loss.sum(), z, retain_graph=True, create_graph=create_graph)[0]
        g_u = r * g
        denom = torch.norm(g_u, dim=1, keepdim=True) if per_sample else torch.norm(g_u, p=2)
        m = gamma * m - (1 - gamma) * g_u / denom
        u = u + step * m
        u = u / torch.norm(u, dim=1, keepdim=True)
        z = r * u
    return z


def with_cos(t_unit, cos, n, seed=0):
    """``n`` unit vectors at exactly ``cos`` to ``t_unit``: ``[n, D]``."""
    v = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    v = F.normalize(v - (v @ t_unit)[:, None] * t_unit, dim=-1)
    return cos * t_unit + math.sqrt(1 - cos**2) * v


def purifier(anchor, **kw):
    return ClipureCos(anchor, ClipureCosCfg(**kw))


@pytest.fixture()
def tiny_ctx(tiny_clip, tmp_path):
    from clipure_lit.clip.zeroshot import TextEmbeddingCache
    from clipure_lit.purifiers import BuildContext

    backbone, tokenizer = tiny_clip
    cfg = tiny_cfg("purifier=clipure_cos", "data.batch_size=2")
    return BuildContext(cfg=cfg, backbone=backbone, tokenizer=tokenizer, text_cache=TextEmbeddingCache(tmp_path), classnames=[])


@pytest.fixture()
def anchor():
    return torch.randn(D, generator=torch.Generator().manual_seed(1)) * 0.7  # not unit: only its direction counts


def test_closed_form_gradient_equals_autograd(anchor):
    z = (torch.randn(5, D, dtype=torch.float64) * torch.rand(5, 1, dtype=torch.float64) * 3).requires_grad_(True)
    t = anchor.double()
    auto = torch.autograd.grad(-F.cosine_similarity(z, t.expand_as(z), dim=1).sum(), z)[0]
    torch.testing.assert_close(neg_cos_grad(z.detach(), F.normalize(t, dim=0)), auto, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kw", [{}, {"momentum": 0.5}, {"norm_scope": NormScope.sample}, {"step_size": 1.0, "num_steps": 3}])
def test_released_mode_matches_literal_rule_output_and_gradient(anchor, batch, kw):
    z0 = F.normalize(torch.randn(batch, D, dtype=torch.float64), dim=-1)
    z0[0] *= 1.7  # r != 1 for one row: the norm must be carried through
    w = torch.randn(batch, D, dtype=torch.float64)  # a fixed linear read-out, to compare input gradients
    settings = dict(num_steps=kw.get("num_steps", 10), step_size=kw.get("step_size", 30.0), momentum=kw.get("momentum", 0.0),
                    norm_scope=kw.get("norm_scope", NormScope.batch))

    za = z0.clone().requires_grad_(True)
    p = purifier(anchor, grad_mode=GradMode.as_released, **settings).double()
    ours = p(za)
    (ga,) = torch.autograd.grad((ours * w).sum(), za)

    zb = z0.clone().requires_grad_(True)
    # p.anchor: the same direction rounded to fp32 (the library stores it in fp32; a cosine ignores its norm).
    ref = released_rule(zb, p.anchor, n_iter=settings["num_steps"], step=settings["step_size"],
                        gamma=settings["momentum"], per_sample=settings["norm_scope"] == NormScope.sample)
    (gb,) = torch.autograd.grad((ref * w).sum(), zb)

    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("batch", [1, 2, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_released_mode_follows_the_released_float32_rounding(anchor, batch, seed):
    """In float32, the released 10 x 30 on unit embeddings agrees with the literal rule (autograd of the cosine) to
    1e-5, output and input gradient: the released mode computes its cosine gradient in the released operation
    order. (The closed form is the same maths, equal in float64 above, but rounds differently, and ten steps of 30
    amplify that.)"""
    z0 = F.normalize(torch.randn(batch, D, generator=torch.Generator().manual_seed(seed)), dim=-1)
    w = torch.randn(batch, D, generator=torch.Generator().manual_seed(seed + 100))
    p = purifier(anchor, grad_mode=GradMode.as_released)  # float32, released defaults
    za, zb = z0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    ours, ref = p(za), released_rule(zb, p.anchor)
    (ga,) = torch.autograd.grad((ours * w).sum(), za)
    (gb,) = torch.autograd.grad((ref * w).sum(), zb)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kw", [{"step_size": 2.0}, {"step_size": 30.0, "momentum": 0.5},
                                {"step_size": 0.5, "norm_scope": NormScope.sample, "num_steps": 4}])
def test_full_mode_gradient_matches_create_graph_rule(anchor, batch, kw):
    """The closed-form backward (cos_vjp) against autograd through the literal rule with create_graph."""
    z0 = F.normalize(torch.randn(batch, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3)), dim=-1)
    z0[0] *= 1.7  # r != 1 for one row
    w = torch.randn(batch, D, dtype=torch.float64)
    za, zb = z0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    p = purifier(anchor, grad_mode=GradMode.full, **kw).double()
    ours = p(za)
    assert type(ours.grad_fn).__name__ == "_CosAscentBackward"  # the closed form ran, not autograd through the loop
    ref = released_rule(zb, p.anchor, n_iter=kw.get("num_steps", 10), step=kw["step_size"], gamma=kw.get("momentum", 0.0),
                        per_sample=kw.get("norm_scope") == NormScope.sample, create_graph=True)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), za)[0], torch.autograd.grad((ref * w).sum(), zb)[0],
                               rtol=1e-7, atol=1e-9)


def test_closed_form_forward_is_bit_identical_to_the_loop(anchor):
    z = F.normalize(torch.randn(4, D, generator=torch.Generator().manual_seed(4)), dim=-1)
    full = purifier(anchor, grad_mode=GradMode.full)
    with torch.no_grad():
        loop = full(z)  # no gradient wanted: the ordinary loop
    closed = full(z.clone().requires_grad_(True))
    assert torch.equal(closed.detach(), loop)


def test_released_setting_is_period_two_at_batch_one(anchor):
    t = F.normalize(anchor, dim=0)
    z0 = with_cos(t, 0.2, 1)
    ten = purifier(anchor)(z0)
    nine = purifier(anchor, num_steps=9)(z0)
    torch.testing.assert_close(ten, z0, rtol=0, atol=2e-6)  # 10 rotations of arctan(30) ~ 88.09 deg, back and forth
    assert F.cosine_similarity(nine, z0).item() < 0.2  # odd: ~10 degrees past the anchor
    assert (nine @ t).item() > 0.98
    # The identity needs the first step to overshoot: cos(z0, t) > cos(arctan 30) = 0.0333.
    assert 0.0332 < math.cos(math.atan(30.0)) < 0.0334
    z_far = with_cos(t, 0.01, 1)
    assert F.cosine_similarity(purifier(anchor)(z_far), z_far).item() < 0.99


def test_norm_preserved_and_shapes(anchor):
    z = torch.randn(6, D) * torch.linspace(0.5, 2.0, 6)[:, None]
    for kw in ({}, {"grad_mode": GradMode.full}, {"norm_scope": NormScope.sample, "momentum": 0.9, "step_size": 0.3}):
        out = purifier(anchor, **kw)(z)
        assert out.shape == z.shape and out.dtype == z.dtype
        torch.testing.assert_close(out.norm(dim=-1), z.norm(dim=-1), rtol=1e-5, atol=1e-6)


def test_momentum_changes_the_trajectory(anchor):
    z = F.normalize(torch.randn(3, D), dim=-1)
    a = purifier(anchor, step_size=0.2, num_steps=5)(z)
    b = purifier(anchor, step_size=0.2, num_steps=5, momentum=0.9)(z)
    assert (a - b).abs().max() > 1e-3
    # With gamma=0.9 the first step is 10x shorter, so the anchor is approached more slowly.
    t = F.normalize(anchor, dim=0)
    assert ((b @ t) < (a @ t)).all()


def test_sample_scope_is_batch_invariant_batch_scope_is_not(anchor):
    z = F.normalize(torch.randn(4, D, generator=torch.Generator().manual_seed(3)), dim=-1)
    for scope, invariant in ((NormScope.sample, True), (NormScope.batch, False)):
        p = purifier(anchor, norm_scope=scope, step_size=0.5)
        together = p(z)
        alone = torch.cat([p(z[i:i + 1]) for i in range(4)])
        # fp32 round-off of batched vs single-row matmuls reaches ~1e-5 after 10 steps; coupling is an O(0.1) change
        assert torch.allclose(together, alone, atol=1e-4) == invariant, scope
        assert p.batch_coupled == (not invariant)


def test_gradient_modes_flags_and_no_grad_context(anchor):
    z = F.normalize(torch.randn(2, D), dim=-1)
    released, full = purifier(anchor), purifier(anchor, grad_mode=GradMode.full)
    assert released.needs_grad and full.needs_grad and not released.stochastic
    assert not released.differentiable and full.differentiable
    with torch.no_grad():  # AutoAttack's clean pass; the input does not require grad
        torch.testing.assert_close(released(z), full(z))


def test_diagnostics(anchor):
    t = F.normalize(anchor, dim=0)
    z0 = with_cos(t, 0.3, 2)
    p = purifier(anchor, diagnostics=True, num_steps=4)
    p(z0)
    d = p.last_diagnostics
    assert d["cos_to_anchor"].shape == (5, 2) and d["cos_to_start"].shape == (5, 2)
    torch.testing.assert_close(d["cos_to_anchor"][0], torch.full((2,), 0.3), atol=1e-5, rtol=0)
    torch.testing.assert_close(d["cos_to_start"][0], torch.ones(2), atol=1e-6, rtol=0)
    assert purifier(anchor).last_diagnostics == {}


def test_batch_size_warning_once(anchor, caplog):
    """The evaluation's batches are checked (the test loop calls check_evaluation_batch), not every forward."""
    p = purifier(anchor, batch_size=2)
    z = F.normalize(torch.randn(3, D), dim=-1)
    with caplog.at_level(logging.WARNING, logger="clipure_lit.purifiers"):
        p(z[:1])  # a forward at another batch size (a check, an attack's sub-batch) does not warn
        p.check_evaluation_batch(3, 3)
        p.check_evaluation_batch(3, 3)
        p.check_evaluation_batch(2, 2)
    assert sum("purifier.clipure_cos.batch_size=2" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipure_lit.purifiers"):
        purifier(anchor, batch_size=2, norm_scope=NormScope.sample).check_evaluation_batch(3, 3)  # not coupled
    assert not caplog.records


# --- through the tiny CLIP: the input gradient seen by an attacker ----------------------------------------------


def _pixel_grad(backbone, head, latent, x, y):
    x = x.clone().requires_grad_(True)
    logits = head(latent(backbone.encode_image(x)))
    return torch.autograd.grad(F.cross_entropy(logits, y), x)[0]


def test_gradient_masking_through_tiny_clip(tiny_clip):
    backbone = tiny_clip[0]
    from clipure_lit.clip.zeroshot import ZeroShotHead

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=gen)
    y = torch.tensor([3])
    head = ZeroShotHead(F.normalize(torch.randn(D, 10, generator=gen), dim=0), 100.0)
    with torch.no_grad():
        z0 = backbone.encode_image(x)[0]
    # An anchor at cos 0.25 to this image (typical of real CLIP), so the released setting is period 2.
    v = torch.randn(D, generator=gen)
    v = F.normalize(v - (v @ z0) * z0, dim=0)
    anchor = 0.25 * z0 + math.sqrt(1 - 0.25**2) * v

    plain = _pixel_grad(backbone, head, lambda z: z, x, y)
    released = _pixel_grad(backbone, head, purifier(anchor), x, y)
    full = _pixel_grad(backbone, head, purifier(anchor, grad_mode=GradMode.full), x, y)
    ratio = (released.norm() / plain.norm()).item()
    assert plain.norm() > 0 and ratio < 1e-6, ratio
    assert F.cosine_similarity(full.flatten(), plain.flatten(), dim=0).item() > 0.99
    # Forward: the released setting returns the input at batch 1, so the logits equal plain CLIP's.
    with torch.no_grad():
        torch.testing.assert_close(head(purifier(anchor)(backbone.encode_image(x))), head(backbone.encode_image(x)),
                                   atol=1e-3, rtol=0)


# --- factory: the blank anchor --------------------------------------------------------------------------------


def test_factory_blank_anchor_templates_and_single_prompt(tiny_ctx):
    from clipure_lit.clip.prompts import blank_prompts, get_templates
    from clipure_lit.clip.zeroshot import encode_prompts
    from clipure_lit.purifiers import build_purifier
    from clipure_lit.purifiers.clipure_cos import blank_prompt_list

    ctx = tiny_ctx
    prompts = blank_prompt_list(ctx.cfg.prompts)
    assert prompts == blank_prompts(get_templates("openai_imagenet_80")) and len(prompts) == 80
    assert "a bad photo of a ." in prompts and "a  in a video game." in prompts  # released spacing kept
    p = build_purifier("clipure_cos", "latent", ctx)
    expected = F.normalize(encode_prompts(ctx.backbone, ctx.tokenizer, prompts).mean(0), dim=0)
    torch.testing.assert_close(p.anchor, expected, atol=1e-5, rtol=0)

    ctx.cfg.prompts.blank_prompt = "a photo of a ."
    assert blank_prompt_list(ctx.cfg.prompts) == ["a photo of a ."]
    single = build_purifier("clipure_cos", "latent", ctx)
    torch.testing.assert_close(single.anchor, encode_prompts(ctx.backbone, ctx.tokenizer, ["a photo of a ."])[0],
                               atol=1e-5, rtol=0)
    assert (single.anchor - p.anchor).abs().max() > 1e-3
    assert isinstance(single, ClipureCos) and single.describe()["grad_mode"] == "as_released"
