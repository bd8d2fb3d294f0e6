"""Text embeddings for the zero-shot head and the blank anchor, with an on-disk cache.

Class embedding (open_clip's convention): for each class, encode every template, L2-normalise each prompt
embedding, average, and renormalise: ``C[:, k] = normalize(mean_t normalize(f_text(t(c_k))))`` -> ``C`` is
``[D, K]``. Logits are ``s * z @ C`` with ``z`` the unit image embedding and ``s`` the logit scale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipure_lit.clip.embeddings import load_blank_embedding, load_class_embeddings
from clipure_lit.clip.prompts import format_prompts
from clipure_lit.clip.tokenizers import warn_unknown_tokens

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_prompts(backbone, tokenizer, prompts: list[str], batch_size: int = 256) -> Tensor:
    """Unit-norm text embeddings ``[N, D]`` of a list of prompts, computed in batches."""
    device = backbone.mean.device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start:start + batch_size]).to(device)
        chunks.append(F.normalize(backbone.encode_text(tokens), dim=-1))
    return torch.cat(chunks)


def class_embeddings(backbone, tokenizer, classnames: list[str], templates: list[str]) -> Tensor:
    """The ``[D, K]`` class-embedding matrix (unit columns)."""
    columns = [F.normalize(encode_prompts(backbone, tokenizer, format_prompts(templates, c)).mean(0), dim=0) for c in classnames]
    return torch.stack(columns, dim=1)


def text_tower_fingerprint(backbone) -> str:
    """A cheap fingerprint of the weights that produce text embeddings (sums of every non-visual parameter),
    so cached embeddings of randomly initialised or fine-tuned models are never confused.

    Memoised on the backbone until a text parameter is replaced or changed in place (autograd's per-tensor version
    counter, which optimisers and ``load_state_dict`` bump): summing ViT-B-32's text tower in float64 costs about
    as much as reading the cached embeddings.
    """
    params = [(name, p) for name, p in backbone.model.named_parameters() if not name.startswith("visual.")]
    state = tuple((id(p), p._version) for _, p in params)
    memo = getattr(backbone, "_text_fingerprint_memo", None)
    if memo is not None and memo[0] == state:
        return memo[1]
    sums = [torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()]) for _, p in params]
    digest = hashlib.sha256(torch.cat(sums).numpy().tobytes()).hexdigest() if sums else "none"
    backbone._text_fingerprint_memo = (state, digest[:16])
    return digest[:16]


class TextEmbeddingCache:
    """Stores text-embedding tensors under ``cache_dir``, keyed by everything that determines them.

    Each entry is ``{"key", "spec", "shape", "sha256", "value"}``: what it was computed from and a checksum of the
    tensor's bytes. An entry is used only when it loads with ``weights_only=True`` and its key, its shape (and the
    shape the caller expects) and its checksum all match; otherwise it is recomputed, with a warning, and replaced.
    """

    def __init__(self, cache_dir: str | Path | None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.hits = 0  # tensors read from the cache
        self.misses = 0  # tensors computed (and stored when there is a cache_dir)
        self._specs: dict[str, str] = {}

    def key(self, backbone, kind: str, prompts_spec: dict) -> str:
        payload = json.dumps({"model": backbone.name, "fp": text_tower_fingerprint(backbone), "dtype": str(backbone.input_dtype),
                              "kind": kind, **prompts_spec}, sort_keys=True)
        key = hashlib.sha256(payload.encode()).hexdigest()[:24]
        self._specs[key] = payload
        return key

    @staticmethod
    def checksum(value: Tensor) -> str:
        return hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    def _verified(self, path: Path, key: str, shape: tuple[int, ...] | None) -> Tensor | None:
        """The cached tensor when the entry at ``path`` is intact and is the one for ``key``; None (with a warning
        saying why) otherwise."""
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated file from a killed run, or not a cache entry at all
            problem = f"unreadable ({type(exc).__name__})"
        else:
            value = entry.get("value") if isinstance(entry, dict) else None
            if not isinstance(value, Tensor):
                problem = "not a verified cache entry (written by an older version, or another file)"
            elif entry.get("key") != key:
                problem = f"stored for another key ({entry.get('key')})"
            elif list(value.shape) != list(entry.get("shape", [])) or (shape is not None and tuple(value.shape) != tuple(shape)):
                problem = f"of shape {tuple(value.shape)}, expected {tuple(shape) if shape is not None else entry.get('shape')}"
            elif self.checksum(value) != entry.get("sha256"):
                problem = "corrupted (its checksum does not match its values)"
            else:
                return value
        log.warning("Text-embedding cache entry %s is %s: recomputing it.", path, problem)
        return None

    def get_or_compute(self, key: str, compute, shape: tuple[int, ...] | None = None) -> Tensor:
        """The tensor for ``key``: from the cache when a verified entry exists (``shape``: the shape it must have),
        else ``compute()``, stored atomically (concurrent ranks never read half a file)."""
        path = self.cache_dir / f"{key}.pt" if self.cache_dir else None
        if path is not None and path.is_file():
            value = self._verified(path, key, shape)
            if value is not None:
                self.hits += 1
                return value
        self.misses += 1
        value = compute().cpu()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"key": key, "spec": self._specs.get(key, ""), "shape": list(value.shape),
                        "sha256": self.checksum(value), "value": value}, tmp)
            tmp.replace(path)
        return value


class ZeroShotHead(nn.Module):
    """``z [B, D]`` (unit norm) -> logits ``[B, K] = logit_scale * z @ C``; ``C`` is a fixed buffer."""

    def __init__(self, class_embeddings: Tensor, logit_scale: float, classnames: list[str] | None = None) -> None:
        super().__init__()
        self.register_buffer("class_embeddings", class_embeddings.float())  # [D, K]
        self.logit_scale = float(logit_scale)
        self.classnames = list(classnames or [])

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[1])

    def forward(self, z: Tensor) -> Tensor:
        return self.logit_scale * z @ self.class_embeddings


def build_head(backbone, tokenizer, classnames: list[str], templates: list[str], cache: TextEmbeddingCache,
               logit_scale: float | None = None, embeddings_file: str | None = None) -> ZeroShotHead:
    """The zero-shot head: class embeddings from ``embeddings_file`` (``prompts.class_embeddings``; no text tower,
    ``tokenizer`` unused) or from the templates through the text tower (cached), with a warning when prompts
    tokenise to mostly unknown or padding tokens."""
    scale = backbone.logit_scale if logit_scale is None else float(logit_scale)
    if embeddings_file:
        weights = load_class_embeddings(embeddings_file, classnames, backbone.embed_dim)  # [D, K]
        return ZeroShotHead(weights, scale, classnames).to(backbone.mean.device)
    # Every template with the first class, and every class with the first template: each word of the prompts is
    # checked without tokenising all K x T prompts on every run (80,000 for ImageNet's 80 templates).
    sample = format_prompts(templates, classnames[0]) + [format_prompts(templates[:1], c)[0] for c in classnames[1:]]
    warn_unknown_tokens(tokenizer, sample, "class prompts checked (every template, every class name)")
    key = cache.key(backbone, "class", {"classnames": classnames, "templates": templates})
    weights = cache.get_or_compute(key, lambda: class_embeddings(backbone, tokenizer, classnames, templates),
                                   shape=(backbone.embed_dim, len(classnames)))  # [D, K]
    return ZeroShotHead(weights, scale, classnames).to(backbone.mean.device)


def build_blank_anchor(backbone, tokenizer, prompts: list[str], cache: TextEmbeddingCache,
                       embedding_file: str | None = None) -> Tensor:
    """Mean of the unit embeddings of the blank prompts, ``[D]`` (not renormalised, as released; only its
    direction matters to a cosine); or the anchor stored in ``embedding_file`` (``prompts.blank_embedding``; no
    text tower). Prompts that tokenise to mostly unknown or padding tokens are warned about."""
    if embedding_file:
        return load_blank_embedding(embedding_file, backbone.embed_dim).to(backbone.mean.device)
    warn_unknown_tokens(tokenizer, prompts, "blank prompts")
    key = cache.key(backbone, "blank", {"prompts": prompts})
    return cache.get_or_compute(key, lambda: encode_prompts(backbone, tokenizer, prompts).mean(0), shape=(backbone.embed_dim,))
