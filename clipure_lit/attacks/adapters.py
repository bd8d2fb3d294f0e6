"""Use any image classifier (``[B, 3, H, W]`` in [0, 1] -> logits) where the framework expects a
:class:`~clipure_lit.models.classifier.PurifiedZeroShotClassifier`.

:func:`classifier_from_model` returns a real ``PurifiedZeroShotClassifier`` whose "backbone" is the model (its
``encode_image`` returns the model's logits) and whose head passes them through, so the Lightning module, the
robust-eval callback, gradient modes, EOT and transfer all work unchanged. A pixel purifier may be put in front
of the model; latent purifiers are not supported (the model's output is logits, not a CLIP embedding).
"""

from __future__ import annotations

from torch import Tensor, nn

from clipure_lit.models.classifier import PurifiedZeroShotClassifier
from clipure_lit.purifiers.base import Purifier


class ModelBackbone(nn.Module):
    """``encode_image(x)`` = ``model(x)`` (logits ``[B, K]``). The model receives raw [0, 1] images: any
    normalisation must happen inside it, so that the attack's epsilon-ball is in pixel space."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode_image(self, x: Tensor) -> Tensor:
        return self.model(x)


class PassThroughHead(nn.Module):
    """Returns its input: the wrapped model already produced logits."""

    def forward(self, logits: Tensor) -> Tensor:
        return logits


def classifier_from_model(model: nn.Module, pixel: Purifier | None = None, seed: int = 0):
    """Wrap ``model`` (in eval mode, frozen) as a ``PurifiedZeroShotClassifier``.

    Args:
        model: maps images ``[B, 3, H, W]`` in [0, 1] to logits ``[B, K]``.
        pixel: optional pixel-space purifier applied before the model.
        seed: seed of the purifier generator (stochastic pixel purifiers).
    """
    model = model.eval().requires_grad_(False)
    return PurifiedZeroShotClassifier(ModelBackbone(model), PassThroughHead(), pixel=pixel, seed=seed).eval()
