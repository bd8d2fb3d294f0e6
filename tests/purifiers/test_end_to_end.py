"""Purifier keys compose and validate from the real config files; CLIPure-Cos and CLIPure-Diff run end to end
through ``eval.main``. (The per-purifier contract is ``test_contract.py``, over the whole registry.)"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.purifiers import list_purifiers

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10" / "test"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Every test of this module runs single-threaded (see conftest.one_thread_module)."""


def test_registry_lists_the_latent_purifiers():
    assert {"identity", "clipure_cos", "clipure_diff"} <= set(list_purifiers("latent"))
    assert "clipure_cos" not in list_purifiers("pixel")


def test_composed_config_holds_only_the_chosen_purifiers_sections_and_pickles():
    from clipure_lit.config.loader import load_config

    cfg = load_config(["experiment=tiny", "purifier=clipure_cos_plus_jpeg", "purifier.clipure_cos.step_size=10", "data.batch_size=2"])
    assert set(cfg.purifier.keys()) == {"latent", "pixel", "seed", "clipure_cos", "jpeg"}
    assert cfg.purifier.clipure_cos.step_size == 10.0
    assert pickle.loads(pickle.dumps(cfg)).purifier.clipure_cos.step_size == 10.0  # DDP-spawned processes get it


@pytest.mark.parametrize("argv,match", [
    # A key of a purifier the run does not use changes nothing: refused (a sweep over it gave identical runs).
    (["purifier=clipure_pixel", "purifier.clipure_cos.step_size=10"], r"'purifier.clipure_cos'.*do not read it"),
    (["purifier=none", "purifier.clipure_pixel.step_size=10"], r"purifier=clipure_pixel or purifier.pixel=clipure_pixel"),
    # Former flat keys name their new home.
    (["purifier=clipure_cos", "purifier.step_size=10"], r"has moved.*purifier.clipure_cos.step_size"),
    (["purifier=clipure_diff_tiny", "purifier.diff.t_min=3"], r"has moved.*purifier.clipure_diff.t_min"),
    # CLIPure-Cos has no step checkpointing: the key does not exist for it.
    (["purifier=clipure_cos", "purifier.clipure_cos.gradient_checkpointing=false"], r"Unknown config key"),
])
def test_keys_no_chosen_purifier_reads_are_errors(argv, match):
    from clipure_lit.config.loader import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(["experiment=tiny", *argv])


def test_validation_of_purifier_keys():
    from clipure_lit.config.loader import load_config

    base = ["experiment=tiny", "purifier=clipure_cos", "data.batch_size=2"]
    cfg = load_config(base)
    assert cfg.purifier.latent == "clipure_cos" and cfg.purifier.clipure_cos.step_size == 30.0 and cfg.purifier.clipure_cos.batch_size == 2
    assert load_config(base + ["purifier=clipure_cos_full"]).purifier.clipure_cos.grad_mode.value == "full"
    with pytest.raises(ConfigError, match="n_noise=0"):
        load_config(["experiment=tiny", "purifier=clipure_diff_tiny", "purifier.clipure_diff.n_noise=0"])
    with pytest.raises(ConfigError, match="t_max=1000"):
        load_config(["experiment=tiny", "purifier=clipure_diff_tiny", "purifier.clipure_diff.t_max=1000"])
    with pytest.raises(ConfigError, match="Invalid value for config key 'purifier.clipure_cos.grad_mode'"):
        load_config(base + ["purifier.clipure_cos.grad_mode=detached"])
    # The released Diff config is refused without its checkpoint (a local file), and composes without the file
    # checks; building it then reports the missing file.
    from functools import partial

    from clipure_lit.config.validate import validate_config

    with pytest.raises(DataNotFoundError, match="prior_aes_finetune.pth"):
        load_config(["experiment=tiny", "purifier=clipure_diff", "data.batch_size=2"])
    released = load_config(["experiment=tiny", "purifier=clipure_diff", "data.batch_size=2"],
                           validate=partial(validate_config, files=False)).purifier.clipure_diff.prior
    assert released.dim == 768 and released.checkpoint.endswith("vit-l-14/prior_aes_finetune.pth")
    from clipure_lit.purifiers.prior import load_prior

    with pytest.raises(DataNotFoundError, match="prior_aes_finetune.pth' not found"):
        load_prior(released)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared CIFAR-10 JPEGs not found at {SHARED_DATA}")
@pytest.mark.parametrize("purifier", ["clipure_cos", "clipure_diff_tiny"])
def test_eval_end_to_end(purifier, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("clipure_eval_script", REPO / "eval.py")
    eval_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_script)
    monkeypatch.chdir(REPO)  # conf/data/cifar10_jpeg_shared.yaml points to ../shared/data
    metrics = eval_script.main(["experiment=tiny", f"purifier={purifier}", "logger=none", f"run_dir={tmp_path / 'run'}",
                                f"prompts.cache_dir={tmp_path / 'cache'}", "data.num_samples=16",
                                "data.batch_size=2" if purifier == "clipure_cos" else "data.batch_size=8",
                                "trainer.enable_progress_bar=false"])
    assert metrics["num_samples"] == 16 and 0.0 <= metrics["clean"]["acc"] <= 1.0
    described = {d["class"]: d for d in metrics["purifiers"]}
    expected = "ClipureCos" if purifier == "clipure_cos" else "ClipureDiff"
    assert described[expected]["num_steps"] == 10 and described[expected]["grad_mode"] == "as_released"
    assert (tmp_path / "run" / "results.json").is_file()
