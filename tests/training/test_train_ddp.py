"""train.py on two CPU processes (``trainer.devices=2 trainer.strategy=ddp``, gloo; Lightning re-runs the command
line for rank 1): one run folder without a run_dir, rank 0 alone writes config, checkpoints and one export whose
weights are those of the checkpoint, the caches are built once, validation counts every sample once, and the same
command with a larger fit.max_steps and the run folder continues from the checkpoint on two processes. A launch of
another size than trainer.devices is refused before the run folder exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train as train_script

from conftest import PROJECT_ROOT, needs_shared_cifar
from test_train_prior import prior_args
from test_train_stop import _args as tecoa_args, _tiny_weights

TWO_PROCESSES = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.num_threads=1"]


def _train(args: list[str], tmp_path: Path) -> str:
    """Run ``python train.py <args>`` (two processes) and return its console output; fails on a non-zero exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "train.py", *args, *TWO_PROCESSES], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _one_run_folder(root: Path) -> Path:
    folders = [p for p in root.rglob("config.yaml")]
    assert len(folders) == 1, folders  # both processes wrote into one folder
    return folders[0].parent


def _checkpoint_state(run_dir: Path, prefix: str) -> tuple[int, dict[str, torch.Tensor]]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["global_step"], {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def _assert_rank0_wrote_once(run_dir: Path, export_name: str, out: str) -> None:
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == sorted([export_name, "last.safetensors"])
    assert not list(run_dir.rglob("*.tmp*"))
    assert (run_dir / "log.rank1.txt").is_file() and "run_dir" in json.loads((run_dir / "results.json").read_text())
    assert out.count("Training run summary") == 1  # rank 1 does not report


@needs_shared_cifar
def test_a_launch_of_another_size_is_refused_before_the_run_folder_exists(tmp_path, monkeypatch, capsys):
    for name in list(os.environ):  # this session's own launcher variables, if any
        if name.startswith(("SLURM_", "TORCHELASTIC_", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_")):
            monkeypatch.delenv(name)
    for key, value in {"TORCHELASTIC_RUN_ID": "train-1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "RANK": "0",
                       "LOCAL_RANK": "0"}.items():  # torchrun --nproc-per-node 4
        monkeypatch.setenv(key, value)
    args = [a for a in prior_args(tmp_path) if not a.startswith("run_dir=")]
    with pytest.raises(SystemExit) as stop:
        train_script.main([*args, *TWO_PROCESSES, f"output_root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "torchrun started 4 processes" in err and "trainer.devices=4" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`
@pytest.mark.slow
@needs_shared_cifar
@pytest.mark.timeout(360)
def test_tecoa_on_two_processes_shares_one_run_folder_exports_once_and_resumes(tmp_path):
    weights = _tiny_weights(tmp_path)
    # 16 images, batches of 8: one step per epoch on each rank; validation on 8 images, 4 per rank.
    args = [a for a in tecoa_args(tmp_path, weights, 2)[1:] if not a.startswith(("run_dir=", "fit.val_every", "fit.ckpt"))]
    args += [f"output_root={tmp_path / 'runs'}", "adv_train.export_dtype=fp32", "adv_train.val_pgd_steps=1",
             "fit.val_every_n_steps=2", "fit.ckpt_every_n_steps=2", "fit.max_epochs=null"]
    out = _train(args, tmp_path)
    run_dir = _one_run_folder(tmp_path / "runs")
    name = "Tiny-ViT-32px_tecoa.safetensors"
    _assert_rank0_wrote_once(run_dir, name, out)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 2 and 0.0 <= results["val/clean_acc"] <= 1.0 and "val/robust_acc" in results
    # The image cache was decoded by one process; the other read it.
    logs = (run_dir / "log.txt").read_text() + (run_dir / "log.rank1.txt").read_text()
    assert logs.count("Decoding 16 images") == 1 and logs.count("Decoded-image cache hit") >= 1
    step, state = _checkpoint_state(run_dir, "backbone.model.")
    exported = load_file(run_dir / "export" / name)
    assert step == 2 and exported.keys() == state.keys()
    assert all(torch.equal(exported[k], state[k]) for k in state)

    # The same command in the same folder with a larger fit.max_steps continues on two processes.
    out = _train([*args, "fit.max_steps=4", f"run_dir={run_dir}"], tmp_path)
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in (run_dir / "log.txt").read_text()
    _assert_rank0_wrote_once(run_dir, name, out)
    step, state = _checkpoint_state(run_dir, "backbone.model.")
    assert step == 4 and json.loads((run_dir / "results.json").read_text())["global_step"] == 4
    exported = load_file(run_dir / "export" / name)
    assert all(torch.equal(exported[k], state[k]) for k in state)


@pytest.mark.e2e
@pytest.mark.slow
@needs_shared_cifar
@pytest.mark.timeout(360)
def test_prior_on_two_processes_embeds_once_validates_every_sample_once_and_resumes(tmp_path):
    # 40 embeddings in batches of 8: 5 batches, 3 per rank (the sampler repeats one); 16 validation embeddings.
    args = [a for a in prior_args(tmp_path, "data.batch_size=8", "val_data.batch_size=4", "logger=csv",
                                  "prior_train.export_dtype=fp32", "fit.max_steps=2", "fit.val_every_n_steps=2",
                                  "fit.ckpt_every_n_steps=2") if not a.startswith("run_dir=")]
    out = _train([*args, f"output_root={tmp_path / 'runs'}"], tmp_path)
    run_dir = _one_run_folder(tmp_path / "runs")
    _assert_rank0_wrote_once(run_dir, "prior.safetensors", out)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 2 and results["embedded_now"] == 40  # rank 0 embedded, rank 1 found the cache
    assert "Embedding cache hit" in (run_dir / "log.rank1.txt").read_text()
    # The constant predictor's loss does not depend on the noise draws: gathered from both ranks, each sample once,
    # it is the mean over the 16 validation embeddings that one process computes.
    val_cache = [p for p in (tmp_path / "emb").rglob("embeddings.npy")
                 if json.loads((p.parent / "meta.json").read_text())["n"] == 16]
    z_val = torch.from_numpy(np.load(val_cache[0]))  # [16, D]
    z_train = torch.from_numpy(np.load(results["embed_cache"]))  # [40, D]
    scale = z_val.shape[1] ** 0.5  # the prior's image_embed_scale: sqrt(D) when not set
    baseline = float((z_val * scale - (z_train * scale).mean(0)).square().mean(-1).mean())
    assert results["val/loss_mean_predictor"] == pytest.approx(baseline, rel=1e-5)
    step, state = _checkpoint_state(run_dir, "prior.")
    exported = load_file(run_dir / "export" / "prior.safetensors")
    assert step == 2 and exported.keys() == state.keys()
    assert all(torch.equal(exported[k], state[k]) for k in state)

    out = _train([*args, "fit.max_steps=4", f"run_dir={run_dir}"], tmp_path)
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in (run_dir / "log.txt").read_text()
    _assert_rank0_wrote_once(run_dir, "prior.safetensors", out)
    step, state = _checkpoint_state(run_dir, "prior.")
    assert step == 4 and json.loads((run_dir / "results.json").read_text())["global_step"] == 4
    exported = load_file(run_dir / "export" / "prior.safetensors")
    assert all(torch.equal(exported[k], state[k]) for k in state)
