"""Explicit seeding."""

from __future__ import annotations

import torch


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))
