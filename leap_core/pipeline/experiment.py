"""The stages of an experiment, each reading and writing files: what the CLI and the flow's steps call.

extract -> sentences Parquet; cache_teacher -> teacher Parquet; train_arm -> student folder;
evaluate -> metrics dict. Paths default to <profile.output_dir>/<profile.name>/...; teacher
caches live in <profile.output_dir>/cache/ so every profile, arm, seed and run shares them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from leap_core import identity
from leap_core.config import ENCODE_BATCH_SIZE, Profile
from leap_core.evaluation.served_point import measure_served, served_from_metrics
from leap_core.identity import cache_dir, data_path  # every stage's caches and data files (one definition)
from leap_core.io import sha256_file, sha256_strings, write_json_atomic
from leap_core.policy import ALWAYS, ExitPolicy

log = logging.getLogger(__name__)


def run_dir(profile: Profile) -> Path:
    return Path(profile.output_dir) / profile.name


def extract(profile: Profile, out_path: str | Path | None = None) -> Path:
    """Corpus -> unique, long-enough sentences, evaluation sentences removed, subsampled -> Parquet."""
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import extract_sentences, load_corpus, read_tags, sts_sentences, write_sentences_parquet

    data = profile.data
    corpus = load_corpus(data.corpus, data.data_dir)
    tags = read_tags(data_path(profile, data.balance_by), len(corpus), data.corpus) if data.balance_by else None
    held_out = sts_sentences(data.data_dir, data.exclude_sts)
    sentences = extract_sentences(corpus, data.n_sentences, data.min_chars, data.seed, exclude=held_out, tags=tags)
    out_path = Path(out_path) if out_path else run_dir(profile) / "sentences.parquet"
    write_sentences_parquet(sentences, out_path)
    log.info("extracted %d sentences from %d (%s) into %s", len(sentences), len(corpus), data.corpus, out_path)
    return out_path


def teacher_layer_map(profile: Profile) -> list[int]:
    """The teacher layer (1-indexed) each student layer is compared with; the last is the teacher's final."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.model_folder import layer_count
    from leap_core.models import resolve_model
    from leap_core.train.losses import uniform_layer_map

    teacher_layers = layer_count(resolve_model(profile.models.teacher))
    return uniform_layer_map(profile.models.student_layers, teacher_layers)


