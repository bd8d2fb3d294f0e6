"""Resolve user-given paths: relative to the current directory first, then to the project root."""

from __future__ import annotations

from pathlib import Path

from clipure_lit.errors import DataNotFoundError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def find_path(path: str | Path) -> Path | None:
    """The existing location of ``path`` (cwd first, then the project root), or None."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if not p.is_absolute() and (PROJECT_ROOT / p).exists():
        return PROJECT_ROOT / p
    return None


def resolve_path(path: str | Path, what: str) -> Path:
    """Like :func:`find_path`, but a missing file is a :class:`DataNotFoundError` naming both places looked in."""
    found = find_path(path)
    if found is None:
        p = Path(path).expanduser()
        looked = [str(p.resolve())] + ([str(PROJECT_ROOT / p)] if not p.is_absolute() else [])
        raise DataNotFoundError(f"{what} not found: '{path}' (looked in {looked}). Fix the path or create the file.")
    return found
