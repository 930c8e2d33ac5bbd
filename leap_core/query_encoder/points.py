"""Asymmetric operating points: a query path (depth x precision) searching the original's untouched index.

A point is one query path, a query encoder folder (leap_core.query_encoder) or the original's own queries, at
one precision, judged on each BEIR set's dev and test query halves (pareto_points.query_half: the halves the
symmetric points use) against the ORIGINAL's full-depth embeddings of the documents, which are never re-embedded.
Its quality on a half is the mean per-query NDCG@10 (pareto_points.beir_sets, the same scorer), relative to
original/original on that half, with a paired bootstrap CI. Its cost is what a query runs: the path's depth, then
its precision.

choose_asymmetric takes the cheapest point within max_ndcg_drop on every dev half, by pareto_choice.meets_floors
(the rule the symmetric points are chosen by); test halves are reported beside it and never used to choose.
serve_record says what a search service deploys: that query route, against the index the original built at full
depth.

`leap calibrate` / `leap pareto` with --query-encoders (calibrate_with_queries, pareto_with_queries) compose the
symmetric replay (evaluation.pareto) with these points: checked before the replay, chosen after it and apart from it.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from leap_core import identity
from leap_core.evaluation.against_original import Embedder
from leap_core.evaluation.pareto import Addition, calibrate_policy, write_pareto
from leap_core.evaluation.pareto_choice import meets_floors
from leap_core.evaluation.pareto_points import EvalSet, beir_sets
from leap_core.io import plain_name
from leap_core.model_folder import has_branch, model_fingerprint, read_branch
from leap_core.models import original_of, resolve_model
from leap_core.query_encoder.model import check_pair, read_record
from leap_core.report.asymmetric_report import asymmetric_markdown
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.serve.export import OnnxEncoder, export_onnx
from leap_core.stats import paired_difference_ci

log = logging.getLogger(__name__)
# Ties in depth go to the cheaper arithmetic: int8 (either scaling) before fp32.
PRECISION_COST = {"int8": 0, "int8 per-channel": 1, "fp32": 2}
QUERY_BATCH = 32
ORIGINAL, QUERY_ENCODER = "original", "query_encoder"
Embed = Callable[[str, list[str]], np.ndarray]  # (text group, texts) -> (N, d) normalised query embeddings


def document_model(model: str) -> tuple[str, Path]:
    """(name, folder) of the model whose full depth built the index: MODEL, or an exit branch's original."""
    folder = resolve_model(str(model))
    if has_branch(folder):  # a branch serves its original at full depth: that is the index
        return read_branch(folder)["original"], original_of(folder)
    return str(model), folder


