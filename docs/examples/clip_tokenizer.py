"""An example of a custom tokenizer for ``clip.tokenizer=docs/examples/clip_tokenizer.py:tokenize``.

Contract: called with a list of prompts, return integer token ids ``[N, context_length]`` (here 20, the shipped
small CLIP's context length), each below the text tower's vocabulary size; padding is 0 unless the callable has a
``pad_token_id`` attribute, and an ``unk_token_id`` attribute names the id of out-of-vocabulary words (both are
used to warn about prompts that lose most of their words). This one is open_clip's byte-pair tokenizer, which the
shipped model was trained with; a model with its own vocabulary puts its own lookup here.
"""

from open_clip.tokenizer import SimpleTokenizer

_BPE = SimpleTokenizer(context_length=20)


def tokenize(texts: list[str]):
    """Token ids ``[len(texts), 20]`` (start and end markers, zero padding)."""
    return _BPE(texts)
