"""Choose the exit threshold theta on held-out data for a quality floor the user sets.

For each theta of a grid, exits are replayed from one full-depth pass over the held-out STS
sentences (leap_core.evaluation.sweep), and two qualities are measured on the exited embeddings:
sts_drop = Spearman(full depth) - Spearman(exited) over the STS pairs, and nn10 = mean NN@10 of the
exited embeddings' neighbours against the full-depth ones. Among the thetas meeting every floor
given (sts_drop <= max_sts_drop, nn10 >= min_nn10), the chosen one has the largest layer reduction
(ties: the larger theta, the safer). Its layer reduction is what to expect on data like the held-out set.

This is the exit rule's theta alone, as the eval suite, experiment.calibration and retrofit report it. The choice
itself is pareto_choice.choose, the one rule `leap calibrate` (evaluation.pareto.calibrate_policy) applies to every
policy (full, a fixed cut, the rule or per-layer thresholds): here it sees rule points only.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple

import numpy as np

from leap_core.evaluation.neighbours import knn, overlap
from leap_core.evaluation.pareto_choice import choose
from leap_core.evaluation.sts import pair_rows, spearman
from leap_core.evaluation.sweep import threshold_sweep


class _Floor(NamedTuple):  # a set as pareto_choice.FloorSet reads it
    name: str
    kind: str


THETAS = tuple(round(0.80 + 0.01 * i, 2) for i in range(20))  # 0.80 .. 0.99


def calibration_points(layer_embs: np.ndarray, idx1: np.ndarray, idx2: np.ndarray, gold: Any,
                       thetas: Iterable[float] = THETAS, k: int = 1, l_min: int = 6,
                       nn_k: int = 10) -> list[dict[str, Any]]:
    """A threshold_sweep point per theta with stsb, sts_drop and nn10 (layer_embs rows = unique sentences).

    idx1[i], idx2[i]: the rows of pair i's two sentences; gold[i]: its score.
    """
    full = layer_embs[-1]
    full_sts = spearman(full[idx1], full[idx2], gold)
    full_neighbours = knn(full, nn_k)

    def quality(embs: np.ndarray) -> dict[str, float]:
        sts = spearman(embs[idx1], embs[idx2], gold)
        nn10 = float(overlap(knn(embs, nn_k), full_neighbours).mean())
        return {"stsb": sts, "sts_drop": full_sts - sts, "nn10": nn10}

    return threshold_sweep(layer_embs, quality, thetas, k, l_min)


def choose_theta(points: list[dict[str, Any]], max_sts_drop: float | None = None,
                 min_nn10: float | None = None) -> dict[str, Any] | None:
    """The point meeting every given floor with the largest layer_reduction (ties: larger theta); None if none does.

    The choice is pareto_choice.choose's, the one `leap calibrate` makes, over rule points only: sts_drop is an
    STS floor against full depth and nn10 an absolute agreement floor.
    """
    if max_sts_drop is None and min_nn10 is None:
        raise ValueError("give a quality floor: max_sts_drop and/or min_nn10")
    sets = [_Floor("sts", "sts"), _Floor("nn10", "agreement")]
    full = {"kind": "full", "sets": {"sts": {"quality": 0.0}, "nn10": {"quality": 1.0}}}
    # depth = 1 / layer_reduction orders points as the mean exit layer does; by theta downward, an exact tie goes
    # to the larger (safer) theta
    rule = [{"kind": "rule", "point": p,
             "sets": {"sts": {"quality": -p["sts_drop"], "mean_depth": 1 / p["layer_reduction"]},
                      "nn10": {"quality": p["nn10"], "mean_depth": 1 / p["layer_reduction"]}}}
            for p in sorted(points, key=lambda p: -p["theta"])]
    chosen = choose([full, *rule], sets, math.inf if max_sts_drop is None else max_sts_drop, None, min_nn10,
                    kinds=("rule",))
    return chosen["point"] if chosen else None


def calibrate_encoder(encoder: Any, pairs: Any, max_sts_drop: float | None = None, min_nn10: float | None = None,
                      thetas: Iterable[float] = THETAS, batch_size: int = 32) -> dict[str, Any]:
    """Calibrate an EarlyExitEncoder's theta (its k and l_min kept) on STS pairs (.sentences1/.sentences2/.scores)."""
    if max_sts_drop is None and min_nn10 is None:
        raise ValueError("give a quality floor: max_sts_drop and/or min_nn10")
    unique, idx1, idx2 = pair_rows(pairs)
    layer_embs = encoder.layer_embeddings(unique, batch_size=batch_size)
    points = calibration_points(layer_embs, idx1, idx2, pairs.scores, thetas, encoder.k, encoder.l_min)
    chosen = choose_theta(points, max_sts_drop, min_nn10)
    return {
        "floor": {"max_sts_drop": max_sts_drop, "min_nn10": min_nn10},
        "theta": chosen["theta"] if chosen else None,
        "expected_layer_reduction": chosen["layer_reduction"] if chosen else None,
        "chosen": chosen,
        "stsb_full": spearman(layer_embs[-1][idx1], layer_embs[-1][idx2], pairs.scores),
        "k": encoder.k, "l_min": encoder.l_min, "n_pairs": len(idx1), "n_sentences": len(unique),
        "points": points,
    }

