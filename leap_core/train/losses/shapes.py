"""The argument checks every loss term shares: a (L, B, d) stack of layer embeddings, 1-indexed layer numbers."""

from __future__ import annotations

from typing import Sequence

import torch


def check_layer_stack(student_layers: torch.Tensor, where: str) -> int:
    """L of a (L, B, d) stack; a ValueError naming `where` for any other shape."""
    if student_layers.dim() != 3:
        raise ValueError(f"{where}: student_layers must be (L, B, d), got {tuple(student_layers.shape)}")
    return student_layers.shape[0]


def check_layer_numbers(layers: Sequence[int], low: int, high: int, where: str, name: str = "layers",
                        why: str = "1-indexed") -> None:
    """Every layer number within low..high; a ValueError naming `where`, `name` and the numbers outside."""
    bad = [layer for layer in layers if not low <= layer <= high]
    if bad:
        raise ValueError(f"{where}: {name} {bad} outside {low}..{high} ({why})")
