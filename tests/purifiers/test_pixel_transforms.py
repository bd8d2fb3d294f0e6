"""Classic input transforms (JPEG, bit depth, Gaussian noise): contract, values, gradients, and the masking check
that flags JPEG as non-differentiable unless the attack uses BPDA."""

from __future__ import annotations

import pytest
import torch

from clipure_lit.errors import ConfigError
from clipure_lit.purifiers import BuildContext, build_purifier, list_purifiers
from clipure_lit.purifiers.pixel_transforms import BitDepthPurifier, GaussianNoisePurifier, JpegPurifier, jpeg_roundtrip

from conftest import tiny_cfg

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Every test of this module runs single-threaded (see conftest.one_thread_module)."""


def images(n=3, size=32, seed=0):
    """Smooth-ish images ``[n, 3, size, size]`` in [0, 1] (JPEG of pure noise is uninformative)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def build(name, *overrides):
    """The pixel purifier of ``conf/purifier/<name>.yaml`` (+ overrides); these purifiers need no CLIP."""
    cfg = tiny_cfg(f"purifier={name}", *overrides)
    ctx = BuildContext(cfg=cfg, backbone=None, tokenizer=None, text_cache=None, classnames=[])
    return build_purifier(name, "pixel", ctx)


def test_registered_in_pixel_space_only():
    assert {"jpeg", "bit_depth", "gaussian_noise", "diffpure", "clipure_pixel"} <= set(list_purifiers("pixel"))
    assert not {"jpeg", "diffpure", "clipure_pixel"} & set(list_purifiers("latent"))
    with pytest.raises(ConfigError, match="pixel-space purifier"):
        build_purifier("jpeg", "latent", None)


def test_jpeg_values_quality_and_zero_gradient():
    x = images(2)
    high, low = jpeg_roundtrip(x, 95), jpeg_roundtrip(x, 10)
    assert torch.equal(high * 255, (high * 255).round())  # decoded uint8 values
    assert (high - x).abs().mean() < (low - x).abs().mean() < 0.2
    p = JpegPurifier(75)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(p(xr).sum(), xr)  # usable inside attacks: no "does not require grad" error
    assert torch.count_nonzero(g) == 0 and p.differentiable is False
    with pytest.raises(ConfigError, match="quality=0"):
        JpegPurifier(0)


def test_bit_depth_levels_and_identity_at_8_bits():
    x = images(2)
    out = BitDepthPurifier(2)(x)
    assert set(torch.unique(out * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    grid = (x * 255).round() / 255
    torch.testing.assert_close(BitDepthPurifier(8)(grid), grid, rtol=0, atol=1e-7)
    with pytest.raises(ConfigError, match="bits=9"):
        BitDepthPurifier(9)


def test_gaussian_noise_statistics_and_gradient():
    x = torch.full((8, 3, 32, 32), 0.5)
    p = GaussianNoisePurifier(sigma=0.1)
    out = p(x, generator=torch.Generator().manual_seed(0))
    assert abs(float((out - x).std()) - 0.1) < 0.01 and abs(float((out - x).mean())) < 0.01
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(p(xr, generator=torch.Generator().manual_seed(0)).sum(), xr)
    assert float(g.mean()) > 0.99  # identity Jacobian except where clamped
    # Without a generator: a private seeded stream, reproducible across instances.
    torch.testing.assert_close(GaussianNoisePurifier(0.1, seed=7)(x), GaussianNoisePurifier(0.1, seed=7)(x), rtol=0, atol=0)


def test_masking_checks_flag_jpeg_unless_bpda(tmp_path_factory):
    from clipure_lit.attacks.checks import first_batch_checks
    from clipure_lit.attacks.execute import ViewCache
    from clipure_lit.attacks.presets import attack_config, resolve_attacks
    from clipure_lit.config.loader import load_config
    from clipure_lit.evaluation import build_classifier

    cache = tmp_path_factory.getbasetemp() / "clip_text_cache"
    classifier = build_classifier(load_config(["experiment=tiny", "purifier=jpeg", f"prompts.cache_dir={cache}"]), CIFAR10).eval()
    specs = resolve_attacks(attack_config(run=["apgd_ce", "apgd_ce@full", "apgd_ce@bpda_identity"]))
    x, y = images(4), torch.arange(4)
    flags = {f.flag: f for f in first_batch_checks(classifier, ViewCache(classifier), specs, x, y)}
    for name in ("apgd_ce", "apgd_ce@full"):
        assert flags[f"nondifferentiable_without_bpda/{name}"].raised
        assert "JpegPurifier" in flags[f"nondifferentiable_without_bpda/{name}"].message
        assert flags[f"zero_grad/{name}"].raised  # the a.e. derivative of a quantiser is zero
    assert not flags["nondifferentiable_without_bpda/apgd_ce@bpda_identity"].raised
    assert not flags["zero_grad/apgd_ce@bpda_identity"].raised
