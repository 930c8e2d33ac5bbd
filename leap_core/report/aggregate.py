"""Numbers from the arms: seed means and intervals, per-layer curves, the best seed, BEIR against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from leap_core.pipeline.handoff import LEAP_ARM
from leap_core.stats import paired_difference_ci, seed_summary

REFERENCE_FILE = Path(__file__).resolve().parent.parent / "paper_reference.yaml"
SEED_KEYS = ("stsb_full", "stsb_exited", "exit_rate", "exit_by_layer_7", "mean_exit_layer", "layer_reduction")


def load_reference(path: str | Path = REFERENCE_FILE) -> dict[str, Any]:
    """The paper's reference numbers (a YAML data file shipped with the package)."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def ok_arms(results: Sequence[Mapping[str, Any]], arm: str) -> list[Mapping[str, Any]]:
    return [r for r in results if r["arm"] == arm and r["status"] == "ok" and r.get("metrics")]


def seed_summaries(results: Sequence[Mapping[str, Any]], arm: str) -> dict[str, Any]:
    """Mean and t-interval over the arm's successful seeds of each headline metric (None: no seed)."""
    rows = ok_arms(results, arm)
    if not rows:
        return {}
    summary = {key: seed_summary([r["metrics"][key] for r in rows]) for key in SEED_KEYS}
    summary["seeds"] = [r["seed"] for r in rows]
    return summary


def mean_curve(results: Sequence[Mapping[str, Any]], arm: str, key: str) -> list[float | None] | None:
    """The seed-mean of a per-layer list (key may be a dotted path, e.g. "contraction.per_layer"); None entries stay None."""
    curves = []
    for r in ok_arms(results, arm):
        value: Any = r["metrics"]
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value:
            curves.append(value)
    if not curves:
        return None
    return [None if any(c[i] is None for c in curves) else float(np.mean([c[i] for c in curves]))
            for i in range(len(curves[0]))]


def estimate(summary: Mapping[str, Any], key: str) -> float | None:
    return summary[key]["estimate"] if summary and key in summary else None


def layer_value(curve: Sequence[Any] | None, layer: int) -> float | None:
    return None if not curve or layer > len(curve) else curve[layer - 1]


def best_leap(results: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The LEAP seed with the best exited STS-B (the one registered, benchmarked and retrieval-tested)."""
    return max(ok_arms(results, LEAP_ARM), key=lambda r: r["metrics"]["stsb_exited"], default=None)


def beir_relative(beir: Mapping[str, Any], arm: str, other_arm: str | None, mode: str, other_mode: str) -> dict:
    """Per dataset: NDCG@10 of (arm, mode) vs (other_arm or arm, other_mode), relative change and paired CI."""
    out = {}
    other_arm = other_arm or arm
    if arm not in beir or other_arm not in beir:
        return out
    for dataset, scored in beir[arm].items():
        if dataset not in beir[other_arm]:
            continue
        mine, theirs = scored["modes"].get(mode), beir[other_arm][dataset]["modes"].get(other_mode)
        if not mine or not theirs:
            continue
        ids = sorted(set(mine["ndcg@10_per_query"]) & set(theirs["ndcg@10_per_query"]))
        a = [mine["ndcg@10_per_query"][q] for q in ids]
        b = [theirs["ndcg@10_per_query"][q] for q in ids]
        base = theirs["ndcg@10"]
        out[dataset] = {"ndcg@10": mine["ndcg@10"], "reference_ndcg@10": base,
                        "relative": (mine["ndcg@10"] - base) / base if base else None,
                        "difference_ci": paired_difference_ci(a, b) if len(ids) > 1 else None}
    return out
