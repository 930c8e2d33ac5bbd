"""L_contrast: the student's in-batch similarity structure matches the teacher's."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _off_diagonal_log_probs(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    batch = embeddings.shape[0]
    unit = F.normalize(embeddings, dim=-1)
    sims = unit @ unit.T
    # Self-similarity is always 1: it carries no information and, at a low temperature, would
    # take almost all the probability mass. Drop it, leaving (B, B-1) rows.
    off = ~torch.eye(batch, dtype=torch.bool, device=embeddings.device)
    return F.log_softmax(sims[off].view(batch, batch - 1) / temperature, dim=-1)


def contrastive_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_contrast = mean_rows KL(P_s || P_t), P = softmax(S / temperature) over each row's off-diagonal.

    student: (B, d), teacher: (B, D): the widths may differ, since S = E E^T (B, B) is width-free.
    Inputs are normalised again here (a no-op on normalised pools), so S holds cosines.
    Direction as in the paper: KL(P_s || P_t) = sum P_s (log P_s - log P_t). B < 2 gives 0.
    """
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"contrastive_kl: expected (B, d) and (B, D), got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"contrastive_kl: temperature must be > 0, got {temperature}")
    if student.shape[0] < 2:
        return student.sum() * 0.0
    log_p_s = _off_diagonal_log_probs(student, temperature)
    log_p_t = _off_diagonal_log_probs(teacher.to(student.dtype), temperature)
    return (log_p_s.exp() * (log_p_s - log_p_t)).sum(dim=-1).mean()
