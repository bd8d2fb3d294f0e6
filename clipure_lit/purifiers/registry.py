"""Purifiers are chosen by name (``purifier.latent=clipure_cos``, ``purifier.pixel=...``) from this registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.base import BuildContext, Purifier, Space


@dataclass(frozen=True)
class PurifierEntry:
    name: str
    space: Space
    factory: Callable[[BuildContext], Purifier]
    summary: str


_REGISTRY: dict[str, PurifierEntry] = {}


def register_purifier(name: str, space: Space, summary: str = ""):
    """Decorator for a factory ``(ctx: BuildContext) -> Purifier``."""

    def wrap(factory: Callable[[BuildContext], Purifier]):
        if name in _REGISTRY:
            raise ValueError(f"Purifier '{name}' is registered twice.")
        _REGISTRY[name] = PurifierEntry(name, space, factory, summary or (factory.__doc__ or "").strip().split("\n")[0])
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


def build_purifier(name: str, space: Space | str, ctx: BuildContext) -> Purifier:
    purifier = get_entry(name, space).factory(ctx)
    if purifier.space not in (Space(space), Space.any):
        raise ConfigError(f"Purifier '{name}' works in {purifier.space.value} space, not {Space(space).value}.")
    return purifier
