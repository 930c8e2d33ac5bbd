"""Run identity (leap_core/identity.py, schema 1): committed runs keep resolving to the folders they were trained in."""

import json
from pathlib import Path

import pytest

from leap_core import identity
from leap_core.config import config_fingerprint, load_profile
from leap_core.io import sha256_strings

REPO = Path(__file__).resolve().parents[1]
TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"


def test_schema_1_is_the_formula_the_committed_runs_were_named_by():
    assert identity.SCHEMA == 1
    for name in ("cpu", "cpu_long", "paper", "smoke"):
        profile = load_profile(name)
        for arm in profile.arms:
            assert identity.student_run(profile, arm, "teacher-x.parquet") == sha256_strings(
                [config_fingerprint(profile.objective_for(arm)), str(profile.models), "teacher-x.parquet"])
    # Folder names as recorded before identity.py existed (pinned: a changed formula must be a new schema).
    from leap_core.retrofit.exit_branch import branch_dir
    from leap_core.retrofit.peer import peer_dir
    from leap_core.retrofit.retrofit import retrofit_dir

    smoke = load_profile("smoke", {"output_dir": "/runs"})
    slug = "random-bert_layers_4_hidden_64_heads_2_seed_1"
    assert retrofit_dir(smoke, TINY, 0).name == f"retrofit-{slug}-f00f016f-seed0"
    assert branch_dir(smoke, TINY, 0, "abc123").name == f"branch-{slug}-535e424f-seed0"
    assert peer_dir(smoke, TINY, "abc123", 0).name == f"peer-adaptive-layer-{slug}-49eb7519-seed0"


def test_the_readmes_retrofit_command_resolves_to_the_committed_run_folder(data_dir):
    """`leap retrofit sentence-transformers/all-MiniLM-L6-v2 --profile cpu_long` trains (or reuses) the folder
    reports/retrofit.json names: same recipe, same texts, same hash."""
    from leap_core.retrofit.exit_branch import branch_dir, generic_texts

    model = "sentence-transformers/all-MiniLM-L6-v2"
    recorded = json.loads((REPO / "reports" / "retrofit.json").read_text())[model]["model_dir"]
    profile = load_profile("cpu_long", {"data": {"data_dir": str(data_dir)}})
    folder = branch_dir(profile, model, 0, sha256_strings(generic_texts(profile)))
    assert f"runs/cpu_long/{folder.name}/model" == recorded


def test_the_model_fingerprint_is_the_weights_hash_reports_retrofit_json_records():
    """model_folder.model_fingerprint (scope "model") of the packaged all-MiniLM-L6-v2 is the original_fingerprint
    the committed retrofit report recorded: the cache keys and branch records made before still match."""
    from leap_core.model_folder import model_fingerprint
    from leap_core.models import resolve_model

    model = "sentence-transformers/all-MiniLM-L6-v2"
    recorded = json.loads((REPO / "reports" / "retrofit.json").read_text())[model]["original_fingerprint"]
    assert model_fingerprint(resolve_model(model)) == recorded


def test_one_fingerprint_two_documented_file_sets_and_serving_settings_never_hashed(tmp_path):
    import shutil

    from leap_core.io import MANIFEST_FILE, sha256_folder
    from leap_core.model_folder import (CARD_FILE, EXIT_SETTINGS_FILE, MODEL_SUFFIXES, REFERENCE_FILE,
                                        REMOTE_CODE_FILE, SERVING_SETTINGS, model_fingerprint)
    from leap_core.models import resolve_model
    from leap_core.pipeline.handoff import file_ref

    folder = tmp_path / "model"
    shutil.copytree(resolve_model(TINY), folder)
    model, files = model_fingerprint(folder), model_fingerprint(folder, scope="files")
    # The formulas the recorded values were made with (models.model_fingerprint, pipeline's folder digest).
    assert model == sha256_folder(folder, suffixes=MODEL_SUFFIXES, exclude=(EXIT_SETTINGS_FILE, REFERENCE_FILE))
    assert files == sha256_folder(folder, exclude=SERVING_SETTINGS) == file_ref(folder)["sha256"]
    assert set(SERVING_SETTINGS) == {EXIT_SETTINGS_FILE, REFERENCE_FILE, CARD_FILE, MANIFEST_FILE}
    for name in SERVING_SETTINGS:  # how it is served or described changes neither
        (folder / name).write_text("{}")
    assert (model_fingerprint(folder), model_fingerprint(folder, scope="files")) == (model, files)
    (folder / REMOTE_CODE_FILE).write_text("# shipped code\n")  # what travels and runs with it: "files" only
    assert model_fingerprint(folder) == model and model_fingerprint(folder, scope="files") != files
    (folder / "vocab.txt").write_text("changed")  # the tokenizer: both
    assert model_fingerprint(folder) != model
    with pytest.raises(ValueError, match="scope 'weights'"):
        model_fingerprint(folder, scope="weights")