def check_encoders(original: str, encoders: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Each encoder's record, after check_pair refused any trained for another document model (ValueError)."""
    if not encoders:
        raise ValueError("no query encoder folder given")
    for folder in encoders:
        check_pair(folder, original)
    return [read_record(folder) for folder in encoders]


def preflight(model: str, encoders: Sequence[str | Path], max_ndcg_drop: float | None) -> None:
    """What calibrate/pareto check before their long replay: a floor to choose under, and every pairing."""
    if max_ndcg_drop is None:
        raise ValueError("--query-encoders needs --max-ndcg-drop: asymmetric points are chosen on BEIR dev halves")
    check_encoders(str(document_model(model)[1]), encoders)


def half_sets(beir_folders: Sequence[str | Path], max_docs: int | None = None,
              max_queries: int | None = None) -> list[EvalSet]:
    """Every BEIR folder's dev and test halves (pareto_points.beir_sets); a half with no judged query is left out."""
    sets = []
    for folder in beir_folders:
        for s in beir_sets(folder, max_docs, max_queries):
            if len(_queries(s)[1]):
                sets.append(s)
            else:  # an empty half would pass any floor: it is no floor at all
                log.warning("%s: no judged query in this half; left out", s.name)
    return sets


def _queries(s: EvalSet) -> tuple[str, list[str]]:
    return next((group, texts) for group, texts in s.groups.items() if not group.endswith("/docs"))


def _docs(s: EvalSet) -> tuple[str, list[str]]:
    return next((group, texts) for group, texts in s.groups.items() if group.endswith("/docs"))


def original_embedder(original: str, cache_dir: str | Path | None):
    """The original's every-layer pools (against_original.Embedder), cached on disk where depth_model caches them,
    so pareto's symmetric replay of the same model and this share one document pass."""
    folder = resolve_model(original)
    return Embedder(EarlyExitEncoder.from_pretrained(str(folder)),
                    cache_dir=Path(cache_dir) / "pools" if cache_dir else None, fingerprint=model_fingerprint(folder))


def onnx_encoders(source: str | Path, out: Path, precisions: Sequence[str], depth: int | None = None,
                  threads: int | None = None) -> dict[str, Callable[[list[str], int], np.ndarray]]:
    """{precision: encode(texts, batch size)} of `source` in ONNX Runtime, exported under `out` (export_onnx).

    depth: the original's full depth (export_onnx would otherwise take its calibrated cut); None for a query encoder.
    """
    calls = {}
    plain = [p for p in precisions if p in ("fp32", "int8")]
    if plain:
        folder = export_onnx(source, out / "onnx", depth=depth, int8="int8" in plain)
        calls.update({p: OnnxEncoder(folder, precision=p, threads=threads).encode for p in plain})
    if "int8 per-channel" in precisions:
        folder = export_onnx(source, out / "onnx-per-channel", depth=depth, int8=True, per_channel=True)
        calls["int8 per-channel"] = OnnxEncoder(folder, precision="int8", threads=threads).encode
    return calls


def relative(values: np.ndarray, base: np.ndarray, n_resamples: int) -> dict[str, Any]:
    """NDCG@10 change from original/original on the same queries, relative to its mean, with a paired CI."""
    mean = float(np.mean(base))
    out: dict[str, Any] = {"ndcg10_rel": (float(np.mean(values)) - mean) / mean if mean > 0 else None,
                           "ndcg10_rel_ci": None}
    if mean > 0 and n_resamples and len(values) >= 2:
        ci = paired_difference_ci(values, base, n_resamples=n_resamples, seed=0)
        out["ndcg10_rel_ci"] = [ci["low"] / mean, ci["high"] / mean]
    return out


def make_point(label: dict[str, Any], items: dict[str, np.ndarray], reference: dict[str, np.ndarray],
               n_resamples: int) -> dict[str, Any]:
    """label + per set: its half, quality (mean NDCG@10) and relative change; per-query values under "_items"."""
    sets = {name: {"half": name.rsplit("-", 1)[1], "quality": float(np.mean(values)), "n_queries": len(values),
                   **relative(values, reference[name], n_resamples)} for name, values in items.items()}
    return {**label, "sets": sets, "_items": items}


def _judge(sets: list[EvalSet], docs: dict[str, np.ndarray], embed: Embed) -> dict[str, np.ndarray]:
    """Per-query NDCG@10 of every half: `embed`'s queries against the original's document embeddings."""
    out = {}
    for s in sets:
        (doc_group, _), (query_group, texts) = _docs(s), _queries(s)
        out[s.name] = s.per_item({doc_group: docs[doc_group], query_group: embed(query_group, texts)})
    return out


def _onnx_embed(encode: Callable[[list[str], int], np.ndarray]) -> Embed:
    return lambda group, texts: encode(texts, QUERY_BATCH)


def asymmetric_points(original: str, encoders: Sequence[str | Path], beir_folders: Sequence[str | Path],
                      precisions: Sequence[str] = ("fp32", "int8"), max_docs: int | None = None,
                      max_queries: int | None = None, cache_dir: str | Path | None = None,
                      original_int8: bool = True, n_resamples: int = 1000,
                      threads: int | None = None) -> list[dict[str, Any]]:
    """The original's own point (depth L, fp32: the reference), its int8 (ORT), and each encoder x precision (ORT),
    judged on every BEIR set's dev and test halves against the original's full-depth document embeddings.

    Every encoder is checked against the original first (check_pair): one trained for another document model is
    refused before anything is encoded. ONNX exports go to a temporary folder: a retrained encoder is never
    judged from a stale export.
    """
    unknown = [p for p in precisions if p not in PRECISION_COST]
    if unknown:
        raise ValueError(f"unknown precision {unknown[0]!r}: expected some of {list(PRECISION_COST)}")
    records = check_encoders(original, encoders)
    sets = half_sets(beir_folders, max_docs, max_queries)
    if not sets:
        raise ValueError("no BEIR set with judged queries to judge the query encoders on")
    embedder = original_embedder(original, cache_dir)
    n_layers = embedder.encoder.num_layers
    docs = {group: embedder.layers(group, texts)[-1] for group, texts in map(_docs, sets)}
    reference = _judge(sets, docs, lambda group, texts: embedder.layers(group, texts)[-1])
    base = {"kind": ORIGINAL, "depth": n_layers, "query_model": str(original)}
    points = [make_point({**base, "name": "original · fp32", "precision": "fp32"}, reference, reference, n_resamples)]
    with tempfile.TemporaryDirectory(prefix="leap-asymmetric-") as work:
        if original_int8:
            int8 = [p for p in precisions if p.startswith("int8")]
            calls = onnx_encoders(resolve_model(original), Path(work) / "original", int8, n_layers, threads)
            points += [make_point({**base, "name": f"original · {p}", "precision": p},
                                  _judge(sets, docs, _onnx_embed(encode)), reference, n_resamples)
                       for p, encode in calls.items()]
        for i, (folder, record) in enumerate(zip(encoders, records)):
            label = {"kind": QUERY_ENCODER, "depth": int(record["depth"]), "query_model": str(folder),
                     "query_fingerprint": model_fingerprint(folder)}
            calls = onnx_encoders(folder, Path(work) / f"encoder{i}", precisions, threads=threads)
            points += [make_point({**label, "name": f"{Path(folder).name} · {p}", "precision": p},
                                  _judge(sets, docs, _onnx_embed(encode)), reference, n_resamples)
                       for p, encode in calls.items()]
            log.info("asymmetric: %s judged on %d halves", folder, len(sets))
    return points


def reference_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The original's own fp32 queries: original/original, what every floor is relative to."""
    found = [p for p in points if p["kind"] == ORIGINAL and p["precision"] == "fp32"]
    if len(found) != 1:
        raise ValueError(f"expected one original fp32 point (the reference), found {len(found)}")
    return found[0]


def dev_sets(reference: dict[str, Any]) -> list[EvalSet]:
    """The dev halves as the ndcg EvalSets meets_floors reads (by name and kind only)."""
    found = [EvalSet(name, "ndcg", {}, None) for name, row in reference["sets"].items() if row["half"] == "dev"]
    if not found:
        raise ValueError("no BEIR dev half to choose on: the floor would hold vacuously")
    return found


def within_floor(point: dict[str, Any], reference: dict[str, Any], max_ndcg_drop: float) -> bool:
    """pareto_choice.meets_floors on the dev halves: within max_ndcg_drop (relative NDCG@10) of original/original
    on each."""
    return meets_floors(point, reference, dev_sets(reference), math.inf, max_ndcg_drop)


def cost(point: dict[str, Any]) -> tuple[int, int, str]:
    """What a query runs: layers, then precision (int8 first); the name only makes ties deterministic."""
    return point["depth"], PRECISION_COST[point["precision"]], point["name"]


def choose_asymmetric(points: list[dict[str, Any]], max_ndcg_drop: float | None) -> dict[str, Any] | None:
    """The cheapest query path but the reference within max_ndcg_drop on EVERY set's dev half; None when none is
    (then queries keep the original at fp32). Test halves play no part."""
    if max_ndcg_drop is None:
        raise ValueError("choose_asymmetric needs max_ndcg_drop: without a floor the shallowest path always wins")
    reference = reference_point(points)
    fits = [p for p in points if p is not reference and within_floor(p, reference, max_ndcg_drop)]
    return min(fits, key=cost) if fits else None


def _ship(route: dict[str, Any], document: str) -> list[str]:
    """The commands that build what the chosen route serves."""
    precision = route["precision"]
    if route["kind"] == ORIGINAL:
        return [f"leap export {document} --depth {route['depth']} --out ONNX_FOLDER --int8"
                + (" --per-channel" if precision == "int8 per-channel" else "")]
    folder = route["query_model"]
    if precision == "fp32":
        return [f"leap package-query-encoder {folder} --out PACKAGE"]  # a Router: encode_query / encode_document
    return [f"leap export {folder} --out ONNX_FOLDER --int8" + (" --per-channel" if "per-channel" in precision else "")]


def serve_record(chosen: dict[str, Any] | None, document: str, fingerprint: str,
                 max_ndcg_drop: float) -> dict[str, Any]:
    """What a search service deploys: "queries", the chosen query route (None: the original's own), and
    "documents", the model (by weights hash) whose full-depth index it searches, untouched. Kept apart from the
    symmetric policy: that one may cut the model, which would re-embed documents at another depth."""
    documents = {"model": document, "fingerprint": fingerprint, "mode": "full",
                 "note": "the index this model built at full depth, untouched: embed documents with mode='full', "
                         "whatever exit policy the model folder serves by default"}
    if chosen is None:
        return {"queries": None, "documents": documents,
                "note": f"no query path cheaper than the original's met the {max_ndcg_drop:g} relative NDCG@10 floor "
                        "on every dev half: embed queries with the original at full depth, fp32"}
    route = {key: chosen.get(key) for key in ("name", "kind", "depth", "precision", "query_model", "query_fingerprint")}
    dev = {name: row["ndcg10_rel"] for name, row in chosen["sets"].items() if row["half"] == "dev"}
    return {"queries": route, "documents": documents, "dev_ndcg10_rel": dev, "ship": _ship(route, document)}


def _public(point: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in point.items() if not key.startswith("_")}


def asymmetric_section(document: str, folder: str | Path, points: list[dict[str, Any]],
                       chosen: dict[str, Any] | None, max_ndcg_drop: float) -> dict[str, Any]:
    """The result JSON's "asymmetric" section: the floor, each half's original/original, every point (marked
    within_floor), the chosen one and what to serve."""
    reference = reference_point(points)
    for point in points:
        point["within_floor"] = within_floor(point, reference, max_ndcg_drop)
    fingerprint = model_fingerprint(folder)
    return {"document_model": document, "document_fingerprint": fingerprint,
            "floor": {"max_ndcg_drop": max_ndcg_drop, "on": [s.name for s in dev_sets(reference)],
                      "rule": "relative NDCG@10 drop from original/original on every BEIR dev half "
                              "(pareto.meets_floors); test halves reported, never used to choose"},
            "sets": {name: {"half": row["half"], "n_queries": row["n_queries"], "original_ndcg10": row["quality"]}
                     for name, row in reference["sets"].items()},
            "points": [_public(p) for p in points], "chosen": _public(chosen) if chosen else None,
            "serve": serve_record(chosen, document, fingerprint, max_ndcg_drop)}


def profile_section(profile: Any, model: str, encoders: Sequence[str | Path], max_ndcg_drop: float,
                    precisions: Sequence[str] = ("fp32", "int8"), n_resamples: int | None = None) -> dict[str, Any]:
    """asymmetric_points on the profile's BEIR sets (its data dir, subsample and cache), chosen under the floor."""
    evaluation = profile.evaluation
    name, folder = document_model(model)
    points = asymmetric_points(str(folder), encoders, [identity.data_path(profile, f) for f in evaluation.beir],
                               precisions, evaluation.max_beir_docs or None, evaluation.max_beir_queries or None,
                               identity.cache_dir(profile), n_resamples=n_resamples or evaluation.bootstrap_resamples)
    return asymmetric_section(name, folder, points, choose_asymmetric(points, max_ndcg_drop), max_ndcg_drop)


def asymmetric_addition(profile: Any, model: str, encoders: Sequence[str | Path], max_ndcg_drop: float) -> Addition:
    """The asymmetric points as an evaluation.pareto Addition: the result's "asymmetric" section (profile_section),
    its markdown, and what calibrate --save records of it (calibration.query_route: the section's serve record)."""
    return Addition("asymmetric", lambda: profile_section(profile, model, encoders, max_ndcg_drop),
                    asymmetric_markdown, lambda section: {"query_route": section["serve"]})


def calibrate_with_queries(profile: Any, model: str, max_sts_drop: float, max_ndcg_drop: float | None = None,
                           save: bool = False, wait: bool = False,
                           query_encoders: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """`leap calibrate`: evaluation.pareto.calibrate_policy and, with query_encoders, their asymmetric points chosen
    under max_ndcg_drop apart from the policy (a wrong pairing fails before the replay, not after)."""
    if not query_encoders:
        return calibrate_policy(profile, model, max_sts_drop, max_ndcg_drop, save=save, wait=wait)
    preflight(model, query_encoders, max_ndcg_drop)
    return calibrate_policy(profile, model, max_sts_drop, max_ndcg_drop, save=save, wait=wait,
                            addition=asymmetric_addition(profile, model, query_encoders, max_ndcg_drop))


def pareto_with_queries(profile: Any, model: str, name: str, out_dir: Any = "reports/pareto",
                        max_sts_drop: float = 0.01, max_ndcg_drop: float | None = 0.03, timing: bool = True,
                        query_encoders: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """`leap pareto`: evaluation.pareto.write_pareto and, with query_encoders, the report's "asymmetric" section and
    its table (the name and every pairing checked before the replay)."""
    plain_name(name)  # a report name, not a path (checked before the work, as write_pareto does)
    if not query_encoders:
        return write_pareto(profile, model, name, out_dir, max_sts_drop, max_ndcg_drop, timing)
    preflight(model, query_encoders, max_ndcg_drop)
    return write_pareto(profile, model, name, out_dir, max_sts_drop, max_ndcg_drop, timing,
                        addition=asymmetric_addition(profile, model, query_encoders, max_ndcg_drop))
