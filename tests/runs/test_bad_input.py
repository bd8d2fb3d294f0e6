"""Hostile input and faults: each gets exit status 2 and one paragraph naming the key or file and the fix, no
traceback, and leaves no ``results.json`` behind; nothing is silently wrong.

The cases run ``eval.main`` in-process on the tiny CLIP and the shipped CIFAR-10 sample (no ../shared needed).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

import eval as eval_script
from clipure_lit.clip.backbone import load_backbone
from clipure_lit.clip.prompts import get_templates
from clipure_lit.clip.zeroshot import TextEmbeddingCache, build_head
from clipure_lit.config.loader import load_config
from clipure_lit.errors import ConfigError
from clipure_lit.run_folder import checkpoint_hashes, exclusive_run_folder

from conftest import PROJECT_ROOT

pytestmark = pytest.mark.e2e  # runs eval.py's main


def args(tmp_path, *extra: str) -> list[str]:
    return ["experiment=tiny", "data=cifar10_sample", "data.num_samples=4", "data.batch_size=4", "logger=none",
            f"run_dir={tmp_path / 'run'}", f"prompts.cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false",
            *extra]


def refused(tmp_path, capsys, *extra: str) -> str:
    """Run eval.main with ``extra``; assert exit 2, one ``error:`` paragraph, no traceback, no results.json."""
    with pytest.raises(SystemExit) as exc:
        eval_script.main(args(tmp_path, *extra))
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert not (tmp_path / "run" / "results.json").exists()
    return err


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """The tiny CLIP's weights saved as a plain state dict, and the model they came from."""
    backbone, _ = load_backbone(load_config(["experiment=tiny"]).clip)
    path = tmp_path / "tiny.pt"
    torch.save(backbone.model.state_dict(), path)
    return path, backbone


def test_devices_zero_and_missing_gpu_are_refused_before_any_model(tmp_path, capsys):
    assert "trainer.devices=0" in refused(tmp_path, capsys, "trainer.devices=0")
    if not torch.cuda.is_available():
        assert "trainer.accelerator=gpu" in refused(tmp_path, capsys, "trainer=gpu")


def test_wandb_online_without_credentials_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    err = refused(tmp_path, capsys, "logger=wandb", "logger.mode=online")
    assert "logger.mode=online" in err and "wandb login" in err


def test_templates_without_placeholder_malformed_json_and_brace_style(tmp_path, capsys):
    no_class = tmp_path / "no_class.json"
    no_class.write_text(json.dumps(["a photo.", "a picture."]))
    err = refused(tmp_path, capsys, f"prompts.class_templates={no_class}")
    assert "prompts.class_templates" in err and "same prompt" in err
    broken = tmp_path / "broken.json"
    broken.write_text('["a photo of a {c}.",')
    assert "not valid JSON" in refused(tmp_path, capsys, f"prompts.class_templates={broken}")
    # The positional style is the same template as {c}: same prompts, same cached embeddings.
    braces = tmp_path / "braces.json"
    braces.write_text(json.dumps(["a photo of a {}.", "a {} in {{braces}}."]))
    assert get_templates(str(braces)) == ["a photo of a {c}.", "a {c} in {{braces}}."]


def test_unreadable_clip_checkpoints_name_the_file_and_keys(tmp_path, capsys, tiny_checkpoint):
    csv_file = tmp_path / "table.csv"
    csv_file.write_text("a,b\n1,2\n")
    err = refused(tmp_path, capsys, "clip=tiny_random", f"clip.pretrained={csv_file}")
    assert f"clip.pretrained='{csv_file}'" in err and "weights_only=True" in err
    path, backbone = tiny_checkpoint
    extra = tmp_path / "extra.pt"
    torch.save({**backbone.model.state_dict(), "vocab_table": torch.zeros(3)}, extra)
    err = refused(tmp_path, capsys, "clip=tiny_random", f"clip.pretrained={extra}")
    assert "vocab_table" in err and "Unexpected key" in err


def test_truncated_prior_checkpoint(tmp_path, capsys):
    truncated = tmp_path / "prior.safetensors"
    truncated.write_bytes((PROJECT_ROOT / "checkpoints" / "vit_c10_s4_prior.safetensors").read_bytes()[:5000])
    err = refused(tmp_path, capsys, "purifier=clipure_diff_tiny", f"purifier.clipure_diff.prior.checkpoint={truncated}")
    assert "purifier.clipure_diff.prior.checkpoint" in err and "truncated" in err


