import json

import pytest
import torch
from safetensors.torch import load_file

from leap_core import experiment
from leap_core.config import load_profile


@pytest.fixture()
def smoke(tmp_path, data_dir):
    profile = load_profile("smoke", {"output_dir": str(tmp_path / "runs"), "data": {"data_dir": str(data_dir)}})
    sentences = experiment.extract(profile)
    cache = experiment.cache_teacher(profile, sentences, show_progress=False)
    return profile, cache


class Killed(Exception):
    pass


def _weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def test_killed_run_resumes_to_the_same_weights(smoke, tmp_path):
    profile, cache = smoke
    steps = experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "straight").steps
    assert steps == 6 and profile.training.checkpoint_every == 2

    def kill_at_step_5(step, terms):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "killed", on_step=kill_at_step_5)
    assert (tmp_path / "killed" / "checkpoint.pt").is_file()
    assert not (tmp_path / "killed" / "model").exists()
    experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "killed")

    straight, resumed = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "killed" / "model")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    log = [json.loads(line) for line in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5, 6]  # steps after the checkpoint not doubled


def test_training_moves_the_weights_and_logs_every_term(smoke, tmp_path):
    profile, cache = smoke
    result = experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "a")
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert {"final", "inter", "exit_teacher", "exit_self", "contrast", "late", "redund", "total"} <= set(log[-1])
    baseline = experiment.train_arm(profile, "baseline", 0, cache, out_dir=tmp_path / "b")
    assert "exit_teacher" not in json.loads((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()[-1])
    a, b = _weights(result.model_dir), _weights(baseline.model_dir)
    assert any(not torch.equal(a[name], b[name]) for name in a)
    assert json.loads((result.model_dir / "leap_exit.json").read_text()) == {"theta": 0.95, "k": 1, "l_min": 2}


def test_frozen_layers_keep_their_weights_and_the_rest_learn(smoke, tmp_path):
    import dataclasses

    from leap_core.config import TrainConfig, training_fingerprint
    from leap_core.models import build_student

    profile, cache = smoke
    frozen = dataclasses.replace(profile, training=dataclasses.replace(profile.training, frozen_layers=2))
    result = experiment.train_arm(frozen, "leap", 0, cache, out_dir=tmp_path / "frozen")
    student, _ = build_student(profile.models.student_init, profile.models.student_layers, profile.models.layer_init)
    before, after = student.state_dict(), _weights(result.model_dir)
    kept = [name for name in before if name.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))]
    trained = [name for name in before if name.startswith("encoder.layer.2.")]
    assert kept and trained
    assert all(torch.equal(before[name], after[name]) for name in kept)
    assert any(not torch.equal(before[name], after[name]) for name in trained)
    # a training field added later stays out of the fingerprint at its neutral value (old runs resume)
    assert "frozen_layers" not in training_fingerprint(TrainConfig())
    assert "frozen_layers=2" in training_fingerprint(frozen.training)
    with pytest.raises(ValueError, match="frozen_layers must be in 0..4"):
        experiment.train_arm(dataclasses.replace(profile, training=dataclasses.replace(profile.training,
                                                                                         frozen_layers=9)),
                             "leap", 0, cache, out_dir=tmp_path / "bad")


def test_seeds_differ_and_repeat(smoke, tmp_path):
    profile, cache = smoke
    one = _weights(experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "s0").model_dir)
    again = _weights(experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "s0b").model_dir)
    other = _weights(experiment.train_arm(profile, "leap", 1, cache, out_dir=tmp_path / "s1").model_dir)
    assert all(torch.equal(one[name], again[name]) for name in one)
    assert any(not torch.equal(one[name], other[name]) for name in one)


def test_finished_run_is_not_retrained(smoke, tmp_path):
    profile, cache = smoke
    experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "done")
    again = experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "done",
                                 on_step=lambda step, terms: pytest.fail("retrained a finished run"))
    assert again.steps == 6


def test_checkpoint_of_another_configuration_is_refused(smoke, tmp_path):
    profile, cache = smoke

    def kill(step, terms):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "x", on_step=kill)
    with pytest.raises(RuntimeError, match="another configuration"):
        experiment.train_arm(profile, "baseline", 0, cache, out_dir=tmp_path / "x")


def test_finished_run_of_another_configuration_is_refused(smoke, tmp_path):
    profile, cache = smoke
    experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "done")
    with pytest.raises(RuntimeError, match="another configuration"):
        experiment.train_arm(profile, "baseline", 0, cache, out_dir=tmp_path / "done")
