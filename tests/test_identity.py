"""Run identity (leap_core/identity.py, schema 1): committed runs keep resolving to the folders they were trained in."""

import json
from pathlib import Path

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
    from leap_core.exit_branch import branch_dir
    from leap_core.peer import peer_dir
    from leap_core.retrofit import retrofit_dir

    smoke = load_profile("smoke", {"output_dir": "/runs"})
    slug = "random-bert_layers_4_hidden_64_heads_2_seed_1"
    assert retrofit_dir(smoke, TINY, 0).name == f"retrofit-{slug}-f00f016f-seed0"
    assert branch_dir(smoke, TINY, 0, "abc123").name == f"branch-{slug}-535e424f-seed0"
    assert peer_dir(smoke, TINY, "abc123", 0).name == f"peer-adaptive-layer-{slug}-49eb7519-seed0"


def test_the_readmes_retrofit_command_resolves_to_the_committed_run_folder(data_dir):
    """`leap retrofit sentence-transformers/all-MiniLM-L6-v2 --profile cpu_long` trains (or reuses) the folder
    reports/retrofit.json names: same recipe, same texts, same hash."""
    from leap_core.exit_branch import branch_dir, generic_texts

    model = "sentence-transformers/all-MiniLM-L6-v2"
    recorded = json.loads((REPO / "reports" / "retrofit.json").read_text())[model]["model_dir"]
    profile = load_profile("cpu_long", {"data": {"data_dir": str(data_dir)}})
    folder = branch_dir(profile, model, 0, sha256_strings(generic_texts(profile)))
    assert f"runs/cpu_long/{folder.name}/model" == recorded
