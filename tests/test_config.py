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


@pytest.mark.parametrize("section,field,value,says", [
    ("training", "lr", ".nan", "finite number"),
    ("training", "lr", ".inf", "finite number"),
    ("training", "lr", "0.0", "greater than 0"),
    ("training", "epochs", "-3", "greater than or equal to 1"),
    ("training", "warmup_ratio", "1.0", "less than 1"),
    ("objective", "tau", "2.0", "less than or equal to 1"),
    ("objective", "beta", "-0.1", "greater than or equal to 0"),
    ("objective", "late_layers", "[0, 2]", "greater than or equal to 1"),
    ("exit", "theta", "1.5", "less than or equal to 1"),
    ("models", "layer_init", "spiral", "'cyclic' or 'doubled'"),
    ("models", "max_length", "1", "greater than or equal to 2"),
    ("evaluation", "bench_batch_sizes", "[8, 0]", "greater than or equal to 1"),
    ("branch", "training", "{lr: .nan}", "finite number"),
    ("retrain", "min_agreement", "1.2", "less than or equal to 1"),
    ("training", "mixed_precision", "3", "expected bool"),
])
def test_a_number_outside_its_range_is_refused_naming_the_file_and_field(tmp_path, section, field, value, says):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{section}:\n  {field}: {value}\n")
    with pytest.raises(ConfigError, match=rf"bad.yaml: {section}\.{field}.*{says}"):
        load_profile(str(bad))


def test_overrides_and_reduced_budgets_are_range_checked_too():
    with pytest.raises(ConfigError, match=r"smoke.yaml: training.lr: input should be a finite number, got nan"):
        load_profile("smoke", {"training": {"lr": float("nan")}})
    with pytest.raises(ConfigError, match=r"reduced_budget.max_steps: input should be greater than or equal to 0"):
        load_profile("smoke", {"reduced_budget": {"max_steps": -1}})
    with pytest.raises(ConfigError, match=r"smoke.yaml: arms.leap.beta"):
        load_profile("smoke", {"arms": {"leap": {"beta": float("inf")}}})
