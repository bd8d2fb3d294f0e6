"""Purifiers: the contract (``base``), the registry, and one module per purifier.

Importing this package registers every built-in purifier; heavy dependencies are imported inside factories.
"""

from clipure_lit.purifiers import identity  # noqa: F401  (registers)
from clipure_lit.purifiers import clipure_cos, clipure_diff  # noqa: F401  (register; dalle2 is imported lazily)
from clipure_lit.purifiers import pixel_clipure, pixel_diffusion, pixel_transforms  # noqa: F401  (register; diffusers is imported lazily)
from clipure_lit.purifiers.base import BuildContext, IdentityPurifier, Purifier, Space
from clipure_lit.purifiers.registry import build_purifier, get_entry, list_purifiers, register_purifier

__all__ = ["BuildContext", "IdentityPurifier", "Purifier", "Space", "build_purifier", "get_entry", "list_purifiers", "register_purifier"]
