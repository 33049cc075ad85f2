"""Seeded generators for training: every random draw of a step is fixed by ``(train.seed, step)``,
so a run killed and resumed draws exactly what an uninterrupted one draws (docs/architecture.md)."""
from __future__ import annotations

import torch


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator fixed by (seed, step, stream): the same draws before and after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 97 + stream) % (2**63 - 1))
