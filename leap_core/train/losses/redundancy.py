"""L_redund: adjacent layers keep a small distance, so the convergence test still measures something."""

from __future__ import annotations

import torch

from leap_core.train.losses.shapes import check_layer_stack


def redundancy_loss(student_layers: torch.Tensor, margin: float) -> torch.Tensor:
    """L_redund = -1/(L-1) sum_{l=1..L-1} mean_b min(||e_{l+1} - e_l||_2, margin).

    student_layers: (L, B, d). Negative: minimising it spreads adjacent layers apart, but only up
    to `margin`, beyond which there is no reward (and no gradient). One layer gives 0.
    """
    if check_layer_stack(student_layers, "redundancy_loss") < 2:
        return student_layers.sum() * 0.0
    steps = torch.linalg.vector_norm(student_layers[1:] - student_layers[:-1], dim=-1)  # (L-1, B)
    return -steps.clamp(max=margin).mean()
