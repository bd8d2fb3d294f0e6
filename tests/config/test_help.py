"""``--help`` shows the values of the configuration the arguments compose (experiment and group files included), and
``--cfg`` says which files it composed."""

from __future__ import annotations

import re

import yaml

import eval as eval_script
import train as train_script


def _key(text: str, key: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"  {key}: ")]
    return line.split(" = ", 1)[1]


def test_help_shows_the_default_run_not_the_schema_defaults(capsys):
    eval_script.main(["--help"])
    text = capsys.readouterr().out
    assert _key(text, "clip.arch") == "'ViT-C10-S4-32px'"  # conf/clip/cifar10_small.yaml, not the schema's ViT-B-32
    assert _key(text, "data.num_samples") == "None" and _key(text, "data.name") == "'array_file'"  # conf/data/cifar10_sample.yaml
    assert re.search(r"^  clip +.*\bcifar10_small\*", text, re.M) and "  conf/eval.yaml" in text


def test_help_follows_the_experiment_and_overrides(capsys):
    eval_script.main(["experiment=tiny", "purifier=clipure_cos", "data.batch_size=2", "--help"])
    text = capsys.readouterr().out
    assert _key(text, "clip.arch") == "'Tiny-ViT-32px'" and _key(text, "data.num_samples") == "64"
    assert _key(text, "data.batch_size") == "2" and _key(text, "purifier.latent") == "'clipure_cos'"
    assert _key(text, "purifier.clipure_cos.batch_size") == "2"  # from conf/purifier/clipure_cos.yaml
    assert _key(text, "purifier.clipure_cos.grad_mode") == "'as_released'" and _key(text, "logger.name") == "'csv'"
    sources = text.split("Composed from (in merge order, later wins):\n", 1)[1].split("\n\n", 1)[0].split("\n")
    assert sources[-2:] == ["  conf/experiment/tiny.yaml", "  command-line override 'data.batch_size=2'"]
    assert "  conf/purifier/clipure_cos.yaml" in sources and "  conf/clip/tiny_random.yaml" in sources


def test_help_with_arguments_that_do_not_compose_shows_schema_defaults_and_why(capsys):
    eval_script.main(["data.num_samples=many", "--help"])
    text = capsys.readouterr().out
    assert _key(text, "clip.arch") == "'ViT-B-32'" and "do not compose a valid config" in text and "data.num_samples" in text


def test_train_help_shows_its_experiment(capsys):
    train_script.main(["experiment=train_cifar10_small_prior", "--help"])
    text = capsys.readouterr().out
    assert _key(text, "job") == "'prior'" and "  conf/experiment/train_cifar10_small_prior.yaml" in text


def test_cfg_lists_the_composed_files_before_the_config(capsys):
    eval_script.main(["experiment=tiny", "data.num_samples=3", "--cfg"])
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if line.startswith("#")]
    assert header[0].startswith("# composed from")
    assert "#   conf/clip/tiny_random.yaml" in header and "#   conf/experiment/tiny.yaml" in header
    assert header[-1] == "#   command-line override 'data.num_samples=3'"
    assert yaml.safe_load(out)["data"]["num_samples"] == 3  # still loadable YAML
