"""Shared fixtures: the shared real-image folder, the tiny experiment's arguments and config, the tiny CLIP of
``conf/clip/tiny_random.yaml``, purifiers built from the real ``conf/purifier`` files, offline environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
CIFAR_TEST = SHARED_DATA / "cifar10" / "test"
IMAGENET_SAMPLE = SHARED_DATA / "imagenet_sample"

# No test may reach the network: the model hub and W&B are offline for the whole session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

needs_shared_cifar = pytest.mark.skipif(not CIFAR_TEST.is_dir(), reason=f"real CIFAR-10 JPEGs not found at {CIFAR_TEST}")
needs_imagenet_sample = pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason=f"ImageNet sample not found at {IMAGENET_SAMPLE}")


def tiny_cfg(*overrides: str):
    """The composed config of ``experiment=tiny`` plus ``overrides``, from the real files in ``conf/``."""
    from clipure_lit.config.loader import load_config

    return load_config(["experiment=tiny", *overrides], conf_dir=PROJECT_ROOT / "conf")


def contract_overrides(name: str) -> list[str]:
    """How the contract tests select a registered purifier: its ``conf/purifier/<name>_tiny.yaml`` (small weights
    for tests) when there is one, else ``conf/purifier/<name>.yaml``, else its registry name with default keys."""
    from clipure_lit.purifiers import list_purifiers

    import yaml

    for choice in (f"{name}_tiny", name):
        path = PROJECT_ROOT / "conf" / "purifier" / f"{choice}.yaml"
        if path.is_file():
            # A batch-coupled purifier composes only at the batch size it declares.
            sections = [v for v in yaml.safe_load(path.read_text()).values() if isinstance(v, dict)]
            sizes = {v["batch_size"] for v in sections if v.get("norm_scope") == "batch" and v.get("batch_size")}
            return [f"purifier={choice}", *[f"data.batch_size={n}" for n in sizes]]
    space = "latent" if name in list_purifiers("latent") else "pixel"
    return ["purifier=none", f"purifier.{space}={name}"]


def build_purifiers(clip, cache_dir: Path, *overrides: str):
    """``(cfg, pixel purifier, latent purifier)`` of ``tiny_cfg(*overrides)`` around the tiny CLIP ``clip``
    (a ``(backbone, tokenizer)`` pair), as ``eval.py`` builds them."""
    from clipure_lit.clip.zeroshot import TextEmbeddingCache
    from clipure_lit.purifiers import BuildContext, build_purifier

    cfg = tiny_cfg(*overrides)
    backbone, tokenizer = clip
    ctx = BuildContext(cfg=cfg, backbone=backbone, tokenizer=tokenizer, text_cache=TextEmbeddingCache(cache_dir),
                       classnames=[])
    return cfg, build_purifier(cfg.purifier.pixel, "pixel", ctx), build_purifier(cfg.purifier.latent, "latent", ctx)


@pytest.fixture(scope="session")
def tiny_clip():
    """``(backbone, tokenizer)`` of the tiny random CLIP that ``experiment=tiny`` uses (conf/clip/tiny_random.yaml)."""
    from clipure_lit.clip.backbone import load_backbone

    os.chdir(PROJECT_ROOT)  # its model_config path is relative to the project root
    return load_backbone(tiny_cfg().clip)


def tiny_sweep_yaml(**values: list) -> str:
    """A W&B grid sweep file over ``values`` (dotted key -> values; pass them as ``**{"clip.init_seed": [0, 1]}``)
    whose runs are ``eval.py experiment=tiny`` plus the swept arguments."""
    parameters = "".join(f"  {key}: {{values: [{', '.join(map(str, vals))}]}}\n" for key, vals in values.items())
    return ("name: tiny_sweep\nprogram: eval.py\nmethod: grid\n"
            "metric: {name: test/robust_acc/worst_case, goal: maximize}\n"
            f"parameters:\n{parameters}"
            "command:\n  - ${env}\n  - ${interpreter}\n  - ${program}\n  - experiment=tiny\n  - ${args_no_hyphens}\n")


def plain_autoattack(model, eps: float, n_iter: int, n_restarts: int, n_target_classes: int):
    """What a user would write with pyautoattack alone: APGD-CE + APGD-T (``version="custom"``, seed 0, Linf ``eps``
    in 1/255) with the iteration count set as pyautoattack derives its schedule from it."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=eps / 255, version="custom", attacks=["apgd-ce", "apgd-t"], device="cpu",
                           seed=0)
    for apgd in (adversary.apgd, adversary.apgd_targeted):
        apgd.n_iter = n_iter
        apgd.n_iter_2 = max(int(0.22 * apgd.n_iter), 1)
        apgd.n_iter_min = max(int(0.06 * apgd.n_iter), 1)
        apgd.size_decr = max(int(0.03 * apgd.n_iter), 1)
    adversary.apgd.n_restarts = n_restarts
    adversary.apgd_targeted.n_target_classes = n_target_classes
    return adversary


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    """Arguments of the tiny experiment, writing only under ``tmp_path``."""
    return ["experiment=tiny", "logger=none", f"run_dir={tmp_path / 'run'}", f"prompts.cache_dir={tmp_path / 'text_cache'}",
            "trainer.enable_progress_bar=false", *extra]


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch):
    """Config paths such as conf/model_configs/... are relative to the project root."""
    monkeypatch.chdir(PROJECT_ROOT)


@pytest.fixture(scope="module")
def one_thread_module():
    """Run a module's tests with one torch thread, then restore: on 2 shared cores, tiny ops are up to ~100x slower
    with 2 threads when another process is busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runs with trainer.num_threads=1 change torch's process-wide thread count; every test gets it back."""
    import torch

    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def crash_after_batch(after: int):
    """A Lightning callback that simulates a killed job: it raises at the end of test batch ``after``, before that
    batch's attacks run and before it is written to the progress log (the batch in flight is lost)."""
    import pytorch_lightning as pl  # heavy: only the tests that crash a run need it

    class Crash(pl.Callback):
        def __init__(self) -> None:
            self.seen = 0

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.seen += 1
            if self.seen == after:
                raise RuntimeError("simulated crash")

    return Crash()
