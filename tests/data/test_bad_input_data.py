"""Hostile input data: each case is refused at ``setup`` with the file or key that fixes it, before any model is
built. Every image folder is written here, so the tests need no downloaded data."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from clipure_lit.data.config import DataCfg, SubsetMode
from clipure_lit.data.datamodule import ZeroShotDataModule
from clipure_lit.errors import ConfigError


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size: int = 32) -> Path:
    """``root/<class>/<i>.png``: ``per_class`` random RGB images of ``size`` x ``size`` per class."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def data_cfg(root: Path, *overrides: str):
    """A typed ``data`` section for an image folder at ``root`` with ``data.key=value`` overrides, parsed as the
    config loader parses them (the end-to-end test below goes through the loader itself)."""
    base = OmegaConf.structured(DataCfg(name="image_folder", root=str(root), subset=SubsetMode.first))
    return OmegaConf.merge(base, OmegaConf.from_dotlist([o.removeprefix("data.") for o in overrides]))


def setup_module_for(root: Path, *overrides: str) -> ZeroShotDataModule:
    dm = ZeroShotDataModule(data_cfg(root, *overrides))
    dm.setup("test")
    return dm


def test_num_samples_larger_than_the_dataset_is_refused_with_both_numbers(tmp_path):
    root = make_folder(tmp_path / "imgs")  # 6 images
    with pytest.raises(ConfigError) as info:
        setup_module_for(root, "data.num_samples=7")
    message = str(info.value)
    assert "data.num_samples=7" in message and "(6)" in message
    assert "data.num_samples=null" in message and "<= 6" in message
    assert setup_module_for(root, "data.num_samples=6").num_samples == 6  # exactly the dataset's size is fine
    assert setup_module_for(root, "data.num_samples=null").num_samples == 6


def _text_as_jpg(path: Path) -> None:
    path.write_text("not an image\n")


def _truncated(path: Path, fmt: str) -> None:
    """A real 32x32 image cut in half: its header still opens."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "text_named_jpg": ("x.jpg", _text_as_jpg),
    "truncated_png": ("x.png", lambda p: _truncated(p, "PNG")),
    "truncated_jpeg": ("x.jpg", lambda p: _truncated(p, "JPEG")),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_image_is_refused_at_setup_with_its_path(tmp_path, case):
    from clipure_lit.data.datasets import ImageReadError

    root = make_folder(tmp_path / "imgs")
    name, write = BAD_FILES[case]
    bad = root / "cat" / f"0_{name}"  # sorts among the first selected files
    write(bad)
    with pytest.raises(ImageReadError) as info:
        setup_module_for(root, "data.num_samples=null")
    message = str(info.value)
    assert str(bad) in message and "data.on_bad_image=skip" in message and "\n" not in message


def test_skip_leaves_unreadable_images_out_with_one_warning_and_counts_the_rest(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs")  # 6 images
    text, cut = root / "cat" / "0_text.jpg", root / "dog" / "0_cut.png"
    _text_as_jpg(text)
    _truncated(cut, "PNG")
    with caplog.at_level("WARNING", logger="clipure_lit.data.datasets"):
        dm = setup_module_for(root, "data.num_samples=null", "data.on_bad_image=skip")
    assert dm.num_samples == 6 and sorted(dm.skipped_files) == sorted([text, cut])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(text) in warnings[0] and str(cut) in warnings[0]
    assert all(dm.dataset.files[i] not in (text, cut) for i in dm.sample_ids)
    assert sum(len(batch[0]) for batch in dm.test_dataloader()) == 6


def test_image_broken_after_setup_fails_in_a_worker_with_its_path_not_a_traceback(tmp_path):
    """A file damaged after the check at setup is only found by the DataLoader worker that decodes it."""
    from clipure_lit.data.datasets import ImageReadError

    root = make_folder(tmp_path / "imgs", per_class=2)
    dm = setup_module_for(root, "data.num_samples=null", "data.num_workers=1", "data.batch_size=2")
    victim = dm.dataset.files[dm.sample_ids[-1]]
    _text_as_jpg(victim)
    with pytest.raises(ImageReadError) as info:
        list(dm.test_dataloader())
    message = str(info.value)
    assert str(victim) in message and "Traceback" not in message and "\n" not in message


def test_odd_sized_image_at_native_size_names_the_file_both_sizes_and_the_key(tmp_path):
    root = make_folder(tmp_path / "imgs")
    odd = root / "dog" / "1.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(odd)
    with pytest.raises(ConfigError) as info:
        setup_module_for(root, "data.num_samples=null")
    message = str(info.value)
    assert str(odd) in message and "1x1" in message and "32x32" in message
    assert "data.image_size=<N>" in message and "data.image_size=32" in message
    dm = setup_module_for(root, "data.num_samples=null", "data.image_size=32", "data.batch_size=6")
    assert next(iter(dm.test_dataloader()))[0].shape == (6, 3, 32, 32)


RAMP16 = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))  # 32x32, full 16-bit range


def _png_rgb16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16_bit_images_are_scaled_by_their_depth_not_clipped(tmp_path):
    root = tmp_path / "imgs"
    (root / "grey").mkdir(parents=True)
    (root / "rgb").mkdir()
    Image.fromarray(RAMP16).save(root / "grey" / "ramp.png")  # mode I;16
    assert Image.open(root / "grey" / "ramp.png").mode == "I;16"
    _png_rgb16(root / "rgb" / "ramp.png", np.stack([RAMP16] * 3, axis=-1))
    dm = setup_module_for(root, "data.num_samples=null")
    for sample_id in dm.sample_ids:
        x, _ = dm.dataset.load(sample_id)
        assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
        assert abs(float(x.mean()) - 0.5) < 1e-3  # convert("RGB") clipped the greyscale ramp to a mean of 0.98
        assert float(x[:, :, 0].max()) == 0.0 and float(x[:, :, -1].min()) == 1.0
    resized = setup_module_for(root, "data.num_samples=null", "data.image_size=16").dataset.load(0)[0]
    assert resized.shape == (3, 16, 16) and 0.0 <= float(resized.min()) and float(resized.max()) <= 1.0
    assert abs(float(resized.mean()) - 0.5) < 0.01


def test_16_bit_greyscale_modes_and_the_32_bit_range():
    from clipure_lit.data.datasets import to_tensor

    big_endian = Image.frombytes("I;16B", (32, 32), RAMP16.astype(">u2").tobytes())
    for image in (big_endian, Image.fromarray(RAMP16.astype(np.int32))):  # I;16B and I
        x = to_tensor(image, None)
        assert x.shape == (3, 32, 32) and float(x[:, :, 0].max()) == 0.0 and float(x[:, :, -1].min()) == 1.0
    with pytest.raises(ValueError, match="65535"):
        to_tensor(Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)), None)


def test_eval_refuses_an_unreadable_image_with_exit_2_before_building_the_model(tmp_path, capsys, monkeypatch):
    import eval as eval_script
    from clipure_lit import evaluation

    from conftest import tiny_args

    def model_built(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(evaluation, "build_classifier", model_built)
    root = make_folder(tmp_path / "imgs")
    bad = root / "dog" / "0_notes.jpg"
    _text_as_jpg(bad)
    with pytest.raises(SystemExit) as info:
        eval_script.main(tiny_args(tmp_path, f"data.root={root}", "data.num_samples=null"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "data.on_bad_image=skip" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()
