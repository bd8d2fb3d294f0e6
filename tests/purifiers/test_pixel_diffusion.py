"""DiffPure-style purification on tiny random diffusers UNets: the chain, the contract, gradients (plain and
checkpointed), checkpoint loading (save_pretrained round trip, clear errors), and composition with a latent
purifier in one classifier."""

from __future__ import annotations

import json
import time

import pytest
import torch
from omegaconf import OmegaConf

from clipure_lit.purifiers.pixel_diffusion import DiffPureCfg
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.purifiers.pixel_diffusion import DiffPurePurifier, build_diffpure_from_cfg, diffusion_timesteps

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Smaller than the default tiny UNet (0.7 M parameters): one resolution level less work per step.
SMALL_UNET = {"block_out_channels": [16, 32], "norm_num_groups": 8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Every test of this module runs single-threaded (see conftest.one_thread_module)."""


def cfg(**keys):
    c = OmegaConf.structured(DiffPureCfg(num_steps=2))
    c.unet = OmegaConf.merge(c.unet, SMALL_UNET)
    for dotted, value in keys.items():
        OmegaConf.update(c, dotted, value)
    return c


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ddpm() -> DiffPurePurifier:
    return build_diffpure_from_cfg(cfg())


def test_reverse_chain():
    assert diffusion_timesteps(1000, 0.1, None) == list(range(99, -1, -1))  # DiffPure: every level from t* - 1
    assert diffusion_timesteps(1000, 0.1, 10) == list(range(99, 0, -10))  # ends at s - 1 = 9, then 0
    assert diffusion_timesteps(1000, 0.1, 1, "ddim") == [99]
    with pytest.raises(ConfigError, match=r"num_steps=3 must divide .* = 100.*\[1, 2, 4, 5, 10, 20, 25, 50, 100\]"):
        diffusion_timesteps(1000, 0.1, 3)
    with pytest.raises(ConfigError, match="t_star=0.0 must be in"):
        diffusion_timesteps(1000, 0.0, None)
    with pytest.raises(ConfigError, match="sampler=ddim with stride 300"):
        diffusion_timesteps(1000, 0.6, 2, "ddim")  # DDIM steps by 1000 // (1000 // 300) = 333


@pytest.mark.parametrize("keys", [{}, {"sampler": "ddim"}, {"sampler": "ddim", "ddim_eta": 1.0}])
def test_contract_determinism_and_variation(keys):
    p = build_diffpure_from_cfg(cfg(**keys))
    x = images(3)
    rng = torch.get_rng_state()
    with torch.no_grad():
        a = p(x, generator=gen(1))
    assert torch.equal(rng, torch.get_rng_state()), "purifiers must not touch the global RNG"
    b, c = p(x, generator=gen(1)), p(x, generator=gen(2))
    assert a.shape == x.shape and a.dtype == x.dtype and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3  # the forward diffusion noise differs
    assert p.stochastic and not p.batch_coupled and p.differentiable and p.space.value == "pixel"
    json.dumps(p.describe())
    assert p.describe()["t_start"] == 99 and p.describe()["stride"] == 50


def test_resizes_to_the_model_resolution_and_back(ddpm):
    seen = []
    hook = ddpm.unet.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    try:
        out = ddpm(images(2, size=48), generator=gen(0))
    finally:
        hook.remove()
    assert out.shape == (2, 3, 48, 48) and seen == [(32, 32), (32, 32)]


def test_full_gradient_is_finite_nonzero_and_checkpointing_does_not_change_it(ddpm):
    x = images(2)
    w = torch.randn(x.shape, generator=gen(9))
    grads = []
    for checkpointed in (False, True):
        ddpm.gradient_checkpointing = checkpointed
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((ddpm(xr, generator=gen(5)) * w).sum(), xr)
        grads.append(g)
    ddpm.gradient_checkpointing = True
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    # Same per-step noise on recomputation (seeded step generators): the same gradient, to round-off.
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-7)


def test_save_pretrained_round_trip_in_both_layouts(ddpm, tmp_path):
    from diffusers import DDPMScheduler

    x = images(2)
    expected = ddpm(x, generator=gen(3))
    ddpm.unet.save_pretrained(tmp_path / "flat")  # google/ddpm-cifar10-32 layout: config.json at the root
    ddpm.unet.save_pretrained(tmp_path / "pipe" / "unet")  # pipeline layout: unet/ and scheduler/
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "pipe" / "scheduler")
    for folder in ("flat", "pipe"):
        loaded = build_diffpure_from_cfg(cfg(model=str(tmp_path / folder)))
        assert loaded.describe()["model"].startswith(str(tmp_path / folder))
        torch.testing.assert_close(loaded(x, generator=gen(3)), expected, rtol=0, atol=1e-6)
    # The checkpoint's schedule wins over the config keys (schedule_from_checkpoint=true) ...
    DDPMScheduler(num_train_timesteps=500).save_pretrained(tmp_path / "flat")
    assert build_diffpure_from_cfg(cfg(model=str(tmp_path / "flat"))).describe()["num_train_timesteps"] == 500
    # ... unless told otherwise.
    own = build_diffpure_from_cfg(cfg(model=str(tmp_path / "flat"), schedule_from_checkpoint=False))
    assert own.describe()["num_train_timesteps"] == 1000


def test_clear_errors_for_unknown_or_unloadable_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match=r"hub id 'nobody/no-such-ddpm' is not in .*HF_HUB_OFFLINE=1.*hf download"):
        build_diffpure_from_cfg(cfg(model="nobody/no-such-ddpm", cache_dir=str(tmp_path / "hf")))
    assert time.perf_counter() - start < 5.0  # no network retries
    with pytest.raises(DataNotFoundError, match="no local folder './missing'"):
        build_diffpure_from_cfg(cfg(model="./missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="has no config.json"):
        build_diffpure_from_cfg(cfg(model=str(tmp_path / "empty")))
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4}))
    with pytest.raises(ConfigError, match="holds a UNet2DConditionModel .* needs a pixel-space diffusers UNet2DModel"):
        build_diffpure_from_cfg(cfg(model=str(tmp_path / "sd")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 32}))
    with pytest.raises(Exception, match="Could not load the UNet .* Fix: check that the folder holds config.json"):
        build_diffpure_from_cfg(cfg(model=str(tmp_path / "broken")))  # no weights file


def test_config_validation_names_the_key():
    from clipure_lit.config.loader import load_config

    loaded = load_config(["experiment=tiny", "purifier=diffpure_tiny"])
    assert loaded.purifier.pixel == "diffpure" and loaded.purifier.diffpure.num_steps == 2
    with pytest.raises(ConfigError, match="purifier.diffpure.num_steps=3"):
        load_config(["experiment=tiny", "purifier=diffpure_tiny", "purifier.diffpure.num_steps=3"])
    with pytest.raises(ConfigError, match="purifier.diffpure.sampler"):
        load_config(["experiment=tiny", "purifier=diffpure_tiny", "purifier.diffpure.sampler=euler"])
    # The shipped real-checkpoint config composes without the checkpoint; building it is what fails, clearly.
    shipped = load_config(["experiment=tiny", "purifier=diffpure", "purifier.diffpure.cache_dir=/nonexistent/hf"])
    with pytest.raises(DataNotFoundError, match="google/ddpm-cifar10-32"):
        build_diffpure_from_cfg(shipped.purifier.diffpure)


def test_pixel_and_latent_purifier_in_one_classifier(tmp_path_factory):
    from clipure_lit.config.loader import load_config
    from clipure_lit.purifiers.clipure_cos import ClipureCos
    from clipure_lit.evaluation import build_classifier

    cache = tmp_path_factory.getbasetemp() / "clip_text_cache"
    loaded = load_config(["experiment=tiny", "purifier=diffpure_tiny", "purifier.latent=clipure_cos", "purifier.clipure_cos.grad_mode=full",
                          "purifier.clipure_cos.norm_scope=sample", "purifier.diffpure.unet.block_out_channels=[16,32]",
                          "purifier.diffpure.unet.norm_num_groups=8", f"prompts.cache_dir={cache}"])
    classifier = build_classifier(loaded, CIFAR10).eval()
    assert isinstance(classifier.pixel, DiffPurePurifier) and isinstance(classifier.latent, ClipureCos)
    assert classifier.stochastic and classifier.needs_grad
    x = images(2)
    with torch.no_grad():
        classifier.reset_generator(11)
        a = classifier(x)
        classifier.reset_generator(11)
        b = classifier(x)
        classifier.reset_generator(12)
        c = classifier(x)
    assert a.shape == (2, 10) and torch.equal(a, b) and not torch.equal(a, c)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(classifier(xr).logsumexp(-1).sum(), xr)
    assert torch.isfinite(g).all() and g.abs().sum() > 0  # through CLIPure-Cos (full), CLIP and the DiffPure chain
