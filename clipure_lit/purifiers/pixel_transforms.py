"""Classic input transforms as pixel purifiers: JPEG compression, bit-depth reduction, Gaussian noise.

These are the baselines known to be broken by adaptive attacks (Athalye et al. 2018: BPDA for the
non-differentiable ones, EOT for the random one). All map ``x [B, 3, H, W]`` in [0, 1] to the same shape in [0, 1]:

* ``jpeg``:            x -> decode(encode_JPEG(round(255 x), quality)) / 255          (PIL, per image)
* ``bit_depth``:       x -> round(x (2^b - 1)) / (2^b - 1)
* ``gaussian_noise``:  x -> clamp(x + sigma n, 0, 1),   n ~ N(0, I) drawn from the given generator

JPEG and bit depth are piecewise constant in x, so their true derivative is 0 almost everywhere: autograd
returns exactly that (a zero input gradient, connected to the graph so attacks still run) and both declare
``differentiable=False``. The masking checks then flag them unless the attack uses ``grad_mode=bpda_identity``
(straight-through, done by the attack side, not here).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.base import BuildContext, Purifier, PurifierConfig, Space
from clipure_lit.purifiers.registry import register_purifier


@dataclass
class JpegCfg(PurifierConfig):
    """``purifier.jpeg.*``."""

    # PIL JPEG quality, 1 (worst) .. 95 (PIL's useful maximum); 75 is the usual input-transform baseline.
    quality: int = 75

    def validate(self, where: str) -> None:
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"{where}.quality={self.quality} must be in [1, 100] (75 is the usual baseline).")


@dataclass
class BitDepthCfg(PurifierConfig):
    """``purifier.bit_depth.*``."""

    # Bits per colour channel kept (1..8): x -> round(x * (2^bits - 1)) / (2^bits - 1).
    bits: int = 5

    def validate(self, where: str) -> None:
        if not 1 <= self.bits <= 8:
            raise ConfigError(f"{where}.bits={self.bits} must be in [1, 8].")


@dataclass
class GaussianNoiseCfg(PurifierConfig):
    """``purifier.gaussian_noise.*``."""

    # Standard deviation of the additive noise in [0, 1] pixel units.
    sigma: float = 0.05
    # Clamp the noisy image back to [0, 1] (the purifier contract); false only for analysis.
    clamp: bool = True

    def validate(self, where: str) -> None:
        if not self.sigma >= 0.0:
            raise ConfigError(f"{where}.sigma={self.sigma} must be >= 0 (pixel units).")


def _zero_grad_link(out: Tensor, x: Tensor) -> Tensor:
    """``out`` with ``d out / d x = 0`` recorded in the graph (the a.e. derivative of a quantiser), so that
    ``autograd.grad`` w.r.t. ``x`` returns zeros instead of raising "does not require grad"."""
    return out + 0.0 * x if x.requires_grad else out


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Encode and decode every image of ``x [B, 3, H, W]`` (in [0, 1]) as an RGB JPEG with PIL at ``quality``.

    Returns a new ``[B, 3, H, W]`` tensor on ``x``'s device and dtype, with values in {0, 1/255, ..., 1};
    it carries no autograd history.
    """
    pixels = (x.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)  # [B, 3, H, W]
    arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, 3]
    decoded = []
    for image in arrays:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as reloaded:
            decoded.append(np.asarray(reloaded.convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)  # [B, 3, H, W] uint8
    return out.to(device=x.device, dtype=x.dtype) / 255.0


class JpegPurifier(Purifier):
    """JPEG compression at ``quality`` (PIL). Deterministic, per-sample; zero gradient (see module docstring)."""

    space = Space.pixel
    differentiable = False

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        if not 1 <= int(quality) <= 100:
            raise ConfigError(f"purifier.jpeg.quality={quality} must be an integer in [1, 100] (75 is the usual baseline).")
        self.quality = int(quality)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return _zero_grad_link(jpeg_roundtrip(x, self.quality), x)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "quality": self.quality}


class BitDepthPurifier(Purifier):
    """Keep ``bits`` bits per channel: ``round(x (2^b - 1)) / (2^b - 1)`` (feature squeezing, Xu et al. 2018)."""

    space = Space.pixel
    differentiable = False

    def __init__(self, bits: int = 5) -> None:
        super().__init__()
        if not 1 <= int(bits) <= 8:
            raise ConfigError(f"purifier.bit_depth.bits={bits} must be an integer in [1, 8].")
        self.bits = int(bits)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        levels = float(2 ** self.bits - 1)
        return torch.round(x.clamp(0.0, 1.0) * levels) / levels  # round has a zero derivative in autograd

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bits": self.bits}


class GaussianNoisePurifier(Purifier):
    """``clamp(x + sigma n, 0, 1)`` with ``n ~ N(0, I)`` from the given generator (stochastic, differentiable).

    Without a generator (called outside a classifier) a private stream seeded with ``seed`` is used, never the
    global RNG.
    """

    space = Space.pixel
    stochastic = True

    def __init__(self, sigma: float = 0.05, clamp: bool = True, seed: int = 0) -> None:
        super().__init__()
        if not float(sigma) >= 0.0:
            raise ConfigError(f"purifier.gaussian_noise.sigma={sigma} must be >= 0 (pixel units, images in [0, 1]).")
        self.sigma, self.clamp, self.seed = float(sigma), bool(clamp), int(seed)
        self._fallback: torch.Generator | None = None

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        gen = self.generator_or_fallback(generator, x.device)
        noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)  # [B, 3, H, W]
        out = x + self.sigma * noise
        return out.clamp(0.0, 1.0) if self.clamp else out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sigma": self.sigma, "clamp": self.clamp}


@register_purifier("jpeg", Space.pixel, JpegCfg, "JPEG compression (PIL); non-differentiable: attack with bpda_identity")
def build_jpeg(cfg: JpegCfg, ctx: BuildContext) -> JpegPurifier:
    return JpegPurifier(cfg.quality)


@register_purifier("bit_depth", Space.pixel, BitDepthCfg, "bit-depth reduction; non-differentiable: attack with bpda_identity")
def build_bit_depth(cfg: BitDepthCfg, ctx: BuildContext) -> BitDepthPurifier:
    return BitDepthPurifier(cfg.bits)


@register_purifier("gaussian_noise", Space.pixel, GaussianNoiseCfg, "additive Gaussian noise (random: attack with eot)")
def build_gaussian_noise(cfg: GaussianNoiseCfg, ctx: BuildContext) -> GaussianNoisePurifier:
    return GaussianNoisePurifier(cfg.sigma, cfg.clamp, seed=ctx.seed)
