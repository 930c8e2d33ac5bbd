"""Adaptive exit against simply cutting the model: the fixed-cut line and each point's difference from it.

The fixed-cut line at a mean depth m interpolates the two cuts around m; an adaptive point's difference from it is
a paired bootstrap CI (pairs for STS, queries for NDCG@10). STS pairs whose sentences exit at different layers are
compared with those that exit together (mixed_depth_gap), and the dev set's Pareto front is marked for the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leap_core.evaluation.pareto_points import EvalSet
from leap_core.evaluation.sweep import pareto_front
from leap_core.stats import bootstrap_ci, paired_difference_ci, spearman_statistic

MIN_EFFECT = 0.001  # the smallest quality difference the reports show (3 decimals): below it, no win is claimed


def cut_line(cuts: list[dict[str, Any]], set_name: str, depth: float) -> tuple[int, int, float]:
    """(index of the cut at or below depth, index above, weight of the one above) on set_name's fixed-cut line."""
    ordered = sorted(range(len(cuts)), key=lambda i: cuts[i]["sets"][set_name]["mean_depth"])
    depths = [cuts[i]["sets"][set_name]["mean_depth"] for i in ordered]
    if depth <= depths[0]:
        return ordered[0], ordered[0], 0.0
    if depth >= depths[-1]:
        return ordered[-1], ordered[-1], 0.0
    above = int(np.searchsorted(depths, depth, side="right"))
    low, high = depths[above - 1], depths[above]
    return ordered[above - 1], ordered[above], (depth - low) / (high - low)


def minus_cut_line(point: dict[str, Any], cuts: list[dict[str, Any]], s: EvalSet, n_resamples: int = 0,
                   seed: int = 0) -> dict[str, Any]:
    """point's quality minus the fixed-cut line at its mean depth on set s; with n_resamples, a paired bootstrap CI."""
    depth = point["sets"][s.name]["mean_depth"]
    low, high, weight = cut_line(cuts, s.name, depth)
    a, b = cuts[low]["_items"][s.name], cuts[high]["_items"][s.name]
    line = (1 - weight) * cuts[low]["sets"][s.name]["quality"] + weight * cuts[high]["sets"][s.name]["quality"]
    out = {"mean_depth": depth, "line": line, "between": [cuts[low]["name"], cuts[high]["name"]], "weight": weight,
           "diff": point["sets"][s.name]["quality"] - line}
    if n_resamples:
        p = point["_items"][s.name]
        if s.kind == "sts":
            def statistic(p, a, b, gold, axis=-1):
                line = (1 - weight) * spearman_statistic(a, gold, axis=axis) + weight * spearman_statistic(b, gold, axis=axis)
                return spearman_statistic(p, gold, axis=axis) - line
            ci = bootstrap_ci((p, a, b, s.gold), statistic, n_resamples=n_resamples, seed=seed)
        else:
            ci = paired_difference_ci(p, (1 - weight) * a + weight * b, n_resamples=n_resamples, seed=seed)
        out.update(ci_low=ci["low"], ci_high=ci["high"])
    return out


def mixed_depth_gap(point: dict[str, Any], full: dict[str, Any], s: EvalSet) -> dict[str, Any] | None:
    """STS pairs whose two sentences exit at different layers vs the same layer: Spearman at the point and at full."""
    if s.kind != "sts" or s.pair_rows is None:
        return None
    group = next(iter(s.groups))
    exits = point["_exits"][group]
    a, b = s.pair_rows
    mixed = exits[a] != exits[b]
    out = {}
    for label, keep in (("mixed", mixed), ("same", ~mixed)):
        if keep.sum() < 3:
            out[label] = {"n_pairs": int(keep.sum())}
            continue
        at_point = float(spearman_statistic(point["_items"][s.name][keep], s.gold[keep]))
        at_full = float(spearman_statistic(full["_items"][s.name][keep], s.gold[keep]))
        out[label] = {"n_pairs": int(keep.sum()), "at_point": at_point, "full": at_full, "loss": at_full - at_point}
    return out


def best_adaptive(points: list[dict[str, Any]], cuts: list[dict[str, Any]], dev: EvalSet, kinds: tuple[str, ...],
                  n_layers: int) -> dict[str, Any] | None:
    """The point of `kinds` furthest above the cut line on dev, among those that mix depths (not one layer for all)
    and cost less than full depth there (beyond it the line has no cut to match)."""
    mixing = [p for p in points if p["kind"] in kinds and len(np.unique(p["_exits"][next(iter(dev.groups))])) > 1
              and p["sets"][dev.name]["mean_depth"] < n_layers]
    if not mixing:
        return None
    return max(mixing, key=lambda p: minus_cut_line(p, cuts, dev)["diff"])


def compare_with_cuts(point: dict[str, Any] | None, cuts: list[dict[str, Any]], full: dict[str, Any],
                      sets: list[EvalSet], n_resamples: int) -> dict[str, Any] | None:
    if point is None:
        return None
    return {"name": point["name"], "kind": point["kind"], "policy": point.get("policy"), "tau": point.get("tau"),
            "minus_cut": {s.name: minus_cut_line(point, cuts, s, n_resamples) for s in sets},
            "mixed_depth_gap": {s.name: mixed_depth_gap(point, full, s) for s in sets
                                if s.kind == "sts" and "/" not in s.name}}


def mark_dev_front(points: list[dict[str, Any]], set_name: str) -> None:
    """Set "on_dev_front": on set_name's Pareto front of (layer reduction, quality) (sweep.pareto_front)."""
    rows = [{**p["sets"][set_name], "index": i} for i, p in enumerate(points)]
    front = {row["index"] for row in pareto_front(rows, "quality")}
    for i, p in enumerate(points):
        p["on_dev_front"] = i in front
