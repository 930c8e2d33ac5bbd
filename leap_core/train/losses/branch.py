"""L_branch: every exit layer of the shallow branch lands on the ORIGINAL model's final embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leap_core.train.losses.contrast import contrastive_kl
from leap_core.train.losses.final import final_loss


def branch_loss(exits: torch.Tensor, original_final: torch.Tensor, contrast: float,
                temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L_branch = mean_l [(1 - cos(p_l, t)) + contrast KL(P(p_l) || P(t))] over the exit layers l.

    exits: (E, B, d) normalised pools of the branch's exit layers; original_final: (B, d) the original
    model's final embeddings of the same texts. The cosine term puts each exit in the original's space
    (queries embedded shallow can search an index the original built); the similarity-structure term
    keeps the ranking among texts, which a small mean cosine error can still scramble.
    """
    if exits.dim() != 3 or exits.shape[1:] != original_final.shape:
        raise ValueError(f"branch_loss: exits {tuple(exits.shape)} do not match original {tuple(original_final.shape)}")
    cosine = torch.stack([final_loss(layer, original_final) for layer in exits]).mean()
    total = cosine
    terms = {"cosine": float(cosine.detach())}
    if contrast:
        structure = torch.stack([contrastive_kl(layer, original_final, temperature) for layer in exits]).mean()
        total = total + contrast * structure
        terms["contrast"] = float(structure.detach())
    terms["total"] = float(total.detach())
    return total, terms


class BranchObjective(nn.Module):
    """LeapTrainer's objective interface over branch_loss: (student_layers, targets, progress) -> (loss, terms).

    exit_layers: 1-indexed branch layers trained as exits; targets[-1] holds the original's final embedding.
    Each exit has a linear head (dim -> dim) on its normalised pool, re-normalised: an intermediate layer's
    pool carries a large common component and outlier dimensions that a linear map removes at once, which
    the layers alone learn only slowly. The heads start as the identity (set_heads puts a fitted map in).
    """

    def __init__(self, exit_layers: list[int], n_layers: int, dim: int, contrast: float = 1.0,
                 temperature: float = 0.05):
        super().__init__()
        bad = [layer for layer in exit_layers if not 1 <= layer <= n_layers]
        if bad or not exit_layers:
            raise ValueError(f"branch exit_layers {bad or exit_layers} must be 1-indexed layers in 1..{n_layers}")
        self.exit_layers, self.contrast, self.temperature = list(exit_layers), contrast, temperature
        self.heads = nn.ModuleList(nn.Linear(dim, dim) for _ in exit_layers)
        for head in self.heads:
            nn.init.eye_(head.weight)
            nn.init.zeros_(head.bias)

    def set_heads(self, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for head, weight, bias in zip(self.heads, weights, biases):
                head.weight.copy_(weight)
                head.bias.copy_(bias)

    def exits(self, student_layers: torch.Tensor) -> torch.Tensor:
        """(E, B, d): each exit layer's pool through its head, normalised."""
        return torch.stack([F.normalize(head(student_layers[layer - 1]), dim=-1)
                            for layer, head in zip(self.exit_layers, self.heads)])

    def forward(self, student_layers: torch.Tensor, targets: torch.Tensor,
                progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        exits = self.exits(student_layers)
        return branch_loss(exits, targets[-1].to(exits.dtype), self.contrast, self.temperature)
