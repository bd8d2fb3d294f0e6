"""Gradient-masking checks: they fire for CLIPure-Cos as released and stay quiet for the identity purifier."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from clipure_lit.attacks.adapters import classifier_from_model
from clipure_lit.attacks.checks import final_checks, first_batch_checks
from clipure_lit.attacks.execute import ViewCache
from clipure_lit.attacks.presets import attack_config, resolve_attacks
from clipure_lit.purifiers.base import Purifier, Space

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MASKING = ("weak_grad", "zero_grad", "nondifferentiable_without_bpda", "random_without_eot", "purifier_near_identity")


def _specs(*tokens, **values):
    return resolve_attacks(attack_config(run=list(tokens), **values))


def _raised(findings):
    return {f.flag for f in findings if f.raised}


def _tiny(tmp_path_factory, *extra):
    from clipure_lit.config.loader import load_config
    from clipure_lit.evaluation import build_classifier

    # One text-embedding cache for the session: the zero-shot head and blank anchor are computed once.
    cache = tmp_path_factory.getbasetemp() / "clip_text_cache"
    cfg = load_config(["experiment=tiny", f"prompts.cache_dir={cache}", *extra])
    return build_classifier(cfg, CIFAR10).eval()


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return _tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def cos(tmp_path_factory):
    return _tiny(tmp_path_factory, "purifier=clipure_cos", "purifier.clipure_cos.norm_scope=sample")


def _batch():
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 10


def test_no_masking_flag_for_the_identity_purifier(identity):
    x, y = _batch()
    findings = first_batch_checks(identity, ViewCache(identity), _specs("aa_clipure", "square", "transfer_clip"), x, y)
    assert _raised(findings) == set()
    assert {f.flag for f in findings} >= {"purifier_near_identity", "batch_dependent", "weak_grad/aa_clipure"}


def test_clipure_cos_as_released_raises_masking_flags_with_the_fix(cos, caplog):
    from clipure_lit.callbacks.robust_eval import record

    x, y = _batch()
    specs = _specs("aa_clipure", "aa_clipure@full", "aa_clipure@bpda_identity")
    findings = first_batch_checks(cos, ViewCache(cos), specs, x, y)
    raised = _raised(findings)
    assert {"weak_grad/aa_clipure", "nondifferentiable_without_bpda/aa_clipure"} <= raised
    assert not any(f.endswith(("@full", "@bpda_identity")) for f in raised)  # the strong modes are not masked
    ratio = {f.flag: f.value for f in findings if f.flag.startswith("weak_grad/")}
    assert ratio["weak_grad/aa_clipure"] < 1e-3 < ratio["weak_grad/aa_clipure@full"]

    class Module:  # what record() needs from the LightningModule
        flags, checks, messages = {}, {}, {}

        def add_finding(self, flag, raised, value=None, message=""):
            self.flags[flag] = raised
            self.messages[flag] = message

    module = Module()
    with caplog.at_level(logging.WARNING, logger="clipure_lit.attacks.checks"):
        record(module, findings)
    text = caplog.text
    assert "weak_grad/aa_clipure" in text and "attack.grad_mode=full or bpda_identity" in text
    # The console gets one line per flag; the full message goes to the log file only (the summary prints it).
    console = [r.getMessage() for r in caplog.records if getattr(r, "console", True)]
    assert "masking flag raised: weak_grad/aa_clipure (explained in the summary)" in console
    assert not any("attack.grad_mode=full" in line for line in console)
    assert module.flags["weak_grad/aa_clipure"] and not module.flags["weak_grad/aa_clipure@full"]


def test_released_batch_coupling_is_flagged(tmp_path_factory):
    coupled = _tiny(tmp_path_factory, "purifier=clipure_cos", "data.batch_size=2")  # norm_scope=batch, as released
    x, y = _batch()
    findings = first_batch_checks(coupled, ViewCache(coupled), _specs("apgd_ce@full"), x, y)
    assert "batch_dependent" in _raised(findings)


class Noise(Purifier):
    space = Space.pixel
    stochastic = True

    def forward(self, x, *, generator=None):
        return (x + 0.05 * torch.randn(x.shape, generator=generator)).clamp(0, 1)


class Detached(nn.Module):
    """A model whose output does not depend on the input through autograd."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))

    def forward(self, x):
        return self.net(x.detach())


def test_random_without_eot_and_zero_gradients():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    noisy = classifier_from_model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)), pixel=Noise())
    raised = _raised(first_batch_checks(noisy, ViewCache(noisy), _specs("apgd_ce", "aa_clipure@eot"), x, y))
    assert "random_without_eot/apgd_ce" in raised and "random_without_eot/aa_clipure@eot" not in raised
    dead = classifier_from_model(Detached())
    assert "zero_grad/apgd_ce" in _raised(first_batch_checks(dead, ViewCache(dead), _specs("apgd_ce"), x, y))


class Saturated(nn.Module):
    """Logit scale 100 on a linear score: a bright image scores class 0 so far above the others that its softmax is
    exactly 1.0 in float32 (cross-entropy gradient exactly zero), a dark one scores every class alike."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10, bias=False))
        with torch.no_grad():
            self.net[1].weight.zero_()
            self.net[1].weight[0] = 0.01

    def forward(self, x):
        return 100 * self.net(x)


class DetachPixels(Purifier):
    space = Space.pixel

    def forward(self, x, *, generator=None):
        return x.detach()


def test_zero_grad_is_not_raised_for_a_saturated_softmax_of_an_undefended_model():
    from clipure_lit.attacks.checks import input_grad_norms

    x, y = torch.stack([torch.ones(3, 8, 8), torch.full((3, 8, 8), 0.1)]), torch.tensor([0, 0])
    plain = classifier_from_model(Saturated())
    assert float(plain(x[:1]).softmax(-1)[0, 0]) == 1.0
    assert input_grad_norms(plain, x, y)[0] == 0  # the situation: cross-entropy gradient exactly zero
    findings = first_batch_checks(plain, ViewCache(plain), _specs("apgd_ce"), x, y)
    assert "zero_grad/apgd_ce" not in _raised(findings)


def test_zero_grad_is_raised_when_the_logits_do_not_move_and_names_the_right_fix():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])

    def zero_grad(classifier):
        (found,) = [f for f in first_batch_checks(classifier, ViewCache(classifier), _specs("apgd_ce"), x, y)
                    if f.flag == "zero_grad/apgd_ce"]
        return found

    purified = zero_grad(classifier_from_model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)), pixel=DetachPixels()))
    assert purified.raised and "attack.grad_mode=full or bpda_identity" in purified.message
    model = zero_grad(classifier_from_model(Detached()))
    assert model.raised and "no purifier" in model.message and "attack.grad_mode=full" not in model.message


def _entry(correct, total=100):
    return {"acc": correct / total, "correct": correct, "total": total, "ci95": [0, 1]}


def test_end_of_run_checks():
    specs = _specs("aa_clipure", "square")
    near = {"clean": _entry(80), "robust": {"aa_clipure": _entry(78), "square": _entry(60), "worst_case": _entry(60)}}
    assert _raised(final_checks(near, specs)) == {"blackbox_beats_whitebox"}
    masked = {"clean": _entry(80), "robust": {"aa_clipure": _entry(78), "square": _entry(79), "worst_case": _entry(77)}}
    assert _raised(final_checks(masked, specs)) == {"robust_near_clean"}
    fine = {"clean": _entry(80), "robust": {"aa_clipure": _entry(20), "square": _entry(50), "worst_case": _entry(20)}}
    assert _raised(final_checks(fine, specs)) == set()
