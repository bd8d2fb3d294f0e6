"""The paper's backbone families build from their open_clip configs (random weights, reduced input size) and run
one clean forward and one attack gradient through CLIPure-Cos, on the CPU.

One member per family, the smallest the paper uses: RN50 (OpenAI ResNets), ViT-B-32 (OpenAI/LAION ViTs:
B-16, B-32, L-14, H-14, bigG-14), EVA02-B-16 (EVA02-CLIP; its timm image tower keeps 224x224), ViT-L-14-CLIPA
(CLIPA) and coca_ViT-B-32 (CoCa). CLIPA's tokenizer is Hugging Face's ``bert-base-uncased``: offline it cannot be
built (a clear WeightsUnavailableError, checked here), so CLIPA runs on precomputed text embeddings, the path a
user without the tokenizer takes.
"""

from __future__ import annotations

import logging
import time

import pytest
import torch
import torch.nn.functional as F

from clipure_lit.clip.backbone import load_backbone
from clipure_lit.clip.config import ClipCfg
from clipure_lit.clip.embeddings import load_blank_embedding, load_class_embeddings, save_blank_embedding, save_class_embeddings
from clipure_lit.clip.zeroshot import TextEmbeddingCache, ZeroShotHead, build_blank_anchor, build_head
from clipure_lit.errors import WeightsUnavailableError
from clipure_lit.models.classifier import PurifiedZeroShotClassifier
from clipure_lit.purifiers.base import GradMode
from clipure_lit.purifiers.clipure_cos import ClipureCos, ClipureCosCfg

pytestmark = pytest.mark.slow

CLASSES = ["cat", "dog"]
FAMILIES = {  # family: (smallest member, reduced input size, tokenizer available offline)
    "openai_resnet": ("RN50", 64, True),
    "vit": ("ViT-B-32", 64, True),
    "eva02": ("EVA02-B-16", 64, True),
    "clipa": ("ViT-L-14-CLIPA", 56, False),
    "coca": ("coca_ViT-B-32", 64, True),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_builds_and_runs_clipure_cos(family, tmp_path):
    arch, size, tokenizer_offline = FAMILIES[family]
    start = time.perf_counter()
    cfg = ClipCfg(arch=arch, pretrained=None, force_image_size=size, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    backbone, tokenizer = load_backbone(cfg, with_tokenizer=tokenizer_offline)
    if tokenizer_offline:
        head = build_head(backbone, tokenizer, CLASSES, ["a photo of a {c}."], TextEmbeddingCache(None))
        anchor = build_blank_anchor(backbone, tokenizer, ["a photo of a ."], TextEmbeddingCache(None))
    else:
        from clipure_lit.clip.tokenizers import build_tokenizer

        with pytest.raises(WeightsUnavailableError, match="bert-base-uncased.*precomputed text embeddings"):
            build_tokenizer(None, arch, backbone.model)
        g = torch.Generator().manual_seed(0)
        save_class_embeddings(tmp_path / "c.safetensors", torch.randn(len(CLASSES), backbone.embed_dim, generator=g), CLASSES)
        save_blank_embedding(tmp_path / "b.safetensors", torch.randn(backbone.embed_dim, generator=g))
        head = ZeroShotHead(load_class_embeddings(str(tmp_path / "c.safetensors"), CLASSES, backbone.embed_dim), backbone.logit_scale)
        anchor = load_blank_embedding(str(tmp_path / "b.safetensors"), backbone.embed_dim)
    purifier = ClipureCos(anchor, ClipureCosCfg(num_steps=2, grad_mode=GradMode.full, norm_scope="sample"))
    classifier = PurifiedZeroShotClassifier(backbone, head, latent=purifier).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # one CIFAR-sized image
    with torch.no_grad():
        clean = classifier(x)
    assert clean.shape == (1, len(CLASSES)) and torch.isfinite(clean).all()
    x_adv = x.clone().requires_grad_(True)
    loss = F.cross_entropy(classifier(x_adv), torch.tensor([1]))
    (grad,) = torch.autograd.grad(loss, x_adv)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    logging.getLogger(__name__).info("%s (%s): %.1f s", family, arch, time.perf_counter() - start)
