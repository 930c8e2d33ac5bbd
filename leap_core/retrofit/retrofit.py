"""Retrofit: make a model users already run exit-compatible by a short LEAP fine-tune against itself.

The student is a copy of MODEL and the teacher is MODEL (its pooled embeddings cached like any
teacher's; same width, so no projection). L_inter is off — it would pin each layer to where it was,
the opposite of the goal — while L_final (weighted up) holds the final layer where it was, L_exit and
L_late pull the exit layers l_min..L-1 toward it, and L_contrast gives those layers the original's
in-batch similarity structure. l_min defaults to half the depth.

The exit test then passes for text like the training text (exit_rate_by_genre shows it), so a profile's
`retrofit.data` may draw the retrofit its own sample, e.g. one balanced over the corpus's sources.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from leap_core import identity
from leap_core.config import ENCODE_BATCH_SIZE, Profile, build_config, merge_values
from leap_core.evaluation.against_original import Embedder, beir_against_original, cheapest_cut, sts_against_original
from leap_core.evaluation.calibrate import THETAS, calibration_points, choose_theta
from leap_core.evaluation.sts import pair_rows, spearman
from leap_core.identity import model_slug
from leap_core.io import sha256_file, sha256_folder, sha256_strings, write_json_atomic, write_text_atomic
from leap_core.model_folder import layer_count, load_heads, model_fingerprint, read_branch
from leap_core.models import original_of, resolve_model
from leap_core.pipeline import experiment
from leap_core.report.retrofit_report import render_markdown
from leap_core.retrofit.exit_branch import train_branch
from leap_core.retrofit.peer import peer_result, train_peer
from leap_core.serve.model_card import write_card
from leap_core.stats import spearman_difference_ci

log = logging.getLogger(__name__)
RETROFIT_ARM = "retrofit"


def retrofit_profile(base: Profile, model: str) -> Profile:
    """`base` with MODEL as both teacher and student, l_min at half depth and the profile's retrofit overrides."""

    depth = layer_count(resolve_model(model))
    l_min = max(2, depth // 2)
    values = base.to_dict()
    values = merge_values(values, {
        "models": {"teacher": model, "student_init": model, "student_layers": depth},
        "exit": {"l_min": l_min},
        # Pull the exit layers l_min..L-1 onto the final one and give them the teacher's similarity structure
        # (an exit must also be a good embedding); not layer l_min - 1 (docs/tuning.md, "Retrofit: LEAP ...").
        "objective": {"exit_weight_from": l_min, "late_layers": list(range(l_min, depth)),
                      "contrast_layers": list(range(l_min, depth + 1))},
    })
    values = merge_values(values, copy.deepcopy(base.retrofit))
    if RETROFIT_ARM not in values["arms"]:
        raise ValueError(f"profile {base.name!r} defines no {RETROFIT_ARM!r} arm")
    arm = {**values["objective"], **values["arms"][RETROFIT_ARM]}
    if arm["adjacent"] and arm["adjacent_layers"] is None:
        # L_adjacent on the pairs among the exit layers, (l_min, l_min+1) .. (L-2, L-1): not (l_min-1, l_min),
        # which moves a layer below the exits (docs/tuning.md), nor (L-1, L), which L_late already pulls.
        values["arms"][RETROFIT_ARM]["adjacent_layers"] = list(range(l_min + 1, depth))
    return build_config(Profile, values, f"{base.name} (retrofit of {model})")


def retrofit_dir(base: Profile, model: str, seed: int, profile: Profile | None = None) -> Path:
    """runs/<profile>/retrofit-<model>-<recipe hash>-seed<seed>: a changed recipe trains afresh beside the old one.

    profile: retrofit_profile(base, model), when the caller already has it (it reads MODEL's config).
    """
    profile = profile or retrofit_profile(base, model)
    recipe = identity.retrofit_recipe(profile, RETROFIT_ARM, _sample_key(profile))
    return experiment.run_dir(base) / f"retrofit-{model_slug(model)}-{recipe}-seed{seed}"


def _sample_key(profile: Profile) -> str:
    """What decides which sentences a run trains on (not where the data lies)."""
    data = profile.data
    return str((data.corpus, data.n_sentences, data.min_chars, data.seed, data.balance_by, data.exclude_sts))


def retrofit_sentences(base: Profile, profile: Profile, sentences_path: str | Path | None = None) -> Path:
    """The retrofit's training sentences: the base run's sample (sentences_path, or extracted) unless the
    retrofit overrides the data selection (retrofit.data), which then gets its own sample beside it."""
    if _sample_key(profile) == _sample_key(base):
        return Path(sentences_path) if sentences_path else experiment.extract(base)
    name = f"retrofit-sentences-{sha256_strings([_sample_key(profile)])[:8]}.parquet"
    return experiment.extract(profile, experiment.run_dir(base) / name)


def _pair_cosines(embeddings: np.ndarray, idx1: np.ndarray, idx2: np.ndarray) -> np.ndarray:
    return (embeddings[idx1] * embeddings[idx2]).sum(-1)


def compare_with_truncation(profile: Profile, original: Any, retrofitted: Any, mean_exit_layer: float) -> dict:
    """The retrofit's exited embeddings vs the original cut to depth round(mean exit layer), on the STS set.

    original, retrofitted: their encoders at the profile's exit settings (experiment.load_encoder)."""
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import read_sts

    pairs = read_sts(experiment.data_path(profile, profile.data.sts_eval))
    unique, idx1, idx2 = pair_rows(pairs)
    depth = int(round(mean_exit_layer))
    exited = retrofitted.encode(unique, batch_size=ENCODE_BATCH_SIZE, mode="compact")
    cut = original.encode(unique, batch_size=ENCODE_BATCH_SIZE, mode=f"fixed:{depth}")
    ci = spearman_difference_ci(_pair_cosines(exited, idx1, idx2), _pair_cosines(cut, idx1, idx2), pairs.scores)
    return {"truncated_depth": depth, "difference": ci["estimate"], "ci_low": ci["low"], "ci_high": ci["high"]}


def exit_rate_by_genre(profile: Profile, encoder: Any) -> dict[str, dict[str, float]]:
    """Exit rate and mean exit layer over each genre's distinct sentences of data.sts_eval_genres (encoder: at the
    profile's exit settings).

    The exit test's pass rate depends on the text: it holds for text like the retrofit's training text.
    """
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import DataError, read_sts

    path = experiment.data_path(profile, profile.data.sts_eval_genres)
    pairs = read_sts(path)
    if pairs.genres is None:
        raise DataError(f"{path}: no genre field (data.sts_eval_genres needs the raw STS-B layout)")
    unique, idx1, idx2 = pair_rows(pairs)
    _, exit_layers = encoder.encode(unique, batch_size=ENCODE_BATCH_SIZE, mode="compact", return_exit_layers=True)
    exit_layers = np.asarray(exit_layers)
    genres = np.asarray(pairs.genres)
    result = {}
    for genre in dict.fromkeys(pairs.genres):
        layers = exit_layers[np.unique(np.concatenate([idx1[genres == genre], idx2[genres == genre]]))]
        result[genre] = {"sentences": len(layers), "exit_rate": float(np.mean(layers < encoder.num_layers)),
                         "mean_exit_layer": float(layers.mean())}
    return result


def theta_for_quality_budget(profile: Profile, original: Any, retrofitted: Any, max_drop: float) -> dict[str, Any]:
    """The theta a user would deploy for "exited STS-B at most max_drop below the original model".

    Chosen on the STS dev set (profile.data.sts_dev): among calibrate's thetas (0.80-0.99, k and l_min of
    the profile), the largest layer reduction whose exited Spearman is >= the original's dev Spearman minus
    max_drop (ties: the larger theta). Then measured once on the STS eval set, which played no part in the
    choice. "theta": None when no theta, not even full depth, meets the budget on dev. original, retrofitted: their
    encoders (full depth and every layer are read, so their own theta plays no part).
    """
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import read_sts

    k, l_min = profile.exit.k, profile.exit.l_min
    dev_pairs = read_sts(experiment.data_path(profile, profile.data.sts_dev))
    dev, dev1, dev2 = pair_rows(dev_pairs)
    original_full = original.encode(dev, batch_size=ENCODE_BATCH_SIZE, mode="full")
    original_dev = spearman(original_full[dev1], original_full[dev2], dev_pairs.scores)
    dev_layers = retrofitted.layer_embeddings(dev, batch_size=ENCODE_BATCH_SIZE)
    dev_points = calibration_points(dev_layers, dev1, dev2, dev_pairs.scores, THETAS, k, l_min)
    retro_dev = spearman(dev_layers[-1][dev1], dev_layers[-1][dev2], dev_pairs.scores)
    # calibrate's sts_drop is measured from the retrofit's own full depth; the budget is from the original's.
    chosen = choose_theta(dev_points, max_sts_drop=max_drop - (original_dev - retro_dev))
    result: dict[str, Any] = {"max_drop": max_drop, "chosen_on": profile.data.sts_dev,
                              "original_dev_stsb": original_dev, "theta": chosen["theta"] if chosen else None}
    if chosen is None:
        return result
    test_pairs = read_sts(experiment.data_path(profile, profile.data.sts_eval))
    test, test1, test2 = pair_rows(test_pairs)
    test_layers = retrofitted.layer_embeddings(test, batch_size=ENCODE_BATCH_SIZE)
    measured = calibration_points(test_layers, test1, test2, test_pairs.scores, [chosen["theta"]], k, l_min)[0]
    result.update({"measured_on": profile.data.sts_eval, "dev_layer_reduction": chosen["layer_reduction"],
                   "dev_stsb_exited": chosen["stsb"],
                   **{key: measured[key] for key in ("exit_rate", "mean_exit_layer", "layer_reduction")},
                   "stsb_exited": measured["stsb"]})
    return result


def retrofit(base: Profile, model: str, seed: int = 0, sentences_path: str | Path | None = None,
             quality_budget: float | None = 0.01) -> dict[str, Any]:
    """Fine-tune MODEL against itself, evaluate original and retrofit with the same code; return the summary.

    sentences_path: the base run's extracted sentences, used unless the retrofit draws its own sample.
    quality_budget: also report the theta chosen on STS dev for exited STS-B within this much of the
    original (theta_for_quality_budget); None skips it.
    """
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import read_sentences_parquet

    profile = retrofit_profile(base, model)
    sentences_path = retrofit_sentences(base, profile, sentences_path)
    cache = experiment.cache_teacher(profile, sentences_path)
    trained = experiment.train_arm(profile, RETROFIT_ARM, seed, cache, out_dir=retrofit_dir(base, model, seed, profile))
    original = experiment.evaluate(profile, model)
    result = experiment.evaluate(profile, trained.model_dir)
    summary = {
        "model": model,
        "model_dir": str(trained.model_dir),
        "depth": result["n_layers"],
        **dataclasses.asdict(profile.exit),
        "original_stsb": original["stsb_full"],
        "original_exit_rate": original["exit_rate"],
        "stsb_full": result["stsb_full"],
        "stsb_exited": result["stsb_exited"],
        "exit_rate": result["exit_rate"],
        "mean_exit_layer": result["mean_exit_layer"],
        "layer_reduction": result["layer_reduction"],
        "train_seconds": round(trained.train_seconds, 1),
        "train_sentences": len(read_sentences_parquet(sentences_path)),
        "balance_by": profile.data.balance_by,
        "exit_distribution": result["exit_distribution"],
        "similarity_to_final": result["similarity_to_final"],
        "original_similarity_to_final": original["similarity_to_final"],
        "common_component": result["common_component"],
        "original_common_component": original["common_component"],
        "original_stsb_per_layer": original["stsb_per_layer"],
        "stsb_per_layer": result["stsb_per_layer"],
    }
    # each model loaded once for the judges below, at the profile's exit settings
    original_encoder, retrofit_encoder = (experiment.load_encoder(profile, path) for path in (model, trained.model_dir))
    summary["vs_truncated_original"] = compare_with_truncation(profile, original_encoder, retrofit_encoder,
                                                               result["mean_exit_layer"])
    if profile.data.sts_eval_genres:
        summary["exit_by_genre"] = exit_rate_by_genre(profile, retrofit_encoder)
    if quality_budget is not None:
        summary["at_quality_budget"] = theta_for_quality_budget(profile, original_encoder, retrofit_encoder,
                                                                quality_budget)
    return summary



def against_original(profile: Profile, model: str, full: str | Path | None, cuts: str | Path,
                     depths: list[int], batch_size: int = ENCODE_BATCH_SIZE) -> dict[str, Any]:
    """STS-B dev and test and every BEIR set of the profile, full path and each cut, against MODEL itself.

    full: the full path's folder (None: the original itself, as for an exit branch); cuts: the folder whose
    layers 1..max(depths) give the cuts. Every BEIR document is encoded at each model's own max length.
    """
    # deferred: at top, importing this module would load transformers, tqdm, pyarrow
    from leap_core.data import read_sts
    from leap_core.serve.encoder import EarlyExitEncoder

    original_folder = resolve_model(model)
    key = _evaluation_key(profile, [original_folder, full or original_folder, cuts], depths)
    saved = Path(cuts).parent / "against-original.json"
    if saved.is_file() and (found := json.loads(saved.read_text())).get("key") == key:
        log.info("reusing the evaluation in %s", saved)
        return found["evaluation"]
    load = lambda path: Embedder(EarlyExitEncoder.from_pretrained(str(path)), batch_size, load_heads(path))  # noqa: E731
    # The original's pools are reused across the runs judged against it (its weights hash is the key).
    original = Embedder(EarlyExitEncoder.from_pretrained(str(original_folder)), batch_size,
                        cache_dir=experiment.cache_dir(profile) / "pools", fingerprint=model_fingerprint(original_folder))
    same = full is None or model_fingerprint(full) == model_fingerprint(original_folder)
    full_path = original if same else load(full)
    # A fine-tuned model is both its own full path and its cuts: one Embedder, so its pools are computed once.
    cut_path = full_path if full is not None and Path(full) == Path(cuts) and not same else load(cuts)
    n = profile.evaluation.bootstrap_resamples
    result: dict[str, Any] = {"full_is_original": same, "depths": depths, "max_length": {
        "original": original.encoder.max_length, "cuts": cut_path.encoder.max_length}}
    for split, relative in (("dev", profile.data.sts_dev), ("test", profile.data.sts_eval)):
        pairs = read_sts(experiment.data_path(profile, relative))
        result[f"sts_{split}"] = sts_against_original(original, full_path, cut_path, depths, pairs, f"sts-{split}", n)
    settings = profile.evaluation
    result["beir"] = {Path(folder).name: beir_against_original(
        original, full_path, cut_path, depths, experiment.data_path(profile, folder), n,
        settings.max_beir_docs or None, settings.max_beir_queries or None) for folder in settings.beir}
    write_json_atomic(saved, {"key": key, "evaluation": result})
    return result


def _evaluation_key(profile: Profile, folders: list[str | Path], depths: list[int]) -> str:
    """What an against_original result depends on: the models' weights, the data files and the settings."""

    data = [experiment.data_path(profile, profile.data.sts_dev), experiment.data_path(profile, profile.data.sts_eval)]
    beir = [sha256_folder(experiment.data_path(profile, folder)) for folder in profile.evaluation.beir]
    settings = profile.evaluation
    return sha256_strings([*(model_fingerprint(f) for f in folders), *(sha256_file(f) for f in data), *beir,
                           str(depths), str((settings.beir, settings.max_beir_docs, settings.max_beir_queries,
                                             settings.bootstrap_resamples))])


def summarize_against_original(model: str, evaluation: dict[str, Any], max_sts_drop: float = 0.01) -> dict[str, Any]:
    """The report's keys: originals and full path, and the cheapest cut chosen on STS-B dev, measured on the rest."""

    test = evaluation["sts_test"]
    summary: dict[str, Any] = {
        "model": model, "original_stsb": test["original"], "stsb_full": test["full"],
        "full_is_original": evaluation["full_is_original"],
        "beir": {name: {"original_ndcg10": s["original_ndcg10"], "full_ndcg10": s["full_ndcg10"],
                        "cos_to_original_final": s["cos_to_original_final"]} for name, s in evaluation["beir"].items()},
    }
    depth = cheapest_cut(evaluation["sts_dev"], max_sts_drop)
    summary["cheapest_cut"] = None if depth is None else {
        "depth": depth, "chosen_on": f"STS-B dev: within {max_sts_drop} of the original",
        "stsb": test["cuts"][str(depth)]["stsb"],
        "ndcg10": {name: s["cuts"][str(depth)]["ndcg10"] for name, s in evaluation["beir"].items()},
        "index_compat_ndcg10": {name: s["cuts"][str(depth)]["index_compat_ndcg10"]
                                for name, s in evaluation["beir"].items()},
        "cos_to_original_final": {name: s["cuts"][str(depth)]["cos_to_original_final"]
                                  for name, s in evaluation["beir"].items()},
    }
    return summary


def retrofit_branch(profile: Profile, model: str, seed: int = 0, corpus: str | Path | None = None,
                    max_sts_drop: float = 0.01) -> dict[str, Any]:
    """Train MODEL's exit branch (leap_core.retrofit.exit_branch) and judge it against MODEL: the report's entry."""

    trained = train_branch(profile, model, seed, corpus=corpus)
    record = read_branch(trained.model_dir)
    original_of(trained.model_dir)  # the original still hashes as it did when the branch was trained
    evaluation = against_original(profile, model, None, trained.model_dir, record["exit_layers"])
    return {**summarize_against_original(model, evaluation, max_sts_drop), "design": "exit_branch",
            "model_dir": str(trained.model_dir), "exit_layers": record["exit_layers"],
            "original_fingerprint": record["original_fingerprint"], "texts": record["texts"],
            "corpus": str(corpus) if corpus else None, "train_texts": record["train_texts"],
            "train_steps": trained.steps, "train_seconds": round(trained.train_seconds, 1),
            "evaluation": evaluation}


def retrofit_peer(profile: Profile, model: str, branch_dir: str | Path, seed: int = 0,
                  max_sts_drop: float = 0.01) -> dict[str, Any]:
    """sentence-transformers' AdaptiveLayerLoss fine-tune on the branch's texts and budget, judged the same way."""

    record = read_branch(branch_dir)
    peer = train_peer(profile, model, Path(branch_dir).parent / "texts.parquet", seed)
    evaluation = against_original(profile, model, peer, peer, record["exit_layers"])
    done = peer_result(peer)
    return {**summarize_against_original(model, evaluation, max_sts_drop), "design": "adaptive_layer_loss",
            "model_dir": str(peer), "train_steps": done["steps"], "train_seconds": round(done["train_seconds"], 1),
            "evaluation": evaluation}


def retrofit_finetune_against_original(profile: Profile, model: str, seed: int = 0) -> dict[str, Any]:
    """The exit-aware fine-tune (retrofit()), trained or reused, judged by against_original like the branch."""
    summary = retrofit(profile, model, seed=seed, quality_budget=None)
    depths = list(range(summary["l_min"], summary["depth"]))
    evaluation = against_original(profile, model, summary["model_dir"], summary["model_dir"], depths)
    return {**summarize_against_original(model, evaluation), "design": "exit_aware_finetune",
            "model_dir": summary["model_dir"], "train_seconds": summary["train_seconds"], "evaluation": evaluation}


COMMITTED_PROFILE = "cpu_long"  # the profile whose runs the committed reports/retrofit.json holds


def default_report(profile_name: str, reports_dir: str | Path = "reports") -> Path:
    """Where `leap retrofit` writes by default: reports/retrofit.json for the committed profile, else
    reports/<profile>/retrofit.json, so a smoke or cpu run never merges into the committed table."""
    folder = Path(reports_dir) if profile_name == COMMITTED_PROFILE else Path(reports_dir) / profile_name
    return folder / "retrofit.json"


def entry_profile(entry: dict[str, Any]) -> str | None:
    """The profile an entry was measured with: its own record, else (entries written before they held one) the
    <profile> folder of its run, <output_dir>/<profile>/<run>/model."""
    if entry.get("profile"):
        return entry["profile"]
    return Path(entry["model_dir"]).parent.parent.name if entry.get("model_dir") else None


def check_same_profile(report: dict[str, Any], profile_name: str, out: Path) -> None:
    """A ValueError when the report `out` holds rows of another profile: their numbers would not add up."""
    others = sorted({found for entry in report.values() if (found := entry_profile(entry)) not in (None, profile_name)})
    if others:
        raise ValueError(f"{out} holds rows of profile {', '.join(others)}; this run is profile {profile_name}: not "
                         f"merging them (the default --out for it is {default_report(profile_name)})")


def branch_facts(profile: Profile, entry: dict[str, Any]) -> dict[str, Any]:
    """What made an exit branch, for its card: the original it sits beside, its exits and training texts."""
    return {"kind": "LEAP exit branch (retrofit beside the untouched original)", "original": entry["model"],
            "profile": profile.name, "exit layers": ", ".join(map(str, entry["exit_layers"])),
            "data": f"{entry['train_texts']} {entry['texts']} texts, {entry['train_steps']} steps",
            "corpus": profile.data.corpus if entry["texts"] == "generic" else None}


def corpus_name(corpus: str | Path) -> str:
    """What an in-domain run is reported under: a BEIR folder's name for its corpus.jsonl[.gz], else the file's stem."""
    path = Path(corpus)
    return path.parent.name if path.name.startswith("corpus.") else path.name.split(".")[0]


def retrofit_into_report(profile: Profile, models: list[str], out: Path, seed: int = 0, design: str = "branch",
                         corpus: str | Path | None = None, peer: bool = False, max_drop: float = 0.01,
                         max_ndcg_drop: float | None = 0.03):
    """`leap retrofit`: each model's entry in the report `out` (.json, with its .md) gains this run; yields
    (model, entry) as each is written, so runs of several models or designs can be separate."""
    # deferred: at top, importing this module would load transformers, tqdm, pyarrow
    from leap_core.evaluation.pareto import calibrate_policy

    report = json.loads(out.read_text()) if out.is_file() else {}
    check_same_profile(report, profile.name, out)
    stale = [model for model, entry in report.items() if "evaluation" not in entry]
    if stale:  # written by an earlier release, measured another way: not mixed into this table
        log.info("dropping %s from %s: measured before the against-the-original evaluation", stale, out)
    report = {model: entry for model, entry in report.items() if model not in stale}
    for model in models:
        entry = report.get(model, {})
        if design == "finetune":
            entry.setdefault("designs", {})["exit_aware_finetune"] = retrofit_finetune_against_original(
                profile, model, seed)
        elif corpus:
            entry.setdefault("in_domain", {})[corpus_name(corpus)] = retrofit_branch(
                profile, model, seed, corpus=corpus, max_sts_drop=max_drop)
        else:
            kept = {key: entry[key] for key in ("in_domain", "designs", "peer") if key in entry}
            entry = {**retrofit_branch(profile, model, seed, max_sts_drop=max_drop), **kept}
            if peer:
                entry["peer"] = retrofit_peer(profile, model, entry["model_dir"], seed, max_drop)
            # The branch serves what calibration chose on dev; `leap cut` and `leap pareto` read it from there.
            entry["policy"] = calibrate_policy(profile, entry["model_dir"], max_drop, max_ndcg_drop, save=True)
            write_card(entry["model_dir"], facts=branch_facts(profile, entry), base_model=model)
        report[model] = {**entry, "profile": profile.name}
        # Not write_report_files: the next `leap retrofit` merges into this JSON and reads the folders it names.
        write_json_atomic(out, report)
        write_text_atomic(out.with_suffix(".md"), render_markdown(report, out.as_posix()))
        yield model, entry
