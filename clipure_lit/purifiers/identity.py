"""Registration of the identity purifier (the baseline)."""

from clipure_lit.purifiers.base import BuildContext, IdentityPurifier, Space
from clipure_lit.purifiers.registry import register_purifier


@register_purifier("identity", Space.any, summary="no purification (the undefended classifier)")
def build_identity(cfg: None, ctx: BuildContext) -> IdentityPurifier:
    return IdentityPurifier()
