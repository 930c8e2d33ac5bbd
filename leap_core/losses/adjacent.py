"""L_adjacent: consecutive layers agree, which is the exit test itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def adjacent_loss(student_layers: torch.Tensor, layers: list[int], margin: float) -> torch.Tensor:
    """L_adjacent = 1/|layers| sum_{l in layers} mean_b max(0, margin - cos(e_s^{l-1}, sg(e_s^l))).

    student_layers: (L, B, d), the raw student; layers: 1-indexed, each in 2..L. Inference exits
    after layer l when cos(p_l, p_{l-1}) >= theta: a hinge at margin (above theta) puts the gradient
    on exactly the samples that would not exit there, and none on those that already would.
    Layer l is a detached target: the lower layer moves up to it, so the final layer is never
    pulled down to a worse one. An empty `layers` gives 0.
    """
    if student_layers.dim() != 3:
        raise ValueError(f"adjacent_loss: student_layers must be (L, B, d), got {tuple(student_layers.shape)}")
    n_layers = student_layers.shape[0]
    bad = [layer for layer in layers if not 2 <= layer <= n_layers]
    if bad:
        raise ValueError(f"adjacent_loss: layers {bad} outside 2..{n_layers} (1-indexed; layer l is compared with l-1)")
    if not layers:
        return student_layers.sum() * 0.0
    upper = torch.tensor([layer - 1 for layer in layers], device=student_layers.device)
    cos = F.cosine_similarity(student_layers[upper - 1], student_layers[upper].detach(), dim=-1)  # (|layers|, B)
    return torch.relu(margin - cos).mean()
