"""Prompt data (never retyped) and the zero-shot head on a tiny random open_clip model."""

from __future__ import annotations

import torch

from clipure_lit.clip.backbone import load_backbone
from clipure_lit.clip.prompts import blank_prompts, get_classnames, get_templates
from clipure_lit.clip.zeroshot import TextEmbeddingCache, build_blank_anchor, build_head, encode_prompts
from clipure_lit.config.loader import load_config


def _tiny():
    cfg = load_config(["experiment=tiny"])
    return load_backbone(cfg.clip)


def test_template_sets_come_from_open_clip_and_clip_benchmark():
    from open_clip import zero_shot_metadata as meta

    openai = get_templates("openai_imagenet_80")
    assert len(openai) == 80 and openai[0] == meta.OPENAI_IMAGENET_TEMPLATES[0]("{c}")
    assert len(get_templates("cifar10")) == 18
    assert len(get_classnames("imagenet1k")) == 1000


def test_blank_prompts_keep_the_released_artefacts():
    blanks = blank_prompts(get_templates("openai_imagenet_80"))
    assert blanks[0] == "a bad photo of a ."
    assert "a  in a video game." in blanks  # the double space of format(c="") is kept


def test_user_json_templates(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"mine": ["a {c}.", "the {c}!"], "other": ["x {c}"]}')
    assert get_templates(f"{path}:mine") == ["a {c}.", "the {c}!"]


def test_head_shapes_normalisation_and_logit_scale(tmp_path):
    backbone, tokenizer = _tiny()
    classnames = ["cat", "dog", "ship"]
    head = build_head(backbone, tokenizer, classnames, get_templates("cifar10"), TextEmbeddingCache(tmp_path))
    weights = head.class_embeddings
    assert weights.shape == (backbone.embed_dim, 3)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(3))
    # normalise per prompt, average, renormalise: recompute one column independently
    prompts = [t.format(c="dog") for t in get_templates("cifar10")]
    feats = backbone.encode_text(tokenizer(prompts))
    expected = torch.nn.functional.normalize(torch.nn.functional.normalize(feats, dim=-1).mean(0), dim=0)
    torch.testing.assert_close(weights[:, 1], expected, atol=1e-5, rtol=1e-5)
    assert head.logit_scale == backbone.logit_scale
    z = torch.nn.functional.normalize(torch.randn(5, backbone.embed_dim), dim=-1)
    torch.testing.assert_close(head(z), head.logit_scale * z @ weights)


def test_text_cache_is_reused_and_keyed_by_content(tmp_path):
    backbone, tokenizer = _tiny()
    cache = TextEmbeddingCache(tmp_path)
    build_head(backbone, tokenizer, ["a", "b"], ["{c}."], cache)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    build_head(backbone, tokenizer, ["a", "b"], ["{c}."], cache)
    assert len(list(tmp_path.glob("*.pt"))) == 1  # reused
    build_head(backbone, tokenizer, ["a", "c"], ["{c}."], cache)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # different class names, different entry
    with torch.no_grad():
        backbone.model.token_embedding.weight.add_(0.1)  # different text weights must not hit the old entry
    build_head(backbone, tokenizer, ["a", "b"], ["{c}."], cache)
    assert len(list(tmp_path.glob("*.pt"))) == 3
    assert (cache.hits, cache.misses) == (1, 3)
    backbone.model.load_state_dict(backbone.model.state_dict())  # copies in place: the fingerprint is re-read ...
    build_head(backbone, tokenizer, ["a", "b"], ["{c}."], cache)
    assert (cache.hits, cache.misses) == (2, 3)  # ... and, the weights being equal, still hits


def test_blank_anchor_is_mean_of_unit_prompt_embeddings(tmp_path):
    backbone, tokenizer = _tiny()
    prompts = blank_prompts(get_templates("openai_imagenet_80"))
    anchor = build_blank_anchor(backbone, tokenizer, prompts, TextEmbeddingCache(tmp_path))
    torch.testing.assert_close(anchor, encode_prompts(backbone, tokenizer, prompts).mean(0))


def test_image_path_resizes_and_normalises_inside_the_model():
    backbone, _ = _tiny()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)  # any attack resolution
    z = backbone.encode_image(x)
    assert z.shape == (2, backbone.embed_dim)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))
    z.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = _tiny()
    after = torch.rand(1)
    b, _ = _tiny()
    assert torch.equal(before, after)
    for (_, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb)


def test_released_mixed_precision_runs_on_cpu():
    cfg = load_config(["experiment=tiny", "clip.precision=mixed_fp16"])
    backbone, _ = load_backbone(cfg.clip)
    dtypes = {name: p.dtype for name, p in backbone.model.named_parameters()}
    assert dtypes["visual.conv1.weight"] == torch.float16
    assert all(d == torch.float32 for n, d in dtypes.items() if "ln_" in n)
    z = backbone.encode_image(torch.rand(2, 3, 32, 32))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
