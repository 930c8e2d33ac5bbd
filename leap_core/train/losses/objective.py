"""The LEAP objective: the weighted sum of the loss terms, with the learned width projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leap_core.config import ObjectiveConfig
from leap_core.train.losses.adjacent import adjacent_loss
from leap_core.train.losses.contrast import contrastive_kl
from leap_core.train.losses.cross_depth import cross_depth_loss
from leap_core.train.losses.exit import exit_layer_weights, exit_loss_self, exit_loss_teacher, student_target_ramp
from leap_core.train.losses.final import final_loss
from leap_core.train.losses.inter import inter_loss
from leap_core.train.losses.late import default_late_layers, late_loss
from leap_core.train.losses.redundancy import redundancy_loss


class LeapObjective(nn.Module):
    """L = final L_final + alpha L_inter + beta (L_exit^t + factor ramp(progress) L_exit^s)
           + delta L_contrast + late L_late + redund L_redund + adjacent L_adjacent + cross L_cross.

    Teacher-comparing terms (final, inter, exit^t) see the student projected to the teacher's width
    and re-normalised; contrast compares the raw student final (or the mean over contrast_layers)
    with the teacher final (similarity matrices are width-free); self terms (exit^s, late, redund, adjacent) see
    the raw student layers.
    A term whose weight is 0 is not computed and is absent from the returned dict; exit_self is
    computed whenever beta * student_target_factor != 0, even while the ramp is still 0, so that
    an arm logs the same keys throughout training ("ramp" is reported alongside it).
    """

    def __init__(self, config: ObjectiveConfig, n_student_layers: int, student_dim: int, teacher_dim: int):
        super().__init__()
        if n_student_layers < 1:
            raise ValueError(f"LeapObjective: n_student_layers must be >= 1, got {n_student_layers}")
        self.config = config
        self.n_layers = n_student_layers
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.projection: nn.Module = nn.Linear(student_dim, teacher_dim) if student_dim != teacher_dim else nn.Identity()
        late = config.late_layers if config.late_layers is not None else default_late_layers(n_student_layers)
        bad = [layer for layer in late if not 1 <= layer < n_student_layers]
        if bad:
            raise ValueError(
                f"objective.late_layers: {bad} outside 1..{n_student_layers - 1} "
                f"(1-indexed student layers, the last excluded)"
            )
        self.late_layers = list(late)
        contrast = config.contrast_layers if config.contrast_layers is not None else [n_student_layers]
        bad = [layer for layer in contrast if not 1 <= layer <= n_student_layers]
        if bad or not contrast:
            raise ValueError(f"objective.contrast_layers: {bad or contrast} must be 1-indexed student layers "
                             f"in 1..{n_student_layers}")
        self.contrast_layers = list(contrast)
        adjacent = (config.adjacent_layers if config.adjacent_layers is not None
                    else list(range(max(2, config.exit_weight_from), n_student_layers)))
        bad = [layer for layer in adjacent if not 2 <= layer <= n_student_layers]
        if bad:
            raise ValueError(f"objective.adjacent_layers: {bad} outside 2..{n_student_layers} "
                             f"(1-indexed layers l, each compared with l-1)")
        self.adjacent_layers = list(adjacent)
        cross = (config.cross_layers if config.cross_layers is not None
                 else list(range(max(1, config.exit_weight_from), n_student_layers + 1)))
        bad = [layer for layer in cross if not 1 <= layer <= n_student_layers]
        if bad:
            raise ValueError(f"objective.cross_layers: {bad} outside 1..{n_student_layers} (1-indexed layers)")
        self.cross_layers = list(cross)
        # Not persistent: derived from the config, so checkpoints hold only the projection.
        self.register_buffer(
            "exit_weights",
            exit_layer_weights(n_student_layers, config.exit_weight_from, config.exit_weight_low),
            persistent=False,
        )

    def _check(self, student_layers: torch.Tensor, teacher_layers: torch.Tensor) -> None:
        expected_s = (self.n_layers, self.student_dim)
        if student_layers.dim() != 3 or (student_layers.shape[0], student_layers.shape[2]) != expected_s:
            raise ValueError(
                f"LeapObjective: student_layers must be (L={self.n_layers}, B, d={self.student_dim}), "
                f"got {tuple(student_layers.shape)}"
            )
        expected_t = (self.n_layers, student_layers.shape[1], self.teacher_dim)
        if tuple(teacher_layers.shape) != expected_t:
            raise ValueError(
                f"LeapObjective: teacher_layers must be (L, B, D) = {expected_t} (teacher layer pi(l) "
                f"per student layer l), got {tuple(teacher_layers.shape)}"
            )

    def forward(
        self, student_layers: torch.Tensor, teacher_layers: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """student_layers (L, B, d), teacher_layers (L, B, D), progress = fraction of training done.

        Returns the total loss (a scalar with graph) and the float value of every computed term
        (keys among final, inter, exit_teacher, exit_self, contrast, late, adjacent, redund, ramp, total).
        """
        self._check(student_layers, teacher_layers)
        cfg = self.config
        teacher_final = teacher_layers[-1]
        projected = F.normalize(self.projection(student_layers), dim=-1)

        terms: dict[str, torch.Tensor] = {"final": final_loss(projected[-1], teacher_final)}
        schedule: dict[str, float] = {}
        total = cfg.final * terms["final"]
        if cfg.alpha != 0:
            terms["inter"] = inter_loss(projected, teacher_layers)
            total = total + cfg.alpha * terms["inter"]
        if cfg.beta != 0:
            weights = self.exit_weights
            terms["exit_teacher"] = exit_loss_teacher(projected, teacher_final, weights, cfg.tau, cfg.sharpness)
            exit_total = terms["exit_teacher"]
            if cfg.student_target_factor != 0:
                ramp = student_target_ramp(progress, cfg.ramp_start, cfg.ramp_end)
                terms["exit_self"] = exit_loss_self(student_layers, weights, cfg.tau, cfg.sharpness)
                schedule["ramp"] = ramp
                exit_total = exit_total + cfg.student_target_factor * ramp * terms["exit_self"]
            total = total + cfg.beta * exit_total
        if cfg.delta != 0:
            terms["contrast"] = torch.stack([
                contrastive_kl(student_layers[layer - 1], teacher_final, cfg.contrast_temperature)
                for layer in self.contrast_layers]).mean()
            total = total + cfg.delta * terms["contrast"]
        if cfg.late != 0:
            terms["late"] = late_loss(student_layers, self.late_layers)
            total = total + cfg.late * terms["late"]
        if cfg.adjacent != 0:
            terms["adjacent"] = adjacent_loss(student_layers, self.adjacent_layers, cfg.adjacent_margin)
            total = total + cfg.adjacent * terms["adjacent"]
        if cfg.cross != 0:
            terms["cross"] = cross_depth_loss(student_layers, self.cross_layers)
            total = total + cfg.cross * terms["cross"]
        if cfg.redund != 0:
            terms["redund"] = redundancy_loss(student_layers, cfg.redund_margin)
            total = total + cfg.redund * terms["redund"]
        terms["total"] = total
        # One device sync for all the logged values, not one per term.
        values = torch.stack([t.detach().float().to(total.device) for t in terms.values()]).tolist()
        return total, {**dict(zip(terms, values)), **schedule}
