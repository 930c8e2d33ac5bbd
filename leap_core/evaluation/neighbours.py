"""NN@k consistency: do a layer's (or an exited embedding's) nearest neighbours match the full-depth ones?

For each row i, N_l(i) = the k rows most cosine-similar to row i in layer l's embeddings (row i itself
excluded); NN@k(i, l) = |N_l(i) & N_L(i)| / k. The paper calls an exit viable at NN@10 >= 0.80.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from leap_core.evaluation.layers import exit_statistics

LOW_OVERLAP = 0.5  # the paper's "share of samples with NN@10 < 0.5"


def knn(embeddings: Any, k: int = 10, block_size: int = 1024) -> np.ndarray:
    """Indices (N, k) of each row's k cosine-nearest other rows, most similar first.

    Scores are computed block_size rows at a time (a (block_size, N) matrix at most), so memory is
    O(block_size * N), not N^2.
    """
    embs = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    if embs.ndim != 2:
        raise ValueError(f"embeddings: expected an (N, d) array, got shape {tuple(embs.shape)}")
    n = embs.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in 1..N-1 = 1..{n - 1}, got {k!r}")
    unit = F.normalize(embs, dim=-1)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_size):
        scores = unit[start : start + block_size] @ unit.T
        rows = torch.arange(scores.shape[0])
        scores[rows, rows + start] = -torch.inf  # a row is not its own neighbour
        out[start : start + block_size] = torch.topk(scores, k, dim=1).indices.numpy()
    return out


def overlap(neighbours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row, the share of `reference`'s neighbours that are also in `neighbours`; both (N, k) index arrays."""
    if neighbours.shape != reference.shape:
        raise ValueError(f"neighbours {neighbours.shape} and reference {reference.shape} differ in shape")
    shared = (neighbours[:, :, None] == reference[:, None, :]).any(-1).sum(-1)
    return shared / reference.shape[1]


def layer_overlap(layer_embs: np.ndarray, k: int = 10, block_size: int = 1024) -> np.ndarray:
    """NN@k of every layer against the final layer: (L, N), index l-1 = layer l (the last row is all 1)."""
    embs = np.asarray(layer_embs)
    if embs.ndim != 3:
        raise ValueError(f"layer_embs: expected an (L, N, d) array, got shape {embs.shape}")
    reference = knn(embs[-1], k, block_size)
    return np.stack([overlap(knn(layer, k, block_size), reference) for layer in embs[:-1]] + [np.ones(embs.shape[1])])


def nn_statistics(layer_embs: np.ndarray, exit_layers: np.ndarray | None = None, k: int = 10,
                  threshold: float = LOW_OVERLAP, block_size: int = 1024) -> dict[str, Any]:
    """NN@k per layer and the share of rows whose NN@k falls below `threshold`.

    Returns nn{k}_per_layer (mean over rows, index l-1 = layer l), nn{k}_low_share_per_layer (share of
    all rows below threshold at each layer) and, given each row's exit layer,
    nn{k}_low_share_by_exit_layer (among rows that exited at layer l, the share whose NN@k at l is below
    threshold; None where no row exited there) with exit_count_by_layer (rows exiting at each layer).
    """
    per_row = layer_overlap(layer_embs, k, block_size)
    n_layers = per_row.shape[0]
    result: dict[str, Any] = {
        f"nn{k}_per_layer": [float(v) for v in per_row.mean(1)],
        f"nn{k}_low_share_per_layer": [float(v) for v in (per_row < threshold).mean(1)],
    }
    if exit_layers is not None:
        layers = np.asarray(exit_layers)
        if layers.shape != (per_row.shape[1],):
            raise ValueError(f"exit_layers: expected shape ({per_row.shape[1]},), got {layers.shape}")
        exit_statistics(layers, n_layers)  # validates the values
        at_exit = per_row[layers - 1, np.arange(layers.size)]
        counts = np.bincount(layers - 1, minlength=n_layers)
        low = np.bincount(layers - 1, weights=at_exit < threshold, minlength=n_layers)
        result[f"nn{k}_low_share_by_exit_layer"] = [float(lo / c) if c else None for lo, c in zip(low, counts)]
        result["exit_count_by_layer"] = [int(c) for c in counts]
    return result
