"""The pyautoattack adapter: budgets and the derived APGD schedule, RNG protection, reproducibility, log digest."""

from __future__ import annotations

import logging

import torch
from torch import nn

from clipure_lit.attacks.autoattack import MessageDigest, build_autoattack, run_autoattack, set_apgd_iterations
from clipure_lit.attacks.presets import attack_config, resolve_attacks


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()


def _batch(model, n=8):
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(-1)  # every point correct, so every point is attacked
    return x, y


def _spec(**values):
    (spec,) = resolve_attacks(attack_config(**values))
    return spec


def test_iterations_recompute_the_apgd_schedule():
    aa = build_autoattack(_net(), _spec(run=["aa_clipure"], n_iter=10), "cpu")
    for apgd in (aa.apgd, aa.apgd_targeted):
        assert (apgd.n_iter, apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr) == (10, 2, 1, 1)
    assert aa.apgd.n_restarts == 5 and aa.apgd_targeted.n_target_classes == 9
    assert aa.attacks_to_run == ["apgd-ce", "apgd-t"]
    from pyautoattack.autopgd_base import APGDAttack

    fresh = APGDAttack(_net(), n_iter=37, eps=0.1)
    reset = APGDAttack(_net(), n_iter=100, eps=0.1)
    set_apgd_iterations(reset, 37)
    assert (fresh.n_iter_2, fresh.n_iter_min, fresh.size_decr) == (reset.n_iter_2, reset.n_iter_min, reset.size_decr)


def test_version_budgets_eot_and_queries():
    aa = build_autoattack(_net(), _spec(run=["aa_rand"]), "cpu")
    assert aa.attacks_to_run == ["apgd-ce", "apgd-dlr"] and aa.apgd.eot_iter == 20
    aa = build_autoattack(_net(), _spec(run=["aa_clipure@eot"], eot_samples=3, n_queries=50), "cpu")
    assert aa.apgd.eot_iter == 3 and aa.apgd_targeted.eot_iter == 3 and aa.square.n_queries == 50


def test_run_is_reproducible_protects_the_global_rng_and_stays_in_the_ball():
    model = _net()
    x, y = _batch(model)
    spec = _spec(run=["apgd_ce"], eps=8, n_iter=5)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    x1, y1 = run_autoattack(model, x, y, spec)
    assert torch.equal(torch.random.get_rng_state(), state)  # AutoAttack reseeds; the caller's stream is untouched
    x2, y2 = run_autoattack(model, x, y, spec)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert (x1 - x).abs().max() <= 8 / 255 + 1e-6 and x1.min() >= 0 and x1.max() <= 1
    assert (y1 != y).any()  # 8/255 on an untrained net: something flips
    with torch.no_grad():
        assert torch.equal(model(x1).argmax(-1), y1)


class Differentiating(nn.Module):
    """A model that takes a gradient inside its forward, as CLIPure does: AutoAttack calls it a dynamic defence."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.net(probe).sum(), probe)
        return self.net(x - 0.01 * g.sign())


def test_the_dynamic_defence_warning_is_about_the_model_attacked_not_an_earlier_one(caplog):
    model = _net()
    x, y = _batch(model, n=2)
    spec = _spec(run=["apgd_ce"], eps=1, n_iter=1)

    def dynamic_warnings(m):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="auto-attack"):
            run_autoattack(m, x, y, spec)
        return [r for r in caplog.records if "dynamic defense" in r.getMessage()]

    assert dynamic_warnings(Differentiating(model))
    assert not dynamic_warnings(model)


def test_digest_lets_each_kind_of_message_through_once_and_counts_it(caplog):
    digest = MessageDigest()
    logger = logging.getLogger("auto-attack")
    with caplog.at_level(logging.INFO, logger="auto-attack"), digest.installed():
        for n in (3, 5, 7):
            logger.warning("there are %d points with zero gradient!", n)
        logger.info("setting parameters for standard version")
    shown = [r.getMessage() for r in caplog.records if r.name == "auto-attack"]
    assert shown == ["there are 3 points with zero gradient!", "setting parameters for standard version"]
    assert digest.warnings == {"there are 3 points with zero gradient!": 3}
    assert logger.filters == [] or digest not in logger.filters
