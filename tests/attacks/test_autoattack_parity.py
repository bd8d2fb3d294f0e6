"""Validation against the real thing: the framework's AutoAttack callback, run in ``trainer.test`` on the real
pretrained CIFAR-10 ResNet-18 that pyautoattack ships (through the non-CLIP adapter), reports exactly what a plain
pyautoattack loop reports on the same real CIFAR-10 test images, seed and settings: same robust flag per sample.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import CIFAR_TEST, needs_shared_cifar, plain_autoattack

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

N_IMAGES, BATCH = 32, 16
SETTINGS = dict(eps=1.0, n_iter=4, n_restarts=1, n_target_classes=1)  # eps in 1/255


def _resnet():
    import pyautoattack
    from pyautoattack.examples.resnet import ResNet18

    path = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"
    if not path.is_file():
        pytest.skip(f"pyautoattack's example checkpoint not found at {path}")
    model = ResNet18()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _datamodule():
    from clipure_lit.data.config import DataCfg, SubsetMode
    from clipure_lit.data.datamodule import ZeroShotDataModule

    cfg = DataCfg(name="image_folder", root=str(CIFAR_TEST), num_samples=N_IMAGES, subset=SubsetMode.random,
                  subset_seed=0, batch_size=BATCH, download=False)
    return ZeroShotDataModule(cfg)


def _spec():
    from clipure_lit.attacks.presets import attack_config, resolve_attacks

    entry = {"n_restarts": SETTINGS["n_restarts"], "n_target_classes": SETTINGS["n_target_classes"]}
    cfg = attack_config(run=["aa_clipure"], eps=SETTINGS["eps"], n_iter=SETTINGS["n_iter"], entries={"aa_clipure": entry})
    (spec,) = resolve_attacks(cfg)
    return spec


def _plain_pyautoattack(model, datamodule) -> dict[int, bool]:
    """What a user would write with pyautoattack alone (same batches, seed and settings)."""
    robust = {}
    for x, y, ids in datamodule.test_dataloader():
        adversary = plain_autoattack(model, **SETTINGS)
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=BATCH)
        robust.update({int(i): bool(a == b) for i, a, b in zip(ids, y_adv, y)})
    return robust


@pytest.fixture
def one_thread():
    """1 thread: faster than 2 on a shared 2-core machine; the previous setting is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
@needs_shared_cifar
@pytest.mark.usefixtures("one_thread")
def test_callback_reports_exactly_what_plain_pyautoattack_reports(tmp_path):
    import pytorch_lightning as pl

    from clipure_lit.attacks.adapters import classifier_from_model
    from clipure_lit.callbacks.robust_eval import RobustEvalCallback
    from clipure_lit.models.lit_module import ZeroShotLitModule

    model, datamodule = _resnet(), _datamodule()
    module = ZeroShotLitModule(classifier_from_model(model))
    trainer = pl.Trainer(accelerator="cpu", devices=1, inference_mode=False, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                         callbacks=[RobustEvalCallback([_spec()], checks=False)])
    trainer.test(module, datamodule=datamodule, verbose=False)
    table = module.table
    ours = {int(i): bool(p == l) for i, p, l in zip(table.ids, table.columns["adv_pred/aa_clipure"], table.columns["label"])}

    reference = _plain_pyautoattack(model, datamodule)
    assert ours == reference  # the same robust flag for every sample id
    robust_acc = sum(reference.values()) / len(reference)
    assert module.summary["robust"]["aa_clipure"]["acc"] == robust_acc
    clean = module.summary["clean"]
    assert clean["total"] == N_IMAGES and clean["acc"] > 0.6  # a real, trained model on real images
    assert 0 < robust_acc < clean["acc"]  # the attack does something, and not everything
