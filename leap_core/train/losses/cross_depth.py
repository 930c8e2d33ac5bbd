"""L_cross: embeddings from different layers compare as if they came from one layer."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from leap_core.train.losses.shapes import check_layer_numbers, check_layer_stack


def cross_depth_loss(student_layers: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """L_cross = mean_{l<m in layers} mean_ij (<e_l^i, e_m^j> - sg(<e_L^i, e_L^j>))^2.

    The in-batch similarity of a row exiting at l with a row exiting at m is pulled to the similarity the two
    have at the final layer L (a detached target, anchored to the teacher by L_final and L_contrast), so that
    a pair whose texts exit at different layers scores as it would at full depth. Zero when all layers are equal.
    A target made of the two layers' own same-depth similarities instead lets a batch collapse to one point
    (every similarity 1, the term 0): docs/tuning.md. student_layers: (L, B, d); layers: 1-indexed (two or more,
    else 0).
    """
    n_layers = check_layer_stack(student_layers, "cross_depth_loss")
    check_layer_numbers(layers, 1, n_layers, "cross_depth_loss")
    if len(set(layers)) < 2:
        return student_layers.sum() * 0.0
    unit = F.normalize(student_layers, dim=-1)
    target = (unit[-1] @ unit[-1].T).detach()
    terms = [((unit[l - 1] @ unit[m - 1].T - target) ** 2).mean()
             for l, m in itertools.combinations(sorted(set(layers)), 2)]
    return torch.stack(terms).mean()
