"""L_late: the last few layers below the final one converge onto it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leap_core.train.losses.shapes import check_layer_numbers, check_layer_stack

# 1 - cos is clamped here before the square root: d sqrt(x)/dx = 1/(2 sqrt x) is infinite at 0,
# and a layer identical to the final one would give inf/nan gradients. sqrt(1e-6) = 1e-3 is the
# floor of each per-sample term; its gradient there is 0 (clamped), finite just above.
LATE_EPS = 1e-6


def default_late_layers(n_layers: int) -> list[int]:
    """The (up to) three layers below the last, 1-indexed: 9, 10, 11 for 12; [] for one layer."""
    return list(range(max(1, n_layers - 3), n_layers))


def late_loss(student_layers: torch.Tensor, late_layers: list[int]) -> torch.Tensor:
    """L_late = 1/|late| sum_{l in late} mean_b sqrt(max(1 - cos(e_s^l, sg(e_s^L)), eps)).

    student_layers: (L, B, d); late_layers: 1-indexed, each in 1..L-1. The final layer e_s^L is a
    detached target, as in the exit self term: the late layers move to it, not it to them.
    An empty `late_layers` gives 0.
    """
    n_layers = check_layer_stack(student_layers, "late_loss")
    check_layer_numbers(late_layers, 1, n_layers - 1, "late_loss", "late_layers", "1-indexed, the last excluded")
    if not late_layers:
        return student_layers.sum() * 0.0
    index = torch.tensor([layer - 1 for layer in late_layers], device=student_layers.device)
    cos = F.cosine_similarity(student_layers[index], student_layers[-1].detach().unsqueeze(0), dim=-1)
    return torch.sqrt((1.0 - cos).clamp(min=LATE_EPS)).mean()
