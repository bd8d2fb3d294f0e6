"""train.py's command line: help, config composition and the errors a user sees (no model is built)."""

from __future__ import annotations

import pytest

import train as train_script
from clipure_lit.config.loader import load_config
from clipure_lit.config.train_schema import TrainRunCfg, validate_train_config

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`


def compose(*argv: str):
    return load_config(list(argv), root="train", schema=TrainRunCfg, validate=validate_train_config)


def test_help_lists_jobs_groups_and_training_keys(capsys):
    assert train_script.main(["--help"]) == {}
    out = capsys.readouterr().out
    assert "usage: python train.py" in out and "job=clip|prior|fare|tecoa" in out
    assert "fit.time_budget_min" in out and "clip_train.blank_target" in out and "prior_train.prior.dim" in out
    assert "train_cifar10_small_clip" in out  # experiments are listed


@pytest.mark.parametrize("argv, message", [
    (["job=clp"], "Unknown training job job='clp'"),
    (["experiment=train_cifar10_small_clip", "fit.max_stepz=3"], "Unknown config key 'fit.max_stepz'"),
    (["experiment=train_cifar10_small_clip", "clip_train.blank_target=1.5"], "clip_train.blank_target=1.5"),
    (["experiment=train_cifar10_small_clip", "clip_train.caption_templates=[nope]"], "Unknown template set 'nope'"),
    (["experiment=train_cifar10_small_clip", "fit.max_epochs=null", "fit.time_budget_min=null"], "has no end"),
    (["experiment=train_cifar10_small_clip", "purifier=clipure_cos"], "is not used by train.py"),
    (["experiment=train_cifar10_small_prior", "prior_train.val_t_max=1000"], "val_t_max=1000"),
    (["job=fare", "clip=tiny_random", "fit.max_steps=1"], "clip.pretrained is null"),
    # Shipped weights are read-only to the project's own jobs: naming one is refused before training starts.
    (["experiment=train_cifar10_small_prior", "prior_train.export_to=checkpoints/vit_c10_s4_prior.safetensors"],
     "prior_train.export_to='checkpoints/vit_c10_s4_prior.safetensors' exists already"),
])
def test_bad_config_is_a_one_paragraph_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        train_script.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_experiments_compose_to_the_recorded_recipes():
    clip = compose("experiment=train_cifar10_small_clip")
    assert clip.job == "clip" and clip.clip.arch == "ViT-C10-S4-32px" and clip.clip.pretrained is None
    assert clip.data.root.endswith("cifar10/train") and clip.val_data.root.endswith("cifar10/test")
    prior = compose("experiment=train_cifar10_small_prior")
    assert prior.job == "prior" and prior.clip.pretrained == "checkpoints/vit_c10_s4_clip.safetensors"
    assert prior.prior_train.prior.dim == 128 and prior.prior_train.export_to is None  # shipped weights are never a default destination
