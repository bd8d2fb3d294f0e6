"""train.py job=prior on a tiny CLIP: the embedding cache (reuse, invalidation, resumption) and a prior checkpoint
that the CLIPure-Diff purifier loads strictly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_script
import train as train_script
from clipure_lit.config.loader import load_config
from clipure_lit.config.train_schema import TrainRunCfg, validate_train_config
from clipure_lit.training.embed_cache import cached_image_embeddings

from conftest import CIFAR_TEST, PROJECT_ROOT, needs_shared_cifar

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

# The architecture of conf/purifier/clipure_diff_tiny.yaml (tiny CLIP: embed dim 64).
TINY_PRIOR = ["prior_train.prior.dim=64", "prior_train.prior.depth=1", "prior_train.prior.heads=2",
              "prior_train.prior.dim_head=16", "prior_train.prior.max_text_len=1"]


def prior_args(tmp_path, *extra: str) -> list[str]:
    return ["experiment=train_cifar10_small_prior", "clip=tiny_random", *TINY_PRIOR, "logger=none",
            f"run_dir={tmp_path / 'run'}", f"data.root={CIFAR_TEST}", "data.num_samples=40", "data.batch_size=16",
            f"val_data.root={CIFAR_TEST}", "val_data.num_samples=16", "val_data.batch_size=16",
            f"prior_train.embed_cache_dir={tmp_path / 'emb'}", f"prior_train.image_cache_dir={tmp_path / 'img'}",
            "fit.max_epochs=null",
            "fit.time_budget_min=null", "fit.max_steps=3", "fit.val_every_n_steps=3", "fit.ckpt_every_n_steps=3",
            "trainer.num_threads=null", *extra]


@needs_shared_cifar
def test_prior_job_caches_embeddings_and_exports_a_prior_clipure_diff_loads(tmp_path):
    shipped = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (PROJECT_ROOT / "checkpoints").iterdir() if p.is_file()}
    first = train_script.main(prior_args(tmp_path))  # the experiment's own export settings
    # The run exported into its folder only: every shipped checkpoint is byte-identical.
    assert first["export_to"] is None and Path(first["export"]).is_relative_to(tmp_path)
    assert shipped == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shipped}
    assert first["global_step"] == 3 and first["embedded_now"] == 40 and first["num_embeddings"] == 40
    assert {"val/loss_t900_999", "val/loss_all_t", "val/loss_mean_predictor"} <= set(first)
    # Second run: the cache is reused (nothing embedded again).
    second = train_script.main(prior_args(tmp_path / "b", f"prior_train.embed_cache_dir={tmp_path / 'emb'}"))
    assert second["embedded_now"] == 0 and second["embed_cache"] == first["embed_cache"]
    # Another backbone (different weights, same architecture and data): a new cache entry is computed.
    from clipure_lit.clip.backbone import load_backbone
    from clipure_lit.config.loader import load_config as load_eval_config
    from clipure_lit.training.prior_job import _embeddings

    cfg_b = load_config(prior_args(tmp_path / "c", f"prior_train.embed_cache_dir={tmp_path / 'emb'}"), root="train",
                        schema=TrainRunCfg, validate=validate_train_config)
    same, _ = load_backbone(cfg_b.clip)
    assert _embeddings(cfg_b, same, cfg_b.data).computed == 0
    changed, _ = load_backbone(load_eval_config(["clip=tiny_random", "clip.init_seed=1"]).clip)
    third = _embeddings(cfg_b, changed, cfg_b.data)
    assert third.computed == 40 and str(third.path) != first["embed_cache"]
    # The fast path (decoded uint8 cache) gives the embeddings of the PIL path (dataset.load).
    cfg_pil = load_config(prior_args(tmp_path / "d", f"prior_train.embed_cache_dir={tmp_path / 'emb_pil'}",
                                     "prior_train.image_cache_dir=null"), root="train", schema=TrainRunCfg,
                          validate=validate_train_config)
    fast, slow = _embeddings(cfg_b, same, cfg_b.data), _embeddings(cfg_pil, same, cfg_pil.data)
    assert slow.computed == 40 and torch.allclose(fast.embeddings, slow.embeddings, atol=1e-6)

    # The export loads strictly into the purifier's prior and drives CLIPure-Diff in eval.py.
    from safetensors.torch import load_file

    from clipure_lit.purifiers.prior import build_prior, load_prior_weights

    cfg = load_config(["purifier=clipure_diff_tiny", "clip=tiny_random"])
    prior = build_prior(cfg.purifier.clipure_diff.prior)
    load_prior_weights(prior, first["export"])
    saved = load_file(first["export"])
    assert saved["noise_scheduler.alphas_cumprod"].dtype == torch.float32  # the schedule is never rounded to fp16
    assert torch.equal(prior.state_dict()["noise_scheduler.alphas_cumprod"], saved["noise_scheduler.alphas_cumprod"])
    metrics = eval_script.main(["experiment=tiny", "purifier=clipure_diff_tiny", f"purifier.clipure_diff.prior.checkpoint={first['export']}",
                                "purifier.clipure_diff.num_steps=1", "data.num_samples=2", "data.batch_size=2", "logger=none",
                                f"run_dir={tmp_path / 'eval'}", f"prompts.cache_dir={tmp_path / 'text'}",
                                "trainer.enable_progress_bar=false"])
    assert metrics["clean"]["total"] == 2


class _FailingAfter:
    """An ImageDataset stand-in whose ``load`` fails after ``limit`` calls (an interrupted run)."""

    def __init__(self, n: int, limit: int | None) -> None:
        self.n, self.limit, self.calls = n, limit, 0

    def load(self, i: int):
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise KeyboardInterrupt("simulated interruption")
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 32, 32, generator=g), 0


def test_embedding_cache_resumes_an_interrupted_run(tmp_path):
    from clipure_lit.clip.backbone import load_backbone

    backbone, _ = load_backbone(load_config(["clip=tiny_random"]).clip)
    ids, ident = list(range(10)), {"name": "synthetic"}
    with pytest.raises(KeyboardInterrupt):
        cached_image_embeddings(backbone, _FailingAfter(10, limit=5), ids, ident, tmp_path, batch_size=2, chunk=4)
    resumed = _FailingAfter(10, limit=None)
    res = cached_image_embeddings(backbone, resumed, ids, ident, tmp_path, batch_size=2, chunk=4)
    assert res.computed == 6 and resumed.calls == 6  # rows 0..3 were flushed before the interruption
    fresh = cached_image_embeddings(backbone, _FailingAfter(10, None), ids, ident, tmp_path / "fresh", batch_size=5)
    np.testing.assert_allclose(res.embeddings.numpy(), fresh.embeddings.numpy(), atol=1e-6)
    assert torch.allclose(res.embeddings.norm(dim=-1), torch.ones(10), atol=1e-5)
