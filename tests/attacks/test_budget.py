"""The pass budget an estimate multiplies by (attacks/budget.py) against the passes AutoAttack really makes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipure_lit.attacks.autoattack import run_autoattack
from clipure_lit.attacks.budget import attack_budget
from clipure_lit.attacks.presets import adapt_to_classes, attack_config, resolve_attacks


class CountingLinear(nn.Module):
    """A linear classifier on flattened images that counts its forward calls with and without autograd."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, n_classes)
        self.grad_calls = 0
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_calls += 1
        else:
            self.forward_calls += 1
        return self.fc(x.flatten(1))  # [B, K]


@pytest.mark.parametrize("run, extra", [(["aa_clipure"], {"n_iter": 4}), (["apgd_ce"], {"n_iter": 3}),
                                        (["square"], {"n_queries": 7}), (["aa_rand"], {"n_iter": 2, "eot_samples": 2})])
def test_budget_is_the_passes_autoattack_makes_when_no_point_breaks(run, extra):
    """With a radius far too small to flip any prediction and labels equal to the clean predictions, every point
    stays robust, so AutoAttack makes exactly the upper-bound budget: the count is exact, not approximate."""
    torch.manual_seed(0)
    n_classes = 10
    model = CountingLinear(n_classes).eval()
    x = torch.rand(4, 3, 8, 8)  # [B, 3, H, W]
    with torch.no_grad():
        y = model(x).argmax(-1)  # [B]: every point clean-correct
    model.grad_calls = model.forward_calls = 0
    spec = adapt_to_classes(resolve_attacks(attack_config(run=run, eps=1e-6, **extra))[0], n_classes)
    budget = attack_budget(spec, n_classes)
    _, y_adv = run_autoattack(model, x, y, spec)
    assert torch.equal(y_adv, y)
    assert model.grad_calls == budget.grad
    assert model.forward_calls == budget.fixed_forward + budget.forward