def cache_teacher(profile: Profile, sentences_path: str | Path, show_progress: bool = True) -> Path:
    """Teacher embeddings for the extracted sentences, at every layer the objective needs (reused if valid)."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.data import read_sentences_parquet
    from leap_core.train.teacher_cache import build_teacher_cache

    sentences = read_sentences_parquet(sentences_path)
    models = profile.models
    return build_teacher_cache(models.teacher, sentences, teacher_layer_map(profile), cache_dir(profile),
                               max_length=models.max_length, batch_size=models.teacher_batch_size,
                               device=profile.training.device, show_progress=show_progress,
                               shared_uri=profile.cache_uri or None)


def arm_dir(profile: Profile, arm: str, seed: int) -> Path:
    return run_dir(profile) / f"{arm}-seed{seed}"


def train_arm(profile: Profile, arm: str, seed: int, teacher_cache_path: str | Path,
              out_dir: str | Path | None = None, on_step=None, wait: bool = False,
              checkpoint_store: str | None = None):
    """Train one arm (a configuration of the objective) with one seed; resumes a killed run.

    wait: when another process holds the run folder, wait for it (default: refuse, naming its pid).
    checkpoint_store: s3://... to mirror checkpoints in, so that a restart on another machine resumes them.
    """
    # deferred: at top, importing this module would load torch, transformers, sentence_transformers
    import torch

    from leap_core.models import build_student, freeze_lower_layers
    from leap_core.train.losses import LeapObjective
    from leap_core.train.teacher_cache import load_teacher_cache
    from leap_core.train.training import LeapTrainer, seed_everything

    cache = load_teacher_cache(teacher_cache_path)
    log.info("teacher embeddings read from %s (%d sentences): no teacher forward pass", cache.path, len(cache.sentences))
    mapping = teacher_layer_map(profile)
    missing = sorted(set(mapping) - set(cache.layers))
    if missing:
        raise ValueError(f"{teacher_cache_path} lacks teacher layers {missing}")
    cache.embeddings = cache.embeddings[[cache.layers.index(layer) for layer in mapping]]
    cache.layers = mapping
    seed_everything(seed)  # the projection head's initialisation depends on it
    student, tokenizer = build_student(profile.models.student_init, profile.models.student_layers,
                                       profile.models.layer_init)
    training = profile.training_for(arm)
    if training.dropout is not None:
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = training.dropout
    freeze_lower_layers(student, training.frozen_layers)
    objective = LeapObjective(profile.objective_for(arm), student.config.num_hidden_layers,
                              student.config.hidden_size, cache.dim)
    fingerprint = identity.student_run(profile, arm, cache.path.name)
    trainer = LeapTrainer(student, tokenizer, objective, cache, training,
                          out_dir or arm_dir(profile, arm, seed), seed=seed, max_length=profile.models.max_length,
                          exit_settings=profile.exit, run_fingerprint=fingerprint, on_step=on_step,
                          checkpoint_store=checkpoint_store)
    result = trainer.train(wait=wait)
    write_trained_card(profile, arm, seed, result.model_dir)
    return result


def write_trained_card(profile: Profile, arm: str, seed: int, folder: str | Path) -> Path:
    """The student folder's README.md (leap's card): its recipe and, when the STS eval file is there, the STS-B
    numbers of the policy it serves (one encoding pass)."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.serve.model_card import recipe_facts, write_card

    measurable = data_path(profile, profile.data.sts_eval).is_file()
    return write_card(folder, served_numbers(profile, folder) if measurable else None,
                      recipe_facts(profile, arm, seed))


def _remembered(profile: Profile, model_dir: str | Path, kind: str, compute) -> dict:

    # deferred: at top, importing this module would load safetensors
    from leap_core.model_folder import model_fingerprint, read_exit_settings

    model_dir = Path(model_dir)
    sts_file = data_path(profile, profile.data.sts_eval)
    settings = read_exit_settings(model_dir)
    rule = {key: value for key, value in settings.items() if key in ("theta", "k", "l_min")}
    # The policy too (None included, so results saved before they held the served point are measured again).
    rule["policy"] = settings.get("policy")
    key = sha256_strings([model_fingerprint(model_dir), str(profile.exit), json.dumps(rule, sort_keys=True),
                          sha256_file(sts_file)])
    saved = model_dir.parent / f"{kind}-{sts_file.stem}.json"
    if saved.is_file():
        found = json.loads(saved.read_text())
        if found.get("key") == key:
            log.info("reusing the %s in %s", kind, saved)
            return found["metrics"]
    metrics = compute()
    write_json_atomic(saved, {"key": key, "metrics": metrics})
    return metrics


def load_encoder(profile: Profile, model: str | Path, **overrides: Any):
    """The early-exit encoder of MODEL (folder, hub id or random-bert spec) at the profile's exit settings;
    overrides (theta, k, l_min, device, policy, ...) win."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.models import resolve_model
    from leap_core.serve.encoder import EarlyExitEncoder

    return EarlyExitEncoder.from_pretrained(str(resolve_model(str(model))), **{**dataclasses.asdict(profile.exit),
                                                                               **overrides})


def retrieval(profile: Profile, models: dict[str, tuple[str | Path, tuple[str, ...]]], batch_size: int = ENCODE_BATCH_SIZE) -> dict:
    """BEIR NDCG@10 (CIs over queries) on the profile's BEIR sets of each named model, in its encoder modes.

    models: {name: (model path, modes)}, e.g. {"leap": (path, ("full", "compact")), "baseline": (path, ("full",))}.
    """
    # deferred: at top, importing this module would load torch, scipy, tqdm
    from leap_core.evaluation.retrieval import evaluate_retrieval

    settings = profile.evaluation
    results = {}
    for name, (path, modes) in models.items():
        encoder = load_encoder(profile, path)  # loaded once for every BEIR set
        results[name] = {Path(folder).name: evaluate_retrieval(
            encoder, data_path(profile, folder), modes, batch_size=batch_size,
            max_docs=settings.max_beir_docs or None, max_queries=settings.max_beir_queries or None,
            n_resamples=settings.bootstrap_resamples) for folder in settings.beir}
    return results


def calibration(profile: Profile, model: str | Path, batch_size: int = ENCODE_BATCH_SIZE) -> dict:
    """theta chosen on the profile's STS dev set for the profile's quality floor, with every theta's point."""
    # deferred: at top, importing this module would load torch, scipy, tqdm
    from leap_core.data import read_sts
    from leap_core.evaluation.calibrate import calibrate_encoder

    floor = {"max_sts_drop": profile.evaluation.calibration_max_sts_drop}
    return calibrate_encoder(load_encoder(profile, model), read_sts(data_path(profile, profile.data.sts_dev)),
                             batch_size=batch_size, **floor)


