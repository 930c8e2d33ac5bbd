"""L_adjacent: consecutive layers agree, which is the exit test itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leap_core.train.losses.shapes import check_layer_numbers, check_layer_stack


def adjacent_loss(student_layers: torch.Tensor, layers: list[int], margin: float) -> torch.Tensor:
    """L_adjacent = 1/|layers| sum_{l in layers} mean_b max(0, margin - cos(e_s^{l-1}, sg(e_s^l))).

    student_layers: (L, B, d), the raw student; layers: 1-indexed, each in 2..L. Inference exits
    after layer l when cos(p_l, p_{l-1}) >= theta: a hinge at margin (above theta) puts the gradient
    on exactly the samples that would not exit there, and none on those that already would.
    Layer l is a detached target: the lower layer moves up to it, so the final layer is never
    pulled down to a worse one. An empty `layers` gives 0.
    """
    n_layers = check_layer_stack(student_layers, "adjacent_loss")
    check_layer_numbers(layers, 2, n_layers, "adjacent_loss", why="1-indexed; layer l is compared with l-1")
    if not layers:
        return student_layers.sum() * 0.0
    upper = torch.tensor([layer - 1 for layer in layers], device=student_layers.device)
    cos = F.cosine_similarity(student_layers[upper - 1], student_layers[upper].detach(), dim=-1)  # (|layers|, B)
    return torch.relu(margin - cos).mean()
