"""The dataset suite: CLIP_benchmark data and templates, per-dataset runs, the cross-dataset table, skips and resume."""

from __future__ import annotations

import json
from functools import partial

import pytest

import eval as eval_script
from clipure_lit.clip.prompts import get_classnames, get_templates
from clipure_lit.config.loader import load_config
from clipure_lit.config.validate import validate_config
from clipure_lit.data.config import DataCfg
from clipure_lit.data.datasets import build_dataset
from clipure_lit.errors import DataNotFoundError

from conftest import needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

ZEROSHOT13 = ["cifar10", "cifar100", "stl10", "cars", "caltech101", "pets", "flowers", "dtd", "eurosat", "fgvc_aircraft",
              "pcam", "imagenet-r", "imagenet_sketch"]


def test_zeroshot13_suite_validates_and_lists_the_protocol():
    cfg = load_config(["suite=zeroshot13"])
    data_choices = [e.data for e in cfg.suite.datasets]
    assert len(data_choices) == 14 and data_choices[-1] == "imagenet"
    benchmarks = [load_config([f"data={c}"]).data.benchmark for c in data_choices[:-1]]
    assert benchmarks == ZEROSHOT13
    for entry in cfg.suite.datasets:
        assert get_templates(entry.templates)  # every dataset's templates load from the installed package
        # Without the file checks: the datasets are not on this machine (a run would refuse them, as it should).
        checked = partial(validate_config, files=False)
        assert load_config([f"data={entry.data}"], validate=checked).data.image_size == 224


@pytest.mark.parametrize("key", ["caltech101", "pets", "flowers", "eurosat", "pcam", "imagenet1k"])
def test_classnames_ship_with_clip_benchmark(key):
    names = get_classnames(key)
    assert len(names) >= 2 and all(isinstance(n, str) and n for n in names)


def test_missing_benchmark_dataset_is_a_clear_error(tmp_path):
    cfg = DataCfg(name="clip_benchmark", benchmark="dtd", root=str(tmp_path / "dtd"), download=False)
    with pytest.raises(DataNotFoundError) as info:
        build_dataset(cfg)
    assert "dtd" in str(info.value) and "data.root" in str(info.value)


