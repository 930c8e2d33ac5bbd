import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leap_core.pipeline import experiment
from leap_core.config import load_profile
from leap_core.models import resolve_model
from leap_core.config import merge_values
from leap_core.retrofit.retrofit import (RETROFIT_ARM, retrofit, retrofit_dir, retrofit_profile, retrofit_sentences,
                                theta_for_quality_budget)

MODEL = "random-bert:layers=4,hidden=64,heads=2,seed=1"


@pytest.fixture()
def base(tmp_path, data_dir):
    return load_profile("smoke", {"output_dir": str(tmp_path / "runs"), "data": {"data_dir": str(data_dir)}})


def test_retrofit_profile_uses_the_model_as_teacher_and_student(base):
    profile = retrofit_profile(base, MODEL)
    assert profile.models.teacher == profile.models.student_init == MODEL
    assert profile.models.student_layers == 4 and profile.exit.l_min == 2
    objective = profile.objective_for(RETROFIT_ARM)
    assert objective.alpha == 0.0  # no L_inter: it would pin every layer
    # the exit layers l_min..L-1 are pulled onto the final and given its similarity structure
    assert objective.exit_weight_from == 2
    assert objective.late_layers == [2, 3] and objective.contrast_layers == [2, 3, 4]


def test_retrofit_adjacent_term_defaults_to_the_pairs_among_the_exit_layers(base):
    from leap_core.config import Profile, build_config

    assert retrofit_profile(base, MODEL).objective_for(RETROFIT_ARM).adjacent_layers is None  # off: nothing set
    deep = "random-bert:layers=6,hidden=64,heads=2,seed=1"

    def with_arm(**arm):
        return build_config(Profile, merge_values(base.to_dict(), {"retrofit": {"arms": {RETROFIT_ARM: arm}}}), "t")

    # l_min = 3 of 6: pairs (3, 4) and (4, 5), written as the upper layer of each pair
    assert retrofit_profile(with_arm(adjacent=8.0), deep).objective_for(RETROFIT_ARM).adjacent_layers == [4, 5]
    assert retrofit_profile(with_arm(adjacent=8.0), MODEL).objective_for(RETROFIT_ARM).adjacent_layers == [3]
    chosen = retrofit_profile(with_arm(adjacent=8.0, adjacent_layers=[3, 4, 5]), deep)
    assert chosen.objective_for(RETROFIT_ARM).adjacent_layers == [3, 4, 5]  # an explicit choice wins


def test_retrofit_dir_changes_with_the_recipe(base):
    from leap_core.config import Profile, build_config

    stronger = build_config(Profile, merge_values(base.to_dict(), {"retrofit": {"arms": {RETROFIT_ARM: {"beta": 9.0}}}}), "t")
    assert retrofit_dir(base, MODEL, 0) == retrofit_dir(base, MODEL, 0)
    assert retrofit_dir(base, MODEL, 0) != retrofit_dir(stronger, MODEL, 0)
    assert retrofit_dir(base, MODEL, 0) != retrofit_dir(base, MODEL, 1)
    balanced = build_config(Profile, merge_values(base.to_dict(), {"retrofit": {"data": {"balance_by": "tags.txt"}}}), "t")
    assert retrofit_dir(base, MODEL, 0) != retrofit_dir(balanced, MODEL, 0)  # another sample trains afresh


def test_retrofit_draws_its_own_sample_only_when_it_changes_the_data(base):
    from leap_core.config import Profile, build_config
    from leap_core.data import read_sentences_parquet

    shared = experiment.extract(base)
    assert retrofit_sentences(base, retrofit_profile(base, MODEL), shared) == shared
    tags = "nli_sentences/sentence_sources.txt.gz"
    balanced = build_config(Profile, merge_values(base.to_dict(), {"retrofit": {"data": {"balance_by": tags}}}), "t")
    own = retrofit_sentences(balanced, retrofit_profile(balanced, MODEL), shared)
    assert own != shared and own.parent == shared.parent
    assert len(read_sentences_parquet(own)) == base.data.n_sentences
    assert read_sentences_parquet(own) != read_sentences_parquet(shared)


