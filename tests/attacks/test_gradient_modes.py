"""Gradient modes: straight-through BPDA, grad-mode overrides, EOT with reproducible purifier randomness, and
the CLIPure-Cos case: `full` and `bpda_identity` give real gradients where `as_released` gives ~0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipure_lit.attacks.adapters import classifier_from_model
from clipure_lit.attacks.checks import input_grad_norms, logits_of
from clipure_lit.attacks.execute import ViewCache, run_attack
from clipure_lit.attacks.gradient_modes import StraightThrough, float32_copy, is_full_precision, make_view
from clipure_lit.attacks.presets import attack_config, resolve_attacks
from clipure_lit.attacks.config import AttackGradMode, AttackPrecision
from clipure_lit.purifiers.base import Purifier, Space


class Quantise(Purifier):
    """Non-differentiable pixel purifier: round to 4 levels (autograd gives a zero gradient)."""

    space = Space.pixel
    differentiable = False

    def forward(self, x, *, generator=None):
        return torch.round(x * 3) / 3


class Noise(Purifier):
    """Stochastic pixel purifier drawing only from the generator it is given; records its draws."""

    space = Space.pixel
    stochastic = True

    def __init__(self):
        super().__init__()
        self.draws = []

    def forward(self, x, *, generator=None):
        noise = torch.randn(x.shape, generator=generator) * 0.05
        self.draws.append(float(noise.sum()))
        return (x + noise).clamp(0, 1)


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def _spec(token, **values):
    (spec,) = resolve_attacks(attack_config(run=[token], **values))
    return spec


def test_straight_through_forward_is_purified_backward_is_identity():
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    out = StraightThrough(Quantise())(x)
    assert torch.equal(out, Quantise()(x))
    (grad,) = torch.autograd.grad((out * 2).sum(), x)
    assert torch.equal(grad, torch.full_like(x, 2.0))


def test_bpda_turns_a_zero_gradient_into_the_unpurified_one():
    classifier = classifier_from_model(_net(), pixel=Quantise())
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    default = make_view(classifier, AttackGradMode.purifier, AttackPrecision.fp32)
    bpda = make_view(classifier, AttackGradMode.bpda_identity, AttackPrecision.fp32)
    assert default is classifier and bpda.backbone is classifier.backbone  # views share weights
    assert torch.equal(logits_of(bpda, x), logits_of(classifier, x))  # same forward
    assert float(input_grad_norms(default, x, y).max()) == 0.0
    assert float(input_grad_norms(bpda, x, y).min()) > 0.0


def test_eot_draws_fresh_randomness_per_gradient_and_is_reproducible():
    purifier = Noise()
    classifier = classifier_from_model(_net(), pixel=purifier)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = classifier(x).argmax(-1)
    spec = _spec("apgd_ce@eot", eot_samples=4, n_iter=3, eps=8)
    assert spec.eot_samples == 4
    views = ViewCache(classifier)
    purifier.draws.clear()
    first = run_attack(spec, classifier, views, x, y, torch.arange(6))
    draws = list(purifier.draws)
    purifier.draws.clear()
    second = run_attack(spec, classifier, views, x, y, torch.arange(6))
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.adv_pred, second.adv_pred)
    assert draws == purifier.draws  # the same stream, seeded from (seed, attack, ids)
    assert len(set(draws)) > 4  # every forward (EOT sample) saw a new draw


def test_float32_copy_of_a_half_backbone():
    half = nn.Linear(4, 4).half()
    half.input_dtype = torch.float16
    assert not is_full_precision(half)
    copy = float32_copy(half)
    assert is_full_precision(copy) and copy.input_dtype == torch.float32 and half.weight.dtype == torch.float16


# ----------------------------------------------------------------------------------------------- CLIPure-Cos
@pytest.fixture(scope="module")
def cos_classifier(tmp_path_factory):
    from clipure_lit.config.loader import load_config
    from clipure_lit.evaluation import build_classifier

    cache = tmp_path_factory.getbasetemp() / "clip_text_cache"  # shared by the session's tiny classifiers
    cfg = load_config(["experiment=tiny", "purifier=clipure_cos", "data.batch_size=2", f"prompts.cache_dir={cache}"])
    return build_classifier(cfg, CIFAR10).eval()


def test_full_and_bpda_give_gradients_through_clipure_cos_where_as_released_does_not(cos_classifier):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    views = {m: make_view(cos_classifier, m, AttackPrecision.fp32) for m in AttackGradMode}
    plain = make_view(cos_classifier, AttackGradMode.purifier, AttackPrecision.fp32, undefended=True)
    reference = input_grad_norms(plain, x, y)
    ratio = {m: float((input_grad_norms(v, x, y) / reference).median()) for m, v in views.items()}
    assert ratio[AttackGradMode.purifier] < 1e-3 and ratio[AttackGradMode.as_released] < 1e-3  # masked
    assert ratio[AttackGradMode.full] > 0.05 and ratio[AttackGradMode.bpda_identity] > 0.05
    assert ratio[AttackGradMode.eot] == pytest.approx(ratio[AttackGradMode.full])
    for mode, view in views.items():  # modes change only the backward pass
        assert torch.allclose(logits_of(view, x), logits_of(cos_classifier, x), atol=1e-5), mode
    assert cos_classifier.latent.cfg.grad_mode.value == "as_released"  # the defended model is untouched
