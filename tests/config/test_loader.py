"""Config composition and the errors users see for bad input (all raised before any model is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clipure_lit.config.loader import GROUPS, list_choices, load_config
from clipure_lit.purifiers.base import GradMode
from clipure_lit.purifiers.step import NormScope
from clipure_lit.errors import ConfigError, DataNotFoundError

from conftest import PROJECT_ROOT


def test_defaults_compose_and_match_released_hyperparameters():
    cfg = load_config([])
    assert cfg.clip.arch == "ViT-C10-S4-32px" and cfg.data.name == "array_file"  # offline defaults that ship
    assert dict(cfg.purifier) == {"latent": "identity", "pixel": "identity", "seed": 0}  # no purifier, no sections
    cos = load_config(["purifier.latent=clipure_cos"]).purifier.clipure_cos  # the module's own defaults
    assert cos.num_steps == 10 and cos.step_size == 30.0 and cos.momentum == 0.0 and cos.batch_size is None
    assert cos.grad_mode == GradMode.as_released and cos.norm_scope == NormScope.batch
    diff = load_config(["purifier.latent=clipure_diff"]).purifier.clipure_diff
    assert diff.t_min == 900 and diff.t_max == 999 and diff.step_size == 30.0 and diff.prior.dim == 768
    assert cfg.prompts.blank_templates == "openai_imagenet_80"
    assert cfg.trainer.inference_mode is False


def test_group_choice_dotted_override_and_experiment_precedence():
    cfg = load_config(["experiment=tiny", "data.num_samples=7", "clip=vitl14_openai"])
    assert cfg.name == "tiny"
    assert cfg.data.num_samples == 7  # dotted override beats the experiment file
    assert cfg.clip.arch == "ViT-L-14"  # a command-line choice beats the experiment's defaults
    assert cfg.data.name == "image_folder"  # from the experiment's defaults


def test_yaml_values_are_parsed_from_overrides():
    cfg = load_config(["trainer.devices=[0,1]", "clip.pretrained=null", "purifier=clipure_cos", "purifier.clipure_cos.step_size=10",
                       "data.batch_size=2"])
    assert list(cfg.trainer.devices) == [0, 1] and cfg.clip.pretrained is None and cfg.purifier.clipure_cos.step_size == 10.0


def test_yaml_file_argument_merges_at_root(tmp_path):
    override = tmp_path / "o.yaml"
    override.write_text(yaml.safe_dump({"purifier": {"latent": "clipure_cos", "clipure_cos": {"num_steps": 3}}, "seed": 5}))
    cfg = load_config([str(override)])
    assert cfg.purifier.clipure_cos.num_steps == 3 and cfg.seed == 5


@pytest.mark.parametrize(
    "argv, must_mention",
    [
        (["purifier.stepsize=3"], ["purifier.stepsize", "latent", "Valid keys"]),
        (["purifier=clipure_cos", "purifier.clipure_cos.step_sizee=3"], ["purifier.clipure_cos.step_sizee", "step_size", "Valid keys"]),
        (["purifier=clipure_cos", "purifier.clipure_cos.num_steps=abc"], ["purifier.clipure_cos.num_steps", "abc", "Integer"]),
        (["purifier=clipure_cos", "purifier.clipure_cos.grad_mode=fulll"], ["purifier.clipure_cos.grad_mode", "fulll", "as_released", "full"]),
        (["purifier=nope"], ["nope", "purifier", "none"]),
        (["clip=vitb32_openai", "clip.arch=ViT-B-33"], ["ViT-B-33", "ViT-B-32"]),
        (["clip.arch=ViT-B-32"], ["ViT-C10-S4-32px", "clip.model_config=null"]),
        (["data.name=cifar11"], ["cifar11", "cifar10", "image_folder"]),
        (["prompts.class_templates=foo"], ["foo", "openai_imagenet_80", "cifar10"]),
        (["prompts.blank_templates=bar"], ["bar", "openai_imagenet_80"]),
        (["purifier.latent=nope"], ["nope", "identity"]),
        (["data.classnames=nope"], ["nope", "imagenet1k"]),
        (["trainer.inference_mode=true", "attack.run=[aa_clipure]"], ["trainer.inference_mode=false"]),
        (["purifier.latent=clipure_diff", "purifier.clipure_diff.t_max=5000"], ["t_max", "timesteps"]),
        (["notakey=1"], ["notakey", "Valid keys"]),
        (["justaword"], ["justaword", "group=choice"]),
    ],
)
def test_bad_input_gives_a_clear_config_error(argv, must_mention):
    with pytest.raises(ConfigError) as info:
        load_config(argv)
    message = str(info.value)
    for fragment in must_mention:
        assert fragment in message, (fragment, message)
    assert "\n" not in message.strip(), "errors are one paragraph"


def test_missing_yaml_file_is_reported_with_its_path(tmp_path):
    with pytest.raises(DataNotFoundError, match="nothere.yaml"):
        load_config([str(tmp_path / "nothere.yaml")])


def test_every_shipped_config_file_validates():
    """Each choice of each group composes against its schema (LHT's test_experiments idea); training experiments
    (train_*) against train.py's. Files that are not on this machine (an ImageNet root, the LAION prior) are left to
    tests/config/test_composition_checks.py, and a batch-coupled purifier is composed at the batch size it declares
    (tests/config/test_batch_coupling.py)."""
    from functools import partial

    from clipure_lit.config.train_schema import TrainRunCfg, validate_train_config
    from clipure_lit.config.validate import validate_config

    for group in GROUPS:
        for choice in list_choices(group):
            if group == "experiment" and choice.startswith("train_"):
                load_config([f"{group}={choice}"], root="train", schema=TrainRunCfg, validate=validate_train_config)
                continue
            batch = []
            if group == "purifier":
                body = yaml.safe_load((PROJECT_ROOT / "conf" / "purifier" / f"{choice}.yaml").read_text())
                sizes = {v.get("batch_size") for v in body.values() if isinstance(v, dict) and v.get("norm_scope") == "batch"}
                batch = [f"data.batch_size={size}" for size in sizes - {None}]
            load_config([f"{group}={choice}", *batch], validate=partial(validate_config, files=False), check_entries=True)


def test_experiment_files_only_name_existing_choices():
    for path in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml"):
        body = yaml.safe_load(path.read_text()) or {}
        for group, choice in (body.get("defaults") or {}).items():
            assert choice in list_choices(group), (path.name, group, choice)


def test_config_path_does_not_depend_on_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["experiment=tiny"])
    assert Path(cfg.clip.model_config).name == "Tiny-ViT-32px.json"