def test_student_starts_identical_and_final_term_is_zero_at_step_0(base, tmp_path):
    profile = retrofit_profile(base, MODEL)
    cache = experiment.cache_teacher(profile, experiment.extract(base), show_progress=False)
    first = {}

    def record(step, terms):
        if step == 1:
            first.update(terms)

    from leap_core.models import build_student

    student, _ = build_student(MODEL, 4)
    original = load_file(str(resolve_model(MODEL) / "model.safetensors"))
    for name, value in student.state_dict().items():
        assert torch.equal(value, original[name]), name
    experiment.train_arm(profile, RETROFIT_ARM, 0, cache, out_dir=tmp_path / "r", on_step=record)
    assert first["final"] < 1e-4  # the loss of the first batch, before any update
    assert first["exit_teacher"] > 0.1  # while intermediate layers are still far from the final one


def test_smoke_retrofit_runs_end_to_end(base, monkeypatch):
    from collections import Counter

    from leap_core.serve.encoder import EarlyExitEncoder

    loads, real = Counter(), EarlyExitEncoder.from_pretrained.__func__

    def counted(cls, path, **kwargs):
        loads[Path(path).resolve()] += 1
        return real(cls, path, **kwargs)

    monkeypatch.setattr(EarlyExitEncoder, "from_pretrained", classmethod(counted))
    summary = retrofit(base, MODEL)
    # each model once for the STS evaluation (at its folder's own rule) and once for every judge after it; the
    # retrofit also once as its card is written (was 3 and 5 loads when each judge loaded its own)
    assert loads == {resolve_model(MODEL).resolve(): 2, Path(summary["model_dir"]).resolve(): 3}, loads
    for key in ("original_stsb", "stsb_full", "stsb_exited", "exit_rate", "mean_exit_layer", "layer_reduction",
                "train_seconds"):
        assert isinstance(summary[key], float), key
    low, high = summary["vs_truncated_original"]["ci_low"], summary["vs_truncated_original"]["ci_high"]
    assert low <= summary["vs_truncated_original"]["difference"] <= high
    saved = json.loads((resolve_model(summary["model_dir"]) / "leap_exit.json").read_text())
    assert saved["l_min"] == 2
    assert len(summary["common_component"]) == len(summary["original_common_component"]) == 4
    assert summary["at_quality_budget"]["max_drop"] == 0.01
    assert summary["train_sentences"] == base.data.n_sentences and summary["balance_by"] is None
    assert list(summary["exit_by_genre"]) == ["main-captions", "main-forums", "main-news"]  # as in the file
    assert all(0.0 <= g["exit_rate"] <= 1.0 and g["sentences"] > 0 for g in summary["exit_by_genre"].values())


def test_theta_for_quality_budget_counts_the_budget_from_the_original(base):
    """With the original as its own "retrofit" the budget is the plain drop; chosen on dev, measured on test."""
    from leap_core.evaluation.calibrate import THETAS

    profile = retrofit_profile(base, MODEL)
    itself = experiment.load_encoder(profile, MODEL)
    loose = theta_for_quality_budget(profile, itself, itself, max_drop=5.0)
    assert loose["theta"] in THETAS and loose["chosen_on"] == "stsb/dev.tsv" and loose["measured_on"] == "stsb/test.tsv"
    assert 0.0 <= loose["exit_rate"] <= 1.0 and loose["layer_reduction"] >= 1.0
    assert loose["layer_reduction"] == pytest.approx(4 / loose["mean_exit_layer"])
    assert -1.0 <= loose["stsb_exited"] <= 1.0
    impossible = theta_for_quality_budget(profile, itself, itself, max_drop=-2.0)
    assert impossible["theta"] is None and "stsb_exited" not in impossible
