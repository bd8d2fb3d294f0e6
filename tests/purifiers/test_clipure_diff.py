"""CLIPure-Diff with a tiny random dalle2 prior: unconditional use, randomness, gradients, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf


from clipure_lit.purifiers.base import GradMode

from clipure_lit.purifiers.prior import DiffPriorCfg

from clipure_lit.purifiers.step import NormScope
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.purifiers.clipure_diff import ClipureDiff, ClipureDiffCfg
from clipure_lit.purifiers.prior import build_prior, load_prior, load_prior_weights

from conftest import tiny_cfg

D = 64
TINY = dict(dim=D, depth=1, heads=2, dim_head=16, max_text_len=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Every test of this module runs single-threaded (see conftest.one_thread_module)."""


def prior_cfg(**kw):
    return OmegaConf.structured(DiffPriorCfg(**{**TINY, **kw}))


@pytest.fixture(scope="module")
def prior():
    return build_prior(prior_cfg())


def purifier(prior, t_min=900, t_max=999, t_per_sample=False, n_noise=1, **kw):
    return ClipureDiff(prior, ClipureDiffCfg(t_min=t_min, t_max=t_max, t_per_sample=t_per_sample, n_noise=n_noise, **kw))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unit(n, seed=0):
    return F.normalize(torch.randn(n, D, generator=gen(seed)), dim=-1)


def test_build_matches_released_semantics(prior):
    assert prior.clip is None and prior.image_embed_dim == D
    assert prior.text_cond_drop_prob == 1.0 and prior.image_cond_drop_prob == 0.0
    assert prior.predict_x_start and prior.noise_scheduler.num_timesteps == 1000
    assert prior.image_embed_scale == pytest.approx(D**0.5)
    assert not prior.training and not any(p.requires_grad for p in prior.parameters())
    # Random initialisation is seeded and leaves the global RNG alone.
    state = torch.get_rng_state()
    again = build_prior(prior_cfg())
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(prior.state_dict().values(), again.state_dict().values()))


