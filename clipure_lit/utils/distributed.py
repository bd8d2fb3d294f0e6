"""Gather per-sample tensors from every process and keep each sample once.

Under DDP, Lightning's test sampler pads the dataset by repeating samples so every rank gets the same number;
results are therefore keyed by ``sample_id`` and de-duplicated after gathering.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gather_varlen(module, tensor: Tensor) -> Tensor:
    """All-gather a 1-D tensor whose length may differ per rank; returns the concatenation over ranks."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1:
        return tensor
    length = torch.tensor([tensor.numel()], device=tensor.device)
    lengths = module.all_gather(length).view(-1)  # [world]
    longest = int(lengths.max())
    padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    gathered = module.all_gather(padded)  # [world, longest]
    return torch.cat([gathered[r, : int(lengths[r])] for r in range(gathered.shape[0])])


def unique_by_id(ids: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the first value of each id; returns ``(sorted unique ids, their values)``."""
    order = torch.argsort(ids, stable=True)
    ids, values = ids[order], values[order]
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[1:] = ids[1:] != ids[:-1]
    return ids[keep], values[keep]
