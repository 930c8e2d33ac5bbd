"""What names a run: the hash of everything that decides what it learns, and nothing that does not.

Every run folder and checkpoint fingerprint is built here: run_identity names a distilled student's run whole;
the recipe functions name retrofit, exit-branch and peer folders; training_run adds what any trainer run adds.
model_slug is the model's part of those folder names; cache_dir and data_path say where a profile keeps its caches
and reads its data (the same paths as experiment's: stages below experiment resolve them here).
SCHEMA 1 is the formula the committed runs were recorded under, so they keep resolving to their folders; a change
of formula is a new schema version (and new folders), never an edit of version 1. Configs enter through config_fingerprint, which leaves fields added later
out while they hold their neutral value (config._LATER_FIELDS_NEUTRAL).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from leap_core.config import config_fingerprint, config_settings
from leap_core.io import sha256_strings

SCHEMA = 1


def _key(parts: list[str]) -> str:
    return sha256_strings(parts if SCHEMA == 1 else [f"leap-run-identity-v{SCHEMA}", *parts])


# Trainer settings that do not change what is learned: a run may resume with other ones.
_TRAINING_NEUTRAL = ("checkpoint_every", "log_every", "num_threads", "device")


def model_slug(model: str) -> str:
    """A model's name as one safe path part (its folder's or hub id's last part): the model in run folder names."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name)


def cache_dir(profile: Any) -> Path:
    """<output_dir>/cache: the caches every profile, arm, seed and run of this output folder share."""
    return Path(profile.output_dir) / "cache"


def data_path(profile: Any, relative: str) -> Path:
    """A data file or folder of the profile: as given when absolute, else under its data.data_dir."""
    path = Path(relative)
    return path if path.is_absolute() else Path(profile.data.data_dir) / path


def run_identity(profile: Any, arm: str, seed: int, cache: Any) -> str:
    """A distilled student run's full fingerprint (its checkpoints carry it): student_run + training_run."""
    return training_run(student_run(profile, arm, cache.path.name), profile.training_for(arm), seed,
                        len(cache.sentences))


def training_run(recipe_key: str, training: Any, seed: int, n_sentences: int) -> str:
    """What every trainer run adds to its recipe's key: the training settings that change what is learned, the
    seed and the sentence count. A checkpoint is only resumed by the run whose fingerprint it carries."""
    semantic = {k: v for k, v in config_settings(training).items() if k not in _TRAINING_NEUTRAL}
    return _key([recipe_key, json.dumps(semantic, sort_keys=True), str(seed), str(n_sentences)])


def student_run(profile: Any, arm: str, cache_name: str) -> str:
    """A distilled student's run: its arm's objective, the models and the teacher cache it reads (the trainer adds
    the training settings, seed and sentence count: training.LeapTrainer.fingerprint)."""
    return _key([config_fingerprint(profile.objective_for(arm)), config_fingerprint(profile.models), cache_name])


def branch_run(branch: Any, layers: list[int], original_fingerprint: str, cache_name: str) -> str:
    """An exit branch's training run (its heads and exits, against which original, from which teacher cache); the
    trainer adds training_run's part."""
    return _key(["branch+heads", str(layers), str(branch.contrast), str(branch.temperature), original_fingerprint,
                 cache_name])


def retrofit_recipe(profile: Any, arm: str, sample_key: str) -> str:
    """A retrofit's recipe (8 hex digits in its folder name): objective, training and which sentences."""
    return _key([config_fingerprint(profile.objective_for(arm)), config_fingerprint(profile.training_for(arm)),
                 sample_key])[:8]


def branch_recipe(branch: Any, texts_key: str) -> str:
    """An exit branch's recipe (8 hex digits): its settings, its training and the texts it trains on."""
    settings = json.dumps({k: v for k, v in dataclasses.asdict(branch).items() if k != "training"}, sort_keys=True)
    return _key([settings, config_fingerprint(branch.training), texts_key])[:8]


def peer_recipe(branch: Any, texts_key: str) -> str:
    """The sentence-transformers AdaptiveLayerLoss peer's recipe (8 hex digits), on the branch's texts and budget."""
    return _key([config_fingerprint(branch.training), str(branch.max_length), texts_key])[:8]
