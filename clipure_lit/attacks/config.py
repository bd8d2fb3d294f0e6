"""The ``attack.*`` config section and the closed vocabularies of the attack layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from clipure_lit.errors import ConfigError


class AttackNorm(str, Enum):
    """Threat model of the attacks: L-infinity or L2 ball around the [0, 1] image at attack resolution."""

    Linf = "Linf"
    L2 = "L2"


class AttackGradMode(str, Enum):
    """How gradient attacks differentiate through the purifiers (docs/evaluation.md, "Gradient modes").

    ``purifier``: the purifier's own configured ``purifier.<name>.grad_mode`` (attack the classifier as built).
    ``as_released`` / ``full``: override the purifier's gradient semantics for the attack only.
    ``bpda_identity``: straight-through; forward = purified, backward = gradient of the unpurified path.
    ``eot``: ``full`` gradients averaged over ``attack.eot_samples`` draws of the purifier's randomness.
    """

    purifier = "purifier"
    as_released = "as_released"
    full = "full"
    bpda_identity = "bpda_identity"
    eot = "eot"


class AutoAttackVersion(str, Enum):
    standard = "standard"
    plus = "plus"
    rand = "rand"
    custom = "custom"


class AttackPrecision(str, Enum):
    """Precision of the attacked path: ``fp32`` (a float32 copy of the backbone when it is not fp32 already)
    or ``model`` (attack the model in its configured precision; fp16 can underflow gradients to zero)."""

    fp32 = "fp32"
    model = "model"


@dataclass
class AttackEntryCfg:
    """One named attack (``attack.entries.<name>``). Unset (null) fields come from ``base`` (a preset name,
    see ``clipure_lit.attacks.presets``), then from the ``attack.*`` defaults."""

    base: Optional[str] = None
    # AutoAttack version; ``custom`` runs the sub-attacks listed in ``attacks``.
    version: Optional[AutoAttackVersion] = None
    # Sub-attacks for version=custom: apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square.
    attacks: Optional[List[str]] = None
    grad_mode: Optional[AttackGradMode] = None
    # Gradient samples averaged per APGD step (EOT); null: attack.eot_samples in grad_mode=eot, else 1.
    eot_samples: Optional[int] = None
    # APGD/FAB iterations, APGD-CE restarts, APGD-T/FAB-T target classes, Square queries.
    n_iter: Optional[int] = None
    n_restarts: Optional[int] = None
    n_target_classes: Optional[int] = None
    n_queries: Optional[int] = None
    # Craft the examples on another classifier and score them on the defended one: ``undefended`` (the same
    # CLIP and head, identity purifiers). null: attack the defended classifier itself.
    transfer_from: Optional[str] = None


@dataclass
class AttackCfg:
    # Attack entries to run in the test loop (empty: clean accuracy only): preset names (aa_clipure, aa_standard,
    # aa_plus, aa_rand, apgd_ce, square, transfer_clip) or keys of ``entries``, each optionally suffixed with
    # ``@<grad_mode>`` (e.g. aa_clipure@bpda_identity). Each is reported separately and in the worst case.
    run: List[str] = field(default_factory=list)
    norm: AttackNorm = AttackNorm.Linf
    # Radius. Linf: in units of 1/255 (4 means 4/255, as released); L2: the float radius. null: 4 (Linf), 0.5 (L2).
    eps: Optional[float] = None
    # Default gradient mode of every entry that does not set its own (or a ``@mode`` suffix).
    grad_mode: AttackGradMode = AttackGradMode.purifier
    # Gradient samples per APGD step in grad_mode=eot (AutoAttack's rand version uses 20).
    eot_samples: int = 20
    # Override the iterations (APGD, FAB) and Square queries of every entry (null: the presets' values).
    n_iter: Optional[int] = None
    n_queries: Optional[int] = None
    # AutoAttack seed (the caller's global RNG state is restored afterwards).
    seed: int = 0
    # Attack batch size inside a data batch (null: the whole data batch). 1 makes every result a per-sample
    # function, independent of data.batch_size, the number of processes and resumption.
    batch_size: Optional[int] = None
    precision: AttackPrecision = AttackPrecision.fp32
    # Save x_adv per batch under <run_dir>/adversarial/<attack>/.
    save_adversarial: bool = False
    # Gradient-masking checks on the first batch and at the end (docs/evaluation.md, "Flags").
    checks: bool = True
    # Named entries (presets can be extended or overridden here).
    entries: Dict[str, AttackEntryCfg] = field(default_factory=dict)


def check_attack_values(cfg: Any) -> None:
    """Refuse ``attack.*`` values no run can use (the ``attack`` section, with or without attacks in
    ``attack.run``): a radius that is not positive, budgets below 1. Called when the config is composed and again
    when the attacks are resolved (:func:`clipure_lit.attacks.presets.resolve_attacks`).

    Raises:
        ConfigError: naming the key, the value, what is expected and the fix.
    """
    if cfg.eps is not None and not float(cfg.eps) > 0:
        raise ConfigError(f"attack.eps={cfg.eps} must be a positive radius (Linf: in units of 1/255, e.g. 4 for 4/255; "
                          "L2: the radius itself, e.g. 0.5). Fix: set attack.eps to a positive value, or null for the "
                          "default of attack.norm (4/255 Linf, 0.5 L2).")
    for key, what in (("n_iter", "iterations of APGD and FAB"), ("n_queries", "queries of Square")):
        value = cfg.get(key)
        if value is not None and int(value) < 1:
            raise ConfigError(f"attack.{key}={value} must be a positive number of {what}, or null for each attack's "
                              f"own value. Fix: set attack.{key}=<N> with N >= 1, or attack.{key}=null.")
    if int(cfg.eot_samples) < 1:
        raise ConfigError(f"attack.eot_samples={cfg.eot_samples} must be a positive number of gradient samples per "
                          "step (1: no averaging; AutoAttack's rand version uses 20). Fix: attack.eot_samples=<N>, N >= 1.")
    if cfg.batch_size is not None and int(cfg.batch_size) < 1:
        raise ConfigError(f"attack.batch_size={cfg.batch_size} must be a positive integer, or null for the whole data "
                          "batch. Fix: attack.batch_size=null (or a positive size).")
