"""L_exit: intermediate layers are pushed past a similarity margin, so they can serve as exits.

L_exit = L_exit^t + factor * ramp(progress) * L_exit^s, with a teacher-target term and a
student-target (self) term; the self term is ramped in during training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leap_core.train.losses.shapes import check_layer_stack


def exit_layer_weights(n_layers: int, weight_from: int, low: float) -> torch.Tensor:
    """w_l = 1 for l >= weight_from (1-indexed), `low` below it. Returns a float tensor (n_layers,).

    The weight concentrates on the layers that may serve as exits (the paper: 6-11 of 12).
    """
    if n_layers < 1:
        raise ValueError(f"exit_layer_weights: n_layers must be >= 1, got {n_layers}")
    layers = torch.arange(1, n_layers + 1)
    return torch.where(layers >= weight_from, 1.0, float(low)).to(torch.float32)


def soft_margin(cos: torch.Tensor, tau: float, sharpness: float) -> torch.Tensor:
    """sigmoid(sharpness * (tau - cos)): 0.5 at cos = tau, -> 0 above it, -> 1 below it.

    A smooth hinge: unlike max(0, tau - cos) its gradient does not vanish at the threshold.
    """
    return torch.sigmoid(sharpness * (tau - cos))


def _check_weights(layers: torch.Tensor, weights: torch.Tensor, where: str) -> None:
    check_layer_stack(layers, where)
    if weights.shape != (layers.shape[0],):
        raise ValueError(f"{where}: weights must be ({layers.shape[0]},), got {tuple(weights.shape)}")


def exit_loss_teacher(
    student_layers: torch.Tensor,
    teacher_final: torch.Tensor,
    weights: torch.Tensor,
    tau: float,
    sharpness: float,
) -> torch.Tensor:
    """L_exit^t = 1/L sum_{l=1..L} w_l mean_b soft_margin(cos(e_s^l, e_t^final)).

    student_layers: (L, B, D) (projected to the teacher's width); teacher_final: (B, D);
    weights: (L,) from `exit_layer_weights`. The sum is divided by L, not by sum(w).
    """
    _check_weights(student_layers, weights, "exit_loss_teacher")
    if teacher_final.shape != student_layers.shape[1:]:
        raise ValueError(
            f"exit_loss_teacher: teacher_final {tuple(teacher_final.shape)} != student layer {tuple(student_layers.shape[1:])}"
        )
    cos = F.cosine_similarity(student_layers, teacher_final.unsqueeze(0), dim=-1)  # (L, B)
    per_layer = soft_margin(cos, tau, sharpness).mean(dim=1)
    return (weights.to(per_layer.dtype) * per_layer).sum() / student_layers.shape[0]


def exit_loss_self(student_layers: torch.Tensor, weights: torch.Tensor, tau: float, sharpness: float) -> torch.Tensor:
    """L_exit^s = 1/(L-1) sum_{l<L} w_l mean_b soft_margin(cos(e_s^l, sg(e_s^L))).

    student_layers: (L, B, d), the raw student; weights: (L,) (w_L is unused). sg = stop-gradient:
    the final layer is a fixed target, so this term never pulls the final layer down towards the
    (worse) earlier layers. A one-layer student has no earlier layer: the loss is 0.
    """
    _check_weights(student_layers, weights, "exit_loss_self")
    n_layers = student_layers.shape[0]
    if n_layers < 2:
        return student_layers.sum() * 0.0
    target = student_layers[-1].detach()
    cos = F.cosine_similarity(student_layers[:-1], target.unsqueeze(0), dim=-1)  # (L-1, B)
    per_layer = soft_margin(cos, tau, sharpness).mean(dim=1)
    return (weights[:-1].to(per_layer.dtype) * per_layer).sum() / (n_layers - 1)


def student_target_ramp(progress: float, start: float, end: float) -> float:
    """Weight of the self term: 0 for progress < start, 1 for progress >= end, linear in between.

    progress: fraction of training done (0..1). start == end makes a step at `end`. Early in
    training the student's own final layer is a poor target; the ramp waits until it has learnt.
    """
    if start > end:
        raise ValueError(f"student_target_ramp: ramp_start {start} > ramp_end {end}")
    if progress >= end:
        return 1.0
    if progress <= start:
        return 0.0
    return (progress - start) / (end - start)
