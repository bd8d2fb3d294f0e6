"""Build the dalle2_pytorch (1.15.6) ``DiffusionPrior`` of CLIPure-Diff and load its weights.

The architecture comes from ``purifier.clipure_diff.prior`` (:class:`DiffPriorCfg`; defaults: the released LAION ViT-L/14 prior, reference
section 5.1). The prior is built without a CLIP (``clip=None``): image embeddings come from our own backbone,
with gradients, instead of dalle2's ``@torch.no_grad()`` adapter.

Checkpoints: a raw state dict, or a dict holding it under ``ema_model`` (preferred, as released) or ``model``;
``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``, ``.safetensors`` with safetensors. Keys of
a CLIP adapter saved with the prior (``clip.*``) are dropped, every other key must match exactly (strict).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.utils.paths import find_path

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("ema_model", "model", "state_dict")  # in order of preference
_DROPPED_PREFIXES = ("clip.",)  # the frozen CLIP adapter some training scripts save inside the prior
_MAX_LISTED = 8
_BETA_SCHEDULES = ("cosine", "linear", "quadratic", "jsd", "sigmoid")  # dalle2_pytorch NoiseScheduler
# Where the checkpoint key lives, named in messages (the prior is configured under CLIPure-Diff's section).
CHECKPOINT_KEY = "purifier.clipure_diff.prior.checkpoint"


@dataclass
class DiffPriorCfg:
    """Architecture and weights of the dalle2_pytorch DiffusionPrior used by CLIPure-Diff.

    Defaults are the released LAION ViT-L/14 prior (dim 768, depth 24, 32 heads, 1000 steps, cosine, x0).
    """

    dim: int = 768
    depth: int = 24
    heads: int = 32
    dim_head: int = 64
    ff_mult: int = 4
    normformer: bool = True
    # Dropout rates are architecture fields only: the prior always runs in eval mode.
    attn_dropout: float = 0.05
    ff_dropout: float = 0.05
    # Number of (null) text-token slots of the network (dalle2 default 256, as released); 1 for small test priors.
    max_text_len: int = 256
    timesteps: int = 1000
    beta_schedule: str = "cosine"
    predict_x_start: bool = True
    # Scale applied to unit embeddings before diffusion (null: sqrt(dim), as the prior was trained).
    image_embed_scale: Optional[float] = None
    # Path to the prior checkpoint (state dict, or a dict with ``ema_model``/``model``). null: random weights
    # (only for tests).
    checkpoint: Optional[str] = None

    def validate(self, where: str) -> None:
        """Value checks (``where``: the key prefix, e.g. ``purifier.clipure_diff.prior``)."""
        for key in ("dim", "depth", "heads", "dim_head", "ff_mult", "max_text_len", "timesteps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}={getattr(self, key)} must be >= 1.")
        if self.beta_schedule not in _BETA_SCHEDULES:
            raise ConfigError(f"{where}.beta_schedule='{self.beta_schedule}' is not one of {list(_BETA_SCHEDULES)} "
                              "(released: cosine).")
        if self.image_embed_scale is not None and not self.image_embed_scale > 0:
            raise ConfigError(f"{where}.image_embed_scale={self.image_embed_scale} must be > 0, or null for sqrt(dim).")


def build_prior(cfg: Any, init_seed: int = 0) -> nn.Module:
    """A ``DiffusionPrior`` from a ``DiffPriorCfg``, randomly initialised from ``init_seed``, in eval mode, frozen.

    Text conditioning is dropped for good (``text_cond_drop_prob=1``: the network sees its learned null text
    tokens, which is how the released code, under dalle2_pytorch 0.15.4, used the prior). The noisy image
    embedding is the denoiser's input and must never be dropped (``image_cond_drop_prob=0``).
    """
    with torch.random.fork_rng(devices=[]):
        # Random initialisation must not depend on, or disturb, the global RNG (random priors are test fixtures).
        torch.manual_seed(init_seed)
        prior = _construct(cfg)
    return prior.eval().requires_grad_(False)


def _construct(cfg: Any) -> nn.Module:
    # heavy: dalle2_pytorch takes ~2.5 s to import (its own CLIP, x-clip, einops stacks); only CLIPure-Diff needs it
    from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork

    net = DiffusionPriorNetwork(
        dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head, ff_mult=cfg.ff_mult,
        normformer=cfg.normformer, attn_dropout=cfg.attn_dropout, ff_dropout=cfg.ff_dropout,
        num_timesteps=cfg.timesteps,  # learned time embeddings, one per step, as released
        max_text_len=cfg.max_text_len,
    )
    return DiffusionPrior(
        net=net, clip=None, image_embed_dim=cfg.dim, timesteps=cfg.timesteps, beta_schedule=cfg.beta_schedule,
        predict_x_start=cfg.predict_x_start, loss_type="l2", condition_on_text_encodings=False,
        text_cond_drop_prob=1.0, image_cond_drop_prob=0.0, image_embed_scale=cfg.image_embed_scale,
    )


def _read_checkpoint(path: Path) -> dict:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as exc:  # truncated, or not a safetensors file
            raise ConfigError(f"Could not read the prior checkpoint {CHECKPOINT_KEY}='{path}' as safetensors ({exc}): the "
                              "file is truncated or not a safetensors file. Fix: download or export it again (shipped "
                              "files: `git checkout -- checkpoints/`; their SHA-256 is in checkpoints/SHA256SUMS).") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects other than tensors and containers
        raise ConfigError(
            f"Could not read the prior checkpoint {CHECKPOINT_KEY}='{path}' with "
            f"torch.load(weights_only=True): {str(exc).splitlines()[0]}. Only tensors and plain containers are "
            "accepted. Fix: re-save the state dict alone (torch.save(ckpt['ema_model'], 'prior_sd.pt')) or as .safetensors."
        ) from None


def extract_state_dict(obj: Any, where: str) -> dict:
    """The state dict inside a checkpoint object (raw, or under ``ema_model``/``model``/``state_dict``)."""
    if not isinstance(obj, dict):
        raise ConfigError(f"Prior checkpoint '{where}' holds a {type(obj).__name__}, expected a state dict.")
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ConfigError(f"Prior checkpoint '{where}' holds no tensors and none of the keys {list(_WRAPPER_KEYS)} "
                      f"(top-level keys: {sorted(obj)[:_MAX_LISTED]}). Fix: point to a DiffusionPrior state dict.")


def _listed(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{keys[:_MAX_LISTED]}{more}"


def load_prior_weights(prior: nn.Module, path_str: str) -> None:
    """Load ``path_str`` into ``prior`` strictly; a mismatch is a :class:`ConfigError` naming the keys."""
    path = find_path(path_str)
    if path is None or not path.is_file():
        raise DataNotFoundError(
            f"Prior checkpoint {CHECKPOINT_KEY}='{path_str}' not found. Fix: download the LAION "
            "ViT-L/14 prior (see docs/purifiers.md, 'Prior checkpoints') and set the key to its path."
        )
    state = extract_state_dict(_read_checkpoint(path), str(path))
    dropped = [k for k in state if k.startswith(_DROPPED_PREFIXES)]
    state = {k: v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}
    if dropped:
        log.info("Prior checkpoint %s: ignored %d keys of a saved CLIP adapter (%s...).", path, len(dropped), dropped[0])
    expected = prior.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        raise ConfigError(
            f"Prior checkpoint '{path}' does not match the architecture in purifier.clipure_diff.prior "
            f"(missing keys: {_listed(missing)}; unexpected keys: {_listed(unexpected)}; shape mismatches: "
            f"{_listed(shapes)}). Fix: set purifier.clipure_diff.prior.* (dim, depth, heads, dim_head, max_text_len, "
            "timesteps) to the values the checkpoint was trained with."
        )
    prior.load_state_dict(state, strict=True)


def load_prior(cfg: Any, init_seed: int = 0) -> nn.Module:
    """Build from ``cfg`` and load ``cfg.checkpoint`` (random weights from ``init_seed``, with a warning, when it
    is null)."""
    prior = build_prior(cfg, init_seed)
    if cfg.checkpoint is None:
        log.warning("%s is null: CLIPure-Diff uses a RANDOMLY INITIALISED prior "
                    "(fine for tests, meaningless for results).", CHECKPOINT_KEY)
    else:
        load_prior_weights(prior, str(cfg.checkpoint))
    return prior
