"""A fully resolved attack: what one ``attack.run`` entry means once presets and defaults are applied."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clipure_lit.attacks.config import AttackGradMode, AttackNorm, AttackPrecision, AutoAttackVersion

SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
GRADIENT_FREE = frozenset({"square"})
TRANSFER_SOURCES = ("undefended",)


@dataclass(frozen=True)
class AttackSpec:
    """One attack as run by the robust-eval callback.

    ``eps`` is absolute (already divided by 255 for Linf). ``attacks`` is the AutoAttack sub-attack list
    (``None`` for the standard/plus/rand versions, whose lists AutoAttack fixes). ``eot_samples`` is the number
    of gradient samples per APGD step (1: no EOT; ``None``: AutoAttack's own choice, 20 for version rand).
    """

    name: str
    version: AutoAttackVersion
    attacks: tuple[str, ...] | None
    norm: AttackNorm
    eps: float
    grad_mode: AttackGradMode
    eot_samples: int | None
    n_iter: int | None
    n_restarts: int | None
    n_target_classes: int | None
    n_queries: int | None
    seed: int
    batch_size: int | None
    precision: AttackPrecision
    transfer_from: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def sub_attacks(self) -> tuple[str, ...]:
        """The sub-attacks AutoAttack will run for this version."""
        if self.attacks is not None:
            return self.attacks
        return {AutoAttackVersion.standard: ("apgd-ce", "apgd-t", "fab-t", "square"),
                AutoAttackVersion.plus: ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
                AutoAttackVersion.rand: ("apgd-ce", "apgd-dlr")}[self.version]

    @property
    def black_box(self) -> bool:
        """True when every sub-attack is gradient-free (Square), so the gradient mode is irrelevant."""
        return all(a in GRADIENT_FREE for a in self.sub_attacks)

    @property
    def white_box(self) -> bool:
        """True when the attack uses gradients of the defended classifier itself (not a transfer)."""
        return self.transfer_from is None and not self.black_box

    def describe(self) -> dict[str, Any]:
        """JSON-ready description written to results.json."""
        d = asdict(self)
        for key in ("version", "norm", "grad_mode", "precision"):
            d[key] = getattr(self, key).value
        d["attacks"] = list(self.sub_attacks)
        d["notes"] = list(self.notes)
        d["kind"] = "transfer" if self.transfer_from else ("black_box" if self.black_box else "white_box")
        return d
