"""The ``clip.*`` and ``prompts.*`` config sections: which CLIP is loaded, how, and the zero-shot head's prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional


class Precision(str, Enum):
    """Numerical precision of the CLIP encoders.

    ``fp32``: everything in float32 (the default, and what attacks should use).
    ``mixed_fp16``: the released CLIPure mode: weights rounded to fp16, encoder matmul weights kept in fp16,
    LayerNorms and embeddings in fp32, images fed in fp16 (see docs/evaluation.md: it underflows gradients).
    """

    fp32 = "fp32"
    mixed_fp16 = "mixed_fp16"


class ResizeMode(str, Enum):
    """Interpolation used inside the model to go from attack resolution to the encoder's input size."""

    bicubic = "bicubic"
    bilinear = "bilinear"
    nearest = "nearest"


@dataclass
class ClipCfg:
    # open_clip architecture name (``ViT-B-32``, ``ViT-L-14``, ...) or an ``hf-hub:org/repo`` id.
    arch: str = "ViT-B-32"
    # open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...), a local checkpoint path, or null for
    # random initialisation (tests).
    pretrained: Optional[str] = "openai"
    # Optional path to an open_clip model-config JSON; it is registered under its file stem, which must equal
    # ``arch``. Used for tiny test models and custom architectures.
    model_config: Optional[str] = None
    precision: Precision = Precision.fp32
    resize_mode: ResizeMode = ResizeMode.bicubic
    # Where open_clip caches downloaded weights (null: its default).
    cache_dir: Optional[str] = None
    # Override the logit scale (null: exp(model.logit_scale), which is 100 for OpenAI weights).
    logit_scale: Optional[float] = None
    # Seed for random initialisation when ``pretrained`` is null, so random test models are reproducible.
    init_seed: int = 0
    # Per-channel normalisation applied inside the model, in [0, 1] pixel units. null: what open_clip knows for the
    # named pretrained weights, else the model config's ``preprocess_cfg``, else OpenAI's values (logged for a local
    # checkpoint). The values used are filled in when the config is composed, so config.yaml records them.
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    # Tokenizer of the text tower (null: open_clip's tokenizer for ``arch``). One of: an open_clip model name whose
    # tokenizer to use (``ViT-B-32``); ``hf-hub:<org>/<repo>``, a Hugging Face tokenizer (needs it in the local
    # cache when offline); or ``module:callable`` / ``path/to/file.py:callable``, a Python callable taking a list of
    # prompts and returning integer token ids ``[N, context_length]`` (see clipure_lit/clip/tokenizers.py).
    tokenizer: Optional[str] = None
    # Checkpoint entries to drop before loading ``pretrained`` (exact names or fnmatch patterns such as
    # ``head.*``, matched against the names in the file and after a detected prefix is removed). Every other
    # entry must match the architecture.
    ignore_keys: List[str] = field(default_factory=list)
    # Build the architecture at this input size instead of its config's (tests and smoke runs at reduced size;
    # pretrained weights saved at another size do not load). null: the config's size.
    force_image_size: Optional[int] = None


@dataclass
class PromptsCfg:
    # Templates of the zero-shot head: ``openai_imagenet_80``, ``simple_imagenet_7``, any CLIP_benchmark dataset
    # name (``cifar10``, ``cars``, ...), or a JSON file in CLIP_benchmark's format (``path.json[:key]``).
    class_templates: str = "cifar10"
    # Templates of the blank anchor used by CLIPure: formatted with an empty class name. Released: the 80
    # OpenAI ImageNet templates.
    blank_templates: str = "openai_imagenet_80"
    # A single custom blank prompt (e.g. "a photo of a ."); when set it replaces ``blank_templates``.
    blank_prompt: Optional[str] = None
    # Directory of the on-disk cache of text embeddings (keyed by model, templates and class names).
    cache_dir: str = ".cache/clipure_lit/text"
    # Precomputed class embeddings (replace ``class_templates`` and the text tower): a .safetensors or .pt file in
    # the format of clipure_lit/clip/embeddings.py (``embeddings [K, D]`` and the K class names).
    class_embeddings: Optional[str] = None
    # Precomputed blank anchor (replaces ``blank_templates`` / ``blank_prompt``): ``embedding [D]`` in a
    # .safetensors or .pt file. With both files the text tower and tokenizer are never used.
    blank_embedding: Optional[str] = None