def test_loss_ignores_text_condition_but_not_the_noisy_embedding(prior):
    x_t, t = torch.randn(3, D), torch.full((3,), 950)
    a = prior.net(x_t, t, text_embed=torch.zeros(3, D), text_cond_drop_prob=1.0, image_cond_drop_prob=0.0)
    b = prior.net(x_t, t, text_embed=torch.randn(3, D), text_encodings=torch.randn(3, 1, D), text_cond_drop_prob=1.0,
                  image_cond_drop_prob=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = prior.net(x_t, t, text_embed=torch.randn(3, D), text_cond_drop_prob=0.0, image_cond_drop_prob=0.0)
    assert (a - c).abs().max() > 1e-4  # the text token would matter if it were not dropped
    d = prior.net(torch.randn(3, D), t, text_embed=torch.zeros(3, D), text_cond_drop_prob=1.0, image_cond_drop_prob=0.0)
    assert (a - d).abs().max() > 1e-4  # the denoiser sees x_t (image_cond_drop_prob=1 would hide it)


def test_denoising_loss_equals_dalle2_p_losses(prior):
    p = purifier(prior)
    z = unit(4)
    t = torch.tensor([900, 925, 950, 999])
    noise = torch.randn(4, D, generator=gen(3))
    ours = p.denoising_loss(z, t, noise)  # [4]
    x0 = z * prior.image_embed_scale
    lib = prior.p_losses(x0.clone(), t, text_cond={"text_embed": torch.randn(4, D)}, noise=noise)  # mean over B x D
    torch.testing.assert_close(ours.mean(), lib, rtol=1e-5, atol=1e-6)
    # and the same per sample, by hand from the schedule
    abar = prior.noise_scheduler.alphas_cumprod[t][:, None]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    pred = prior.net(x_t, t, text_embed=torch.zeros(4, D), text_cond_drop_prob=1.0)
    torch.testing.assert_close(ours, ((pred - x0) ** 2).mean(-1), rtol=1e-5, atol=1e-6)


def test_shapes_norm_determinism_and_generator_only(prior):
    z = unit(3) * torch.tensor([[1.0], [0.5], [2.0]])
    p = purifier(prior)
    rng = torch.get_rng_state()
    a = p(z, generator=gen(0))
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is never touched
    torch.manual_seed(123)  # ... nor read
    b = p(z, generator=gen(0))
    c = p(z, generator=gen(1))
    assert a.shape == z.shape and torch.isfinite(a).all()
    torch.testing.assert_close(a.norm(dim=-1), z.norm(dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    assert p.stochastic and p.needs_grad and p.batch_coupled


def test_draws_t_per_batch_or_per_sample_and_n_noise(prior):
    t, noise = purifier(prior).draw(5, D, gen(), torch.device("cpu"), torch.float32)
    assert t.shape == (5,) and (t == t[0]).all() and 900 <= int(t[0]) <= 999 and noise.shape == (5, D)
    t, noise = purifier(prior, t_per_sample=True, n_noise=3).draw(5, D, gen(), torch.device("cpu"), torch.float32)
    assert t.shape == (15,) and noise.shape == (15, D) and len(set(t.tolist())) > 1
    assert ((t >= 900) & (t <= 999)).all()
    out = purifier(prior, t_per_sample=True, n_noise=3)(unit(5), generator=gen())
    assert out.shape == (5, D) and torch.isfinite(out).all()


def test_sample_scope_is_per_sample(prior):
    z = unit(3)
    z_other = z.clone()
    z_other[1:] = unit(2, seed=7)  # change the other samples only
    for scope, coupled in ((NormScope.sample, False), (NormScope.batch, True)):
        p = purifier(prior, norm_scope=scope, step_size=0.5)
        first, second = p(z, generator=gen(0))[0], p(z_other, generator=gen(0))[0]
        assert (not torch.allclose(first, second, atol=1e-6)) == coupled, scope


def test_diagnostics_record_loss_and_cos(prior):
    p = purifier(prior, diagnostics=True, num_steps=3)
    p(unit(2), generator=gen())
    d = p.last_diagnostics
    assert d["cos_to_start"].shape == (4, 2) and d["denoise_loss"].shape == (3, 2)
    assert torch.isfinite(d["denoise_loss"]).all()


def test_pixel_gradient_through_tiny_clip(prior, tiny_clip):
    backbone = tiny_clip[0]
    head = F.normalize(torch.randn(D, 10, generator=gen(1)), dim=0)
    x, y = torch.rand(1, 3, 32, 32, generator=gen(2)), torch.tensor([4])

    def pixel_grad(latent):
        xx = x.clone().requires_grad_(True)
        loss = F.cross_entropy(100 * latent(backbone.encode_image(xx)) @ head, y)
        return torch.autograd.grad(loss, xx)[0]

    plain = pixel_grad(lambda z: z)
    full = pixel_grad(lambda z: purifier(prior, grad_mode=GradMode.full)(z, generator=gen()))
    released = pixel_grad(lambda z: purifier(prior)(z, generator=gen()))
    assert torch.isfinite(full).all() and full.norm() > 1e-2 * plain.norm()
    # As released the step direction is a constant for autograd: each ~88 degree step scales the tangential
    # gradient by 1/sqrt(1 + 30^2), so the attacker sees almost nothing (measured ~4e-8 of plain CLIP's).
    assert released.norm() < 1e-6 * plain.norm()


# --- checkpoints ------------------------------------------------------------------------------------------------


def _outputs(prior_module):
    return purifier(prior_module, num_steps=2)(unit(2), generator=gen())


@pytest.mark.parametrize("wrap", ["raw", "ema_model", "model", "safetensors"])
def test_checkpoint_round_trip(tmp_path, prior, wrap):
    state = {k: v.clone() for k, v in prior.state_dict().items()}  # clone: rotary buffers are shared between layers
    path = tmp_path / ("prior.safetensors" if wrap == "safetensors" else "prior.pt")
    if wrap == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state if wrap == "raw" else {wrap: state, "step": torch.tensor(3), "version": "1.15.6"}, path)
    loaded = load_prior(prior_cfg(checkpoint=str(path)), init_seed=99)  # different random init, then overwritten
    torch.testing.assert_close(_outputs(loaded), _outputs(prior), rtol=0, atol=0)


def test_checkpoint_drops_saved_clip_adapter_keys(tmp_path, prior):
    state = {k: v.clone() for k, v in prior.state_dict().items()}
    state["clip.clip.visual.proj"] = torch.zeros(2, 2)
    torch.save({"ema_model": state}, tmp_path / "p.pth")
    fresh = build_prior(prior_cfg(), init_seed=5)
    load_prior_weights(fresh, str(tmp_path / "p.pth"))
    torch.testing.assert_close(fresh.net.learned_query, prior.net.learned_query)


def test_mismatched_checkpoint_is_refused_with_the_keys(tmp_path, prior):
    deeper = build_prior(prior_cfg(depth=2))
    torch.save({k: v.clone() for k, v in deeper.state_dict().items()}, tmp_path / "deep.pt")
    with pytest.raises(ConfigError, match=r"unexpected keys: \['net\.causal_transformer\.layers\.1\."):
        load_prior_weights(build_prior(prior_cfg()), str(tmp_path / "deep.pt"))
    wider = build_prior(prior_cfg(max_text_len=4))
    torch.save({k: v.clone() for k, v in wider.state_dict().items()}, tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=r"net\.null_text_encodings: checkpoint \(1, 4, 64\) vs model \(1, 1, 64\)"):
        load_prior_weights(build_prior(prior_cfg()), str(tmp_path / "wide.pt"))


def test_missing_or_unsafe_checkpoint(tmp_path, prior):
    with pytest.raises(DataNotFoundError, match="purifier.clipure_diff.prior.checkpoint='.*nope.pt' not found"):
        load_prior(prior_cfg(checkpoint=str(tmp_path / "nope.pt")))
    torch.save({"model": prior.state_dict(), "cfg": GradMode}, tmp_path / "pickled.pt")  # a class: not weights-only
    with pytest.raises(ConfigError, match="weights_only=True"):
        load_prior(prior_cfg(checkpoint=str(tmp_path / "pickled.pt")))


def test_factory_checks_prior_dim_against_clip(tmp_path):
    from clipure_lit.clip.zeroshot import TextEmbeddingCache
    from clipure_lit.purifiers import BuildContext, build_purifier

    class FakeBackbone:
        embed_dim = 32
        mean = torch.zeros(1)

    cfg = tiny_cfg("purifier=clipure_diff_tiny")
    ctx = BuildContext(cfg=cfg, backbone=FakeBackbone(), tokenizer=None, text_cache=TextEmbeddingCache(tmp_path), classnames=[])
    with pytest.raises(ConfigError, match=r"purifier.clipure_diff.prior.dim=64 .*embed_dim=32"):
        build_purifier("clipure_diff", "latent", ctx)
    FakeBackbone.embed_dim = D
    built = build_purifier("clipure_diff", "latent", ctx)
    assert isinstance(built, ClipureDiff) and built.describe()["prior_dim"] == D


def test_invalid_t_range_and_n_noise(prior):
    with pytest.raises(ConfigError, match="t_max=1000"):
        purifier(prior, t_max=1000)
    with pytest.raises(ConfigError, match="n_noise=0"):
        purifier(prior, n_noise=0)


@pytest.mark.parametrize("arch", [TINY, dict(TINY, depth=2, heads=4, max_text_len=40)])
def test_prefix_cache_matches_the_network(arch):
    from clipure_lit.purifiers.prior_cache import build_prefix_cache, cached_forward, supports_prefix_cache

    net = build_prior(prior_cfg(**arch)).net
    assert supports_prefix_cache(net)
    x = (torch.randn(4, D, generator=gen(4)) * 3).requires_grad_(True)
    t = torch.tensor([0, 500, 950, 999])
    ref = net(x, t, text_embed=torch.zeros(4, D), text_cond_drop_prob=1.0, image_cond_drop_prob=0.0)
    ours = cached_forward(net, x, t, build_prefix_cache(net))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(4, D, generator=gen(5))
    torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), x)[0], torch.autograd.grad((ref * w).sum(), x)[0],
                               rtol=1e-4, atol=1e-5)


