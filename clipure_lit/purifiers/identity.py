"""Registration of the identity purifier (the baseline)."""

from clipure_lit.purifiers.base import IdentityPurifier, Space
from clipure_lit.purifiers.registry import register_purifier


@register_purifier("identity", Space.any, "no purification (the undefended classifier)")
def build_identity(ctx) -> IdentityPurifier:
    return IdentityPurifier()
