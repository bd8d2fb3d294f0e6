"""Run one attack spec on one batch: craft on the attacked view (or transfer source), score on the defended
classifier, time it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from clipure_lit.attacks.autoattack import MessageDigest, SubAttackStep, run_autoattack
from clipure_lit.attacks.gradient_modes import float32_copy, is_full_precision, make_view
from clipure_lit.utils.seed import batch_seed, seeded
from clipure_lit.attacks.spec import AttackSpec
from clipure_lit.attacks.transfer import transfer_source
from clipure_lit.attacks.config import AttackPrecision


@dataclass
class AttackOutcome:
    """``x_adv [B, 3, H, W]``, the defended classifier's predictions on it ``[B]``, and wall-clock seconds."""

    x_adv: Tensor
    adv_pred: Tensor
    seconds: float


class ViewCache:
    """Builds each attacked view of one classifier once; all views share one float32 backbone copy."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self._views: dict[tuple, object] = {}
        self._fp32 = None

    def _fp32_backbone(self, precision: AttackPrecision):
        if AttackPrecision(precision) != AttackPrecision.fp32 or is_full_precision(self.classifier.backbone):
            return None
        if self._fp32 is None:
            self._fp32 = float32_copy(self.classifier.backbone)
        return self._fp32

    def attacked(self, spec: AttackSpec):
        """The classifier ``spec`` differentiates (its transfer source when it is a transfer attack)."""
        key = (spec.transfer_from, None if spec.transfer_from else spec.grad_mode, spec.precision)
        if key not in self._views:
            fp32 = self._fp32_backbone(spec.precision)
            if spec.transfer_from:
                self._views[key] = transfer_source(self.classifier, spec.transfer_from, spec.precision, fp32)
            else:
                self._views[key] = make_view(self.classifier, spec.grad_mode, spec.precision, fp32_backbone=fp32)
        return self._views[key]

    def undefended(self, precision: AttackPrecision = AttackPrecision.fp32):
        return transfer_source(self.classifier, "undefended", precision, self._fp32_backbone(precision))


def needs_rescoring(spec: AttackSpec, attacked, classifier) -> bool:
    """True when the attacked model's forward may differ from the defended classifier's: a transfer source, or
    a float32 copy of a half-precision backbone. Otherwise AutoAttack's own predictions are the defended ones."""
    return spec.transfer_from is not None or attacked.backbone is not classifier.backbone


def run_attack(spec: AttackSpec, classifier, views: ViewCache, x: Tensor, y: Tensor, ids: Tensor,
               digest: MessageDigest | None = None,
               on_step: Callable[[SubAttackStep], None] | None = None) -> AttackOutcome:
    """Attack one batch.

    The attacked view's purifier randomness is seeded from ``(spec.seed, spec.name, ids)``, so the same batch gives
    the same result in any run. ``x`` must be in [0, 1] at attack resolution; ``y`` are this batch's labels only.
    ``on_step`` receives AutoAttack's position within the batch (:class:`SubAttackStep`).
    """
    start = time.perf_counter()
    attacked = views.attacked(spec)
    x = x.detach().float()
    with seeded(attacked, batch_seed(spec.seed, f"attack/{spec.name}", ids)):
        x_adv, y_adv = run_autoattack(attacked, x, y, spec, digest, on_step)
    if needs_rescoring(spec, attacked, classifier):
        with torch.no_grad(), seeded(classifier, batch_seed(spec.seed, f"score/{spec.name}", ids)):
            y_adv = classifier(x_adv).argmax(dim=-1)
    return AttackOutcome(x_adv=x_adv, adv_pred=y_adv.long(), seconds=time.perf_counter() - start)
