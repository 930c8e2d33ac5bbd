"""Retrain on your own traffic: retrofit the champion on the text it serves, and promote only a candidate that wins.

The loop (flows/retrain_flow.py runs it, weekly or on a monitor alert):
1. split_traffic: the logged texts, cleaned, filtered and deduplicated like the corpus (STS eval text held out),
   then split by a hash of each text: a held-out slice (never trained on, this run or any later one) and the rest.
2. retrofit_candidate: the champion fine-tuned against the ORIGINAL model's frozen outputs on that text (the
   retrofit recipe), so generations never drift from the model the service started from.
3. measure: each model at the policy it would serve, chosen the same way on the same dev data: the fastest full /
   fixed:N / rule / thresholds point within the floors. The traffic has no labels, so quality on the slice is
   agreement with the original: NN@10 of the served embeddings against the original's full-depth neighbours, held
   to the paper's viable-exit mark (0.80) as an absolute floor; STS-B dev stays near each model's full depth.
4. judge: the candidate wins when it has a policy within the floors, is no worse than the champion on STS-B dev
   (quality_tolerance) and serves at least min_depth_gain fewer layers on the slice. Only a winner becomes champion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from leap_core import identity, tracking
from leap_core.config import Profile, build_config, merge_values
from leap_core.evaluation.pareto_choice import choose, deployable
from leap_core.identity import model_slug
from leap_core.io import note_in_manifest, sha256_strings, write_json_atomic, write_text_atomic, writer_lock
from leap_core.pipeline import experiment
from leap_core.policy import ExitPolicy
from leap_core.report.retrain_report import summary_markdown
from leap_core.roles import CANDIDATE, CHAMPION, SLICE

log = logging.getLogger(__name__)



def held_out(text: str, fraction: float) -> bool:
    """Whether `text` belongs to the held-out slice: fixed by a hash of its dedup key, so never trained on later."""
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data.corpus import sentence_key

    bucket = int.from_bytes(hashlib.sha256(sentence_key(text).encode()).digest()[:8], "big") / 2.0 ** 64
    return bucket < fraction


def split_traffic(profile: Profile, location: str, out_dir: str | Path) -> dict[str, Any]:
    """The traffic log's sampled texts -> out_dir/{train,holdout}.parquet (corpus filters; STS eval text excluded).

    Training texts are capped at retrain.max_sentences (drawn with data.seed); the slice keeps every held-out text
    up to the same cap. Raises DataError when the log holds too few texts for either part.
    """
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import DataError, sts_sentences
    from leap_core.data.corpus import extract_sentences, write_sentences_parquet
    from leap_core.serve.traffic import read_traffic

    settings, data = profile.retrain, profile.data
    logged = [t for t in read_traffic(location).column("text").to_pylist() if t is not None]
    exclude = sts_sentences(data.data_dir, data.exclude_sts)
    if not logged:
        raise DataError(f"{location}: the traffic log holds no text (set LEAP_TRAFFIC_SAMPLE above 0 when serving)")
    texts = extract_sentences(logged, None, data.min_chars, data.seed, exclude=exclude)
    slice_texts = [t for t in texts if held_out(t, settings.holdout_fraction)]
    train = [t for t in texts if not held_out(t, settings.holdout_fraction)]
    if len(slice_texts) < settings.min_slice or len(train) < profile.training.batch_size:
        raise DataError(f"{location}: {len(logged)} logged texts give {len(train)} to train on and {len(slice_texts)} "
                        f"held out; retrain needs a slice of {settings.min_slice} and a batch of "
                        f"{profile.training.batch_size} (log more, or raise LEAP_TRAFFIC_SAMPLE)")
    train = extract_sentences(train, settings.max_sentences, 0, data.seed)
    slice_texts = extract_sentences(slice_texts, settings.max_sentences, 0, data.seed)
    out = Path(out_dir)
    paths = {"train": out / "train.parquet", "holdout": out / "holdout.parquet"}
    write_sentences_parquet(train, paths["train"])
    write_sentences_parquet(slice_texts, paths["holdout"])
    log.info("traffic %s: %d logged texts -> %d to train on, %d held out", location, len(logged), len(train),
             len(slice_texts))
    return {"train": paths["train"], "holdout": paths["holdout"], "logged": len(logged), "distinct": len(texts),
            "n_train": len(train), "n_holdout": len(slice_texts)}


def candidate_profile(base: Profile, original: str, champion: str | Path) -> Profile:
    """The retrofit profile of `original` (teacher: its frozen outputs), its student starting from the champion."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.retrofit.retrofit import retrofit_profile

    profile = retrofit_profile(base, original)
    values = merge_values(profile.to_dict(), {"models": {"student_init": str(champion)}})
    return build_config(Profile, values, f"{base.name} (retrain of {champion} against {original})")


