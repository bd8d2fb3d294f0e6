"""A training job stopped by SIGTERM (a scheduler, ``scancel``, a sweep's stop) says so: exit status 143, no
results.json, the training state saved at the step reached, and the same command with the run folder continues from
that step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import CIFAR_TEST, PROJECT_ROOT, needs_shared_cifar

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`


def _tiny_weights(tmp_path):
    from clipure_lit.clip.backbone import load_backbone
    from clipure_lit.config.loader import load_config
    from clipure_lit.training.common import export_state_dict

    backbone, _ = load_backbone(load_config(["clip=tiny_random"]).clip)
    return export_state_dict(backbone.model.state_dict(), tmp_path / "tiny.safetensors", "fp32")


def _args(tmp_path, weights, max_steps):
    return ["train.py", "experiment=train_cifar10_small_tecoa", "clip.arch=Tiny-ViT-32px",
            "clip.model_config=conf/model_configs/Tiny-ViT-32px.json", f"clip.pretrained={weights}", "logger=csv",
            f"run_dir={tmp_path / 'run'}", f"data.root={CIFAR_TEST}", "data.num_samples=16", "data.batch_size=8",
            f"val_data.root={CIFAR_TEST}", "val_data.num_samples=8", f"adv_train.image_cache_dir={tmp_path / 'img'}",
            "adv_train.pgd_steps=1", f"fit.max_steps={max_steps}", "fit.time_budget_min=null",
            "fit.val_every_n_steps=0", "fit.ckpt_every_n_steps=100000", "trainer.num_threads=1"]


@pytest.mark.slow
@needs_shared_cifar
@pytest.mark.timeout(300)
def test_sigterm_stops_training_with_143_and_the_same_command_continues_from_the_step_reached(tmp_path):
    weights = _tiny_weights(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, *_args(tmp_path, weights, 100000)], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "run" / "log.txt"
    deadline = time.time() + 200
    while time.time() < deadline and not (log.is_file() and "starting fresh" in log.read_text()):
        time.sleep(0.5)
    time.sleep(5)  # some steps: none is checkpointed periodically (ckpt_every_n_steps is out of reach)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "Stopped by SIGTERM" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "results.json").exists()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    reached = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert reached > 0

    done = subprocess.run([sys.executable, *_args(tmp_path, weights, reached + 2)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"Resuming from {last}" in (tmp_path / "run" / "log.txt").read_text()
    import json

    assert json.loads((tmp_path / "run" / "results.json").read_text())["global_step"] == reached + 2