# --- gradient checkpointing of the ascent steps -------------------------------------------------------------------


def _graph_bytes(root) -> int:
    """Bytes of the distinct tensors saved by the autograd nodes reachable from ``root`` (what the graph keeps alive
    until the backward pass)."""
    seen, stack, kept = set(), [root], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        saved = [getattr(node, a, None) for a in dir(node) if a.startswith("_saved_")]
        saved += list(getattr(node, "saved_tensors", ()) or ())
        for t in saved:
            for tensor in t if isinstance(t, (tuple, list)) else (t,):
                if isinstance(tensor, torch.Tensor):
                    kept[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(kept.values())


def _kept_bytes_and_grad(p, z, w, generators):
    """Bytes the graph keeps after the forward, and d(sum_k w * p_k(z))/dz over several draws before one backward
    (as EOT does)."""
    zz = z.clone().requires_grad_(True)
    out = sum((p(zz, generator=g) * w).sum() for g in generators)
    return _graph_bytes(out.grad_fn), torch.autograd.grad(out, zz)[0]


def test_gradient_checkpointing_same_gradient_and_flat_memory(prior):
    z, w = unit(3), torch.randn(3, D, generator=gen(5))
    results = {}
    for steps in (2, 6):
        for ckpt in (False, True):
            p = purifier(prior, grad_mode=GradMode.full, num_steps=steps, step_size=0.5, gradient_checkpointing=ckpt)
            results[steps, ckpt] = _kept_bytes_and_grad(p, z, w, [gen(0), gen(1)])
        # Recomputed steps see the same (t, noise) draws, even after another purification ran in between.
        torch.testing.assert_close(results[steps, True][1], results[steps, False][1], rtol=1e-5, atol=1e-7)
        assert results[steps, True][1].abs().max() > 1e-4
    assert results[6, False][0] > 1.8 * results[2, False][0]  # the graph of every step is kept ...
    assert results[6, True][0] < 0.05 * results[6, False][0]  # ... unless the steps are checkpointed
    # Forward values and generator use: with checkpointing the attack sees exactly the values of the loop without a
    # graph (clean evaluation); without, create_graph's kernels differ by round-off.
    g_on, g_off = gen(3), gen(3)
    on = purifier(prior, grad_mode=GradMode.full, gradient_checkpointing=True)(z.requires_grad_(True), generator=g_on)
    off = purifier(prior, grad_mode=GradMode.full, gradient_checkpointing=False)(z, generator=g_off)
    with torch.no_grad():
        clean = purifier(prior, grad_mode=GradMode.full)(z, generator=gen(3))
    torch.testing.assert_close(on, clean, rtol=0, atol=0)
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-6)
    assert torch.equal(g_on.get_state(), g_off.get_state())
