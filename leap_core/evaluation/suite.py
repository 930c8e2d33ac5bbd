"""Every analysis of the paper for several models at once, as one JSON-able dict, and its markdown summary.

Per model: STS (full depth and exited, bootstrap CIs over pairs), layer dynamics, NN@10, the sweep
(thresholds, fixed depths, patience, Pareto front), theta calibration on the dev set, the diagnostics
with the deployment checklist, and BEIR retrieval per encoder mode. Across models: paired bootstrap
differences against a reference model, and t-intervals over seed groups.

The diagnosis here uses each model's exit settings as evaluated (`leap diagnose` always uses the
paper's theta 0.95, k 1, l_min = half the depth). results["models"][name]["sts"] carries the keys leap_core.serve.registry's gate reads (stsb_exited,
stsb_exited_ci, exit_rate, mean_exit_layer, similarity_to_final, nn10_per_layer).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from leap_core.evaluation.calibrate import THETAS as CALIBRATION_THETAS, calibration_points, choose_theta
from leap_core.evaluation.diagnose import checklist, default_l_min, diagnostics, monitoring_overhead
from leap_core.evaluation.layers import (contraction_ratios, cumulative_exit_rate, exit_statistics,
                                         inter_layer_stability, similarity_to_final)
from leap_core.evaluation.neighbours import nn_statistics
from leap_core.evaluation.retrieval import evaluate_retrieval
from leap_core.evaluation.sts import pair_rows, progress, spearman
from leap_core.evaluation.sweep import THETAS, full_sweep
from leap_core.model_folder import exit_rule, layer_count, read_exit_settings
from leap_core.stats import paired_difference_ci, seed_summary, spearman_ci, spearman_difference_ci

log = logging.getLogger(__name__)

BEIR_SETS = ("beir/scifact", "beir/nfcorpus")
SEED_KEYS = ("stsb_full", "stsb_exited", "exit_rate", "mean_exit_layer", "layer_reduction")


def _pair_index(pairs: Any) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    unique, idx1, idx2 = pair_rows(pairs)
    return unique, idx1, idx2, np.asarray(pairs.scores, dtype=np.float64)


def _pair_cosines(embs: np.ndarray, idx1: np.ndarray, idx2: np.ndarray) -> np.ndarray:
    a, b = embs[idx1].astype(np.float64), embs[idx2].astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def sts_analysis(encoder: Any, pairs: Any, batch_size: int = 32, thetas: Iterable[float] = THETAS,
                 ci: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """STS, layer dynamics, NN@10 and the sweep of an EarlyExitEncoder on STS pairs.

    ci: options for the bootstrap (confidence, n_resamples, method, seed). Returns (results, per-pair
    cosines {"full", "exited"} for paired comparisons across models).
    """
    ci = dict(ci or {})
    unique, idx1, idx2, gold = _pair_index(pairs)
    with progress(f"STS: {len(unique)} distinct sentences through all {encoder.num_layers} layers"):
        layer_embs = encoder.layer_embeddings(unique, batch_size=batch_size)
    with progress(f"STS: {len(unique)} sentences exiting (compact mode)"):
        exited, exit_layers = encoder.encode(unique, batch_size=batch_size, mode="compact", return_exit_layers=True)
    n_layers = layer_embs.shape[0]
    cos = {"full": _pair_cosines(layer_embs[-1], idx1, idx2), "exited": _pair_cosines(exited, idx1, idx2)}
    full_ci, exited_ci = spearman_ci(cos["full"], gold, **ci), spearman_ci(cos["exited"], gold, **ci)

    def quality(embs: np.ndarray) -> dict[str, float]:
        return {"stsb": spearman(embs[idx1], embs[idx2], gold)}

    results = {
        "stsb_full": full_ci["estimate"], "stsb_full_ci": full_ci,
        "stsb_exited": exited_ci["estimate"], "stsb_exited_ci": exited_ci,
        "stsb_exited_minus_full_ci": spearman_difference_ci(cos["exited"], cos["full"], gold, **ci),
        "stsb_per_layer": [quality(layer)["stsb"] for layer in layer_embs],
        **exit_statistics(exit_layers, n_layers),
        "cumulative_exit_rate": cumulative_exit_rate(exit_layers, n_layers),
        "similarity_to_final": similarity_to_final(layer_embs),
        "inter_layer_stability": inter_layer_stability(layer_embs),
        "contraction": contraction_ratios(layer_embs),
        **nn_statistics(layer_embs, exit_layers),
        "sweep": full_sweep(layer_embs, quality, "stsb", thetas, encoder.k, encoder.l_min),
        "n_pairs": len(gold), "n_sentences": len(unique), "n_layers": n_layers,
    }
    return results, cos


def _load_encoder(path: str, theta: float | None, k: int | None, l_min: int | None, device: str | None) -> Any:
    """The encoder of a model folder / hub id; exit settings: given, else its leap_exit.json, else the default rule
    (model_folder.exit_rule) with l_min at half the depth."""
    # deferred: at top, importing this module would load torch, transformers, boto3
    from leap_core.models import resolve_model
    from leap_core.serve.encoder import EarlyExitEncoder

    folder = resolve_model(str(path))
    given = {key: value for key, value in {"theta": theta, "k": k, "l_min": l_min}.items() if value is not None}
    half_depth = {"l_min": default_l_min(layer_count(folder))}
    settings = exit_rule({**read_exit_settings(folder), **given}, fallback=half_depth)
    return EarlyExitEncoder.from_pretrained(folder, device=device, **settings)


def evaluate_encoder(encoder: Any, data_dir: str | Path, sts_test: str = "stsb/test.tsv",
                   sts_dev: str | None = "stsb/dev.tsv", beir_sets: Iterable[str] = BEIR_SETS,
                   beir_modes: Iterable[str] = ("full", "compact"), batch_size: int = 32,
                   max_docs: int | None = None, max_queries: int | None = None,
                   calibration_floor: Mapping[str, float] | None = None, measure_overhead: bool = True,
                   ci: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every analysis of one encoder. Returns (results, per-pair STS cosines {"full", "exited"} for comparisons)."""
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import read_sts

    data_dir = Path(data_dir)
    ci = dict(ci or {})
    started = time.perf_counter()
    test_pairs = read_sts(data_dir / sts_test)
    sts, cos = sts_analysis(encoder, test_pairs, batch_size, ci=ci)
    sweep = sts.pop("sweep")
    result: dict[str, Any] = {**encoder.rule,
                              "n_layers": encoder.num_layers, "sts": sts, "sweep": sweep}

    overhead = None
    if measure_overhead:
        overhead = monitoring_overhead(encoder, test_pairs.unique_sentences()[:256], batch_size)
    verdict = diagnostics(sts["similarity_to_final"], sts["exit_rate"], overhead["overhead"] if overhead else None)
    result["diagnosis"] = {**verdict, "monitoring": overhead,
                           "checklist": checklist(sts["similarity_to_final"], sts["nn10_per_layer"],
                                                  sts["exit_rate"], sts["mean_exit_layer"])}

    if sts_dev and calibration_floor:
        unique, idx1, idx2, gold = _pair_index(read_sts(data_dir / sts_dev))
        points = calibration_points(encoder.layer_embeddings(unique, batch_size=batch_size), idx1, idx2, gold,
                                    CALIBRATION_THETAS, encoder.k, encoder.l_min)
        chosen = choose_theta(points, **calibration_floor)
        result["calibration"] = {"data": sts_dev, "floor": dict(calibration_floor),
                                 "theta": chosen["theta"] if chosen else None,
                                 "expected_layer_reduction": chosen["layer_reduction"] if chosen else None,
                                 "chosen": chosen, "points": points}

    result["beir"] = {}
    bootstrap = {key: ci[key] for key in ("n_resamples", "seed", "confidence") if key in ci}
    for folder in beir_sets:
        path = Path(folder) if Path(folder).is_absolute() else data_dir / folder
        result["beir"][path.name] = evaluate_retrieval(encoder, path, beir_modes, max_docs=max_docs,
                                                       max_queries=max_queries, batch_size=batch_size, **bootstrap)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result, cos


