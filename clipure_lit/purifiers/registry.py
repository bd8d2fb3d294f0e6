"""Purifiers are chosen by name (``purifier.latent=clipure_cos``, ``purifier.pixel=jpeg``) from this registry.

An entry holds the factory and the purifier's config dataclass; the config layer asks :func:`config_sections`
for the ``purifier.<name>`` sections of the chosen purifiers, so a purifier is one module (its config, validation,
weight files and factory) plus one YAML file in ``conf/purifier/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import OmegaConf

from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.base import BuildContext, Purifier, PurifierConfig, Space

Factory = Callable[[Any, BuildContext], Purifier]


@dataclass(frozen=True)
class PurifierEntry:
    name: str
    space: Space
    factory: Factory  # (its config section as a dataclass instance, or None; BuildContext) -> Purifier
    config: type[PurifierConfig] | None  # the dataclass of ``purifier.<name>.*``; None: no keys
    summary: str


_REGISTRY: dict[str, PurifierEntry] = {}


def register_purifier(name: str, space: Space, config: type[PurifierConfig] | None = None, summary: str = ""):
    """Decorator for a factory ``(cfg, ctx: BuildContext) -> Purifier``; ``cfg`` is an instance of ``config``
    holding the ``purifier.<name>.*`` values (None when the purifier has no keys)."""

    def wrap(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"Purifier '{name}' is registered twice.")
        if config is not None and not (isinstance(config, type) and issubclass(config, PurifierConfig)):
            raise TypeError(f"Purifier '{name}': config must be a PurifierConfig dataclass, got {config!r}.")
        if name in ("latent", "pixel", "seed"):
            raise ValueError(f"'{name}' is a run-level purifier key and cannot name a purifier.")
        _REGISTRY[name] = PurifierEntry(name, space, factory, config,
                                        summary or (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return wrap


def list_purifiers(space: Space | str | None = None) -> list[str]:
    """Registered names usable in ``space`` (all when None)."""
    space = Space(space) if space is not None else None
    return sorted(n for n, e in _REGISTRY.items() if space is None or e.space in (space, Space.any))


def get_entry(name: str, space: Space | str) -> PurifierEntry:
    space = Space(space)
    valid = list_purifiers(space)
    if name not in valid:
        where = f" (it is a {_REGISTRY[name].space.value}-space purifier)" if name in _REGISTRY else ""
        raise ConfigError(f"Unknown {space.value} purifier purifier.{space.value}='{name}'{where}. Valid choices: {valid}.")
    return _REGISTRY[name]


def space_of(name: str) -> str:
    """``latent`` or ``pixel``: where the registered purifier ``name`` is selected (``any`` for the identity)."""
    return _REGISTRY[name].space.value


def config_sections(names: list[str] | None = None) -> dict[str, type[PurifierConfig]]:
    """``{name: config dataclass}`` of the given purifiers (all registered ones when None) that have keys."""
    chosen = sorted(_REGISTRY) if names is None else names
    return {n: _REGISTRY[n].config for n in chosen if n in _REGISTRY and _REGISTRY[n].config is not None}


def section_of(run_cfg: Any, name: str) -> PurifierConfig | None:
    """The ``purifier.<name>`` section of a composed run config as an instance of the purifier's dataclass."""
    entry = _REGISTRY[name]
    if entry.config is None:
        return None
    node = run_cfg.purifier[name]
    return OmegaConf.to_object(node) if OmegaConf.is_config(node) else node


def chosen_sections(run_cfg: Any) -> dict[str, PurifierConfig]:
    """``{"purifier.<name>": config instance}`` of the run's chosen purifiers (pixel, then latent) that have keys."""
    sections = {}
    for name in dict.fromkeys((run_cfg.purifier.pixel, run_cfg.purifier.latent)):
        section = section_of(run_cfg, name)
        if section is not None:
            sections[f"purifier.{name}"] = section
    return sections


def build_purifier(name: str, space: Space | str, ctx: BuildContext) -> Purifier:
    """The purifier ``name`` for ``space``, built from its section of ``ctx.cfg``."""
    entry = get_entry(name, space)
    purifier = entry.factory(section_of(ctx.cfg, name), ctx)
    if purifier.space not in (Space(space), Space.any):
        raise ConfigError(f"Purifier '{name}' works in {purifier.space.value} space, not {Space(space).value}.")
    return purifier
