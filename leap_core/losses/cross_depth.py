"""L_cross: embeddings from different layers compare as if they came from one layer."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def cross_depth_loss(student_layers: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """L_cross = mean_{l<m in layers} mean_ij (<e_l^i, e_m^j> - sg(<e_L^i, e_L^j>))^2.

    The in-batch similarity of a row exiting at l with a row exiting at m is pulled to the similarity the two
    have at the final layer L (a detached target, anchored to the teacher by L_final and L_contrast), so that
    a pair whose texts exit at different layers scores as it would at full depth. Zero when all layers are equal.
    A target made of the two layers' own same-depth similarities instead lets a batch collapse to one point
    (every similarity 1, the term 0): docs/tuning.md. student_layers: (L, B, d); layers: 1-indexed (two or more,
    else 0).
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
    target = (unit[-1] @ unit[-1].T).detach()
    terms = [((unit[l - 1] @ unit[m - 1].T - target) ** 2).mean()
             for l, m in itertools.combinations(sorted(set(layers)), 2)]
    return torch.stack(terms).mean()
