"""reports/query_encoder.{json,md}: per model and set, every depth's raw cut, ridge head and recipe, and the choice.

The depth is chosen on dev only: the smallest depth whose recipe keeps at least `floor` mean overlap@10 with the
original's top-10 on every set's dev slice of query text. Its test NDCG@10 change is then read, never used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def choose_depth(sets: dict[str, dict[str, Any]], floor: float) -> int | None:
    """Smallest depth whose recipe's dev agreement@10 >= floor on every set (None: no depth reaches it)."""
    depths = sorted({int(d) for result in sets.values() for d in result["depths"]})
    for depth in depths:
        rows = [result["depths"].get(str(depth), {}).get("recipe") for result in sets.values()]
        if rows and all(row is not None and row["dev_agreement10"] >= floor for row in rows):
            return depth
    return None


def chosen_entry(sets: dict[str, dict[str, Any]], floor: float, speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's `chosen` keys: depth, chosen_on, each set's test ndcg10_rel at that depth (with CI) and,
    once the speed bench has run (`speed`), its ORT int8 speedup over the original's ORT int8 at batch 1."""
    depth = choose_depth(sets, floor)
    speedup = (speed or {}).get("speedup_vs_peer_int8", {}).get(str(depth), {}).get("bs1")
    entry: dict[str, Any] = {"depth": depth, "chosen_on": f"dev top-10 agreement >= {floor} on every set",
                             "speedup_vs_peer_int8_bs1": speedup}
    if depth is not None:
        rows = {name: result["depths"][str(depth)]["recipe"] for name, result in sets.items()}
        entry["ndcg10_rel"] = {name: row["ndcg10_rel"] for name, row in rows.items()}
        entry["ndcg10_rel_ci"] = {name: row["ndcg10_rel_ci"] for name, row in rows.items()}
    return entry


def merge_set(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A set's result after another run on it: new rows replace rows of the same depth, other rows are kept,
    and every run's plan is listed (runs may train different depths with different steps)."""
    if not old:
        return {**new, "plans": [new["plan"]]}
    plans = old.get("plans", [old["plan"]])
    merged = {**old, **new, "depths": {**old["depths"], **new["depths"]},
              "zero_shot": {**old.get("zero_shot", {}), **new.get("zero_shot", {})}}
    merged["plans"] = plans + ([new["plan"]] if new["plan"] not in plans else [])
    return merged


OTHER_CUTS = (("exit branch (generic text)", ()), ("exit branch (the set's own documents)", ("in_domain", "{set}")),
              ("AdaptiveLayerLoss peer", ("peer",)))


def other_cuts(retrofit: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{label: {set: {depth: row}}}: a retrofit's cuts used as query encoders against the original's index.

    `retrofit` is one model's entry of reports/retrofit.json (leap retrofit --peer): its exit branch's and
    AdaptiveLayerLoss peer's N-layer cuts embedded the queries, the original the documents ("index compat").
    The relative change and its CI are the paired difference over the original's NDCG@10 on that set.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, path in OTHER_CUTS:
        for name, scores in retrofit.get("beir", {}).items():
            run: Any = retrofit
            for key in path:
                run = (run or {}).get(key.format(set=name))
            cuts = ((run or {}).get("evaluation", {}).get("beir", {}).get(name, {}) or {}).get("cuts", {})
            for depth, cut in cuts.items():
                diff, base = cut["index_compat_minus_original"], scores["original_ndcg10"]
                out.setdefault(label, {}).setdefault(name, {})[depth] = {
                    "ndcg10": cut["index_compat_ndcg10"], "ndcg10_rel": diff["diff"] / base,
                    "ndcg10_rel_ci": [diff["ci_low"] / base, diff["ci_high"] / base]}
    return out


def attach_other_cuts(entry: dict[str, Any], model: str, retrofit_file: Path) -> None:
    """entry["other_cuts"] from retrofit_file's entry for `model` (a bare name matches its hub id's last part)."""
    if not retrofit_file.is_file():
        return
    retrofit = json.loads(retrofit_file.read_text(encoding="utf-8"))
    found = next((value for key, value in retrofit.items() if key == model or key.split("/")[-1] == model), None)
    if found is not None:
        entry["other_cuts"] = other_cuts(found)
