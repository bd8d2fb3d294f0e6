"""FARE / TeCoA fine-tuning: the inner attack does what it claims, and the job's output loads in eval.py."""

from __future__ import annotations

import pytest
import torch

import eval as eval_script
import train as train_script
from clipure_lit.training.adv_job import pgd_linf

from conftest import CIFAR_TEST, needs_shared_cifar

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

# The tiny architecture only: the training experiment's other clip.* keys (context length, tokenizer) stay.
TINY_CLIP = ["clip.arch=Tiny-ViT-32px", "clip.model_config=conf/model_configs/Tiny-ViT-32px.json"]


def _tiny_weights(tmp_path):
    """A random tiny open_clip state dict on disk, standing in for a trained model."""
    from clipure_lit.clip.backbone import load_backbone
    from clipure_lit.config.loader import load_config
    from clipure_lit.training.common import export_state_dict

    backbone, _ = load_backbone(load_config(["clip=tiny_random"]).clip)
    return backbone, export_state_dict(backbone.model.state_dict(), tmp_path / "tiny.safetensors", "fp32")


def test_fare_inner_attack_increases_the_embedding_distance_it_maximises(tmp_path):
    backbone, _ = _tiny_weights(tmp_path)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = backbone.model.encode_image(backbone.preprocess(x))

    def fare(xp):
        return (backbone.model.encode_image(backbone.preprocess(xp)) - target).square().sum(-1).mean()

    gen = torch.Generator().manual_seed(1)
    eps = 4 / 255
    start = pgd_linf(fare, x, eps, steps=0, step_size=1 / 255, generator=torch.Generator().manual_seed(1))  # random start
    x_adv = pgd_linf(fare, x, eps, steps=10, step_size=1 / 255, generator=gen)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    with torch.no_grad():
        assert fare(x_adv) > 2 * fare(start) > 0


@needs_shared_cifar
def test_fare_and_tecoa_jobs_export_weights_eval_loads(tmp_path):
    _, weights = _tiny_weights(tmp_path)
    for job in ("fare", "tecoa"):
        metrics = train_script.main([
            f"experiment=train_cifar10_small_{job}", *TINY_CLIP, f"clip.pretrained={weights}", "logger=none",
            f"run_dir={tmp_path / job}", f"data.root={CIFAR_TEST}", "data.num_samples=16", "data.batch_size=8",
            f"val_data.root={CIFAR_TEST}", "val_data.num_samples=8", f"adv_train.image_cache_dir={tmp_path / 'img'}",
            "adv_train.pgd_steps=1", "fit.max_steps=1", "fit.time_budget_min=null", "fit.val_every_n_steps=1",
            "fit.ckpt_every_n_steps=1", "trainer.num_threads=null"])
        assert metrics["global_step"] == 1 and "val/clean_acc" in metrics
        # The recipes validate under attack too (PGD in the validation loop needs gradients: no inference mode).
        assert 0.0 <= metrics["val/robust_acc"] <= 1.0
    tuned = eval_script.main([*TINY_CLIP, f"clip.pretrained={metrics['export']}", "data=cifar10_jpeg_shared",
                              f"data.root={CIFAR_TEST}", "data.num_samples=8", "logger=none", f"run_dir={tmp_path / 'eval'}",
                              f"prompts.cache_dir={tmp_path / 'text'}", "trainer.enable_progress_bar=false"])
    assert tuned["clean"]["total"] == 8
