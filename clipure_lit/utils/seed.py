"""Per-batch random streams: a batch's randomness depends only on a base seed, a tag and its sample ids.

That makes stochastic purifiers reproducible per batch, whatever ran before: an interrupted and resumed run, or
a run with other attacks enabled, draws the same numbers for the same batch.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch
from torch import Tensor


def batch_seed(base: int, tag: str, ids: Tensor) -> int:
    """A 63-bit seed from ``(base, tag, sample ids)`` (SHA-256, stable across processes and runs)."""
    text = f"{int(base)}|{tag}|{','.join(str(int(i)) for i in ids.reshape(-1).tolist())}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def seeded(classifier, seed: int) -> Iterator[None]:
    """Run with the classifier's purifier generator restarted at ``seed``; the previous seed is put back
    afterwards (its stream restarts, so callers seed every batch they care about)."""
    previous = classifier.seed
    classifier.reset_generator(seed)
    try:
        yield
    finally:
        classifier.reset_generator(previous)


def cuda_devices(x: Tensor) -> list[int]:
    """Devices whose RNG state ``torch.random.fork_rng`` must save for work on ``x``."""
    return [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []
