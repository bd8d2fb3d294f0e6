"""The batch-size warning of a batch-coupled purifier (CLIPure-Cos with norm_scope=batch) fires when the evaluation's
data batches differ from ``purifier.clipure_cos.batch_size``, and not for the smaller batches that the masking checks
(one sample at a time) and AutoAttack (the points still robust) pass through the purifier. A config asking for such
batches is refused when composed (tests/config/test_batch_coupling.py); the warning is the backstop for what a config
cannot tell (the process count of trainer.devices=-1) and for classifiers built in Python, as here."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clipure_lit.attacks.presets import attack_config, resolve_attacks
from clipure_lit.callbacks.robust_eval import RobustEvalCallback
from clipure_lit.models.classifier import PurifiedZeroShotClassifier
from clipure_lit.models.lit_module import ZeroShotLitModule
from clipure_lit.purifiers.clipure_cos import ClipureCos, ClipureCosCfg

WARNING = "normalises its step over the whole batch"


class Encoder(nn.Module):
    """Unit embeddings ``[B, 16]`` of 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))

    def encode_image(self, x):
        return F.normalize(self.net(x), dim=-1)


def _evaluate(num_samples: int, batch_size: int, caplog, tmp_path) -> list[str]:
    torch.manual_seed(0)
    latent = ClipureCos(torch.randn(16), ClipureCosCfg(num_steps=2, batch_size=2))  # norm_scope=batch, as released
    classifier = PurifiedZeroShotClassifier(Encoder(), nn.Linear(16, 10, bias=False), latent=latent).eval()
    x = torch.rand(num_samples, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = classifier(x).argmax(-1)  # every sample correct: AutoAttack attacks them, in shrinking sub-batches
    y[0] = (y[0] + 1) % 10  # except the first: the attack then sees a batch of one point
    loader = DataLoader(TensorDataset(x, y, torch.arange(num_samples)), batch_size=batch_size)
    callback = RobustEvalCallback(resolve_attacks(attack_config(run=["apgd_ce@full"], n_iter=2, eps=8)))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_model_summary=False, enable_progress_bar=False,
                         enable_checkpointing=False, inference_mode=False, default_root_dir=str(tmp_path), callbacks=[callback])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipure_lit"):
        trainer.test(ZeroShotLitModule(classifier), loader, verbose=False)
    return [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]


def test_no_warning_at_the_configured_batch_size_although_checks_and_attacks_use_smaller_batches(caplog, tmp_path):
    assert _evaluate(4, 2, caplog, tmp_path) == []


def test_warns_once_at_another_data_batch_size_and_names_the_fix(caplog, tmp_path):
    (message,) = _evaluate(8, 4, caplog, tmp_path)
    assert "evaluated at batch size 4" in message and "Fix: set data.batch_size=2" in message


def test_a_partial_last_batch_is_named_as_such(caplog, tmp_path):
    (message,) = _evaluate(5, 2, caplog, tmp_path)
    assert "the last batch holds 1 sample(s)" in message and "data.num_samples as a multiple of 2" in message
    assert "data.batch_size=2" not in message


@pytest.mark.parametrize("scope", ["sample"])
def test_no_warning_for_a_per_sample_norm(scope):
    purifier = ClipureCos(torch.randn(16), ClipureCosCfg(batch_size=2, norm_scope=scope))
    purifier.check_evaluation_batch(7, 7)
    assert not purifier.batch_warning.warned