def retrofit_candidate(base: Profile, original: str, champion: str | Path, train_path: str | Path,
                       seed: int = 0) -> tuple[Path, float]:
    """Fine-tune the champion on the traffic's training text against the original; (model folder, train seconds).

    The teacher cache reuses rows of earlier caches of the same teacher (teacher_cache.build_teacher_cache), so
    text a previous retrain already encoded costs no teacher pass. The run folder is named by what decides it
    (the candidate recipe, the champion's weights and the texts), so a resumed or repeated run retrains nothing.
    """
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.data.corpus import read_sentences_parquet
    from leap_core.model_folder import model_fingerprint
    from leap_core.models import resolve_model
    from leap_core.retrofit.retrofit import RETROFIT_ARM

    profile = candidate_profile(base, original, champion)
    cache = experiment.cache_teacher(profile, train_path, show_progress=False)
    texts_key = sha256_strings(read_sentences_parquet(train_path))[:8]
    recipe = identity.retrofit_recipe(profile, RETROFIT_ARM, texts_key)
    champion_key = model_fingerprint(resolve_model(str(champion)))[:8]
    out_dir = experiment.run_dir(base) / f"retrain-{model_slug(original)}-{recipe}-{champion_key}-seed{seed}"
    trained = experiment.train_arm(profile, RETROFIT_ARM, seed, cache, out_dir=out_dir)
    return Path(trained.model_dir), float(trained.train_seconds)


def original_neighbours(profile: Profile, original: str, texts: list[str], k: int = 10) -> np.ndarray:
    """Each slice text's k nearest slice texts under the original model at full depth (the slice's reference).

    From the original's pools, cached on disk like every measured model's: when the champion is the original, its
    measurement reads them instead of encoding the slice again.
    """
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.evaluation.neighbours import knn
    from leap_core.evaluation.pareto import depth_model

    return knn(depth_model(profile, original)[0].layers(SLICE, texts)[-1], k)


def agreement_set(texts: list[str], reference: np.ndarray) -> Any:
    """The slice as a Pareto set: per text, NN@k of the served embeddings against the original's neighbours."""
    # deferred: at top, importing this module would load torch, scipy, tqdm
    from leap_core.evaluation.neighbours import knn, overlap
    from leap_core.evaluation.pareto_points import EvalSet

    k = reference.shape[1]
    return EvalSet(SLICE, "agreement", {SLICE: texts}, lambda embs: overlap(knn(embs[SLICE], k), reference))


def measure(profile: Profile, model: str | Path, slice_set: Any, save: bool = False) -> dict[str, Any]:
    """The policy `model` would serve and its numbers: the fastest deployable point within the floors on dev (STS-B
    dev within registry.policy_max_sts_drop of its full depth; slice NN@10 vs the original >= retrain.min_agreement).

    No point meets the floors: measured at full depth, with "meets_floors": False. save: write the policy to the
    folder's leap_exit.json (the candidate serves what it was judged at). Also measured once, used for no choice:
    STS-B test and each of its genres at that policy.
    """
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.data import read_sts
    from leap_core.evaluation.pareto import depth_model, evaluation_sets, save_policy
    from leap_core.evaluation.pareto_points import Replay, candidate_policies, sts_sets

    depth, described = depth_model(profile, str(model))
    dev_sets = evaluation_sets(profile, dev_only=True, beir=False) + [slice_set]
    replay = Replay(depth, dev_sets)
    points = [p for p in map(replay.policy_point, candidate_policies(replay, dev_sets[0])) if deployable(p, described)]
    full = next(p for p in points if p["kind"] == "full")
    chosen = choose(points, dev_sets, profile.registry.policy_max_sts_drop, min_agreement=profile.retrain.min_agreement)
    policy = ExitPolicy.from_dict((chosen or full)["policy"])
    if save and chosen:
        save_policy(described["model_path"], policy, {"name": chosen["name"], "chosen_on": [s.name for s in dev_sets]})
    test_file = profile.data.sts_eval_genres or profile.data.sts_eval
    test = Replay(depth, sts_sets("stsb-test", read_sts(experiment.data_path(profile, test_file)), by_genre=True))
    return {"model": str(model), "n_layers": depth.n_layers, "meets_floors": chosen is not None,
            "policy": policy.to_dict(), "name": policy.name, "dev": (chosen or full)["sets"], "dev_full": full["sets"],
            "test": test.policy_point(policy)["sets"]}


