import pytest

from leap_core.config import ConfigError, load_profile


@pytest.mark.parametrize("name", ["smoke", "cpu", "cpu_long", "paper"])
def test_every_profile_loads_with_its_arms(name):
    profile = load_profile(name)
    assert profile.name == name
    assert {"baseline", "leap"} <= set(profile.arms)
    assert profile.objective_for("baseline").beta == 0.0
    assert profile.objective_for("leap").beta > 0.0


def test_paper_profile_has_the_papers_hyperparameters():
    training = load_profile("paper").training
    assert (training.epochs, training.batch_size, training.lr) == (10, 64, 5e-5)
    assert load_profile("paper").data.n_sentences == 1_500_000


def test_overrides_and_data_dir_environment(monkeypatch):
    profile = load_profile("smoke", {"training": {"lr": 0.5}})
    assert profile.training.lr == 0.5
    monkeypatch.setenv("LEAP_DATA_DIR", "/somewhere/else")
    assert load_profile("smoke").data.data_dir == "/somewhere/else"


def test_unknown_field_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"training: unknown field\(s\) \['learning_rate'\]"):
        load_profile(str(bad))


def test_wrong_type_and_bad_arm_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: many\n")
    with pytest.raises(ConfigError, match="training.epochs"):
        load_profile(str(bad))
    arm = tmp_path / "arm.yaml"
    arm.write_text("arms:\n  odd: {gamma: 1.0}\n")
    with pytest.raises(ConfigError, match="arms.odd"):
        load_profile(str(arm))


def test_missing_profile_is_named():
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_profile("nope")
