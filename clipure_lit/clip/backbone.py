"""The CLIP image/text encoders behind one module whose image input is the attack's threat-model space.

Inputs are images in [0, 1] at the attack resolution (32x32 for CIFAR, 224x224 for ImageNet). Resizing to the
encoder's input size and the mean/std normalisation happen *inside* this module, so an attack's epsilon-ball is
defined on the input pixels, as in AutoAttack/RobustBench and in the released CLIPure code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipure_lit.clip.checkpoint import CheckpointReadError, load_into
from clipure_lit.clip.config import ClipCfg, Precision
from clipure_lit.clip.tokenizers import build_tokenizer, callable_source, is_callable_spec
from clipure_lit.clip.weights import ensure_weights_available, hub_load_errors
from clipure_lit.errors import ConfigError
from clipure_lit.utils.paths import resolve_path

log = logging.getLogger(__name__)

# Parameter-name substrings the released code casts to fp16 (matmul weights of both towers); names that
# contain 'ln_' (LayerNorms) stay fp32. Note that 'proj' also matches attn.out_proj and mlp.c_proj, as released.
_RELEASED_FP16_KEYS = ("mlp", "attn", "conv1", "visual.proj", "text_projection", "q_proj", "proj.bias", "proj")


class ClipBackbone(nn.Module):
    """Wraps an open_clip ``CLIP`` model.

    ``encode_image``: ``x [B, 3, H, W]`` in [0, 1] -> unit-norm fp32 embeddings ``[B, D]``.
    ``encode_text``: token ids ``[N, L]`` -> fp32 text features ``[N, D]`` (not normalised).
    """

    def __init__(self, model: nn.Module, image_size: int, mean: tuple, std: tuple, resize_mode: str = "bicubic",
                 input_dtype: torch.dtype = torch.float32, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.image_size = int(image_size)
        self.resize_mode = resize_mode
        self.input_dtype = input_dtype
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        """Size of the joint embedding: the text projection's output (CLIP), the text tower's ``output_dim``
        (open_clip's CustomTextCLIP: EVA02, CLIPA, CoCa), else the image tower's."""
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, Tensor):
            return int(proj.shape[-1])
        for tower in (getattr(self.model, "text", None), self.model.visual):
            dim = getattr(tower, "output_dim", None)
            if dim:
                return int(dim)
        raise AttributeError(f"cannot tell the embedding size of {type(self.model).__name__}")

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    def preprocess(self, x: Tensor) -> Tensor:
        """[0, 1] images at any size -> normalised encoder input [B, 3, S, S]."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            align = None if self.resize_mode == "nearest" else False
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode=self.resize_mode, align_corners=align)
        return (x - self.mean) / self.std

    def encode_image(self, x: Tensor) -> Tensor:
        features = self.model.encode_image(self.preprocess(x).to(self.input_dtype))  # [B, D]
        return F.normalize(features.float(), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.model.encode_text(tokens).float()  # [N, D]


def apply_released_mixed_precision(model: nn.Module) -> None:
    """The released CLIPure precision: fp16-rounded weights, matmul weights stored in fp16, LayerNorms,
    embeddings and the logit scale in fp32 (reference section 3.2)."""
    for name, param in model.named_parameters():
        param.data = param.data.half().float()
        if any(key in name for key in _RELEASED_FP16_KEYS) and "ln_" not in name:
            param.data = param.data.half()


def read_model_config(cfg: ClipCfg) -> tuple[Path, dict]:
    """``(path, JSON)`` of ``cfg.model_config`` (its file stem must equal ``cfg.arch``); a malformed file is a
    ConfigError."""
    path = resolve_path(cfg.model_config, "open_clip model config (clip.model_config)")
    if path.stem != cfg.arch:
        raise ConfigError(
            f"clip.model_config='{cfg.model_config}' registers a model named '{path.stem}' (its file stem), but "
            f"clip.arch='{cfg.arch}'. Fix: set clip.arch={path.stem}."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"clip.model_config='{cfg.model_config}' is not valid JSON ({exc.msg} at line {exc.lineno}, "
                          f"column {exc.colno}). Fix the file: an open_clip model config with embed_dim, vision_cfg and text_cfg.") from None
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise ConfigError(f"clip.model_config='{cfg.model_config}' must be an open_clip model config: a JSON object with "
                          "embed_dim, vision_cfg and text_cfg (see open_clip/model_configs/*.json).")
    return path, config


def register_model_config(cfg: ClipCfg) -> None:
    """Make a custom open_clip model-config JSON available under ``cfg.arch``. A ``preprocess_cfg`` entry (the
    model's normalisation, read by :func:`resolve_normalisation`) is not a model argument: open_clip would pass it to
    the model class, so a copy without it is registered."""
    import open_clip  # heavy: ~4 s to import (timm, torchvision); only building a model needs it

    if cfg.model_config is None:
        return
    path, config = read_model_config(cfg)
    if "preprocess_cfg" in config:
        folder = Path(tempfile.mkdtemp(prefix="clipure_lit_model_config_"))
        path = folder / f"{cfg.arch}.json"
        path.write_text(json.dumps({k: v for k, v in config.items() if k != "preprocess_cfg"}))
    open_clip.add_model_config(Path(path))


def resolve_normalisation(cfg: ClipCfg) -> tuple[list[float], list[float], str]:
    """``(mean, std, source)`` of the model's input normalisation, without building the model.

    In order: ``clip.mean`` / ``clip.std`` when set; the model config's ``preprocess_cfg``; open_clip's values for a
    named pretrained tag; OpenAI's values (``source`` says which, e.g. ``"openai default (local checkpoint)"``).
    """
    import open_clip  # heavy: ~4 s to import (timm, torchvision); config validation of a CLIP run needs it anyway

    if cfg.mean is not None and cfg.std is not None:
        return list(cfg.mean), list(cfg.std), "clip.mean/clip.std"
    if cfg.model_config is not None:
        pp = read_model_config(cfg)[1].get("preprocess_cfg") or {}
        if "mean" in pp and "std" in pp:
            return [float(v) for v in pp["mean"]], [float(v) for v in pp["std"]], f"preprocess_cfg of {cfg.model_config}"
    pretrained = cfg.pretrained
    if pretrained and not Path(pretrained).is_file() and not str(cfg.arch).startswith("hf-hub:"):
        known = open_clip.get_pretrained_cfg(cfg.arch, pretrained) or {}
        if "mean" in known and "std" in known:
            return [float(v) for v in known["mean"]], [float(v) for v in known["std"]], f"open_clip ({cfg.arch}/{pretrained})"
    source = "openai default" + (" (local checkpoint)" if pretrained and Path(pretrained).is_file() else "")
    return list(open_clip.OPENAI_DATASET_MEAN), list(open_clip.OPENAI_DATASET_STD), source


def unreadable_checkpoint_message(cfg: ClipCfg, exc: Exception) -> str:
    """One paragraph for a local ``clip.pretrained`` file that open_clip could not load into ``clip.arch``."""
    detail = " ".join(str(exc).split())
    detail = detail if len(detail) <= 600 else detail[:600] + " ..."
    if "weights_only" in detail:  # torch's advice to unpickle arbitrary objects must never be followed for weights
        detail = detail.split("Weights only load failed")[0].strip() or "it holds pickled objects other than tensors"
    kind = "" if type(exc).__name__ == "CheckpointReadError" else f"{type(exc).__name__}: "
    return (f"clip.pretrained='{cfg.pretrained}' could not be loaded into clip.arch='{cfg.arch}': {kind}"
            f"{detail}. Expected an open_clip or OpenAI state dict (.pt/.pth/.bin, read with torch.load(weights_only=True); "
            "never load weights with weights_only=False) or a .safetensors file, whose keys and shapes match the "
            "architecture. Fix: point clip.pretrained at such a file, or clip.arch / clip.model_config at the architecture "
            "it was saved from.")


def tokenizer_id(spec: str | None) -> str:
    """What identifies ``clip.tokenizer`` in the backbone's name (and so in text-cache keys): the spec, and for a
    ``module:callable`` the SHA-256 of its source file, so editing the tokenizer never reuses stale embeddings."""
    if not spec:
        return ""
    source = callable_source(str(spec)) if is_callable_spec(str(spec)) else None
    digest = f"@{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}" if source is not None else ""
    return f"/tok={spec}{digest}"


def encoder_input_size(model: nn.Module) -> int:
    """The input size the image tower really takes: a timm trunk's own (open_clip does not pass ``image_size`` to
    timm models, e.g. EVA02), else ``visual.image_size``."""
    trunk_size = getattr(getattr(getattr(model.visual, "trunk", None), "patch_embed", None), "img_size", None)
    size = trunk_size if trunk_size is not None else model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def load_backbone(cfg: ClipCfg, device: torch.device | str = "cpu", with_tokenizer: bool = True):
    """Build the backbone and tokenizer named by ``cfg``.

    A local ``clip.pretrained`` file is loaded by :func:`clipure_lit.clip.checkpoint.load_into` (state dicts,
    training checkpoints with a prefix, safetensors; ``clip.ignore_keys``; strict otherwise). The tokenizer is
    ``clip.tokenizer``'s (:func:`clipure_lit.clip.tokenizers.build_tokenizer`), checked against the text tower.

    Returns:
        ``(ClipBackbone, tokenizer)``; the backbone is in eval mode with frozen parameters. The tokenizer is None
        when ``with_tokenizer`` is false (precomputed text embeddings: nothing is tokenised).

    Raises:
        WeightsUnavailableError: weights (or a Hugging Face tokenizer) are not cached and cannot be downloaded.
        ConfigError: an unreadable or mismatched checkpoint, or a tokenizer that breaks the contract.
    """
    import open_clip  # heavy: ~4 s to import (timm, torchvision); only building a model needs it

    register_model_config(cfg)
    ensure_weights_available(cfg.arch, cfg.pretrained, cfg.cache_dir)
    pretrained = cfg.pretrained
    local = pretrained is not None and Path(pretrained).is_file()
    kwargs = {"force_image_size": int(cfg.force_image_size)} if cfg.force_image_size else {}
    with torch.random.fork_rng(devices=[]), hub_load_errors(cfg.arch, None if local else pretrained, cfg.cache_dir):
        # Random initialisation (pretrained=None) must not depend on, or disturb, the global RNG.
        torch.manual_seed(cfg.init_seed)
        model = open_clip.create_model(cfg.arch, pretrained=None if local else pretrained, cache_dir=cfg.cache_dir,
                                       device="cpu", **kwargs)
    if local:
        try:
            load_into(model, Path(pretrained).resolve(), list(cfg.ignore_keys or []), arch=cfg.arch)
        except CheckpointReadError as exc:
            raise ConfigError(unreadable_checkpoint_message(cfg, exc)) from None
    elif cfg.ignore_keys:
        log.warning("clip.ignore_keys=%s has no effect: clip.pretrained='%s' is not a local file.", list(cfg.ignore_keys),
                    pretrained)
    model = model.to(device)
    model.eval().requires_grad_(False)
    input_dtype = torch.float32
    if cfg.precision == Precision.mixed_fp16:
        apply_released_mixed_precision(model)
        input_dtype = torch.float16
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = encoder_input_size(model)
    if cfg.force_image_size and size != int(cfg.force_image_size):
        log.warning("clip.force_image_size=%s does not apply to %s's image tower (a timm model, built at its own "
                    "size): images are resized to %d.", cfg.force_image_size, cfg.arch, size)
    if cfg.mean is not None and cfg.std is not None:  # filled in when the config was composed (resolve_normalisation)
        mean, std = tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    else:  # hf-hub models: their preprocessing config comes with the weights
        mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    backbone = ClipBackbone(model, size, mean, std, cfg.resize_mode.value if hasattr(cfg.resize_mode, "value") else str(cfg.resize_mode),
                            input_dtype=input_dtype, name=f"{cfg.arch}/{cfg.pretrained}" + tokenizer_id(cfg.tokenizer))
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.arch, model, cfg.cache_dir) if with_tokenizer else None
    return backbone.to(device), tokenizer