def diagnose_external(profile: Profile, batch_size: int = ENCODE_BATCH_SIZE) -> dict:
    """The paper's diagnosis (theta 0.95, k 1, l_min half the depth) of the models the profile starts from:
    the teacher and the student's source, as published. No timing: only exits and layer dynamics."""
    # deferred: at top, importing this module would load torch, tqdm
    from leap_core.evaluation.diagnose import diagnose

    return {role: diagnose(model, profile.data.data_dir, profile.data.sts_eval, batch_size=batch_size,
                           measure_overhead=False)
            for role, model in (("teacher", profile.models.teacher), ("student_init", profile.models.student_init))}


def latency(profile: Profile, model: str | Path) -> dict:
    """leap_core.bench.latency on the profile's STS test sentences: every encoder mode vs sentence-transformers."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.bench.latency import run_benchmark
    from leap_core.data import read_sts

    settings = profile.evaluation
    sentences = read_sts(data_path(profile, profile.data.sts_eval)).unique_sentences()
    return run_benchmark(model, sentences, batch_sizes=list(settings.bench_batch_sizes),
                         warmup=settings.bench_warmup or None, iterations=settings.bench_iterations or None)


def evaluate(profile: Profile, model: str | Path, analysis: bool = False, exit_overrides: dict[str, Any] | None = None,
             batch_size: int = ENCODE_BATCH_SIZE, remember: bool = False) -> dict:
    """The experiment's one evaluation of a model on the profile's STS eval set, at the model's exit rule.

    The rule is the folder's leap_exit.json, else the profile's; exit_overrides win over both, and
    metrics["exit_settings"] says which values were used and where they came from. Default: STS-B full depth and
    exited, exit statistics and per-layer similarity (evaluation.sts.evaluate_sts). analysis: everything the report
    and the deployment gate read (evaluation.suite.sts_analysis: bootstrap CIs, layer dynamics, NN@10, the sweep).
    remember: kept beside the model folder and reused while model, rule and STS file are unchanged (a resumed
    flow does not redo it).
    """
    if remember:
        return _remembered(profile, model, "analysis" if analysis else "eval",
                           lambda: evaluate(profile, model, analysis, exit_overrides, batch_size))
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.data import read_sts
    from leap_core.evaluation.sts import evaluate_sts
    from leap_core.evaluation.suite import sts_analysis
    from leap_core.model_folder import EXIT_SETTINGS_FILE, read_exit_settings
    from leap_core.models import resolve_model

    folder = resolve_model(str(model))
    saved = {key: value for key, value in read_exit_settings(folder).items() if key in ("theta", "k", "l_min")}
    rule = saved | (exit_overrides or {})
    source = (f"{folder / EXIT_SETTINGS_FILE}" if saved else f"profile {profile.name}") + (
        f", overridden: {sorted(exit_overrides)}" if exit_overrides else "")
    encoder = load_encoder(profile, folder, **rule)
    pairs = read_sts(data_path(profile, profile.data.sts_eval))
    if analysis:
        ci = {"n_resamples": profile.evaluation.bootstrap_resamples, "seed": 0}
        metrics, _ = sts_analysis(encoder, pairs, batch_size, ci=ci)
        metrics.update(encoder.rule)
    else:
        metrics = evaluate_sts(encoder, pairs, batch_size=batch_size)
    metrics["exit_settings"] = {**encoder.rule, "source": source}
    return {**metrics, **served_section(encoder, metrics, folder)}


def served_numbers(profile: Profile, model: str | Path, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """STS-B numbers of the policy the folder serves now (a model card's): read off `metrics` (an evaluate result
    of the same weights) when they tell, else one pass of the encoder at the served mode."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.data import read_sts
    from leap_core.models import resolve_model
    from leap_core.serve.model_card import served_policy

    folder = resolve_model(str(model))
    served = served_from_metrics(metrics, served_policy(folder)) if metrics else None
    if served is None:
        pairs = read_sts(data_path(profile, profile.data.sts_eval))
        log.info("%s: measuring the served policy on %d STS pairs", folder, len(pairs.scores))
        served = measure_served(load_encoder(profile, folder), pairs)
    return served


