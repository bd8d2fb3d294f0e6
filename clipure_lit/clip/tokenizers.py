"""The text tower's tokenizer: open_clip's for the architecture, another open_clip model's, a Hugging Face
tokenizer, or the user's own callable (``clip.tokenizer``).

Contract of a tokenizer (what open_clip's tokenizers do, and what a custom callable must do): called with a list of
N prompts, it returns an integer tensor ``[N, L]`` of token ids, ``L`` the text tower's context length and every id
below its vocabulary size; padding is id 0 unless the callable has a ``pad_token_id`` attribute. A callable may
also expose ``unk_token_id`` (the id of out-of-vocabulary words); both are used by :func:`warn_unknown_tokens`.

``clip.tokenizer`` forms:

* null: open_clip's tokenizer for ``clip.arch``;
* an open_clip model name (``ViT-B-32``): that model's tokenizer, at the text tower's context length;
* ``hf-hub:<org>/<repo>``: a Hugging Face tokenizer through open_clip (from the local cache when offline);
* ``package.module:callable`` or ``path/to/file.py:callable``: the callable itself is the tokenizer.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

from clipure_lit.errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+")
_PROBE = ["a photo of a cat.", "a photo of a ."]


def is_callable_spec(spec: str) -> bool:
    """``module:callable`` or ``file.py:callable`` (an ``hf-hub:`` name is not)."""
    return ":" in spec and not spec.startswith("hf-hub:")


def callable_source(spec: str) -> Path | None:
    """The Python file a ``module:callable`` / ``file.py:callable`` spec is defined in (None when not found)."""
    module, _, _ = spec.rpartition(":")
    if module.endswith(".py"):
        return Path(module) if Path(module).is_file() else None
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin and Path(found.origin).is_file() else None


def import_callable(spec: str):
    """The object named by ``module:callable`` or ``path/to/file.py:callable``; a ConfigError saying what is
    wrong otherwise."""
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"clip.tokenizer='{spec}': the file '{module_name}' does not exist. Fix: give the path "
                                  "of a Python file defining the tokenizer, or an importable module (module:callable).")
            name = f"clipure_lit_user_tokenizer_{abs(hash(str(path.resolve())))}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as exc:  # an import error or anything the user's module raises while importing
        raise ConfigError(f"clip.tokenizer='{spec}': importing '{module_name}' failed ({type(exc).__name__}: {exc}). "
                          "Fix: a module importable from the current directory (or PYTHONPATH), or a .py file path, "
                          "followed by ':' and the name of the tokenizer callable.") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"clip.tokenizer='{spec}': '{module_name}' has no attribute '{attr}'. Fix: name the "
                              "tokenizer callable defined there.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"clip.tokenizer='{spec}' is a {type(obj).__name__}, not a callable. Fix: name a function "
                          "or an object with __call__(list_of_prompts) -> LongTensor [N, context_length].")
    return obj


def text_limits(model) -> tuple[int | None, int | None]:
    """``(context_length, vocab_size)`` of an open_clip model's text tower (None where it cannot be read)."""
    context = getattr(model, "context_length", None)
    vocab = getattr(model, "vocab_size", None)
    text = getattr(model, "text", None)
    if text is not None:
        context = context or getattr(text, "context_length", None)
        vocab = vocab or getattr(text, "vocab_size", None)
    return (int(context) if context else None), (int(vocab) if vocab else None)


def check_tokenizer(tokenizer, spec: str, context_length: int | None, vocab_size: int | None) -> None:
    """Tokenise two probe prompts and check the contract (integer ``[2, context_length]``, ids in the vocabulary)
    now, instead of an index error inside the text tower."""
    try:
        tokens = tokenizer(list(_PROBE))
    except Exception as exc:  # whatever the user's callable raises
        raise ConfigError(f"clip.tokenizer='{spec}' failed on {_PROBE}: {type(exc).__name__}: {exc}. A tokenizer is "
                          "called with a list of prompts and returns integer token ids [N, context_length].") from None
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.shape[0] != len(_PROBE) or tokens.is_floating_point():
        got = f"a tensor of shape {tuple(tokens.shape)} and dtype {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ConfigError(f"clip.tokenizer='{spec}' returned {got} for {len(_PROBE)} prompts; expected an integer tensor "
                          f"[{len(_PROBE)}, context_length]. Fix the tokenizer's return value.")
    if context_length is not None and tokens.shape[1] != context_length:
        raise ConfigError(f"clip.tokenizer='{spec}' returns {tokens.shape[1]} tokens per prompt, but the text tower's "
                          f"context length is {context_length}. Fix: pad or truncate to {context_length} (open_clip "
                          "tokenizers take context_length=...).")
    if vocab_size is not None and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
        raise ConfigError(f"clip.tokenizer='{spec}' produced token ids in [{int(tokens.min())}, {int(tokens.max())}], "
                          f"outside the text tower's vocabulary [0, {vocab_size}). Fix: the tokenizer the checkpoint was "
                          "trained with (clip.tokenizer=...).")


