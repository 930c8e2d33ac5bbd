"""L_final: the student's last layer matches the teacher's last layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def final_loss(student_final: torch.Tensor, teacher_final: torch.Tensor) -> torch.Tensor:
    """L_final = mean_b (1 - cos(e_s^L, e_t^Lt)).

    student_final, teacher_final: (B, D) embeddings of the same width (project the student first
    when widths differ). Returns a scalar in [0, 2].
    """
    if student_final.shape != teacher_final.shape:
        raise ValueError(f"final_loss: student {tuple(student_final.shape)} != teacher {tuple(teacher_final.shape)}")
    return (1.0 - F.cosine_similarity(student_final, teacher_final, dim=-1)).mean()
