"""The STS-B numbers of the policy a model serves (its leap_exit.json policy), which its card and `leap eval` report.

A folder serves one policy: "full", "fixed:N", the exit rule or per-layer thresholds (leap_core.policy). The exit
rule is only one of them, so numbers measured at the rule describe the folder only while it serves the rule.
served_from_metrics reads the served point off an evaluation that measured every layer (no second pass);
measure_served runs the encoder once at the served mode when nothing was measured before.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from leap_core.evaluation.layers import exit_statistics
from leap_core.policy import ExitPolicy

SERVED_KEYS = ("policy", "mode", "stsb", "exit_rate", "mean_exit_layer", "layer_reduction", "n_layers", "n_pairs")


def served_from_metrics(metrics: Mapping[str, Any], policy: ExitPolicy) -> dict[str, Any] | None:
    """The served point of `policy` from an evaluate_sts / sts_analysis result of the same weights; None when the
    result cannot tell (an exiting policy other than the one it measured in compact mode).

    full and fixed:N read the per-layer STS-B (layer N's pool is what fixed:N returns); the rule and thresholds
    read the compact-mode numbers, which were measured at metrics["measured_policy"].
    """
    n_layers = int(metrics["n_layers"])
    point = {"policy": policy.name, "mode": policy.mode(), "n_layers": n_layers, "n_pairs": metrics.get("n_pairs"),
             "stsb_full": metrics.get("stsb_full")}
    if policy.kind in ("full", "fixed"):
        depth = n_layers if policy.kind == "full" else int(policy.depth)
        return {**point, "stsb": float(metrics["stsb_per_layer"][depth - 1]),
                **_exits_at(depth, n_layers)}
    measured = metrics.get("measured_policy")
    if measured is None or ExitPolicy.from_dict(measured) != policy:
        return None
    return {**point, "stsb": float(metrics["stsb_exited"]),
            **{key: metrics[key] for key in ("exit_rate", "mean_exit_layer", "layer_reduction")}}


def _exits_at(depth: int, n_layers: int) -> dict[str, float]:
    """Exit statistics when every row stops at `depth`."""
    stats = exit_statistics(np.array([depth], dtype=np.int64), n_layers)
    return {key: stats[key] for key in ("exit_rate", "mean_exit_layer", "layer_reduction")}


def measure_served(encoder: Any, pairs: Any, batch_size: int = 32) -> dict[str, Any]:
    """One pass of `encoder` over the STS pairs' distinct sentences at the mode of the policy it serves."""
    # deferred: at top, importing this module would load scipy
    from leap_core.evaluation.sts import pair_rows, spearman

    unique, idx1, idx2 = pair_rows(pairs)
    policy = encoder.policy
    embeddings, layers = encoder.encode(unique, batch_size=batch_size, mode=policy.mode(), return_exit_layers=True)
    stats = exit_statistics(layers, encoder.num_layers)
    return {"policy": policy.name, "mode": policy.mode(), "n_layers": encoder.num_layers, "n_pairs": len(idx1),
            "stsb_full": None, "stsb": spearman(embeddings[idx1], embeddings[idx2], pairs.scores),
            **{key: stats[key] for key in ("exit_rate", "mean_exit_layer", "layer_reduction")}}
