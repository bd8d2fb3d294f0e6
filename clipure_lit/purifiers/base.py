"""The purifier contract shared by pixel-space and latent-space purifiers.

* pixel purifiers map images ``[B, 3, H, W]`` in [0, 1] to images of the same shape, in [0, 1];
* latent purifiers map unit-norm image embeddings ``[B, D]`` to unit-norm embeddings ``[B, D]``.

Each purifier declares its ``space``, whether it is ``stochastic`` (its output depends on random draws, which
come only from the ``generator`` it is given, never from the global RNG that AutoAttack reseeds), whether it is
``batch_coupled`` (output i depends on other samples of the batch), whether it is ``differentiable`` (autograd
gives a meaningful input gradient) and whether it ``needs_grad`` (runs autograd inside its forward, so the test
loop must not be in inference mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn


class Space(str, Enum):
    pixel = "pixel"
    latent = "latent"
    any = "any"  # works in both spaces (the identity)


class Purifier(nn.Module):
    """Base class; subclasses implement :meth:`forward`."""

    space: ClassVar[Space] = Space.any
    stochastic: ClassVar[bool] = False
    batch_coupled: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True
    needs_grad: ClassVar[bool] = False

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def generator_or_fallback(self, generator: torch.Generator | None, device: torch.device) -> torch.Generator:
        """``generator`` when given (the classifier's); otherwise a private stream seeded with ``self.seed`` (for
        direct calls), never the global RNG that AutoAttack reseeds."""
        if generator is not None:
            return generator
        fallback = getattr(self, "_fallback", None)
        if fallback is None or fallback.device != device:
            fallback = torch.Generator(device=device).manual_seed(int(getattr(self, "seed", 0)))
            self._fallback = fallback
        return fallback

    def describe(self) -> dict[str, Any]:
        """Properties logged with every run."""
        return {"class": type(self).__name__, "space": self.space.value, "stochastic": self.stochastic,
                "batch_coupled": self.batch_coupled, "differentiable": self.differentiable}


class IdentityPurifier(Purifier):
    """``x -> x``: the undefended baseline, valid in both spaces."""

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return x


@dataclass
class BuildContext:
    """What a purifier factory may use: the resolved run config and the loaded CLIP pieces."""

    cfg: Any  # RunCfg as a DictConfig
    backbone: Any  # ClipBackbone
    tokenizer: Callable
    text_cache: Any  # TextEmbeddingCache
    classnames: list[str]