def judge(candidate: dict[str, Any], champion: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Win or lose, with every reason: the candidate has a policy within the floors, is no worse than the champion
    on STS-B dev (quality_tolerance) and serves at least min_depth_gain fewer layers on the slice."""
    reasons, facts = [], []
    new_nn, old_nn = candidate["dev"][SLICE]["quality"], champion["dev"][SLICE]["quality"]
    line = f"NN@10 vs the original on the held-out slice: {new_nn:.4f} vs the champion's {old_nn:.4f}"
    if not candidate["meets_floors"]:
        reasons.append(f"no policy of the candidate meets the floors (NN@10 >= {settings.min_agreement} on the slice, "
                       f"STS-B dev near its full depth); at full depth: {line.split(': ', 1)[1]}")
    else:
        facts.append(line + f" (floor {settings.min_agreement})")
    new, old = candidate["dev"]["stsb-dev"]["quality"], champion["dev"]["stsb-dev"]["quality"]
    line = f"STS-B dev Spearman: {new:.4f} vs the champion's {old:.4f}"
    worse = new < old - settings.quality_tolerance
    (reasons if worse else facts).append(line + (f" (more than {settings.quality_tolerance} below)" if worse else ""))
    new_depth, old_depth = candidate["dev"][SLICE]["mean_depth"], champion["dev"][SLICE]["mean_depth"]
    gain = 1 - new_depth / old_depth
    line = (f"mean depth on the slice: {new_depth:.2f} vs {old_depth:.2f} layers "
            f"({gain:+.1%} saved, {settings.min_depth_gain:.0%} needed)")
    (facts if gain >= settings.min_depth_gain else reasons).append(line)
    return {"win": not reasons, "reasons": reasons, "facts": facts, "depth_saving": gain}


def champion_folder(model_name: str, dst: str | Path, uri: str | None = None) -> tuple[Path, str] | None:
    """The registry's champion of `model_name`, downloaded to dst and its content checked; None when there is none.

    The encoder folder's sha256 recorded at registration (registry.ENCODER_SHA_TAG) must match what was downloaded.
    """
    # deferred: at top, importing this module would load mlflow, scipy, pandas
    import mlflow

    from leap_core.model_folder import model_fingerprint
    from leap_core.serve import registry

    mlflow_client = tracking.client(uri)
    try:
        version = mlflow_client.get_model_version_by_alias(model_name, registry.CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    mlflow.set_tracking_uri(uri or tracking.tracking_uri())
    mlflow.set_registry_uri(uri or tracking.tracking_uri())  # the models:/ URI resolves in the registry named here
    root = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}@{registry.CHAMPION}", dst_path=str(dst)))
    artifacts = mlflow.models.Model.load(str(root)).flavors["python_function"].get("artifacts", {})
    if "encoder" not in artifacts or not (root / artifacts["encoder"]["path"]).is_dir():
        raise ValueError(f"{model_name} version {version.version}: no encoder folder in the registered model "
                         "(register it with leap_core.serve.registry.register)")
    folder = root / artifacts["encoder"]["path"]
    expected = version.tags.get(registry.ENCODER_SHA_TAG)
    if expected and model_fingerprint(folder, scope="files") != expected:
        raise ValueError(f"{model_name} version {version.version}: the downloaded encoder does not match the sha256 "
                         f"recorded at registration ({expected[:12]}...)")
    return folder, str(version.version)


def describe(profile: Profile) -> dict[str, Any]:
    """The retrain settings as recorded in MLflow beside the decision."""
    return {"retrain": dataclasses.asdict(profile.retrain), "exit": dataclasses.asdict(profile.exit),
            "policy_max_sts_drop": profile.registry.policy_max_sts_drop}


def original_model(profile: Profile) -> str:
    """The model the champion descends from: retrain.model, else the first of retrofit_models."""
    original = profile.retrain.model or (profile.retrofit_models[0] if profile.retrofit_models else "")
    if not original:
        raise ValueError(f"profile {profile.name!r}: set retrain.model (the model the served champion was "
                         "retrofitted from)")
    return original


def gate(profile: Profile, original: str, champion: str | Path, candidate: str | Path,
         holdout_path: str | Path) -> dict[str, Any]:
    """Both models at the policy each would serve, chosen the same way on the same dev data, and the verdict.

    The candidate's policy is saved in its folder, with its monitoring reference (leap_reference.json: its depth
    profile on the held-out slice), so that what is promoted serves and is watched as it was judged.
    """
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.data.corpus import read_sentences_parquet
    from leap_core.model_folder import REFERENCE_FILE
    from leap_core.serve.encoder import EarlyExitEncoder
    from leap_core.serve.monitor import reference_profile

    texts = read_sentences_parquet(holdout_path)
    slice_set = agreement_set(texts, original_neighbours(profile, original, texts))
    result = {CHAMPION: measure(profile, champion, slice_set)}
    # The candidate's folder is written (policy, then reference): one writer from the measurement to the last file.
    with writer_lock(candidate, what="retrain gate"):
        result[CANDIDATE] = measure(profile, candidate, slice_set, save=True)
        reference = reference_profile(EarlyExitEncoder.from_pretrained(str(candidate)), texts, "retrain held-out slice")
        write_json_atomic(Path(candidate) / REFERENCE_FILE, reference)
        note_in_manifest(candidate, REFERENCE_FILE)
    result["decision"] = judge(result[CANDIDATE], result[CHAMPION], profile.retrain)
    return result


def write_summary(out_dir: str | Path, result: dict[str, Any]) -> Path:
    """out_dir/retrain.{json,md}, each written atomically; returns out_dir."""

    out = Path(out_dir)
    write_json_atomic(out / "retrain.json", result)
    write_text_atomic(out / "retrain.md", summary_markdown(result))
    return out
