"""eval.py end to end on a tiny random open_clip model and real images, and the errors a user sees."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

import eval as eval_script
from clipure_lit.config.loader import load_config
from clipure_lit.errors import DataNotFoundError, WeightsUnavailableError

from conftest import PROJECT_ROOT, needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`


@needs_shared_cifar
def test_eval_main_reports_clean_accuracy_and_writes_the_run_folder(tmp_path, capsys):
    metrics = eval_script.main(tiny_args(tmp_path, "data.num_samples=24", "data.batch_size=5"))
    run = tmp_path / "run"
    assert json.loads((run / "results.json").read_text())["clean"] == metrics["clean"]
    assert metrics["num_samples"] == 24 and metrics["clean"]["total"] == 24
    lo, hi = metrics["clean"]["ci95"]
    assert lo <= metrics["clean"]["acc"] <= hi
    rows = list(csv.DictReader(open(run / "samples.csv")))
    assert len(rows) == 24 and set(rows[0]) == {"sample_id", "label", "clean_pred"}
    saved = load_config([str(run / "config.yaml")])  # the saved config is complete and reloadable
    assert saved.data.num_samples == 24 and saved.clip.arch == "Tiny-ViT-32px"
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and len(env["sample_ids_sha256"]) == 64
    assert "clean" in capsys.readouterr().out
    # Where the time went: phases of the launching process, and the test loop's parts per sample.
    timings = json.loads((run / "timings.json").read_text())
    assert {"setup_data", "load_backbone", "build_text_head", "build_purifiers", "test_loop"} <= set(timings["phases_s"])
    counts = timings["counts"]  # the class head, read from the cache or computed
    assert counts["text_embeddings_cached"] + counts["text_embeddings_computed"] == 1
    assert metrics["time_per_sample_s"]["data_loading"] > 0 and metrics["time_per_sample_s"]["clean"] > 0


@needs_shared_cifar
def test_reported_accuracy_matches_an_independent_loop(tmp_path):
    """The Lightning path gives exactly what a plain loop over the same ids gives."""
    from clipure_lit.data.datamodule import ZeroShotDataModule
    from clipure_lit.evaluation import build_classifier

    argv = tiny_args(tmp_path, "data.num_samples=40")
    metrics = eval_script.main(argv)
    cfg = load_config(argv)
    dm = ZeroShotDataModule(cfg.data)
    classifier = build_classifier(cfg, dm.classnames)
    correct = 0
    with torch.no_grad():
        for sample_id in dm.sample_ids:
            image, label = dm.dataset.load(sample_id)
            correct += int(classifier(image[None]).argmax(-1).item() == label)
    assert metrics["clean"]["correct"] == correct


@needs_shared_cifar
def test_rerun_is_reproducible(tmp_path):
    a = eval_script.main(tiny_args(tmp_path / "a", "data.num_samples=16"))
    b = eval_script.main(tiny_args(tmp_path / "b", "data.num_samples=16"))
    assert (tmp_path / "a/run/samples.csv").read_text() == (tmp_path / "b/run/samples.csv").read_text()
    assert a["clean"] == b["clean"]


def test_config_error_exits_2_with_one_paragraph_and_no_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        eval_script.main(["purifier.step_sizee=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown config key 'purifier.step_sizee'") and "Traceback" not in err


def test_unavailable_weights_fail_fast_with_a_fix(monkeypatch):
    import time

    from clipure_lit.clip.weights import ensure_weights_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # an empty cache
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        ensure_weights_available("ViT-B-32", "openai", cache_dir="/nonexistent-cache")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "ViT-B-32" in message and "clip.pretrained" in message and "HF_HUB_OFFLINE" in message


def test_missing_checkpoint_path_is_a_clear_error():
    from clipure_lit.clip.weights import ensure_weights_available

    with pytest.raises(DataNotFoundError, match="no such file"):
        ensure_weights_available("ViT-B-32", "checkpoints/missing.pt", cache_dir=None)


def test_main_job_and_tests_share_one_code_path(monkeypatch, tmp_path):
    """`make run` runs eval.py, whose main() composes the config and hands it to evaluation.run_eval: the same function
    the tests exercise above."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    run_recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "eval.py" in run_recipe
    readme = (PROJECT_ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert commands and commands[0].strip() == "make run" and commands[1].strip() == "make test"
    ci = (PROJECT_ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-2:] == ["make test", "make test-slow"]  # the README's test command, then its slow tier
    import clipure_lit.evaluation as evaluation

    seen = {}
    empty = {"acc": 0.0, "ci95": [0.0, 1.0], "correct": 0, "total": 0}
    monkeypatch.setattr(evaluation, "run_eval", lambda cfg: seen.setdefault("cfg", cfg) and {"clean": empty})
    eval_script.main(["experiment=tiny"])
    assert seen["cfg"].name == "tiny"


@pytest.mark.weights
def test_real_openai_vitb32_classifies_imagenet_sample(tmp_path):
    """Runs where the ViT-B-32/openai weights are cached (or downloadable): zero-shot on the ImageNet sample."""
    from clipure_lit.clip.weights import ensure_weights_available
    from conftest import IMAGENET_SAMPLE

    try:
        ensure_weights_available("ViT-B-32", "openai", None)
    except WeightsUnavailableError as exc:
        pytest.skip(f"pretrained weights unavailable here: {str(exc)[:120]}")
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip("ImageNet sample absent")
    metrics = eval_script.main(["clip=vitb32_openai", "data=imagenet_sample", f"data.root={IMAGENET_SAMPLE}", "data.num_samples=200",
                                "data.subset=random", "prompts=imagenet", "logger=none", f"run_dir={tmp_path}",
                                f"prompts.cache_dir={tmp_path}/text", "trainer.enable_progress_bar=false"])
    assert metrics["clean"]["acc"] > 0.5  # ViT-B/32 reaches ~63% top-1 on ImageNet with the 80 templates


@pytest.mark.gpu
@needs_shared_cifar
def test_gpu_matches_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = eval_script.main(tiny_args(tmp_path / "cpu", "data.num_samples=32"))
    gpu = eval_script.main(tiny_args(tmp_path / "gpu", "data.num_samples=32", "trainer=gpu"))
    assert abs(cpu["clean"]["acc"] - gpu["clean"]["acc"]) <= 1 / 32


def test_missing_purifier_weights_fail_before_clip_is_loaded(capsys):
    """The prior file is checked first: the error names it even though ViT-L/14 weights are unavailable too."""
    with pytest.raises(SystemExit) as info:
        eval_script.main(["clip=vitl14_openai", "purifier=clipure_diff", "data.batch_size=2",
                          "purifier.clipure_diff.prior.checkpoint=nowhere/prior.pth"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere/prior.pth" in err and "Pretrained weights" not in err