def _image_folder(tmp_path):
    """A small class-per-folder tree of real images (3 classes x 4 images)."""
    import shutil

    from conftest import CIFAR_TEST

    root = tmp_path / "folder"
    for cls in ("cat", "dog", "ship"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((CIFAR_TEST / cls).glob("*.jpg"))[:4]:
            shutil.copy(f, root / cls / f.name)
    return root


def _local_suite_args(tmp_path, *extra):
    folder = _image_folder(tmp_path)
    entries = ("[{data: cifar10_jpeg_shared, templates: cifar10}, "
               f"{{data: image_folder, templates: simple_imagenet_7, overrides: [data.root={folder}]}}, "
               "{data: zs_dtd, templates: dtd}]")
    args = [a for a in tiny_args(tmp_path, "data.num_samples=12") if not a.startswith("run_dir=")]
    return args + ["suite.name=local", f"suite.datasets={entries}", f"run_dir={tmp_path / 'suite'}", "data.download=false", *extra]


@needs_shared_cifar
def test_local_suite_writes_table_skips_missing_and_resumes(tmp_path, caplog):
    summary = eval_script.main(_local_suite_args(tmp_path))
    out = tmp_path / "suite"
    status = {r["dataset"]: r["status"] for r in summary["rows"]}
    assert status == {"cifar10_jpeg_shared": "done", "image_folder": "done", "zs_dtd": "skipped"}
    skipped = next(r for r in summary["rows"] if r["status"] == "skipped")
    assert "dtd" in skipped["reason"] and "data.root" in skipped["reason"]
    for name in ("suite.csv", "suite.md", "suite.png", "suite.json", "cifar10_jpeg_shared/results.json", "image_folder/samples.csv"):
        assert (out / name).is_file(), name
    assert summary["average"]["num_datasets"] == 2
    per_dataset = json.loads((out / "image_folder" / "results.json").read_text())
    assert per_dataset["num_samples"] == 12  # all 12 images of the folder
    cifar_cfg = load_config([str(out / "cifar10_jpeg_shared" / "config.yaml")])
    assert cifar_cfg.prompts.class_templates == "cifar10" and cifar_cfg.prompts.blank_templates == "cifar10"
    # Resume: finished datasets are reused, not recomputed.
    before = (out / "cifar10_jpeg_shared" / "results.json").stat().st_mtime_ns
    again = eval_script.main(_local_suite_args(tmp_path, "resume=true"))
    assert (out / "cifar10_jpeg_shared" / "results.json").stat().st_mtime_ns == before
    assert [r["status"] for r in again["rows"]] == ["done", "done", "skipped"]
    assert again["rows"][0]["clean"] == summary["rows"][0]["clean"]


@needs_shared_cifar
def test_compare_suites_merges_defences(tmp_path):
    from clipure_lit.reporting import compare_suites

    entries = "[{data: cifar10_jpeg_shared, templates: cifar10}]"
    for name, extra in (("a", []), ("b", ["clip.init_seed=1"])):
        args = [a for a in tiny_args(tmp_path / name, "data.num_samples=8") if not a.startswith("run_dir=")]
        eval_script.main(args + ["suite.name=one", f"suite.datasets={entries}", f"run_dir={tmp_path / name / 'suite'}", *extra])
    out = compare_suites([tmp_path / "a" / "suite", tmp_path / "b" / "suite"], tmp_path / "cmp")
    header = (out / "suite.md").read_text().splitlines()[0]
    assert header.count("clean") == 2 and (out / "suite.png").is_file()


@needs_shared_cifar
def test_suite_table_is_logged_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    entries = "[{data: cifar10_jpeg_shared, templates: cifar10}]"
    args = [a for a in tiny_args(tmp_path, "data.num_samples=8") if not a.startswith(("run_dir=", "logger="))]
    eval_script.main(args + ["logger=wandb", "suite.name=one", f"suite.datasets={entries}", f"run_dir={tmp_path / 'suite'}"])
    suite_runs = list((tmp_path / "suite" / "wandb").glob("offline-run-*"))
    dataset_runs = list((tmp_path / "suite" / "cifar10_jpeg_shared" / "wandb").glob("offline-run-*"))
    assert len(suite_runs) == 1 and len(dataset_runs) == 1  # the suite table, and the dataset's own run


@needs_shared_cifar
def test_suite_of_defences_prints_each_attack_and_a_sentence(tmp_path, capsys):
    args = [a for a in tiny_args(tmp_path, "data.num_samples=8") if not a.startswith("run_dir=")]
    summary = eval_script.main(args + ["suite=demo", "suite.only=[undefended,clipure_cos_as_released]", "attack.n_iter=2",
                                       "trainer.num_threads=1", f"run_dir={tmp_path / 'demo'}"])
    assert summary["compare"] == "defences" and [r["dataset"] for r in summary["rows"]] == ["undefended", "clipure_cos_as_released"]
    out = capsys.readouterr().out
    assert "=== clipure_cos_as_released ===" in out and "aa_clipure@bpda_identity" in out
    assert "Undefended CLIP:" in out and "masked" in out  # the released gradient of CLIPure-Cos is flagged
    cos = json.loads((tmp_path / "demo" / "clipure_cos_as_released" / "results.json").read_text())
    assert cos["flags"]["weak_grad/aa_clipure@purifier"] == 1.0


def test_explain_calls_masking_what_it_is():
    from clipure_lit.reporting import explain

    entry = lambda acc: {"acc": acc, "ci95": [0, 1], "correct": 0, "total": 10}  # noqa: E731
    results = {"clean": entry(0.9), "purifiers": [{"class": "ClipureCos"}],
               "robust": {"aa@purifier": entry(0.85), "aa@full": entry(0.05), "worst_case": entry(0.05)},
               "flags": {"weak_grad/aa@purifier": 1.0}}
    text = explain(results, undefended_robust=0.02)
    assert "gradient masking, not robustness" in text and "85.0%" in text and "5.0%" in text and "+3.0 points" in text


def test_explain_tells_a_robust_backbone_from_the_undefended_baseline():
    from clipure_lit.reporting import explain

    entry = lambda acc: {"acc": acc, "ci95": [0, 1], "correct": 0, "total": 10}  # noqa: E731
    plain = [{"class": "IdentityPurifier"}, {"class": "IdentityPurifier"}]
    baseline = {"clean": entry(0.7), "purifiers": plain, "robust": {"aa": entry(0.0), "worst_case": entry(0.0)}, "flags": {}}
    robust = {"clean": entry(0.6), "purifiers": plain, "robust": {"aa": entry(0.3), "square": entry(0.4), "worst_case": entry(0.3)},
              "flags": {}}
    assert explain(baseline).startswith("Undefended CLIP: 0.0% robust")
    text = explain(robust, undefended_robust=0.0)
    assert "Undefended" not in text and "nothing can mask the gradient" in text and "30.0%" in text and "+30.0 points" in text
