"""Every registered latent purifier keeps the contract of ``clipure_lit.purifiers.base``; CLIPure-Cos and
CLIPure-Diff run end to end through ``eval.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from clipure_lit.config.schema import NormScope, RunCfg
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.purifiers import BuildContext, build_purifier, list_purifiers

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10" / "test"
TINY_PRIOR = {"dim": 64, "depth": 1, "heads": 2, "dim_head": 16, "max_text_len": 1}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Every test of this module runs single-threaded (see conftest.one_thread_module)."""


@pytest.fixture(scope="module")
def tiny():
    from clipure_lit.clip.backbone import load_backbone
    from clipure_lit.config.schema import ClipCfg

    return load_backbone(OmegaConf.structured(ClipCfg(arch="Tiny-ViT-32px", pretrained=None,
                                                      model_config="conf/model_configs/Tiny-ViT-32px.json")))


def build(name, tiny, tmp_path, **purifier_keys):
    from clipure_lit.clip.zeroshot import TextEmbeddingCache

    cfg = OmegaConf.structured(RunCfg())
    cfg.purifier.diff.prior = OmegaConf.merge(cfg.purifier.diff.prior, TINY_PRIOR)
    for key, value in purifier_keys.items():
        cfg.purifier[key] = value
    backbone, tokenizer = tiny
    ctx = BuildContext(cfg=cfg, backbone=backbone, tokenizer=tokenizer, text_cache=TextEmbeddingCache(tmp_path), classnames=[])
    return build_purifier(name, "latent", ctx)


def test_registry_lists_the_latent_purifiers():
    assert {"identity", "clipure_cos", "clipure_diff"} <= set(list_purifiers("latent"))
    assert "clipure_cos" not in list_purifiers("pixel")


@pytest.mark.parametrize("name", ["identity", "clipure_cos", "clipure_diff"])
@pytest.mark.parametrize("scope", [NormScope.batch, NormScope.sample])
def test_contract(name, scope, tiny, tmp_path):
    p = build(name, tiny, tmp_path, norm_scope=scope.value)
    z = F.normalize(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    flags = {k: getattr(p, k) for k in ("stochastic", "batch_coupled", "differentiable", "needs_grad")}
    assert all(isinstance(v, bool) for v in flags.values())
    json.dumps(p.describe())  # logged with every run
    rng = torch.get_rng_state()
    with torch.no_grad():  # AutoAttack's clean pass
        a = p(z, generator=torch.Generator().manual_seed(5))
    assert torch.equal(rng, torch.get_rng_state()), "purifiers must not touch the global RNG"
    torch.manual_seed(1234)
    b = p(z, generator=torch.Generator().manual_seed(5))
    assert a.shape == z.shape and a.dtype == z.dtype and torch.isfinite(a).all()
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # reproducible from the generator alone
    if name != "identity":
        assert p.space.value == "latent" and p.needs_grad
        assert p.batch_coupled == (scope == NormScope.batch)
    if not p.stochastic:
        c = p(z, generator=torch.Generator().manual_seed(6))
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        if not p.batch_coupled:
            # fp32 round-off differs between batched and single matmuls; coupling would be an O(1) change
            torch.testing.assert_close(a, torch.cat([p(z[i:i + 1]) for i in range(4)]), rtol=0, atol=1e-4)


def test_validation_of_purifier_keys():
    from clipure_lit.config.loader import load_config

    base = ["experiment=tiny", "purifier=clipure_cos"]
    cfg = load_config(base)
    assert cfg.purifier.latent == "clipure_cos" and cfg.purifier.step_size == 30.0 and cfg.purifier.batch_size == 2
    assert load_config(["experiment=tiny", "purifier=clipure_cos_full"]).purifier.grad_mode.value == "full"
    with pytest.raises(ConfigError, match="n_noise=0"):
        load_config(["experiment=tiny", "purifier=clipure_diff_tiny", "purifier.diff.n_noise=0"])
    with pytest.raises(ConfigError, match="t_max=1000"):
        load_config(["experiment=tiny", "purifier=clipure_diff_tiny", "purifier.diff.t_max=1000"])
    with pytest.raises(ConfigError, match="Invalid value for config key 'purifier.grad_mode'"):
        load_config(base + ["purifier.grad_mode=detached"])
    # The released Diff config composes without its checkpoint; building it reports the missing file.
    released = load_config(["experiment=tiny", "purifier=clipure_diff"]).purifier.diff.prior
    assert released.dim == 768 and released.checkpoint.endswith("vit-l-14/prior_aes_finetune.pth")
    from clipure_lit.purifiers.prior import load_prior

    with pytest.raises(DataNotFoundError, match="prior_aes_finetune.pth' not found"):
        load_prior(released)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared CIFAR-10 JPEGs not found at {SHARED_DATA}")
@pytest.mark.parametrize("purifier", ["clipure_cos", "clipure_diff_tiny"])
def test_eval_end_to_end(purifier, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("clipure_eval_script", REPO / "eval.py")
    eval_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_script)
    monkeypatch.chdir(REPO)  # conf/data/cifar10_jpeg_shared.yaml points to ../shared/data
    metrics = eval_script.main(["experiment=tiny", f"purifier={purifier}", "logger=none", f"run_dir={tmp_path / 'run'}",
                                f"prompts.cache_dir={tmp_path / 'cache'}", "data.num_samples=16", "data.batch_size=8",
                                "trainer.enable_progress_bar=false"])
    assert metrics["num_samples"] == 16 and 0.0 <= metrics["clean"]["acc"] <= 1.0
    described = {d["class"]: d for d in metrics["purifiers"]}
    expected = "ClipureCos" if purifier == "clipure_cos" else "ClipureDiff"
    assert described[expected]["num_steps"] == 10 and described[expected]["grad_mode"] == "as_released"
    assert (tmp_path / "run" / "results.json").is_file()
