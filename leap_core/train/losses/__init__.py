"""The LEAP loss terms, one per module, and the objective that weighs them.

Conventions: embeddings are L2-normalised mean pools; `student_layers` is (L, B, d) with index
l-1 holding student layer l (layers are 1-indexed in every config and API); `teacher_layers` is
(L, B, D) with index l-1 holding teacher layer pi(l), so its last index is the teacher's final layer.
"""

from leap_core.train.losses.adjacent import adjacent_loss
from leap_core.train.losses.branch import BranchObjective, branch_loss
from leap_core.train.losses.contrast import contrastive_kl
from leap_core.train.losses.cross_depth import cross_depth_loss
from leap_core.train.losses.exit import (
    exit_layer_weights,
    exit_loss_self,
    exit_loss_teacher,
    soft_margin,
    student_target_ramp,
)
from leap_core.train.losses.final import final_loss
from leap_core.train.losses.inter import inter_loss, uniform_layer_map
from leap_core.train.losses.late import LATE_EPS, default_late_layers, late_loss
from leap_core.train.losses.objective import LeapObjective
from leap_core.train.losses.redundancy import redundancy_loss

__all__ = [
    "BranchObjective",
    "branch_loss",
    "LATE_EPS",
    "LeapObjective",
    "adjacent_loss",
    "contrastive_kl",
    "cross_depth_loss",
    "default_late_layers",
    "exit_layer_weights",
    "exit_loss_self",
    "exit_loss_teacher",
    "final_loss",
    "inter_loss",
    "late_loss",
    "redundancy_loss",
    "soft_margin",
    "student_target_ramp",
    "uniform_layer_map",
]