def test_yaml_syntax_error_says_how_to_fix_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  num_samples: [1, 2\n")
    err = refused(tmp_path, capsys, str(bad))
    assert str(bad) in err and "Fix the YAML syntax" in err


def test_unwritable_run_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args_ = [a for a in args(tmp_path) if not a.startswith("run_dir=")] + [f"run_dir={blocker / 'run'}"]
    with pytest.raises(SystemExit) as exc:
        eval_script.main(args_)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "run_dir" in err and "Traceback" not in err


def test_second_process_on_a_run_dir_is_refused_and_a_crash_releases_the_lock(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with exclusive_run_folder(run):  # a run in progress in this folder
        err = refused(tmp_path, capsys)
        assert "in use by another process" in err
    # A process holding the lock is killed: the lock goes with it.
    code = ("import sys, time; from pathlib import Path; from clipure_lit.run_folder import exclusive_run_folder\n"
            f"with exclusive_run_folder(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match="in use by another process"):
        with exclusive_run_folder(run):
            pass
    holder.kill()
    holder.wait(timeout=30)
    deadline = time.time() + 10
    while True:
        try:
            with exclusive_run_folder(run):
                break
        except ConfigError:
            assert time.time() < deadline
            time.sleep(0.1)


def test_text_cache_entries_are_verified(tmp_path, caplog, tiny_checkpoint):
    _, backbone = tiny_checkpoint
    import open_clip

    tokenizer = open_clip.get_tokenizer(backbone.name.split("/")[0])
    names, templates = ["cat", "dog", "ship"], ["a photo of a {c}."]
    folder = tmp_path / "text_cache"
    truth = build_head(backbone, tokenizer, names, templates, TextEmbeddingCache(folder)).class_embeddings.clone()
    (entry_path,) = folder.glob("*.pt")
    entry = torch.load(entry_path, weights_only=True)

    def tamper(stored=None, **changes):
        torch.save({**entry, **changes} if stored is None else stored, entry_path)
        cache = TextEmbeddingCache(folder)
        with caplog.at_level(logging.WARNING):
            got = build_head(backbone, tokenizer, names, templates, cache).class_embeddings
        assert cache.misses == 1 and torch.equal(got, truth)
        return caplog.text

    flipped = entry["value"].clone()
    flipped.view(torch.int32)[0, 0] ^= 1 << 30
    assert "checksum" in tamper(value=flipped)
    rotated = entry["value"].roll(1, dims=1)
    assert "checksum" in tamper(value=rotated)
    wrong = torch.zeros(entry["value"].shape[0], 2)
    assert "shape" in tamper(value=wrong, shape=list(wrong.shape), sha256=TextEmbeddingCache.checksum(wrong))
    assert "not a verified cache entry" in tamper(entry["value"])  # a bare tensor, as older versions stored
    cache = TextEmbeddingCache(folder)  # the rewritten entry is used again
    build_head(backbone, tokenizer, names, templates, cache)
    assert cache.hits == 1


def test_shipped_checkpoint_hashes_are_checked(tmp_path, caplog, monkeypatch):
    import clipure_lit.run_folder as run_folder

    cfg = load_config([])  # the shipped small CLIP
    assert checkpoint_hashes(cfg)["clip.pretrained"]["matches_shipped"] is True
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"modified")
    (folder / "SHA256SUMS").write_text("0" * 64 + "  model.safetensors\n")
    monkeypatch.setattr(run_folder, "SHIPPED_DIR", folder)
    monkeypatch.setattr(run_folder, "SHIPPED_SUMS", folder / "SHA256SUMS")
    cfg.clip.pretrained = str(folder / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        hashes = checkpoint_hashes(cfg)
    assert hashes["clip.pretrained"]["matches_shipped"] is False and "is a shipped checkpoint" in caplog.text


def test_normalisation_statistics_are_explicit_and_recorded(tmp_path, caplog, tiny_checkpoint):
    config = json.loads((PROJECT_ROOT / "conf" / "model_configs" / "Tiny-ViT-32px.json").read_text())
    config["preprocess_cfg"] = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    own = tmp_path / "Tiny-ViT-32px.json"
    own.write_text(json.dumps(config))
    path, _ = tiny_checkpoint
    cfg = load_config(["experiment=tiny", f"clip.model_config={own}", f"clip.pretrained={path}"])
    assert list(cfg.clip.mean) == [0.49, 0.48, 0.45] and list(cfg.clip.std) == [0.25, 0.24, 0.26]  # in config.yaml
    backbone, _ = load_backbone(cfg.clip)  # preprocess_cfg is not passed to the model class
    torch.testing.assert_close(backbone.mean.flatten(), torch.tensor([0.49, 0.48, 0.45]))
    with caplog.at_level(logging.WARNING):
        plain = load_config(["experiment=tiny", f"clip.pretrained={path}"])
    assert "no known normalisation statistics" in caplog.text and plain.clip.mean[0] == pytest.approx(0.48145466)
    assert load_config([]).clip.mean[0] == pytest.approx(0.48145466)  # the shipped CLIP states its own
