"""Early exit against simply cutting the model: threshold sweep, fixed depths, patience exit, Pareto front.

Everything is simulated from one full-depth pass, layer_embs (L, N, d) from
EarlyExitEncoder.layer_embeddings: a row's exit under a rule depends only on its own per-layer pools,
so exits can be replayed for any theta without running the model again (tests check the replay
against the encoder's real exits). Cost is counted per row, as in the encoder's "compact" mode:
layer_reduction = L / mean exit layer.

Rules (layers 1-indexed, c_l^k = cos(p_l, p_{l-k})):
- convergence (Algorithm 1): exit at the first l >= max(l_min, k+1), l < L, with c_l^k >= theta;
- fixed depth N: every row stops at layer N;
- patience (PABEE-style): PABEE exits once `patience` consecutive internal classifiers agree on the
  argmax. An embedding has no argmax; the analogue used here counts consecutive layers whose pool
  barely moved, c_l^1 >= theta, and exits at the first l >= l_min, l < L, where that streak reaches
  `patience`. patience = 1 is the convergence rule with k = 1.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from leap_core.evaluation.layers import exit_statistics
from leap_core.policy import check_layer_embs, first_true_layer, lagged_cosines

THETAS = tuple(round(0.90 + 0.01 * i, 2) for i in range(10))  # 0.90 .. 0.99
PATIENCES = (2, 3, 4)


def convergence_exits(layer_embs: np.ndarray, theta: float, k: int = 1, l_min: int = 6) -> np.ndarray:
    """Exit layer (N,) of each row under Algorithm 1 with (theta, k, l_min), replayed from layer_embs."""
    embs = check_layer_embs(layer_embs)
    n_layers = embs.shape[0]
    if k >= n_layers:
        return np.full(embs.shape[1], n_layers, dtype=np.int64)
    cos = lagged_cosines(embs, k)
    layer_no = np.arange(1, n_layers + 1)[:, None]
    allowed = (layer_no >= max(l_min, k + 1)) & (layer_no < n_layers)
    return first_true_layer(allowed & (np.nan_to_num(cos, nan=-np.inf) >= theta), n_layers)


def patience_exits(layer_embs: np.ndarray, theta: float, patience: int, l_min: int = 1) -> np.ndarray:
    """Exit layer (N,) under the patience rule (module docstring): `patience` consecutive c_l^1 >= theta."""
    embs = check_layer_embs(layer_embs)
    n_layers = embs.shape[0]
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
    stable = np.nan_to_num(lagged_cosines(embs, 1), nan=-np.inf) >= theta
    streak = np.zeros(embs.shape[:2], dtype=np.int64)
    for index in range(1, n_layers):
        streak[index] = np.where(stable[index], streak[index - 1] + 1, 0)
    layer_no = np.arange(1, n_layers + 1)[:, None]
    return first_true_layer((layer_no >= l_min) & (layer_no < n_layers) & (streak >= patience), n_layers)


def exited_embeddings(layer_embs: np.ndarray, exit_layers: np.ndarray) -> np.ndarray:
    """(N, d): row i's embedding at its exit layer exit_layers[i] (1-indexed)."""
    embs = np.asarray(layer_embs)
    layers = np.asarray(exit_layers)
    return embs[layers - 1, np.arange(embs.shape[1])]


def sweep_point(layer_embs: np.ndarray, exit_layers: np.ndarray, quality: Callable[[np.ndarray], dict[str, float]],
                **label: Any) -> dict[str, Any]:
    """label + exit rate, mean exit layer, layer reduction and quality(exited embeddings) of one rule."""
    n_layers = np.asarray(layer_embs).shape[0]
    stats = exit_statistics(exit_layers, n_layers)
    return {**label, **{key: stats[key] for key in ("exit_rate", "mean_exit_layer", "layer_reduction")},
            "exit_distribution": stats["exit_distribution"], **quality(exited_embeddings(layer_embs, exit_layers))}


def threshold_sweep(layer_embs: np.ndarray, quality: Callable[[np.ndarray], dict[str, float]],
                    thetas: Iterable[float] = THETAS, k: int = 1, l_min: int = 6) -> list[dict[str, Any]]:
    """One sweep_point per theta of the convergence rule."""
    return [sweep_point(layer_embs, convergence_exits(layer_embs, theta, k, l_min), quality,
                        method="threshold", theta=float(theta), k=k, l_min=l_min) for theta in thetas]


def fixed_depth_sweep(layer_embs: np.ndarray,
                      quality: Callable[[np.ndarray], dict[str, float]]) -> list[dict[str, Any]]:
    """One sweep_point per depth N = 1..L: the model cut after layer N."""
    n_layers, n_rows = check_layer_embs(layer_embs).shape[:2]
    return [sweep_point(layer_embs, np.full(n_rows, depth, dtype=np.int64), quality, method="fixed", depth=depth)
            for depth in range(1, n_layers + 1)]


def patience_sweep(layer_embs: np.ndarray, quality: Callable[[np.ndarray], dict[str, float]],
                   patiences: Iterable[int] = PATIENCES, theta: float = 0.95, l_min: int = 1) -> list[dict[str, Any]]:
    """One sweep_point per patience of the patience rule at a fixed theta."""
    return [sweep_point(layer_embs, patience_exits(layer_embs, theta, patience, l_min), quality,
                        method="patience", patience=patience, theta=float(theta), l_min=l_min)
            for patience in patiences]


def pareto_front(points: list[dict[str, Any]], quality_key: str) -> list[dict[str, Any]]:
    """Points not dominated in (layer_reduction, points[quality_key]), both higher-is-better, by reduction.

    A point is dominated when another is at least as good on both and better on one.
    """
    front = []
    for point in points:
        r, q = point["layer_reduction"], point[quality_key]
        dominated = any(
            o["layer_reduction"] >= r and o[quality_key] >= q and (o["layer_reduction"] > r or o[quality_key] > q)
            for o in points
        )
        if not dominated:
            front.append(point)
    return sorted(front, key=lambda p: (p["layer_reduction"], p[quality_key]))


def full_sweep(layer_embs: np.ndarray, quality: Callable[[np.ndarray], dict[str, float]], quality_key: str,
               thetas: Iterable[float] = THETAS, k: int = 1, l_min: int = 6,
               patiences: Iterable[int] = PATIENCES, patience_theta: float = 0.95,
               patience_l_min: int = 1) -> dict[str, Any]:
    """Threshold sweep, every fixed depth, the patience rule, and the Pareto front over all of them.

    The patience rule gets its own l_min (default 1: PABEE has none; the patience is its minimum depth).

    early_exit_beats_truncation: whether some threshold point is on the front, i.e. no cut of the
    model is at least as fast and as good.
    """
    threshold = threshold_sweep(layer_embs, quality, thetas, k, l_min)
    fixed = fixed_depth_sweep(layer_embs, quality)
    patience = patience_sweep(layer_embs, quality, patiences, patience_theta, patience_l_min)
    front = pareto_front(threshold + fixed + patience, quality_key)
    return {"quality_key": quality_key, "threshold": threshold, "fixed": fixed, "patience": patience,
            "pareto": front, "early_exit_beats_truncation": any(p["method"] == "threshold" for p in front)}