def build_tokenizer(spec: str | None, arch: str, model, cache_dir: str | None = None):
    """The tokenizer for ``clip.tokenizer`` (``spec``; null: ``arch``'s), checked against the model's text tower.

    Raises:
        ConfigError: an unknown name, an import failure, or a tokenizer that breaks the contract.
        WeightsUnavailableError: a Hugging Face tokenizer that is not cached and cannot be downloaded.
    """
    import open_clip  # heavy: ~4 s to import (timm, torchvision); only building a model needs it

    context, vocab = text_limits(model)
    name = arch if spec is None else str(spec)
    where = f"clip.tokenizer='{name}'" if spec is not None else f"the tokenizer of clip.arch='{arch}'"
    if spec is not None and is_callable_spec(name):
        tokenizer = import_callable(name)
    else:
        if not name.startswith("hf-hub:") and open_clip.get_model_config(name) is None:
            raise ConfigError(f"clip.tokenizer='{name}' is not an open_clip model name, an 'hf-hub:<org>/<repo>' "
                              "tokenizer, or a 'module:callable' / 'file.py:callable' path. Fix: one of those, or null "
                              "for clip.arch's tokenizer.")
        config = open_clip.get_model_config(name) or {}
        hf_name = (config.get("text_cfg") or {}).get("hf_tokenizer_name")
        try:
            tokenizer = open_clip.get_tokenizer(name, context_length=context, cache_dir=cache_dir)
        except Exception as exc:  # transformers/huggingface_hub raise OSError, ValueError, HTTP errors... when offline
            needs = name[len("hf-hub:"):] if name.startswith("hf-hub:") else hf_name
            if needs:
                raise WeightsUnavailableError(
                    f"{where} is the Hugging Face tokenizer '{needs}', which is not in the local cache and cannot be "
                    f"downloaded ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). Fix: run once with network "
                    "access to cache it, give a local tokenizer (clip.tokenizer=module:callable), or give precomputed "
                    "text embeddings (prompts.class_embeddings=<file> and prompts.blank_embedding=<file>) so that no "
                    "tokenizer is needed.") from None
            raise ConfigError(f"{where} could not be built: {type(exc).__name__}: {exc}.") from None
    check_tokenizer(tokenizer, name, context, vocab)
    return tokenizer


def _special_ids(tokenizer) -> tuple[set[int], set[int]]:
    """``(ids that count as unknown or padding, ids of start/end markers)`` for :func:`warn_unknown_tokens`."""
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
    empty = {0}
    markers: set[int] = set()
    for obj in (tokenizer, inner):
        if obj is None:
            continue
        for attr in ("pad_token_id", "unk_token_id"):
            value = getattr(obj, attr, None)
            if isinstance(value, int):
                empty.add(value)
        for attr in ("sot_token_id", "eot_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
            value = getattr(obj, attr, None)
            if isinstance(value, int):
                markers.add(value)
    return empty, markers - empty


def warn_unknown_tokens(tokenizer, prompts: list[str], what: str) -> int:
    """Log one warning when prompts tokenise to mostly unknown or padding tokens (fewer content tokens than half
    their words: the words fell outside the tokenizer's vocabulary, so the prompt says less than it reads).

    Returns the number of such prompts."""
    unique = list(dict.fromkeys(prompts))
    if not unique or tokenizer is None:
        return 0
    tokens = tokenizer(unique)
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        return 0
    empty, markers = _special_ids(tokenizer)
    content = torch.ones_like(tokens, dtype=torch.bool)
    for i in empty | markers:
        content &= tokens != i
    bad = [p for p, n in zip(unique, content.sum(1).tolist()) if len(_WORD.findall(p)) and n < 0.5 * len(_WORD.findall(p))]
    if bad:
        log.warning("%d of %d %s tokenise to mostly unknown or padding tokens (fewer known tokens than half their "
                    "words), e.g. %s: their words are outside the tokenizer's vocabulary, so these prompts carry little "
                    "text. Fix: prompts in the model's vocabulary, the tokenizer it was trained with (clip.tokenizer), "
                    "or precomputed embeddings (prompts.class_embeddings / prompts.blank_embedding).",
                    len(bad), len(unique), what, ", ".join(repr(p) for p in bad[:3]))
    return len(bad)
