"""clipure_lit: adversarially robust zero-shot CLIP classification by purification, on PyTorch Lightning.

Importing the package does no work: heavy libraries (torch, open_clip, Lightning) are imported by the modules
that need them. The public entry points are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_config": "clipure_lit.config.loader",
    "ConfigError": "clipure_lit.errors",
    "ClipureError": "clipure_lit.errors",
    "run_eval": "clipure_lit.evaluation",
    "build_classifier": "clipure_lit.evaluation",
    "list_purifiers": "clipure_lit.purifiers",
    "build_purifier": "clipure_lit.purifiers",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipure_lit' has no attribute {name!r}")
