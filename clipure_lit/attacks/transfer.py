"""Transfer attacks: adversarial examples crafted on a source classifier, scored on the defended one.

Sources (``attack.entries.<name>.transfer_from``):

* ``undefended``: the same backbone and zero-shot head with identity purifiers, i.e. plain CLIP. If the
  purifier is close to the identity, these examples fool the defended classifier too, whatever its gradients.
"""

from __future__ import annotations

from clipure_lit.attacks.gradient_modes import make_view
from clipure_lit.attacks.spec import TRANSFER_SOURCES
from clipure_lit.attacks.config import AttackGradMode, AttackPrecision
from clipure_lit.errors import ConfigError


def transfer_source(classifier, source: str, precision: AttackPrecision, fp32_backbone=None):
    """The classifier the examples are crafted on.

    Raises:
        ConfigError: ``source`` is not one of :data:`TRANSFER_SOURCES`.
    """
    if source == "undefended":
        return make_view(classifier, AttackGradMode.purifier, precision, undefended=True, fp32_backbone=fp32_backbone)
    raise ConfigError(f"transfer_from='{source}' is not supported; valid: {list(TRANSFER_SOURCES)}.")