def served_section(encoder: Any, metrics: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What `leap eval` leads with: the point the folder serves (its leap_exit.json policy) read off `metrics`,
    and the policy the compact-mode numbers were measured at (the rule, or the folder's thresholds)."""
    # deferred: at top, importing this module would load safetensors
    from leap_core.model_folder import EXIT_SETTINGS_FILE, read_exit_settings

    policy = encoder.policy
    # "compact" tests the thresholds of a thresholds policy, else the rule (EarlyExitEncoder.exit_thresholds).
    measured = policy if policy.kind == "thresholds" else ExitPolicy(
        "rule", theta=min(max(encoder.theta, ALWAYS), 1.0), k=encoder.k, l_min=encoder.l_min)
    with_measured = {**metrics, "measured_policy": measured.to_dict()}
    served = served_from_metrics(with_measured, policy)
    source = (f"{EXIT_SETTINGS_FILE} policy" if "policy" in read_exit_settings(folder)
              else f"the exit rule ({EXIT_SETTINGS_FILE} names no other policy)")
    return {"measured_policy": measured.to_dict(), "served": {**served, "source": source}}


def foundation(profile: Profile, baseline_arm: str = "baseline", leap_arm: str = "leap") -> dict[str, Any]:
    """Both arms trained from one teacher cache with the first seed and evaluated on the STS eval set: the
    headline numbers of each (report.SEED_KEYS), their settings, train seconds and every detail."""

    # deferred: at top, importing this module would load scipy, safetensors
    from leap_core.report.aggregate import SEED_KEYS

    seed = profile.seeds[0]
    cache = cache_teacher(profile, extract(profile))
    results, seconds = {}, {}
    arms = {"baseline": baseline_arm, "leap": leap_arm}
    for role, arm in arms.items():
        trained = train_arm(profile, arm, seed, cache)
        seconds[role] = round(trained.train_seconds, 1)
        started = time.perf_counter()
        results[role] = evaluate(profile, trained.model_dir, remember=True)
        log.info("%s (%s): evaluated in %.0f s: %s", role, arm, time.perf_counter() - started,
                 {k: v for k, v in results[role].items() if isinstance(v, float)})
    return {
        "profile": profile.name, "data_dir": str(profile.data.data_dir), "sts_eval": profile.data.sts_eval,
        "exit": dataclasses.asdict(profile.exit),
        "n_train_sentences": profile.data.n_sentences, "teacher": profile.models.teacher, "teacher_cache": str(cache),
        "arms": {role: {"arm": arm, "objective": dataclasses.asdict(profile.objective_for(arm))}
                 for role, arm in arms.items()},
        "training": dataclasses.asdict(profile.training),
        **{role: {key: results[role][key] for key in SEED_KEYS} for role in results},
        "train_seconds_per_arm": seconds, "details": results,
    }
