"""Bring your own CLIP: every supported checkpoint format, a custom tokenizer callable and precomputed text
embeddings give the logits of the model built directly; bad files and tokenizers are one-paragraph errors.

The model is the tiny CLIP of ``conf/clip/tiny_random.yaml`` (a real open_clip config), saved by the tests.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch
from safetensors.torch import save_file

from clipure_lit.clip.backbone import load_backbone
from clipure_lit.clip.checkpoint import detect_prefix
from clipure_lit.clip.embeddings import load_class_embeddings, save_blank_embedding, save_class_embeddings
from clipure_lit.clip.prompts import blank_prompts, get_templates
from clipure_lit.clip.tokenizers import warn_unknown_tokens
from clipure_lit.clip.zeroshot import TextEmbeddingCache, build_blank_anchor, build_head, class_embeddings
from clipure_lit.errors import ClipureError, ConfigError
from clipure_lit.run_folder import checkpoint_hashes

from conftest import tiny_cfg

CLASSES = ["airplane", "automobile", "bird", "cat"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of the {c}."]


@pytest.fixture(scope="module")
def reference():
    """The directly built tiny CLIP (init_seed=0), fixed images, and its logits."""
    cfg = tiny_cfg()
    backbone, tokenizer = load_backbone(cfg.clip)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return backbone, tokenizer, images, logits_of(backbone, tokenizer, images)


def logits_of(backbone, tokenizer, images):
    with torch.no_grad():
        return backbone.logit_scale * backbone.encode_image(images) @ class_embeddings(backbone, tokenizer, CLASSES, TEMPLATES)


def loaded(path, *overrides):
    """The tiny architecture with another random initialisation, then ``path`` loaded into it."""
    cfg = tiny_cfg(f"clip.pretrained={path}", "clip.init_seed=7", *overrides)
    return load_backbone(cfg.clip)


def formats(state: dict, tmp_path):
    """The state dict written in each supported layout: ``{name: (path, extra overrides)}``."""
    out = {}
    torch.save(state, tmp_path / "open_clip.pt")
    out["open_clip_state_dict"] = (tmp_path / "open_clip.pt", [])
    torch.save(state, tmp_path / "openai.bin")
    out["openai_bin"] = (tmp_path / "openai.bin", [])
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    out["safetensors"] = (tmp_path / "model.safetensors", [])
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "oc_train.pt")
    out["open_clip_training_checkpoint"] = (tmp_path / "oc_train.pt", [])
    lightning = {f"model.backbone.model.{k}": v for k, v in state.items()}
    lightning["model.head.class_embeddings"] = torch.zeros(64, 10)  # another module of the LightningModule
    torch.save({"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.4.0", "state_dict": lightning,
                "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 1e-3}}, tmp_path / "lit.ckpt")
    out["lightning_checkpoint"] = (tmp_path / "lit.ckpt", ["clip.ignore_keys=[model.head.*]"])
    save_file({**{k: v.contiguous() for k, v in state.items()}, "vocab_table": torch.arange(12.0)},
              str(tmp_path / "with_vocab.safetensors"))
    out["safetensors_with_vocabulary_table"] = (tmp_path / "with_vocab.safetensors", ["clip.ignore_keys=[vocab_table]"])
    return out


def test_every_checkpoint_format_gives_the_direct_models_logits(tmp_path, reference):
    backbone, tokenizer, images, expected = reference
    other, _ = load_backbone(tiny_cfg("clip.init_seed=7").clip)
    assert not torch.equal(logits_of(other, tokenizer, images), expected)  # the loaded weights must matter
    for name, (path, extra) in formats(backbone.model.state_dict(), tmp_path).items():
        model, tok = loaded(path, *extra)
        assert torch.equal(logits_of(model, tok, images), expected), name


def test_mismatches_are_one_paragraph_naming_missing_and_unexpected_keys(tmp_path, reference):
    state = dict(reference[0].model.state_dict())
    state.pop("text_projection")
    state["vocab_table"] = torch.zeros(3)
    state["visual.proj"] = torch.zeros(5, 5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ConfigError) as err:
        loaded(tmp_path / "bad.pt")
    msg = str(err.value)
    assert "\n" not in msg and "Missing keys (1" in msg and "text_projection" in msg
    assert "Unexpected keys (1" in msg and "vocab_table" in msg and "visual.proj (5, 5)" in msg
    assert "clip.ignore_keys" in msg
    # ignoring the extra table leaves the missing key and the shape: still refused, never loaded partially
    with pytest.raises(ConfigError, match="Missing keys"):
        loaded(tmp_path / "bad.pt", "clip.ignore_keys=[vocab_table]")


def test_pickled_objects_are_refused_with_weights_only(tmp_path):
    torch.save({"state_dict": {}, "opt": logging.getLogger("x")}, tmp_path / "objects.pt")
    with pytest.raises(ConfigError, match="weights_only=True") as err:
        loaded(tmp_path / "objects.pt")
    assert "pickled objects" in str(err.value)


def test_prefix_detection_prefers_most_matches():
    keys = {"visual.proj", "text_projection", "logit_scale"}
    assert detect_prefix(["model.backbone.model.visual.proj", "model.backbone.model.logit_scale", "head.w"], keys) == "model.backbone.model."
    assert detect_prefix(["visual.proj", "text_projection"], keys) == ""


TOKENIZER_FILE = '''
import torch
from open_clip.tokenizer import SimpleTokenizer

_bpe = SimpleTokenizer(context_length=32)


def same_as_open_clip(texts):
    return _bpe(texts)


WORDS = {w: i + 1 for i, w in enumerate("a photo of the blurry airplane automobile bird cat".split())}


def compact(texts):
    """A compact vocabulary: unknown words become padding (0), as a model trained outside open_clip may do."""
    out = torch.zeros(len(texts), 32, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [WORDS.get(w.strip(".,"), 0) for w in text.lower().split()]
        out[row, :len(ids[:32])] = torch.tensor(ids[:32], dtype=torch.long)
    return out


def too_short(texts):
    return torch.zeros(len(texts), 7, dtype=torch.long)


def beyond_vocabulary(texts):
    return torch.full((len(texts), 32), 60000, dtype=torch.long)
'''


def test_custom_tokenizer_callable_gives_the_same_logits(tmp_path, reference, monkeypatch):
    backbone, _, images, expected = reference
    (tmp_path / "my_tokenizers.py").write_text(TOKENIZER_FILE)
    model, tok = load_backbone(tiny_cfg(f"clip.tokenizer={tmp_path / 'my_tokenizers.py'}:same_as_open_clip").clip)
    assert torch.equal(logits_of(model, tok, images), expected)
    # the tokenizer's source is part of the text-cache key: an edited tokenizer never reuses stale embeddings
    (tmp_path / "my_tokenizers.py").write_text(TOKENIZER_FILE + "\n# edited\n")
    edited, _ = load_backbone(tiny_cfg(f"clip.tokenizer={tmp_path / 'my_tokenizers.py'}:same_as_open_clip").clip)
    assert edited.name != model.name and "my_tokenizers.py:same_as_open_clip@" in edited.name
    monkeypatch.syspath_prepend(str(tmp_path))
    model, tok = load_backbone(tiny_cfg("clip.tokenizer=my_tokenizers:same_as_open_clip").clip)
    assert torch.equal(logits_of(model, tok, images), expected)
    sys.modules.pop("my_tokenizers", None)


def test_bad_tokenizers_are_named_before_the_text_tower_runs(tmp_path):
    (tmp_path / "toks.py").write_text(TOKENIZER_FILE)
    for name, words in [("too_short", "context length is 32"), ("beyond_vocabulary", "outside the text tower's vocabulary"),
                        ("missing_name", "has no attribute")]:
        with pytest.raises(ConfigError, match=words):
            load_backbone(tiny_cfg(f"clip.tokenizer={tmp_path / 'toks.py'}:{name}").clip)
    with pytest.raises(ConfigError, match="not an open_clip model name"):
        load_backbone(tiny_cfg("clip.tokenizer=No-Such-Model").clip)
    with pytest.raises(ClipureError, match="does not exist"):  # refused when the config is composed, even
        load_backbone(tiny_cfg(f"clip.tokenizer={tmp_path / 'absent.py'}:f").clip)


def test_prompts_outside_a_compact_vocabulary_are_warned_about(tmp_path, caplog, reference):
    backbone = reference[0]
    (tmp_path / "toks.py").write_text(TOKENIZER_FILE)
    _, tok = load_backbone(tiny_cfg(f"clip.tokenizer={tmp_path / 'toks.py'}:compact").clip)
    blanks = blank_prompts(get_templates("openai_imagenet_80"))
    with caplog.at_level(logging.WARNING):
        assert warn_unknown_tokens(tok, TEMPLATES, "class prompts") == 0  # every word is known
        build_blank_anchor(backbone, tok, blanks, TextEmbeddingCache(None))
    assert "of 80 blank prompts tokenise to mostly unknown or padding tokens" in caplog.text
    assert warn_unknown_tokens(reference[1], blanks, "blank prompts") == 0  # open_clip's BPE knows every word


def test_precomputed_embeddings_replace_the_text_tower(tmp_path, reference, monkeypatch):
    backbone, tokenizer, images, expected = reference
    matrix = class_embeddings(backbone, tokenizer, CLASSES, TEMPLATES)  # [D, K]
    anchor = build_blank_anchor(backbone, tokenizer, ["a photo of a ."], TextEmbeddingCache(None))
    save_class_embeddings(tmp_path / "classes.safetensors", matrix.t(), CLASSES)
    save_class_embeddings(tmp_path / "shuffled.pt", matrix.t()[[2, 0, 3, 1]], [CLASSES[i] for i in (2, 0, 3, 1)])
    save_blank_embedding(tmp_path / "blank.pt", anchor)

    def no_text_tower(*_):
        raise AssertionError("the text tower ran")

    monkeypatch.setattr(type(backbone), "encode_text", no_text_tower)
    for file in ("classes.safetensors", "shuffled.pt"):
        head = build_head(backbone, None, CLASSES, TEMPLATES, TextEmbeddingCache(None), embeddings_file=str(tmp_path / file))
        with torch.no_grad():
            assert torch.equal(head(backbone.encode_image(images)), expected), file
    blank = build_blank_anchor(backbone, None, [], TextEmbeddingCache(None), embedding_file=str(tmp_path / "blank.pt"))
    assert torch.equal(blank, anchor)
    with pytest.raises(ConfigError, match="not the run's"):
        load_class_embeddings(str(tmp_path / "classes.safetensors"), ["dog", *CLASSES[1:]], backbone.embed_dim)
    with pytest.raises(ConfigError, match="128-dimensional|64-dimensional"):
        load_class_embeddings(str(tmp_path / "classes.safetensors"), CLASSES, 128)


def test_environment_hashes_the_model_config_tokenizer_and_embedding_files(tmp_path):
    (tmp_path / "toks.py").write_text(TOKENIZER_FILE)
    save_blank_embedding(tmp_path / "blank.safetensors", torch.ones(64))
    cfg = tiny_cfg(f"clip.tokenizer={tmp_path / 'toks.py'}:same_as_open_clip",
                   f"prompts.blank_embedding={tmp_path / 'blank.safetensors'}")
    hashes = checkpoint_hashes(cfg)
    assert set(hashes) >= {"clip.model_config", "clip.tokenizer", "prompts.blank_embedding"}
    assert hashes["clip.tokenizer"]["path"].endswith("toks.py") and len(hashes["clip.tokenizer"]["sha256"]) == 64
    before = hashes["clip.model_config"]["sha256"]
    config = tmp_path / "Tiny-ViT-32px.json"
    config.write_text(json.dumps({**json.loads(open(hashes["clip.model_config"]["path"]).read()), "embed_dim": 32}))
    assert checkpoint_hashes(tiny_cfg(f"clip.model_config={config}"))["clip.model_config"]["sha256"] != before
    assert checkpoint_hashes(tiny_cfg())["clip.tokenizer"] == {"name": "Tiny-ViT-32px (open_clip default)"}


def test_tokenizer_names_and_embedding_files_are_checked_when_composing(tmp_path):
    with pytest.raises(ConfigError, match="not an open_clip model name"):
        tiny_cfg("clip.tokenizer=ViT-B-33")
    assert tiny_cfg("clip.tokenizer=ViT-B-32").clip.tokenizer == "ViT-B-32"
    from clipure_lit.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="prompts.class_embeddings"):
        tiny_cfg(f"prompts.class_embeddings={tmp_path / 'absent.safetensors'}")


def test_uncached_hugging_face_tokenizer_is_a_clear_error_offline(reference):
    from clipure_lit.clip.tokenizers import build_tokenizer
    from clipure_lit.errors import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="not in the local cache.*prompts.class_embeddings"):
        build_tokenizer("hf-hub:example-org/not-cached-tokenizer", "Tiny-ViT-32px", reference[0].model)
