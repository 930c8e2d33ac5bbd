"""L_inter: every student layer matches its uniformly mapped teacher layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """pi(l) = round(l * n_teacher / n_student), clipped to [1, n_teacher], for l = 1..n_student.

    Layers are 1-indexed on both sides; pi(n_student) = n_teacher. Rounding is half-up (done in
    integers, so no float ties), e.g. 12 -> 24 gives [2, 4, ..., 24] and 4 -> 12 gives [3, 6, 9, 12].
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"uniform_layer_map: layer counts must be >= 1, got {n_student}, {n_teacher}")
    return [min(max((2 * l * n_teacher + n_student) // (2 * n_student), 1), n_teacher) for l in range(1, n_student + 1)]


def inter_loss(student_layers: torch.Tensor, teacher_layers: torch.Tensor) -> torch.Tensor:
    """L_inter = 1/L sum_l mean_b (1 - cos(e_s^l, e_t^pi(l))).

    student_layers: (L, B, D), index l-1 = student layer l; teacher_layers: (L, B, D), index l-1 =
    teacher layer pi(l) (already gathered with `uniform_layer_map`). Returns a scalar.
    """
    if student_layers.shape != teacher_layers.shape or student_layers.dim() != 3:
        raise ValueError(
            f"inter_loss: expected two (L, B, D) tensors of one shape, got {tuple(student_layers.shape)} "
            f"and {tuple(teacher_layers.shape)}"
        )
    return (1.0 - F.cosine_similarity(student_layers, teacher_layers, dim=-1)).mean()
