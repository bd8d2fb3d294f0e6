"""DiffPure-style purification (Nie et al. 2022) with a ``diffusers`` ``UNet2DModel`` and its schedulers.

With the training schedule abar_t (T steps), n = round(t_star * T) noise levels and K reverse steps of stride
s = n / K (the chain visits t_1 = n - 1, n - 1 - s, ..., s - 1, then 0):

    h0  = 2 * resize_S(x) - 1                              [B, 3, S, S], S = the UNet's sample_size
    h   = sqrt(abar_{t_1}) * h0 + sqrt(1 - abar_{t_1}) * n0          n0 ~ N(0, I)       (scheduler.add_noise)
    h   = scheduler.step(unet(h, t), t, h).prev_sample    for t in t_1, ..., s - 1      (DDPM or DDIM)
    out = clamp(resize_{H,W}((h + 1) / 2), 0, 1)

so with s = 1 this is DiffPure's discrete chain (noise to t* and denoise through every level). All randomness
(n0, and the per-step noise of DDPM / DDIM with eta > 0) comes from the ``generator`` argument: n0 and one seed
per step are drawn from it before the chain; each step's noise comes from a private generator seeded with its
seed, so a checkpointed step recomputes exactly the same noise.

Gradients: the whole chain is differentiable (exact backpropagation; ``clip_sample=false`` keeps the x0
prediction unclamped). With ``gradient_checkpointing`` each (UNet call + scheduler step) runs under
``torch.utils.checkpoint``: only the [B, 3, S, S] input of every step is stored and the step is recomputed in the
backward pass, so memory no longer grows with the UNet activations of every step.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from clipure_lit.clip.config import ResizeMode
from clipure_lit.clip.weights import _hf_reachable
from clipure_lit.errors import ConfigError, DataNotFoundError, WeightsUnavailableError
from clipure_lit.purifiers.base import BuildContext, Purifier, PurifierConfig, Space
from clipure_lit.purifiers.registry import register_purifier
from clipure_lit.utils.paths import find_path

log = logging.getLogger(__name__)

_SEED_HIGH = 2**62
KEY = "purifier.diffpure"


class DiffusionSampler(str, Enum):
    """Reverse process of DiffPure: ``ddpm`` (ancestral, stochastic) or ``ddim`` (deterministic when
    ``ddim_eta=0``; the forward diffusion to t* is random in both)."""

    ddpm = "ddpm"
    ddim = "ddim"


@dataclass
class DiffPureUNetCfg:
    """Architecture of a randomly initialised ``diffusers.UNet2DModel``, used when ``purifier.diffpure.model`` is
    null (tests and smoke runs only: a random UNet does not denoise). Defaults: a 0.7 M-parameter 32x32 UNet."""

    sample_size: int = 32
    block_out_channels: List[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    down_block_types: List[str] = field(default_factory=lambda: ["DownBlock2D", "AttnDownBlock2D"])
    up_block_types: List[str] = field(default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D"])
    # GroupNorm groups; must divide every entry of block_out_channels.
    norm_num_groups: int = 32
    # Seed of the random initialisation (the global RNG is neither used nor disturbed).
    init_seed: int = 0


@dataclass
class DiffPureCfg(PurifierConfig):
    """Pixel-space diffusion purification (Nie et al. 2022): diffuse the image to t*, denoise back to 0."""

    # A diffusers checkpoint: a hub id (``google/ddpm-cifar10-32``) or a local folder written by
    # ``save_pretrained``. null: a random UNet built from ``unet`` (tests only; a warning is logged).
    model: Optional[str] = None
    # Folder of the UNet inside ``model`` (null: the root if it holds config.json, else ``unet/``).
    subfolder: Optional[str] = None
    # Hugging Face cache folder for hub ids (null: the hub's default).
    cache_dir: Optional[str] = None
    # Diffusion time t* as a fraction of the training schedule (DiffPure CIFAR-10: 0.1): the image is noised to
    # timestep round(t_star * T) - 1 and denoised to 0.
    t_star: float = 0.1
    # Reverse steps (null: one per noise level, round(t_star * T), DiffPure's full chain). Must divide
    # round(t_star * T): the chain visits every (round(t_star * T) / num_steps)-th timestep.
    num_steps: Optional[int] = None
    sampler: DiffusionSampler = DiffusionSampler.ddpm
    # DDIM noise weight (0: deterministic reverse process; 1: DDPM-like variance). Ignored by ddpm.
    ddim_eta: float = 0.0
    # Clamp the predicted x0 to [-1, 1] at every step (diffusers' default for sampling). false: no clamp, so
    # the attack gradient is not zeroed where the prediction saturates.
    clip_sample: bool = False
    # Take the noise schedule from the checkpoint's scheduler_config.json when it has one; otherwise (and for a
    # random UNet) the keys below define it.
    schedule_from_checkpoint: bool = True
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    # Interpolation between the attack resolution and the UNet's sample_size (used only when they differ).
    resize_mode: ResizeMode = ResizeMode.bilinear
    # Recompute each reverse step (UNet call + scheduler step) in the backward pass instead of storing its
    # activations: same gradient, memory per step reduced to one image tensor.
    gradient_checkpointing: bool = True
    unet: DiffPureUNetCfg = field(default_factory=DiffPureUNetCfg)

    def validate(self, where: str) -> None:
        diffusion_timesteps(self.num_train_timesteps, self.t_star, self.num_steps, self.sampler)
        if not self.ddim_eta >= 0.0:
            raise ConfigError(f"{where}.ddim_eta={self.ddim_eta} must be >= 0 (0: deterministic DDIM).")
        u = self.unet
        levels = {len(u.block_out_channels), len(u.down_block_types), len(u.up_block_types)}
        if u.sample_size < 8 or len(levels) != 1:
            raise ConfigError(f"{where}.unet: sample_size={u.sample_size} must be >= 8 and block_out_channels, "
                              "down_block_types and up_block_types must have one entry per resolution level.")

    def check_files(self, where: str) -> None:
        if self.model is not None:
            locate_checkpoint(self.model, self.subfolder, self.cache_dir)

    def weight_files(self, where: str) -> dict[str, str]:
        return {f"{where}.model": self.model} if self.model else {}


def diffusion_timesteps(num_train_timesteps: int, t_star: float, num_steps: int | None,
                        sampler: DiffusionSampler | str = DiffusionSampler.ddpm) -> list[int]:
    """The reverse chain ``[t_1, ..., s - 1]`` (descending, K entries) for t* and K steps (module docstring).

    Raises:
        ConfigError: t* outside (0, 1], K not dividing the number of noise levels, or (DDIM) a stride the
            diffusers DDIM scheduler cannot represent.
    """
    T = int(num_train_timesteps)
    if not 0.0 < float(t_star) <= 1.0:
        raise ConfigError(f"purifier.diffpure.t_star={t_star} must be in (0, 1] (a fraction of the {T}-step schedule; "
                          "DiffPure uses 0.1 on CIFAR-10).")
    levels = round(float(t_star) * T)
    if levels < 1:
        raise ConfigError(f"purifier.diffpure.t_star={t_star} gives round(t_star * {T}) = 0 noise levels. Fix: t_star >= {0.5 / T:.2g}.")
    k = levels if num_steps is None else int(num_steps)
    if k < 1 or levels % k != 0:
        divisors = [d for d in range(1, levels + 1) if levels % d == 0]
        raise ConfigError(f"purifier.diffpure.num_steps={num_steps} must divide the number of noise levels "
                          f"round(t_star * T) = round({t_star} * {T}) = {levels}, so that the chain has a constant stride. "
                          f"Valid values: {divisors[:24]}{' ...' if len(divisors) > 24 else ''}, or null (= {levels}).")
    stride = levels // k
    if DiffusionSampler(sampler) == DiffusionSampler.ddim and T // (T // stride) != stride:
        raise ConfigError(f"purifier.diffpure.sampler=ddim with stride {stride} (= {levels} noise levels / {k} steps): diffusers' "
                          f"DDIMScheduler steps by num_train_timesteps // num_inference_steps, which cannot equal {stride} "
                          f"for T={T}. Fix: a stride that divides {T} (change num_steps or t_star), or sampler=ddpm.")
    return [levels - 1 - i * stride for i in range(k)]


# --------------------------------------------------------------------------------------------- checkpoint loading
def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _looks_like_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or os.sep != "/" and os.sep in name


def locate_checkpoint(model: str, subfolder: str | None, cache_dir: str | None) -> tuple[str, str | None]:
    """Where to load the UNet from: ``(local folder or hub id, subfolder or None)``, checked within seconds.

    A local folder (looked up in the current directory, then the project root) must hold ``config.json`` at its
    root or in ``unet/`` (or in ``subfolder``). A hub id must be in the Hugging Face cache, or downloadable (one
    short metadata request; none when ``HF_HUB_OFFLINE=1``). diffusers itself fails offline with a misleading
    "does not appear to have a file named config.json", and retries for a long time without network.

    Raises:
        DataNotFoundError: neither a local folder nor a cached hub id, with what was tried and the fix.
        WeightsUnavailableError: a hub id that is not cached and cannot be downloaded now.
    """
    candidates = [subfolder] if subfolder else ["", "unet"]
    found = find_path(model)
    if found is not None:
        if not found.is_dir():
            raise ConfigError(f"purifier.diffpure.model='{model}' is a file; expected a folder written by "
                              "UNet2DModel.save_pretrained (config.json + diffusion_pytorch_model.safetensors) or a hub id.")
        for sub in candidates:
            if (found / sub / "config.json").is_file():
                return str(found), sub or None
        raise DataNotFoundError(
            f"purifier.diffpure.model='{model}' (folder {found}) has no config.json in "
            f"{[str(found / s / 'config.json') for s in candidates]}. Fix: point it at a folder written by "
            "UNet2DModel.save_pretrained (or a pipeline folder with unet/), or set purifier.diffpure.subfolder.")
    tried = f"no local folder '{model}' (looked in {Path.cwd()} and the project root)"
    if _looks_like_local_path(model):
        raise DataNotFoundError(f"purifier.diffpure.model='{model}': {tried}. Fix: the path of a folder written by "
                                "save_pretrained, a hub id such as google/ddpm-cifar10-32, or null for a random UNet (tests).")
    from huggingface_hub import try_to_load_from_cache  # heavy: ~0.1 s (httpx); only a hub id needs it

    for sub in candidates:
        filename = f"{sub}/config.json" if sub else "config.json"
        if isinstance(try_to_load_from_cache(model, filename, cache_dir=cache_dir), str):
            return model, sub or None
    cache = cache_dir or "the default Hugging Face cache (HF_HOME)"
    fix = (f"Fix: on a machine with network run `hf download {model} --local-dir <folder>` and pass "
           "purifier.diffpure.model=<folder> (or copy a filled Hugging Face cache here), or use "
           "purifier=diffpure_tiny (random UNet) for a smoke test.")
    if _hub_offline():
        raise DataNotFoundError(f"purifier.diffpure.model='{model}': {tried}, and hub id '{model}' is not in {cache} "
                                f"(HF_HUB_OFFLINE=1, so no download was attempted). {fix}")

    reachable, reason = _hf_reachable(model, "config.json")
    if not reachable:
        raise WeightsUnavailableError(f"purifier.diffpure.model='{model}': {tried}; hub id '{model}' is not in {cache} and "
                                      f"cannot be downloaded ({reason}). {fix}")
    return model, None


def _read_unet_config(source: str, subfolder: str | None, cache_dir: str | None) -> dict:
    from diffusers import UNet2DModel  # heavy: ~5 s to import; only DiffPure needs it

    config = UNet2DModel.load_config(source, subfolder=subfolder, cache_dir=cache_dir)
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel" or int(config.get("in_channels", 3)) != 3 or int(config.get("out_channels", 3)) not in (3, 6):
        raise ConfigError(f"purifier.diffpure.model='{source}' holds a {cls} with in_channels={config.get('in_channels')}; "
                          "DiffPure needs a pixel-space diffusers UNet2DModel on RGB images (e.g. google/ddpm-cifar10-32). "
                          "Latent or text-conditional models (Stable Diffusion) are not supported.")
    return config


def load_unet(cfg: Any) -> tuple[nn.Module, str, str | None]:
    """``(UNet2DModel in eval mode, frozen; its source; the folder/hub id to read a scheduler config from)``.

    ``cfg`` is ``purifier.diffpure``. ``cfg.model`` null builds a random UNet from ``cfg.unet`` (seeded, without
    touching the global RNG); the third element is then None.
    """
    from diffusers import UNet2DModel  # heavy: ~5 s to import; only DiffPure needs it

    if cfg.model is None:
        u = cfg.unet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(u.init_seed))
            try:
                unet = UNet2DModel(sample_size=int(u.sample_size), block_out_channels=tuple(u.block_out_channels),
                                   layers_per_block=int(u.layers_per_block), down_block_types=tuple(u.down_block_types),
                                   up_block_types=tuple(u.up_block_types), norm_num_groups=int(u.norm_num_groups))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(f"purifier.diffpure.unet does not describe a valid UNet2DModel: {exc}. Fix: one block type "
                                  "per entry of block_out_channels, norm_num_groups dividing every channel count.") from None
        log.warning("DiffPure uses a randomly initialised UNet (purifier.diffpure.model=null): it does not denoise. "
                    "For tests and smoke runs only.")
        return unet.eval().requires_grad_(False), "random", None
    source, subfolder = locate_checkpoint(cfg.model, cfg.subfolder, cfg.cache_dir)
    _read_unet_config(source, subfolder, cfg.cache_dir)
    try:
        unet = UNet2DModel.from_pretrained(source, subfolder=subfolder, cache_dir=cfg.cache_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsUnavailableError(f"Could not load the UNet of purifier.diffpure.model='{cfg.model}' from {source}"
                                      f"{'/' + subfolder if subfolder else ''}: {str(exc).splitlines()[0]}. Fix: check that "
                                      "the folder holds config.json and diffusion_pytorch_model.safetensors (or .bin) "
                                      "written by the same diffusers UNet2DModel.") from None
    return unet.eval().requires_grad_(False), f"{cfg.model}{'/' + subfolder if subfolder else ''}", source


def _checkpoint_schedule(source: str, cache_dir: str | None) -> dict | None:
    """The checkpoint's scheduler config (``scheduler_config.json`` at its root or in ``scheduler/``), or None."""
    from diffusers import DDPMScheduler  # heavy: ~5 s to import; only DiffPure needs it

    for sub in (None, "scheduler"):
        try:
            return dict(DDPMScheduler.load_config(source, subfolder=sub, cache_dir=cache_dir))
        except (OSError, ValueError):
            continue
    return None


