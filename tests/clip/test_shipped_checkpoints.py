"""The weights that ship in checkpoints/: each one listed in checkpoints/SHA256SUMS with its true hash, small enough to
ship (at most 10 MB), and each one named by a shipped config; every shipped config that names a file in
checkpoints/ names one that exists."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "checkpoints"


def _sums() -> dict[str, str]:
    lines = (CHECKPOINTS / "SHA256SUMS").read_text().splitlines()
    return {name.strip().lstrip("*"): digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def test_every_shipped_weight_file_is_listed_with_its_true_hash_and_small():
    files = sorted(p.name for p in CHECKPOINTS.glob("*.safetensors"))
    sums = _sums()
    assert files and sorted(sums) == files
    for name in files:
        data = (CHECKPOINTS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sums[name], name
        assert len(data) <= 10 * 1024 * 1024, name


def test_shipped_configs_name_existing_checkpoints_and_every_checkpoint_is_used():
    named = set()
    for path in list((ROOT / "conf").rglob("*.yaml")):
        text = path.read_text()
        for token in text.split():
            if token.startswith("checkpoints/") and token.endswith(".safetensors"):
                named.add(token)
                assert (ROOT / token).is_file(), f"{path.relative_to(ROOT)} names {token}, which does not exist"
    assert {f"checkpoints/{p.name}" for p in CHECKPOINTS.glob("*.safetensors")} <= named
    assert yaml.safe_load((ROOT / "conf/clip/cifar10_small_tecoa.yaml").read_text())["pretrained"] == \
        "checkpoints/vit_c10_s4_tecoa.safetensors"
