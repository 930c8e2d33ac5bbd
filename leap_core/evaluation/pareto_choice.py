"""Which replayed point is served: the quality floors on dev, the cheapest point within them, what can be deployed.

Shared by `leap calibrate` (evaluation.pareto.calibrate_policy), the pareto report, retrain's candidate measure
and the asymmetric query points (query_encoder.points, on BEIR dev halves): one rule for every choice.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import numpy as np


class FloorSet(Protocol):
    """What a floor needs of a set (pareto_points.EvalSet has it): its name in a point's "sets" and its kind."""

    name: str
    kind: str  # "sts" (absolute drop from full), "ndcg" (relative drop from full) or "agreement" (absolute floor)

SIMPLER_FIRST = {"full": 0, "fixed": 1, "rule": 2, "thresholds": 3}
DEPTH_TIE = 0.01  # mean depths within 1% of the least are a tie: the simpler policy is served


def meets_floors(point: dict[str, Any], full: dict[str, Any], sets: Iterable[FloorSet], max_sts_drop: float,
                 max_ndcg_drop: float | None, min_agreement: float | None = None) -> bool:
    """Within max_sts_drop (absolute Spearman) of full on every STS dev set, and, if given, within max_ndcg_drop
    (relative NDCG@10) of full on every BEIR dev half and at least min_agreement on every agreement set
    (leap_core.pipeline.retrain's slice of traffic: NN@10 against a fixed reference model, so an absolute floor)."""
    for s in sets:
        q, f = point["sets"][s.name]["quality"], full["sets"][s.name]["quality"]
        if s.kind == "sts" and q < f - max_sts_drop:
            return False
        if s.kind == "ndcg" and max_ndcg_drop is not None and q < f * (1 - max_ndcg_drop):
            return False
        if s.kind == "agreement" and min_agreement is not None and q < min_agreement:
            return False
    return True


def choose(points: list[dict[str, Any]], dev_sets: list[FloorSet], max_sts_drop: float,
           max_ndcg_drop: float | None = None, min_agreement: float | None = None,
           kinds: Iterable[str] = tuple(SIMPLER_FIRST)) -> dict[str, Any] | None:
    """The point of one of `kinds` with the least mean depth over the dev sets within the floors; depths within
    DEPTH_TIE (relative) of the least count as ties, won by the simpler kind: an exit test that saves 0.1% of the
    layers costs more than it saves. Exact ties go to the earlier point. None when no point, not even full depth,
    meets an absolute floor (min_agreement). The "full" point is the floors' reference whether or not it may win."""
    full = next(p for p in points if p["kind"] == "full")
    allowed = set(kinds) & set(SIMPLER_FIRST)
    fits = [p for p in points if p["kind"] in allowed and meets_floors(p, full, dev_sets, max_sts_drop,
                                                                        max_ndcg_drop, min_agreement)]
    if not fits:
        return None
    depth = lambda p: float(np.mean([p["sets"][s.name]["mean_depth"] for s in dev_sets]))  # noqa: E731
    least = min(map(depth, fits))
    tied = [p for p in fits if depth(p) <= least * (1 + DEPTH_TIE)]
    return min(tied, key=lambda p: (SIMPLER_FIRST[p["kind"]], depth(p)))


def deployable(point: dict[str, Any], described: dict[str, Any]) -> bool:
    """What `leap` can serve today: any policy of a plain model; full and fixed cuts of an exit branch (its
    adaptive points need exit heads inside EarlyExitEncoder, which it does not have yet)."""
    if point["kind"] not in SIMPLER_FIRST:
        return False
    return described["design"] != "exit_branch" or point["kind"] in ("full", "fixed")