def build_scheduler(cfg: Any, checkpoint_schedule: dict | None):
    """The DDPM or DDIM scheduler: schedule keys from the checkpoint (when present and
    ``schedule_from_checkpoint``), else from ``cfg``; ``clip_sample`` always from ``cfg``; timesteps set to the
    DiffPure chain."""
    from diffusers import DDIMScheduler, DDPMScheduler  # heavy: ~5 s to import; only DiffPure needs it

    sampler = DiffusionSampler(cfg.sampler)
    cls = DDPMScheduler if sampler == DiffusionSampler.ddpm else DDIMScheduler
    config = {"num_train_timesteps": cfg.num_train_timesteps, "beta_schedule": cfg.beta_schedule,
              "beta_start": cfg.beta_start, "beta_end": cfg.beta_end, "prediction_type": cfg.prediction_type}
    if checkpoint_schedule is not None and cfg.schedule_from_checkpoint:
        config = {k: v for k, v in checkpoint_schedule.items() if not k.startswith("_")}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    config = {k: v for k, v in config.items() if k in accepted}
    config["clip_sample"] = bool(cfg.clip_sample)
    try:
        scheduler = cls(**config)
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise ConfigError(f"Invalid DiffPure noise schedule {config}: {exc}. Fix purifier.diffpure.beta_schedule "
                          "(linear, scaled_linear, squaredcos_cap_v2), beta_start/beta_end or prediction_type.") from None
    T = int(scheduler.config.num_train_timesteps)
    timesteps = diffusion_timesteps(T, cfg.t_star, cfg.num_steps, sampler)
    if sampler == DiffusionSampler.ddpm:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        stride = timesteps[0] - timesteps[1] if len(timesteps) > 1 else timesteps[0] + 1
        scheduler.set_timesteps(T // stride)
        scheduler.timesteps = torch.tensor(timesteps, dtype=torch.long)
    return scheduler, timesteps


# ------------------------------------------------------------------------------------------------------ purifier
class DiffPurePurifier(Purifier):
    """Diffuse to t*, denoise back (module docstring). ``x [B, 3, H, W]`` in [0, 1] -> same shape in [0, 1].

    Stochastic (the forward diffusion noise), per-sample (no batch coupling), differentiable (exact backprop;
    every attack-side gradient mode applies: ``full``/``purifier`` backpropagate the chain, ``bpda_identity``
    skips it, ``eot`` averages over draws).
    """

    space = Space.pixel
    stochastic = True

    def __init__(self, unet: nn.Module, scheduler: Any, timesteps: list[int], *, sampler: DiffusionSampler,
                 ddim_eta: float = 0.0, resize_mode: str = "bilinear", gradient_checkpointing: bool = True,
                 seed: int = 0, source: str = "") -> None:
        super().__init__()
        if ddim_eta < 0.0:
            raise ConfigError(f"purifier.diffpure.ddim_eta={ddim_eta} must be >= 0.")
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.timesteps = [int(t) for t in timesteps]
        self.sampler = DiffusionSampler(sampler)
        self.ddim_eta = float(ddim_eta)
        self.resize_mode = str(resize_mode)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.seed, self.source = int(seed), source
        size = unet.config.sample_size
        self.model_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self._fallback: torch.Generator | None = None

    def train(self, mode: bool = True) -> "DiffPurePurifier":
        super().train(mode)
        self.unet.eval()  # frozen: no dropout, ever
        return self

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        if self.resize_mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        return F.interpolate(x, size=size, mode=self.resize_mode, align_corners=False, antialias=shrink)

    def reverse_step(self, h: Tensor, t: int, seed: int, gen_device: torch.device) -> Tensor:
        """One reverse step ``h_t [B, 3, S, S] -> h_{t-s}``: UNet call + scheduler step; its noise (if any) comes
        from a generator seeded with ``seed``, so a recomputation draws the same numbers."""
        eps = self.unet(h, t).sample  # [B, 3 or 6, S, S]
        step_gen = torch.Generator(device=gen_device).manual_seed(seed)
        extra = {"eta": self.ddim_eta} if self.sampler == DiffusionSampler.ddim else {}
        return self.scheduler.step(eps, t, h, generator=step_gen, **extra).prev_sample

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        gen = self.generator_or_fallback(generator, x.device)
        size = tuple(x.shape[-2:])
        h = 2.0 * self._resize(x, self.model_size) - 1.0  # [B, 3, S, S] in [-1, 1]
        noise = torch.randn(h.shape, generator=gen, device=gen.device, dtype=h.dtype).to(h.device)
        seeds = torch.randint(0, _SEED_HIGH, (len(self.timesteps),), generator=gen, device=gen.device).tolist()
        h = self.scheduler.add_noise(h, noise, torch.tensor([self.timesteps[0]], device=h.device))
        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled() and h.requires_grad
        for t, seed in zip(self.timesteps, seeds):
            if use_checkpoint:
                h = checkpoint(self.reverse_step, h, t, int(seed), gen.device, use_reentrant=False)
            else:
                h = self.reverse_step(h, t, int(seed), gen.device)
        return self._resize((h + 1.0) / 2.0, size).clamp(0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        stride = self.timesteps[0] - self.timesteps[1] if len(self.timesteps) > 1 else self.timesteps[0] + 1
        return {**super().describe(), "model": self.source, "sampler": self.sampler.value, "t_start": self.timesteps[0],
                "num_steps": len(self.timesteps), "stride": stride, "ddim_eta": self.ddim_eta,
                "num_train_timesteps": int(self.scheduler.config.num_train_timesteps),
                "clip_sample": bool(self.scheduler.config.clip_sample), "gradient_checkpointing": self.gradient_checkpointing,
                "model_size": list(self.model_size), "unet_params": sum(p.numel() for p in self.unet.parameters())}


def build_diffpure_from_cfg(cfg: Any, seed: int = 0) -> DiffPurePurifier:
    """A :class:`DiffPurePurifier` from ``purifier.diffpure`` (a ``DiffPureCfg`` or DictConfig)."""
    unet, source, schedule_source = load_unet(cfg)
    schedule = _checkpoint_schedule(schedule_source, cfg.cache_dir) if schedule_source is not None else None
    scheduler, timesteps = build_scheduler(cfg, schedule)
    mode = cfg.resize_mode.value if hasattr(cfg.resize_mode, "value") else str(cfg.resize_mode)
    return DiffPurePurifier(unet, scheduler, timesteps, sampler=cfg.sampler, ddim_eta=cfg.ddim_eta, resize_mode=mode,
                            gradient_checkpointing=cfg.gradient_checkpointing, seed=seed, source=source)


@register_purifier("diffpure", Space.pixel, DiffPureCfg, "DiffPure: diffuse to t* and denoise with a diffusers UNet2DModel")
def build_diffpure(cfg: DiffPureCfg, ctx: BuildContext) -> DiffPurePurifier:
    return build_diffpure_from_cfg(cfg, seed=ctx.seed).to(ctx.backbone.mean.device)
