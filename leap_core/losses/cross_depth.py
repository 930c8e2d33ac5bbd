"""L_cross: embeddings from different layers compare as if they came from one layer."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def cross_depth_loss(student_layers: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """L_cross = mean_{l<m in layers} mean_ij (<e_l^i, e_m^j> - sg(<e_l^i, e_l^j> + <e_m^i, e_m^j>) / 2)^2.

    The in-batch similarity of a row exiting at l with a row exiting at m is pulled to what the two would have
    had at the same depth (the mean of the two same-layer similarity matrices, a detached target), so that a pair
    whose texts exit at different layers scores like a pair that exits together. Zero when all layers are equal.
    student_layers: (L, B, d); layers: 1-indexed exit layers (at least two, else 0).
    """
    if student_layers.dim() != 3:
        raise ValueError(f"cross_depth_loss: student_layers must be (L, B, d), got {tuple(student_layers.shape)}")
    n_layers = student_layers.shape[0]
    bad = [layer for layer in layers if not 1 <= layer <= n_layers]
    if bad:
        raise ValueError(f"cross_depth_loss: layers {bad} outside 1..{n_layers} (1-indexed)")
    if len(set(layers)) < 2:
        return student_layers.sum() * 0.0
    unit = F.normalize(student_layers, dim=-1)
    same = {l: unit[l - 1] @ unit[l - 1].T for l in set(layers)}
    terms = [((unit[l - 1] @ unit[m - 1].T - ((same[l] + same[m]) / 2).detach()) ** 2).mean()
             for l, m in itertools.combinations(sorted(set(layers)), 2)]
    return torch.stack(terms).mean()
