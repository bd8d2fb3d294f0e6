"""The one callable every attack sees: images in [0, 1] -> logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clipure_lit.purifiers.base import IdentityPurifier, Purifier


class PurifiedZeroShotClassifier(nn.Module):
    """``logits = head(latent(backbone(pixel(x))))``.

    x: ``[B, 3, H, W]`` in [0, 1] at attack resolution -> logits ``[B, K]``. Stochastic purifiers draw from the
    classifier's own ``torch.Generator`` (seeded by ``seed``, reset with :meth:`reset_generator`), so runs are
    reproducible and unaffected by attacks that reseed the global RNG.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, pixel: Purifier | None = None, latent: Purifier | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pixel = pixel if pixel is not None else IdentityPurifier()
        self.latent = latent if latent is not None else IdentityPurifier()
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    @property
    def purifiers(self) -> list[Purifier]:
        return [self.pixel, self.latent]

    @property
    def stochastic(self) -> bool:
        return any(p.stochastic for p in self.purifiers)

    @property
    def batch_coupled(self) -> bool:
        return any(p.batch_coupled for p in self.purifiers)

    @property
    def needs_grad(self) -> bool:
        return any(p.needs_grad for p in self.purifiers)

    def reset_generator(self, seed: int | None = None) -> None:
        """Restart the purifiers' random stream (at the start of every evaluation pass)."""
        if seed is not None:
            self.seed = int(seed)
        self._generator = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def embed(self, x: Tensor) -> Tensor:
        """Unit image embeddings ``[B, D]`` after pixel purification, before latent purification."""
        generator = self.generator(x.device) if self.pixel.stochastic else None
        return self.backbone.encode_image(self.pixel(x, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        z = self.embed(x)  # [B, D]
        generator = self.generator(x.device) if self.latent.stochastic else None
        return self.head(self.latent(z, generator=generator))  # [B, K]
