"""Named attacks (presets) and the resolution of ``attack.run`` into :class:`AttackSpec` objects.

A run token is ``<entry>`` or ``<entry>@<grad_mode>``; ``<entry>`` is a preset below or a key of
``attack.entries``. Fields are layered, later wins: the preset chain (``base``), then the global overrides
``attack.n_iter`` / ``attack.n_queries``, then user entries, then the ``@grad_mode`` suffix.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clipure_lit.attacks.spec import SUB_ATTACKS, TRANSFER_SOURCES, AttackSpec
from clipure_lit.attacks.config import (AttackCfg, AttackGradMode, AttackNorm, AttackPrecision, AutoAttackVersion,
                                        check_attack_values)
from clipure_lit.errors import ConfigError

# The released CLIPure protocol (reference section 6.1): AutoAttack version='custom' with APGD-CE (5 restarts,
# as 'custom' never resets them) and APGD-T (9 targets x 1 restart), 100 iterations each.
PRESETS: dict[str, dict[str, Any]] = {
    "aa_clipure": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 100, "n_restarts": 5, "n_target_classes": 9},
    "aa_standard": {"version": "standard"},
    "aa_plus": {"version": "plus"},
    "aa_rand": {"version": "rand"},
    "apgd_ce": {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 100, "n_restarts": 1},
    "square": {"version": "custom", "attacks": ["square"], "n_queries": 5000},
    "transfer_clip": {"base": "aa_clipure", "transfer_from": "undefended"},
}

PRESET_SUMMARIES = {
    "aa_clipure": "released CLIPure setting: APGD-CE (5 restarts) + APGD-T (9 targets), 100 iterations",
    "aa_standard": "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square",
    "aa_plus": "AutoAttack plus: APGD-CE/DLR (5 restarts), FAB, Square, APGD-T, FAB-T",
    "aa_rand": "AutoAttack rand: APGD-CE + APGD-DLR with EOT over 20 samples",
    "apgd_ce": "APGD-CE, 1 restart",
    "square": "Square (gradient-free, black-box sanity check)",
    "transfer_clip": "aa_clipure crafted on the undefended CLIP (same head), scored on the defended classifier",
}

_FIELDS = ("version", "attacks", "grad_mode", "eot_samples", "n_iter", "n_restarts", "n_target_classes", "n_queries",
           "transfer_from")
_DEFAULT_EPS = {AttackNorm.Linf: 4.0, AttackNorm.L2: 0.5}


def list_attacks(entries: Mapping[str, Any] | None = None) -> list[str]:
    """Preset names plus the keys of ``attack.entries``."""
    return sorted(set(PRESETS) | set(entries or {}))


def absolute_eps(norm: AttackNorm | str, eps: float | None) -> float:
    """``attack.eps`` in input units: Linf values are in 1/255, L2 values are taken as they are."""
    norm = AttackNorm(norm)
    value = _DEFAULT_EPS[norm] if eps is None else float(eps)
    if value <= 0:
        raise ConfigError(f"attack.eps={eps} must be positive (Linf: in units of 1/255, e.g. 4; L2: a radius, e.g. 0.5).")
    return value / 255.0 if norm == AttackNorm.Linf else value


def _as_dict(entry: Any) -> dict[str, Any]:
    if entry is None:
        return {}
    if isinstance(entry, Mapping):
        return dict(entry)

    return OmegaConf.to_container(entry, enum_to_str=True) if not dataclasses.is_dataclass(entry) else dataclasses.asdict(entry)


def _layers(name: str, entries: Mapping[str, Any], seen: tuple[str, ...] = ()) -> list[tuple[bool, dict[str, Any]]]:
    """``[(is_user_entry, fields), ...]`` from the root of the ``base`` chain to ``name``.

    A user entry named like a preset (and without ``base``) extends that preset: ``attack.entries.aa_clipure.n_iter=10``.
    """
    if name in seen:
        raise ConfigError(f"attack entry '{name}' has a cyclic base chain: {' -> '.join(seen + (name,))}.")
    if name not in PRESETS and name not in entries:
        raise ConfigError(f"Unknown attack '{name}' in attack.run. Valid choices: {list_attacks(entries)} "
                          f"(optionally suffixed with @<grad_mode>, one of {[m.value for m in AttackGradMode]}). "
                          f"Fix: use one of those, or define it under attack.entries.{name}.")
    layers: list[tuple[bool, dict[str, Any]]] = []
    if name in PRESETS:
        preset = dict(PRESETS[name])
        base = preset.pop("base", None)
        layers = (_layers(base, entries, seen + (name,)) if base else []) + [(False, preset)]
    if name in entries:
        fields = _as_dict(entries[name])
        base = fields.pop("base", None)
        if base:
            layers = _layers(str(base), entries, seen + (name,))
        layers = layers + [(True, {k: v for k, v in fields.items() if v is not None})]
    return layers


def _enum(cls, value, key: str):
    try:
        return cls(value.value if hasattr(value, "value") else value)
    except ValueError:
        raise ConfigError(f"{key}='{value}' is not valid; expected one of {[m.value for m in cls]}.") from None


def _positive(fields: dict[str, Any], key: str, name: str) -> None:
    value = fields.get(key)
    if value is not None and int(value) < 1:
        raise ConfigError(f"attack entry '{name}': {key}={value} must be a positive integer. Fix: set "
                          f"attack.entries.{name}.{key} to a value >= 1, or null for the preset's own.")


def resolve_attack(token: str, cfg: Any) -> AttackSpec:
    """One ``attack.run`` token -> :class:`AttackSpec` (``cfg`` is the ``attack`` config section)."""
    name, _, suffix = str(token).partition("@")
    entries = cfg.entries if cfg.entries is not None else {}
    layers = _layers(name, entries)
    fields: dict[str, Any] = {}
    for user, layer in layers:
        if not user:
            fields.update(layer)
    if cfg.n_iter is not None:
        fields["n_iter"] = cfg.n_iter
    if cfg.n_queries is not None:
        fields["n_queries"] = cfg.n_queries
    for user, layer in layers:
        if user:
            fields.update(layer)
    if suffix:
        modes = [m.value for m in AttackGradMode]
        if suffix not in modes:
            close = difflib.get_close_matches(suffix, modes, n=1)
            fix = f"attack.run=[{name}@{close[0]}]" if close else f"one of {[f'{name}@{m}' for m in modes]}"
            raise ConfigError(f"attack.run entry '{token}' names an unknown gradient mode '{suffix}' after '@'; valid "
                              f"modes: {modes} (docs/evaluation.md, 'Gradient modes'). Fix: {fix}, or '{name}' alone "
                              f"for attack.grad_mode={_value(cfg.grad_mode)}.")
        fields["grad_mode"] = suffix
    version = _enum(AutoAttackVersion, fields.get("version", "custom"), f"attack entry '{name}': version")
    attacks = fields.get("attacks")
    if version == AutoAttackVersion.custom:
        if not attacks:
            raise ConfigError(f"attack entry '{name}' uses version=custom without a list of attacks. "
                              f"Fix: set attack.entries.{name}.attacks to a non-empty subset of {list(SUB_ATTACKS)}.")
        unknown = [a for a in attacks if a not in SUB_ATTACKS]
        if unknown:
            raise ConfigError(f"attack entry '{name}': unknown sub-attacks {unknown}; valid: {list(SUB_ATTACKS)}.")
        attacks = tuple(str(a) for a in attacks)
    elif attacks:
        raise ConfigError(f"attack entry '{name}': attacks={list(attacks)} is only allowed with version=custom "
                          f"(version={version.value} fixes its own list). Fix: set version=custom or drop attacks.")
    else:
        attacks = None
    grad_mode = _enum(AttackGradMode, fields.get("grad_mode", cfg.grad_mode), f"grad_mode of attack '{token}'")
    for key in ("eot_samples", "n_iter", "n_restarts", "n_target_classes", "n_queries"):
        _positive(fields, key, name)
    eot = fields.get("eot_samples")
    if grad_mode == AttackGradMode.eot:
        eot = int(eot if eot is not None else cfg.eot_samples)
        if eot < 1:
            raise ConfigError(f"attack.eot_samples={cfg.eot_samples} must be a positive integer.")
    source = fields.get("transfer_from")
    if source is not None and source not in TRANSFER_SOURCES:
        raise ConfigError(f"attack entry '{name}': transfer_from='{source}' is not supported; valid: {list(TRANSFER_SOURCES)}.")
    if cfg.batch_size is not None and int(cfg.batch_size) < 1:
        raise ConfigError(f"attack.batch_size={cfg.batch_size} must be a positive integer or null (the data batch).")
    norm = _enum(AttackNorm, cfg.norm, "attack.norm")
    return AttackSpec(
        name=str(token), version=version, attacks=attacks, norm=norm, eps=absolute_eps(norm, cfg.eps),
        grad_mode=grad_mode, eot_samples=None if eot is None else int(eot),
        n_iter=_opt_int(fields.get("n_iter")), n_restarts=_opt_int(fields.get("n_restarts")),
        n_target_classes=_opt_int(fields.get("n_target_classes")), n_queries=_opt_int(fields.get("n_queries")),
        seed=int(cfg.seed), batch_size=_opt_int(cfg.batch_size),
        precision=_enum(AttackPrecision, cfg.precision, "attack.precision"), transfer_from=source)


def attack_config(**values: Any):
    """An ``attack`` config section (typed by ``AttackCfg``) from keyword values, for use from Python:
    ``resolve_attacks(attack_config(run=["aa_clipure"], eps=1, entries={"aa_clipure": {"n_restarts": 1}}))``.

    Raises:
        ConfigError: an unknown key or a value of the wrong type.
    """
    try:
        return OmegaConf.merge(OmegaConf.structured(AttackCfg), OmegaConf.create(values))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Invalid attack settings {values}: {str(exc).splitlines()[0]}") from None


def _value(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def resolve_attacks(cfg: Any) -> list[AttackSpec]:
    """Every token of ``cfg.run`` (the ``attack`` section) resolved; names must be unique.

    Raises:
        ConfigError: a value of ``attack.*`` no run can use (:func:`~clipure_lit.attacks.config.check_attack_values`),
            unknown attack or grad mode, bad sub-attack list, non-positive budgets, duplicate names.
    """
    check_attack_values(cfg)
    specs = [resolve_attack(token, cfg) for token in cfg.run]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"attack.run lists {duplicates} more than once; each entry is reported under its name, so "
                          f"names must be unique. Fix: remove the duplicates or define differently named entries.")
    return specs


def adapt_to_classes(spec: AttackSpec, n_classes: int) -> AttackSpec:
    """Drop sub-attacks the class count cannot support and cap target classes at ``n_classes - 1``.

    DLR needs the 3rd-largest logit (``apgd-dlr``: >= 3 classes) and targeted DLR the 4th (``apgd-t``: >= 4).
    The returned spec is ``version=custom`` when something was dropped (with the dropped version's settings
    made explicit) and carries a note saying what changed.
    """
    sub = spec.sub_attacks
    needs = {"apgd-dlr": 3, "apgd-t": 4, "fab-t": 2}
    dropped = [a for a in sub if n_classes < needs.get(a, 2)]
    notes = list(spec.notes)
    changes: dict[str, Any] = {}
    if dropped:
        kept = tuple(a for a in sub if a not in dropped)
        notes.append(f"{n_classes} classes: skipped {dropped} (DLR needs >= 3 classes, targeted DLR >= 4)")
        changes.update(version=AutoAttackVersion.custom, attacks=kept)
        explicit = version_settings(spec.version)
        for key, value in explicit.items():
            if getattr(spec, key) is None:
                changes[key] = value
    targets = changes.get("n_target_classes", spec.n_target_classes) or 9
    if any(a in ("apgd-t", "fab-t") for a in changes.get("attacks", sub)) and targets > n_classes - 1:
        notes.append(f"{n_classes} classes: target classes capped at {n_classes - 1}")
        changes["n_target_classes"] = n_classes - 1
    if not changes:
        return spec
    return dataclasses.replace(spec, notes=tuple(notes), **changes)


def version_settings(version: AutoAttackVersion) -> dict[str, Any]:
    """The budgets AutoAttack's ``_set_version`` applies (Linf/L2), as AttackSpec fields."""
    return {AutoAttackVersion.standard: {"n_restarts": 1, "n_target_classes": 9, "n_queries": 5000},
            AutoAttackVersion.plus: {"n_restarts": 5, "n_target_classes": 9, "n_queries": 5000},
            AutoAttackVersion.rand: {"n_restarts": 1, "eot_samples": 20},
            AutoAttackVersion.custom: {}}[version]
