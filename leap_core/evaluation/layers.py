"""Per-layer analyses: where rows exit, and how close each layer's embedding is to the final one."""

from __future__ import annotations

from typing import Any

import numpy as np

# The paper's headline "exit rate by layer 7" (of a 12-layer student).
HEADLINE_LAYER = 7


def exit_statistics(exit_layers: np.ndarray, n_layers: int) -> dict[str, Any]:
    """Summary of 1-indexed exit layers of a model with `n_layers` layers.

    exit_rate = share exiting before layer L; exit_by_layer_7 = share exiting before L at a layer
    <= 7; mean_exit_layer = mean l; layer_reduction = L / mean l; exit_distribution[l-1] = share
    whose exit layer is l (layers 1..L, sums to 1).
    """
    layers = np.asarray(exit_layers)
    if layers.ndim != 1 or layers.size == 0:
        raise ValueError(f"exit_layers: expected a non-empty 1-D array, got shape {layers.shape}")
    if not np.issubdtype(layers.dtype, np.integer):
        raise TypeError(f"exit_layers: expected integers, got dtype {layers.dtype}")
    if layers.min() < 1 or layers.max() > n_layers:
        raise ValueError(f"exit_layers: values must lie in 1..{n_layers}, got {layers.min()}..{layers.max()}")
    early = layers < n_layers
    mean_layer = float(layers.mean())
    return {
        "exit_rate": float(early.mean()),
        "exit_by_layer_7": float((early & (layers <= HEADLINE_LAYER)).mean()),
        "mean_exit_layer": mean_layer,
        "layer_reduction": n_layers / mean_layer,
        "exit_distribution": (np.bincount(layers - 1, minlength=n_layers) / layers.size).tolist(),
    }


def similarity_to_final(layer_embs: np.ndarray) -> list[float]:
    """Mean over rows of cos(e_l, e_L) for each layer l; layer_embs is (L, N, d), index l-1 = layer l."""
    unit = _unit_layers(layer_embs)
    return [float(v) for v in (unit * unit[-1]).sum(-1).mean(-1)]


def common_component(layer_embs: np.ndarray) -> list[float]:
    """||mean_rows e_l / |e_l| || per layer: 0 when directions spread evenly, 1 when every row points the same way.

    A layer whose pooled vectors share one large direction (anisotropic) cannot be close to a final layer
    whose vectors spread: it is why intermediate layers of contrastively trained models sit far from their final.
    layer_embs is (L, N, d), index l-1 = layer l.
    """
    unit = _unit_layers(layer_embs)
    return [float(v) for v in np.linalg.norm(unit.mean(axis=1), axis=-1)]


def _unit_layers(layer_embs: np.ndarray) -> np.ndarray:
    embs = np.asarray(layer_embs, dtype=np.float64)
    if embs.ndim != 3 or embs.shape[1] == 0:
        raise ValueError(f"layer_embs: expected a non-empty (L, N, d) array, got shape {embs.shape}")
    return embs / np.maximum(np.linalg.norm(embs, axis=-1, keepdims=True), 1e-12)


def inter_layer_stability(layer_embs: np.ndarray) -> list[float | None]:
    """Mean over rows of cos(e_l, e_{l-1}) for each layer l; index l-1 = layer l, None at layer 1 (no predecessor)."""
    unit = _unit_layers(layer_embs)
    return [None] + [float(v) for v in (unit[1:] * unit[:-1]).sum(-1).mean(-1)]


def contraction_ratios(layer_embs: np.ndarray, eps: float = 1e-6) -> dict[str, Any]:
    """How fast layers close in on the final one: gamma_l = (1 - cos(e_{l+1}, e_L)) / (1 - cos(e_l, e_L)).

    Computed per row for l = 1..L-2 (at l = L-1 the numerator is 0 by definition, so it says nothing);
    rows already at the final embedding (1 - cos(e_l, e_L) < eps) are left out. gamma < 1: the distance
    to the final embedding shrinks from layer l to l+1. Returns {"per_layer": the median over rows at
    each layer (index l-1 = layer l, None at L-1 and L or where no row counts), "median": the median
    over every counted (row, layer)} — the paper's "median contraction ratio".
    """
    unit = _unit_layers(layer_embs)
    n_layers = unit.shape[0]
    distance = 1.0 - (unit * unit[-1]).sum(-1)  # (L, N)
    per_layer: list[float | None] = [None] * n_layers
    counted = []
    for index in range(n_layers - 2):
        valid = distance[index] >= eps
        if valid.any():
            ratios = distance[index + 1, valid] / distance[index, valid]
            per_layer[index] = float(np.median(ratios))
            counted.append(ratios)
    median = float(np.median(np.concatenate(counted))) if counted else None
    return {"per_layer": per_layer, "median": median}


def cumulative_exit_rate(exit_layers: np.ndarray, n_layers: int) -> list[float]:
    """Share of rows that exited early (before layer L) at a layer <= l; index l-1 = layer l, the last = exit_rate."""
    distribution = np.asarray(exit_statistics(exit_layers, n_layers)["exit_distribution"])
    distribution[-1] = 0.0  # running to the last layer is not an exit
    return [float(v) for v in np.cumsum(distribution)]
