"""train.py job=clip on a tiny open_clip model and real CIFAR-10 JPEGs: runs, checkpoints, resumes, exports
weights that eval.py loads, and trains with exactly the normalisation evaluation applies."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

import eval as eval_script
import train as train_script
from clipure_lit.training.clip_job import augment_uint8, multi_positive_ce
from clipure_lit.training.common import ScheduleClock, warmup_cosine

from conftest import CIFAR_TEST, needs_shared_cifar

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

# The tiny architecture only: the training experiment's other clip.* keys (context length, tokenizer) stay.
TINY_CLIP = ["clip.arch=Tiny-ViT-32px", "clip.model_config=conf/model_configs/Tiny-ViT-32px.json"]


def clip_args(tmp_path, *extra: str) -> list[str]:
    """A few steps of the real recipe on a tiny model, 48 real images, everything under ``tmp_path``."""
    return ["experiment=train_cifar10_small_clip", *TINY_CLIP, "logger=none", f"run_dir={tmp_path / 'run'}",
            f"data.root={CIFAR_TEST}", "data.num_samples=48", "data.subset=random", "data.batch_size=16",
            f"val_data.root={CIFAR_TEST}", "val_data.num_samples=20", "val_data.batch_size=20",
            f"clip_train.image_cache_dir={tmp_path / 'img'}", "clip_train.export_to=null", "clip_train.export_dtype=fp32",
            "fit.max_epochs=null", "fit.time_budget_min=null", "fit.max_steps=2", "fit.val_every_n_steps=2",
            "fit.ckpt_every_n_steps=2", "fit.log_every_n_steps=1", "trainer.num_threads=null", *extra]


def eval_args(tmp_path, weights, *extra: str) -> list[str]:
    return [*TINY_CLIP, f"clip.pretrained={weights}", "data=cifar10_jpeg_shared", f"data.root={CIFAR_TEST}",
            "data.num_samples=16", "prompts=cifar10", "logger=none", f"run_dir={tmp_path / 'eval'}",
            f"prompts.cache_dir={tmp_path / 'text'}", "trainer.enable_progress_bar=false", *extra]


@needs_shared_cifar
def test_clip_job_trains_resumes_and_exports_weights_eval_loads(tmp_path, caplog):
    first = train_script.main(clip_args(tmp_path))
    run = tmp_path / "run"
    assert first["global_step"] == 2 and json.loads((run / "results.json").read_text())["global_step"] == 2
    assert {"val/acc", "val/cos_blank_mean", "val/cos_blank_class_min"} <= set(first)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)  # weights_only-safe
    assert ckpt["global_step"] == 2 and "clipure_elapsed_s" in ckpt

    # Resume: the global step continues from the checkpoint instead of restarting.
    caplog.clear()
    caplog.set_level(logging.INFO, logger="clipure_lit")
    second = train_script.main(clip_args(tmp_path, "fit.max_steps=3", "fit.resume=last", "fit.val_every_n_steps=0"))
    assert second["global_step"] == 3
    assert any("Resuming from" in r.getMessage() for r in caplog.records)

    # The exported open_clip state dict loads by path on the evaluation side ...
    weights = second["export"]
    metrics = eval_script.main(eval_args(tmp_path, weights))
    assert metrics["clean"]["total"] == 16
    # ... into exactly the trained weights (strict open_clip load, no random init left).
    from safetensors.torch import load_file

    from clipure_lit.clip.backbone import load_backbone
    from clipure_lit.config.loader import load_config

    cfg = load_config(eval_args(tmp_path, weights))
    backbone, _ = load_backbone(cfg.clip)
    saved = load_file(weights)
    for name, value in backbone.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


@needs_shared_cifar
def test_training_uses_the_normalisation_and_embeddings_of_evaluation(tmp_path):
    """The module trains through ClipBackbone.preprocess: same mean/std as eval, same embeddings in eval mode."""
    from clipure_lit.clip.backbone import load_backbone
    from clipure_lit.config.loader import load_config
    from clipure_lit.config.train_schema import TrainRunCfg, validate_train_config
    from clipure_lit.training.clip_job import ClipTrainModule

    cfg = load_config(clip_args(tmp_path), root="train", schema=TrainRunCfg, validate=validate_train_config)
    backbone, tok = load_backbone(cfg.clip)
    module = ClipTrainModule(cfg, backbone, tok, [f"c{i}" for i in range(10)]).eval()
    path = module.export(tmp_path / "w.safetensors")
    eval_cfg = load_config(eval_args(tmp_path, path))
    eval_backbone, _ = load_backbone(eval_cfg.clip)
    assert torch.equal(eval_backbone.mean, module.backbone.mean) and torch.equal(eval_backbone.std, module.backbone.std)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(module.encode_images(x), eval_backbone.encode_image(x), atol=1e-6)


def test_augmentation_shapes_range_and_crop_semantics():
    x = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    out = augment_uint8(x, padding=4, hflip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    plain = augment_uint8(x, padding=0, hflip=False)
    assert torch.equal(plain, x.permute(0, 3, 1, 2).float() / 255)
    # A crop is a shifted window of the zero-padded image: every output pixel is an input pixel or 0.
    values = set(x.flatten().tolist()) | {0}
    assert set((out * 255).round().long().flatten().tolist()) <= values


def test_multi_positive_ce_ignores_same_class_negatives():
    y = torch.tensor([0, 0, 1])
    pos = y[:, None] == y[None, :]
    s = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
    assert multi_positive_ce(s, pos) < 1e-3  # both same-class captions count as correct
    assert multi_positive_ce(s, torch.eye(3, dtype=torch.bool)) > 0.4  # plain CLIP loss punishes them


def test_schedule_warmup_cosine_and_time_budget(monkeypatch):
    assert warmup_cosine(0.0, 0.1, 0.0, min_warm=0.01) == pytest.approx(0.1)
    assert warmup_cosine(0.1, 0.1, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1, 0.2) == pytest.approx(0.2)
    clock = ScheduleClock(total_steps=100, budget_s=10.0)
    t = [1000.0]
    monkeypatch.setattr("clipure_lit.training.common.time.perf_counter", lambda: t[0])
    clock.start()
    assert clock.progress(10) == pytest.approx(0.1)
    t[0] += 5.0  # half the budget spent after only 10 steps: the time term wins
    assert clock.progress(10) == pytest.approx(0.5) and not clock.done(10)
    clock.offset = 5.0  # a resumed run carries the elapsed time of the previous one
    assert clock.done(10) and math.isclose(clock.progress(10), 1.0)
