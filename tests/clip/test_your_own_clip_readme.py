"""The README's "Your own CLIP" commands run as written on the shipped small CLIP (in-process, from the repository
root; only the run folder and the embedding folder are redirected into the test's folder), and the three paths
agree: the same model named, loaded from its files with a custom tokenizer, and on precomputed embeddings gives the
same predictions."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex

import pytest

import eval as eval_script

from conftest import PROJECT_ROOT

pytestmark = pytest.mark.e2e  # runs eval.py's main


def readme_commands() -> list[list[str]]:
    """The offline commands of the README section (lines that download weights are left out)."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Your own CLIP\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and "downloads" not in line:
                commands.append(shlex.split(line, comments=True))
    return commands


def test_readme_commands_work_as_written_and_agree(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    spec = importlib.util.spec_from_file_location("export_text_embeddings", PROJECT_ROOT / "scripts" / "export_text_embeddings.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    commands = readme_commands()
    assert [c[1] for c in commands] == ["eval.py", "eval.py", "scripts/export_text_embeddings.py", "eval.py"]
    predictions, hashes = [], []
    for i, command in enumerate(commands):
        args = [a.replace("runs/my_embeddings", str(tmp_path / "emb")) for a in command[2:]]
        common = [f"prompts.cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false"]
        if command[1] == "eval.py":
            run = tmp_path / f"run{i}"
            eval_script.main([*args, *common, f"run_dir={run}"])
            predictions.append((run / "samples.csv").read_text())
            hashes.append(json.loads((run / "environment.json").read_text())["checkpoints"])
        else:
            export.main([*args, *common])
    assert predictions[0] == predictions[1] == predictions[2]  # named, own files + tokenizer, precomputed: same model
    assert hashes[1]["clip.tokenizer"]["path"].endswith("docs/examples/clip_tokenizer.py")
    assert {"prompts.class_embeddings", "prompts.blank_embedding"} <= set(hashes[2])
    assert hashes[0]["clip.model_config"] == hashes[1]["clip.model_config"]


def test_lightning_checkpoint_needs_its_extra_entries_named(tmp_path, capsys, monkeypatch):
    """A Lightning checkpoint of the shipped CLIP: refused with exit 2 and one paragraph naming the extra entry and
    the detected prefix; loaded with clip.ignore_keys, which config.yaml records, with the shipped model's predictions."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.chdir(PROJECT_ROOT)
    state = load_file(str(PROJECT_ROOT / "checkpoints" / "vit_c10_s4_clip.safetensors"))
    ckpt = tmp_path / "lit.ckpt"
    torch.save({"epoch": 1, "state_dict": {**{f"model.backbone.model.{k}": v for k, v in state.items()},
                                           "model.head.class_embeddings": torch.zeros(128, 10)}}, ckpt)
    base = ["data.num_samples=8", f"prompts.cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false"]
    with pytest.raises(SystemExit) as exc:
        eval_script.main([*base, f"clip.pretrained={ckpt}", f"run_dir={tmp_path / 'refused'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert "model.head.class_embeddings" in err and "prefix 'model.backbone.model.'" in err
    eval_script.main([*base, f"clip.pretrained={ckpt}", "clip.ignore_keys=[model.head.*]", f"run_dir={tmp_path / 'lit'}"])
    eval_script.main([*base, f"run_dir={tmp_path / 'shipped'}"])
    assert "- model.head.*" in (tmp_path / "lit" / "config.yaml").read_text()
    assert (tmp_path / "lit" / "samples.csv").read_text() == (tmp_path / "shipped" / "samples.csv").read_text()
