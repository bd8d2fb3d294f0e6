"""How many passes through the attacked classifier one attack makes on one batch: the budget a cost estimate
multiplies by the measured cost of one pass.

The budgets are read from the ``AutoAttack`` object the run builds (:func:`~clipure_lit.attacks.autoattack.build_autoattack`),
so presets, ``attack.n_iter`` / ``n_queries`` overrides and AutoAttack's own version settings count exactly as in the
run. Counts are for one attacked batch in which every point stays robust to the end: AutoAttack attacks only the points
still classified correctly (never a clean error; after a success, not again), so a real run makes at most these passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from clipure_lit.attacks.autoattack import build_autoattack
from clipure_lit.attacks.spec import AttackSpec
from clipure_lit.attacks.config import AutoAttackVersion

# Forward passes AutoAttack makes on every call before attacking: check_randomized (5 calls, skipped by the rand
# version, which expects randomness), check_range_output, check_dynamic, and the clean predictions.
_RANDOMNESS_CHECK_FORWARDS = 5
_OTHER_CHECK_FORWARDS = 2
_CLEAN_FORWARDS = 1


@dataclass(frozen=True)
class PassBudget:
    """Passes through the attacked classifier for one batch of the attack's batch size.

    ``fixed_forward``: forward passes made whatever the images (AutoAttack's checks, its clean predictions).
    ``grad`` / ``forward``: forward+backward and forward-only passes of the sub-attacks when every clean-correct
    point of the batch stays robust to the end (the upper bound). ``parts``: ``{sub-attack: (grad, forward)}``.
    """

    fixed_forward: int
    grad: int
    forward: int
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)


def attack_budget(spec: AttackSpec, n_classes: int) -> PassBudget:
    """The :class:`PassBudget` of ``spec`` (already adapted to ``n_classes`` by
    :func:`~clipure_lit.attacks.presets.adapt_to_classes`) as AutoAttack will run it.

    Per sub-attack, with R restarts, T target classes, I iterations, E gradient samples per step (EOT), Q queries:
    APGD-CE / APGD-DLR ``R * (I + 1) * E`` forward+backward (one at the start of each restart and one per
    iteration) and 1 forward; APGD-T ``T * R * (I + 1) * E`` and ``1 + T * R`` forwards; FAB ``R * I * K``
    (one backward per class of ``K``, each counted as a full pass: an upper bound) and ``R * I + 2`` forwards;
    FAB-T ``T * I`` and ``T * I + 2`` (one restart per target, as AutoAttack runs it); Square ``R * (Q + 3)``
    forwards. After each sub-attack AutoAttack predicts once more (a fixed forward).
    """
    # The AutoAttack object only holds the budgets here; no pass is made through the model it is given.
    aa = build_autoattack(nn.Identity(), spec, "cpu")
    fixed = _OTHER_CHECK_FORWARDS + _CLEAN_FORWARDS
    if spec.version != AutoAttackVersion.rand:
        fixed += _RANDOMNESS_CHECK_FORWARDS
    parts: dict[str, tuple[int, int]] = {}
    for sub in spec.sub_attacks:
        fixed += 1  # AutoAttack's prediction on the sub-attack's output
        if sub in ("apgd-ce", "apgd-dlr"):
            a = aa.apgd
            parts[sub] = (a.n_restarts * (a.n_iter + 1) * a.eot_iter, 1)
        elif sub == "apgd-t":
            a = aa.apgd_targeted
            runs = a.n_target_classes * a.n_restarts
            parts[sub] = (runs * (a.n_iter + 1) * a.eot_iter, 1 + runs)
        elif sub == "fab":
            f = aa.fab
            parts[sub] = (f.n_restarts * f.n_iter * n_classes, f.n_restarts * f.n_iter + 2)
        elif sub == "fab-t":
            f = aa.fab
            parts[sub] = (f.n_target_classes * f.n_iter, f.n_target_classes * f.n_iter + 2)
        elif sub == "square":
            s = aa.square
            parts[sub] = (0, s.n_restarts * (s.n_queries + 3))
    return PassBudget(fixed_forward=fixed, grad=sum(g for g, _ in parts.values()),
                      forward=sum(f for _, f in parts.values()), parts=parts)