def _compare(name: str, reference: str, results: dict[str, Any], cosines: dict[str, Any], gold: np.ndarray,
             ci: Mapping[str, Any]) -> dict[str, Any]:
    """Paired bootstrap differences name minus reference: STS over pairs, NDCG@10 over shared queries."""
    out: dict[str, Any] = {"reference": reference}
    for kind in ("full", "exited"):
        out[f"stsb_{kind}_diff_ci"] = spearman_difference_ci(cosines[name][kind], cosines[reference][kind], gold, **ci)
    out["beir"] = {}
    for dataset, mine in results[name]["beir"].items():
        theirs = results[reference]["beir"].get(dataset)
        if theirs is None:
            continue
        out["beir"][dataset] = {}
        for mode, scores in mine["modes"].items():
            if mode not in theirs["modes"]:
                continue
            a, b = scores["ndcg@10_per_query"], theirs["modes"][mode]["ndcg@10_per_query"]
            shared = sorted(set(a) & set(b))
            if len(shared) > 1:
                out["beir"][dataset][mode] = paired_difference_ci([a[q] for q in shared], [b[q] for q in shared], **ci)
    return out


def _seed_groups(groups: Mapping[str, list[str]], results: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for group, names in groups.items():
        missing = [n for n in names if n not in results]
        if missing:
            raise ValueError(f"seed group {group!r}: unknown model name(s) {missing}; known: {sorted(results)}")
        summary = {key: seed_summary([results[n]["sts"][key] for n in names]) for key in SEED_KEYS}
        if not names:
            raise ValueError(f"seed group {group!r}: no model names")
        datasets = set.intersection(*(set(results[n]["beir"]) for n in names))
        for dataset in sorted(datasets):
            modes = set.intersection(*(set(results[n]["beir"][dataset]["modes"]) for n in names))
            for mode in sorted(modes):
                summary[f"{dataset}/{mode}/ndcg@10"] = seed_summary(
                    [results[n]["beir"][dataset]["modes"][mode]["ndcg@10"] for n in names])
        out[group] = {"models": list(names), **summary}
    return out


def evaluate_all(model_paths: Mapping[str, str], data_dir: str | Path, reference: str | None = None,
                 seed_groups: Mapping[str, list[str]] | None = None, theta: float | None = None,
                 k: int | None = None, l_min: int | None = None, device: str | None = None,
                 n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
                 calibration_floor: Mapping[str, float] | None = None, **options: Any) -> dict[str, Any]:
    """Every analysis for every model {name: folder or hub id}, on STS-B test/dev and BEIR sets under data_dir.

    reference: a model name; every other model gets paired differences against it (default: the first).
    seed_groups: {group: [model names]} summarised across seeds. theta, k, l_min: the exit rule for all
    models (None: each model's leap_exit.json, else 0.95, 1, half the depth). calibration_floor:
    {"max_sts_drop": ..., "min_nn10": ...} (default max_sts_drop 0.01). options: evaluate_encoder's
    (sts_test, sts_dev, beir_sets, beir_modes, batch_size, max_docs, max_queries, measure_overhead).
    """
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import read_sts

    if not model_paths:
        raise ValueError("model_paths: give at least one {name: path}")
    names = list(model_paths)
    reference = reference if reference is not None else names[0]
    if reference not in model_paths:
        raise ValueError(f"reference {reference!r} is not a model name; known: {names}")
    ci = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    floor = dict(calibration_floor) if calibration_floor is not None else {"max_sts_drop": 0.01}
    results: dict[str, Any] = {}
    cosines: dict[str, Any] = {}
    for name in names:
        log.info("evaluating %s (%s)", name, model_paths[name])
        encoder = _load_encoder(model_paths[name], theta, k, l_min, device)
        result, cosines[name] = evaluate_encoder(encoder, data_dir, calibration_floor=floor, ci=ci, **options)
        results[name] = {"path": str(model_paths[name]), **result}
    gold = np.asarray(read_sts(Path(data_dir) / options.get("sts_test", "stsb/test.tsv")).scores, dtype=np.float64)
    comparisons = {name: _compare(name, reference, results, cosines, gold, ci) for name in names if name != reference}
    return {
        "settings": {"data_dir": str(data_dir), "reference": reference, "theta": theta, "k": k, "l_min": l_min,
                     "bootstrap": {"n_resamples": n_resamples, "confidence": confidence, "seed": seed,
                                   "method": "percentile"},
                     "calibration_floor": floor, **{key: value for key, value in options.items()}},
        "models": results,
        "comparisons": comparisons,
        "seed_groups": _seed_groups(seed_groups or {}, results),
    }


# ---------------------------------------------------------------- markdown
