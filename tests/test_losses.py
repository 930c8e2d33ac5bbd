"""Loss terms of the LEAP objective: hand-computed values on tiny vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leap_core.config import ObjectiveConfig
from leap_core.train.losses import (
    LATE_EPS,
    LeapObjective,
    adjacent_loss,
    contrastive_kl,
    default_late_layers,
    exit_layer_weights,
    exit_loss_self,
    exit_loss_teacher,
    final_loss,
    inter_loss,
    late_loss,
    redundancy_loss,
    soft_margin,
    student_target_ramp,
    uniform_layer_map,
)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


# --- final / inter -----------------------------------------------------------------------------


def test_final_loss_hand_values():
    student = t([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    teacher = t([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    # 1 - cos per row: 0, 1, 0.4
    assert final_loss(student, teacher).item() == pytest.approx((0.0 + 1.0 + 0.4) / 3)


def test_final_loss_rejects_width_mismatch():
    with pytest.raises(ValueError, match="final_loss"):
        final_loss(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize(
    "n_student, n_teacher, expected",
    [
        (12, 24, list(range(2, 25, 2))),
        (4, 12, [3, 6, 9, 12]),
        (4, 6, [2, 3, 5, 6]),  # 1.5 -> 2 and 4.5 -> 5: half-up, not banker's rounding
        (3, 3, [1, 2, 3]),
        (4, 2, [1, 1, 2, 2]),  # 0.5 -> 1, never below layer 1
    ],
)
def test_uniform_layer_map(n_student, n_teacher, expected):
    assert uniform_layer_map(n_student, n_teacher) == expected


def test_uniform_layer_map_rejects_zero_layers():
    with pytest.raises(ValueError):
        uniform_layer_map(0, 12)


def test_inter_loss_hand_values():
    # layer 1: rows (1-cos) = 1, 0.4; layer 2: rows = 2, 0
    student = t([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    teacher = t([[[0.0, 1.0], [0.6, 0.8]], [[-1.0, 0.0], [0.0, 1.0]]])
    assert inter_loss(student, teacher).item() == pytest.approx((1.0 + 0.4 + 2.0 + 0.0) / 4)


# --- exit --------------------------------------------------------------------------------------


def test_exit_layer_weights():
    assert exit_layer_weights(12, 6, 0.1).tolist() == pytest.approx([0.1] * 5 + [1.0] * 7)
    assert exit_layer_weights(3, 1, 0.5).tolist() == [1.0, 1.0, 1.0]
    assert exit_layer_weights(3, 4, 0.25).tolist() == [0.25, 0.25, 0.25]


def test_soft_margin_values():
    assert soft_margin(t(0.98), 0.98, 10.0).item() == pytest.approx(0.5)
    assert soft_margin(t(0.88), 0.98, 10.0).item() == pytest.approx(sigmoid(1.0))
    assert soft_margin(t(1.0), 0.98, 10.0).item() == pytest.approx(sigmoid(-0.2))
    assert soft_margin(t(0.5), 0.5, 3.0).item() == pytest.approx(0.5)


def test_exit_loss_teacher_constructed_case():
    teacher_final = t([[1.0, 0.0], [1.0, 0.0]])
    # cos to the teacher: layer 1 -> 1, 0; layer 2 -> 0.6, 1
    student = t([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [1.0, 0.0]]])
    weights = t([0.1, 1.0])
    tau, k = 0.9, 10.0
    layer1 = (sigmoid(k * (tau - 1.0)) + sigmoid(k * (tau - 0.0))) / 2
    layer2 = (sigmoid(k * (tau - 0.6)) + sigmoid(k * (tau - 1.0))) / 2
    expected = (0.1 * layer1 + 1.0 * layer2) / 2  # divided by L, not by sum(w)
    assert exit_loss_teacher(student, teacher_final, weights, tau, k).item() == pytest.approx(expected)


def test_exit_loss_self_value_and_stop_gradient():
    raw = torch.tensor([[[0.0, 2.0]], [[0.6, 0.8]], [[3.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    layers = F.normalize(raw, dim=-1)
    # cos to the final layer (1, 0): layer 1 -> 0, layer 2 -> 0.6; w_L (99) must not matter
    weights = t([1.0, 0.5, 99.0])
    tau, k = 0.98, 10.0
    loss = exit_loss_self(layers, weights, tau, k)
    expected = (1.0 * sigmoid(k * tau) + 0.5 * sigmoid(k * (tau - 0.6))) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.equal(raw.grad[-1], torch.zeros(1, 2, dtype=torch.float64))
    assert raw.grad[0].abs().sum() > 0 and raw.grad[1].abs().sum() > 0


def test_exit_loss_self_single_layer_is_zero():
    assert exit_loss_self(unit(1, 2, 3), t([1.0]), 0.98, 10.0).item() == 0.0


def test_exit_weights_shape_checked():
    with pytest.raises(ValueError, match="weights"):
        exit_loss_self(unit(3, 2, 4), t([1.0, 1.0]), 0.98, 10.0)


@pytest.mark.parametrize("progress, expected", [(0.0, 0.0), (0.1, 0.0), (0.35, 0.5), (0.6, 1.0), (1.0, 1.0)])
def test_student_target_ramp(progress, expected):
    assert student_target_ramp(progress, 0.1, 0.6) == pytest.approx(expected)


def test_student_target_ramp_step_and_bad_order():
    assert student_target_ramp(0.29, 0.3, 0.3) == 0.0
    assert student_target_ramp(0.3, 0.3, 0.3) == 1.0
    with pytest.raises(ValueError, match="ramp_start"):
        student_target_ramp(0.5, 0.6, 0.1)


# --- contrast ----------------------------------------------------------------------------------


def test_contrastive_kl_zero_for_same_structure_across_widths():
    student = unit(6, 4, seed=1)
    q, _ = torch.linalg.qr(torch.randn(10, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    teacher = student @ q.T  # orthonormal embedding of 4-d into 10-d: same cosines
    assert teacher.shape == (6, 10)
    assert contrastive_kl(student, teacher, 0.05).item() == pytest.approx(0.0, abs=1e-9)
    assert contrastive_kl(student, unit(6, 10, seed=3), 0.05).item() > 1e-3


def _numpy_kl(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    def row_probs(e):
        s = e @ e.T
        rows = []
        for i in range(len(e)):
            logits = np.array([s[i, j] for j in range(len(e)) if j != i]) / temperature
            p = np.exp(logits - logits.max())
            rows.append(p / p.sum())
        return rows

    return float(np.mean([np.sum(p * np.log(p / q)) for p, q in zip(row_probs(student), row_probs(teacher))]))


def test_contrastive_kl_matches_manual_3x3():
    student = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    teacher = np.eye(3)  # off-diagonal similarities all 0: P_t uniform (0.5, 0.5)
    value = contrastive_kl(torch.from_numpy(student), torch.from_numpy(teacher), 1.0).item()
    # by hand: rows of P_s = softmax((0, .6)), softmax((0, .8)), softmax((.6, .8)); KL = sum p log p + log 2
    by_hand = 0.0
    for a, b in [(0.0, 0.6), (0.0, 0.8), (0.6, 0.8)]:
        p = np.exp([a, b]) / np.exp([a, b]).sum()
        by_hand += (np.sum(p * np.log(p)) + math.log(2)) / 3
    assert value == pytest.approx(by_hand)
    assert value == pytest.approx(_numpy_kl(student, teacher, 1.0))


def test_contrastive_kl_direction_and_kl_div_equivalent():
    student, teacher, temp = unit(5, 3, seed=4), unit(5, 7, seed=5), 0.2
    off = ~torch.eye(5, dtype=torch.bool)

    def log_probs(e):
        return F.log_softmax((e @ e.T)[off].view(5, 4) / temp, dim=-1)

    # kl_div(input, target) = KL(target || input): the student's distribution is the target here
    reference = F.kl_div(log_probs(teacher), log_probs(student), log_target=True, reduction="batchmean")
    reverse = F.kl_div(log_probs(student), log_probs(teacher), log_target=True, reduction="batchmean")
    value = contrastive_kl(student, teacher, temp)
    assert value.item() == pytest.approx(reference.item())
    assert abs(value.item() - reverse.item()) > 1e-4
    assert value.item() == pytest.approx(_numpy_kl(student.numpy(), teacher.numpy(), temp))


def test_contrastive_kl_small_batch_and_bad_temperature():
    assert contrastive_kl(unit(1, 3), unit(1, 5), 0.05).item() == 0.0
    assert contrastive_kl(unit(2, 3), unit(2, 5, seed=1), 0.05).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_kl(unit(3, 3), unit(3, 3), 0.0)


# --- late / redundancy -------------------------------------------------------------------------


def test_default_late_layers():
    assert default_late_layers(12) == [9, 10, 11]
    assert default_late_layers(4) == [1, 2, 3]
    assert default_late_layers(2) == [1]
    assert default_late_layers(1) == []


def test_late_loss_hand_values_and_stop_gradient():
    raw = torch.tensor([[[0.0, 1.0]], [[0.6, 0.8]], [[2.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    layers = F.normalize(raw, dim=-1)
    # 1 - cos to the final layer (1, 0): layer 1 -> 1, layer 2 -> 0.4
    assert late_loss(layers, [2]).item() == pytest.approx(math.sqrt(0.4))
    loss = late_loss(layers, [1, 2])
    assert loss.item() == pytest.approx((1.0 + math.sqrt(0.4)) / 2)
    loss.backward()
    assert torch.equal(raw.grad[-1], torch.zeros(1, 2, dtype=torch.float64))
    assert raw.grad[0].abs().sum() > 0


def test_late_loss_finite_gradient_at_convergence():
    raw = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    loss = late_loss(F.normalize(raw, dim=-1), [1])
    assert loss.item() == pytest.approx(math.sqrt(LATE_EPS))
    loss.backward()
    assert torch.isfinite(raw.grad).all()


def test_late_loss_rejects_last_and_out_of_range_layers():
    with pytest.raises(ValueError, match="late_layers"):
        late_loss(unit(3, 2, 2), [3])
    with pytest.raises(ValueError, match="late_layers"):
        late_loss(unit(3, 2, 2), [0])


def test_redundancy_loss_hand_values_and_margin():
    layers = t([[[1.0, 0.0]], [[0.6, 0.8]], [[0.6, 0.8]]])  # steps: sqrt(0.8), 0
    assert redundancy_loss(layers, 1.0).item() == pytest.approx(-math.sqrt(0.8) / 2)
    assert redundancy_loss(layers, 0.1).item() == pytest.approx(-0.1 / 2)
    raw = layers.clone().requires_grad_(True)
    redundancy_loss(raw, 0.1).backward()
    assert raw.grad.abs().sum().item() == 0.0  # clipped step: no gradient; zero step: no nan
    assert redundancy_loss(unit(1, 2, 3), 0.1).item() == 0.0


# --- objective ---------------------------------------------------------------------------------

L, B, D_S, D_T = 4, 5, 6, 8


def inputs(d_s: int = D_S, d_t: int = D_T, seed: int = 0):
    student = unit(L, B, d_s, seed=seed).float().requires_grad_(True)
    teacher = unit(L, B, d_t, seed=seed + 100).float()
    return student, teacher


def objective(d_s: int = D_S, d_t: int = D_T, **overrides) -> LeapObjective:
    torch.manual_seed(0)
    return LeapObjective(ObjectiveConfig(**overrides), L, d_s, d_t)


def test_objective_projection_iff_widths_differ():
    differ = objective()
    assert isinstance(differ.projection, nn.Linear)
    assert (differ.projection.in_features, differ.projection.out_features) == (D_S, D_T)
    assert set(differ.state_dict()) == {"projection.weight", "projection.bias"}
    assert isinstance(objective(D_T, D_T).projection, nn.Identity)


def test_objective_final_only_arm():
    obj = objective(alpha=0.0, beta=0.0, delta=0.0, late=0.0, redund=0.0)
    total, terms = obj(*inputs(), progress=0.5)
    assert set(terms) == {"final", "total"}
    assert total.item() == pytest.approx(terms["final"])
    assert terms["total"] == pytest.approx(terms["final"])


def test_objective_zero_weight_terms_absent():
    _, terms = objective(delta=0.0, student_target_factor=0.0)(*inputs(), progress=1.0)
    assert set(terms) == {"final", "inter", "exit_teacher", "late", "redund", "total"}
    _, terms = objective()(*inputs(), progress=0.0)
    assert set(terms) == {"final", "inter", "exit_teacher", "exit_self", "ramp", "contrast", "late", "redund", "total"}


def test_objective_total_is_weighted_sum():
    cfg = ObjectiveConfig()
    total, terms = objective()(*inputs(), progress=0.35)
    assert terms["ramp"] == pytest.approx(0.5)
    expected = (
        terms["final"]
        + cfg.alpha * terms["inter"]
        + cfg.beta * (terms["exit_teacher"] + cfg.student_target_factor * 0.5 * terms["exit_self"])
        + cfg.delta * terms["contrast"]
        + cfg.late * terms["late"]
        + cfg.redund * terms["redund"]
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert terms["total"] == pytest.approx(total.item())


def test_objective_ramp_changes_only_exit_self_contribution():
    cfg = ObjectiveConfig()
    obj, (student, teacher) = objective(), inputs()
    total0, terms0 = obj(student, teacher, progress=0.0)
    total1, terms1 = obj(student, teacher, progress=1.0)
    assert (terms0["ramp"], terms1["ramp"]) == (0.0, 1.0)
    for key in ("final", "inter", "exit_teacher", "exit_self", "contrast", "late", "redund"):
        assert terms0[key] == pytest.approx(terms1[key])
    delta = total1.item() - total0.item()
    assert delta == pytest.approx(cfg.beta * cfg.student_target_factor * terms1["exit_self"], rel=1e-4)
    assert delta > 0


def test_objective_contrast_uses_unprojected_student():
    student = unit(L, B, D_S, seed=7).float()
    q, _ = torch.linalg.qr(torch.randn(D_T, D_S, generator=torch.Generator().manual_seed(8)))
    teacher = student @ q.T  # same in-batch similarities at every layer, different width
    _, terms = objective()(student, teacher, progress=0.0)
    assert terms["contrast"] == pytest.approx(0.0, abs=1e-5)


def test_objective_backward_gives_finite_gradients():
    obj, (student, teacher) = objective(), inputs()
    total, _ = obj(student, teacher, progress=0.8)
    total.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert torch.isfinite(obj.projection.weight.grad).all() and obj.projection.weight.grad.abs().sum() > 0


def test_objective_input_errors():
    obj = objective()
    student, teacher = inputs()
    with pytest.raises(ValueError, match="student_layers"):
        obj(student[:-1], teacher, progress=0.0)
    with pytest.raises(ValueError, match="teacher_layers"):
        obj(student, teacher[:, :-1], progress=0.0)
    with pytest.raises(ValueError, match="objective.late_layers"):
        LeapObjective(ObjectiveConfig(late_layers=[L]), L, D_S, D_T)
    assert LeapObjective(ObjectiveConfig(late_layers=[1, 2]), L, D_S, D_T).late_layers == [1, 2]


def test_objective_final_weight_scales_only_the_final_term():
    student, teacher = inputs()
    base_total, terms = objective()(student, teacher, progress=0.5)
    heavy_total, heavy_terms = objective(final=5.0)(student, teacher, progress=0.5)
    assert heavy_terms["final"] == pytest.approx(terms["final"])
    assert heavy_total.item() - base_total.item() == pytest.approx(4.0 * terms["final"], rel=1e-4)


def test_objective_contrast_layers_average_the_listed_layers():
    student, teacher = inputs()
    cfg = ObjectiveConfig()
    expected = np.mean([contrastive_kl(student[layer - 1], teacher[-1], cfg.contrast_temperature).item()
                        for layer in (2, L)])
    _, terms = objective(contrast_layers=[2, L])(student, teacher, progress=0.0)
    assert terms["contrast"] == pytest.approx(expected, rel=1e-5)
    _, default_terms = objective()(student, teacher, progress=0.0)
    assert default_terms["contrast"] == pytest.approx(
        contrastive_kl(student[-1], teacher[-1], cfg.contrast_temperature).item(), rel=1e-5)
    with pytest.raises(ValueError, match="contrast_layers"):
        objective(contrast_layers=[0, L + 1])


def test_config_fingerprint_unchanged_by_neutral_later_fields():
    """Runs trained before `final`, `contrast_layers`, `adjacent*` and `cross*` existed keep their fingerprint."""
    from leap_core.config import config_fingerprint

    cfg = ObjectiveConfig(beta=2.0, late_layers=[5, 6])
    before = repr(cfg).replace(
        ", final=1.0, contrast_layers=None, adjacent=0.0, adjacent_margin=0.97, adjacent_layers=None, cross=0.0, "
        "cross_layers=None", "")
    assert config_fingerprint(cfg) == before
    assert config_fingerprint(ObjectiveConfig(beta=2.0, late_layers=[5, 6], final=4.0)) != before
    assert config_fingerprint(ObjectiveConfig(beta=2.0, late_layers=[5, 6], contrast_layers=[6])) != before
    assert config_fingerprint(ObjectiveConfig(beta=2.0, late_layers=[5, 6], adjacent=1.0)) != before
    assert config_fingerprint(ObjectiveConfig(beta=2.0, late_layers=[5, 6], cross=1.0)) != before


def test_adjacent_loss_hinge_values_and_stop_gradient():
    raw = torch.tensor([[[0.0, 1.0]], [[0.6, 0.8]], [[1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    layers = F.normalize(raw, dim=-1)
    # cos(layer 1, layer 2) = 0.8, cos(layer 2, layer 3) = 0.6
    assert adjacent_loss(layers, [2], margin=0.97).item() == pytest.approx(0.17)
    assert adjacent_loss(layers, [2, 3], margin=0.97).item() == pytest.approx((0.17 + 0.37) / 2)
    assert adjacent_loss(layers, [2], margin=0.7).item() == 0.0  # already past the margin: no push
    loss = adjacent_loss(layers, [3], margin=0.97)
    loss.backward()
    assert torch.equal(raw.grad[-1], torch.zeros(1, 2, dtype=torch.float64))  # the upper layer is the target
    assert raw.grad[1].abs().sum() > 0
    assert torch.equal(raw.grad[0], torch.zeros(1, 2, dtype=torch.float64))


def test_adjacent_loss_rejects_bad_layers_and_empty_is_zero():
    with pytest.raises(ValueError, match="adjacent_loss"):
        adjacent_loss(unit(3, 2, 2), [1], 0.97)
    with pytest.raises(ValueError, match="adjacent_loss"):
        adjacent_loss(unit(3, 2, 2), [4], 0.97)
    assert adjacent_loss(unit(3, 2, 2), [], 0.97).item() == 0.0


def test_objective_adjacent_term_defaults_to_the_exit_tests():
    student, teacher = inputs()
    obj = objective(exit_weight_from=2, adjacent=3.0)
    assert obj.adjacent_layers == [2, 3]  # exit_weight_from .. L-1
    base_total, base_terms = objective(exit_weight_from=2)(student, teacher, progress=0.5)
    total, terms = obj(student, teacher, progress=0.5)
    assert "adjacent" not in base_terms
    assert terms["adjacent"] == pytest.approx(adjacent_loss(student, [2, 3], 0.97).item(), rel=1e-5)
    assert total.item() - base_total.item() == pytest.approx(3.0 * terms["adjacent"], rel=1e-4)
    with pytest.raises(ValueError, match="adjacent_layers"):
        objective(adjacent=1.0, adjacent_layers=[1])
