"""A model folder's card tells the truth: the policy the folder serves, that policy's numbers, hub metadata, no
absolute path and no `pip install leap`; and `leap eval` scores the served policy first, saying which it is."""

import json
import logging
import re

import pytest
from huggingface_hub import ModelCard

from leap_core.pipeline import experiment
from leap_core.config import load_profile
from leap_core.evaluation.pareto import save_policy
from leap_core.serve.model_card import folder_card, recipe_facts, write_card
from leap_core.models import MINILM, load_model
from leap_core.policy import ExitPolicy
from leap_core.serve.st_module import load_sentence_transformer, save_exit_folder

TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"


@pytest.fixture()
def small_data(data_dir, tmp_path):
    """A data dir holding the first 80 STS-B test pairs: the card's numbers, not the score, are under test."""
    stsb = tmp_path / "data" / "stsb"
    stsb.mkdir(parents=True)
    (stsb / "test.tsv").write_text("".join((data_dir / "stsb" / "test.tsv").open().readlines()[:81]))
    return stsb.parent


@pytest.fixture()
def student(tmp_path):
    """A tiny student folder as the trainer writes it, then calibrated to fixed:2 (what the flow's promote does)."""
    model, tokenizer = load_model(TINY)
    folder = tmp_path / "runs" / "smoke" / "leap-seed0" / "model"
    save_exit_folder(model, tokenizer, folder, 64, {"theta": 0.95, "k": 1, "l_min": 2})
    return folder


def _absolute_paths(text: str, *roots) -> list[str]:
    return [str(root) for root in roots if str(root) in text] + re.findall(r"(?<![\w.])/(?:tmp|home|root|work)/\S+",
                                                                             text)


def test_the_card_states_the_served_policy_its_numbers_and_no_absolute_path(student, small_data, tmp_path):
    profile = load_profile("smoke", {"data": {"data_dir": str(small_data)}})
    metrics = experiment.evaluate(profile, student)  # measured at the rule, before calibration
    assert metrics["served"]["policy"] == "rule(theta=0.95,k=1,l_min=2)"
    save_policy(student, ExitPolicy("fixed", depth=2, theta=0.95, k=1, l_min=2))
    served = experiment.served_numbers(profile, student, metrics)  # read off the per-layer numbers: no second pass
    assert served["policy"] == "fixed:2" and served["stsb"] == pytest.approx(metrics["stsb_per_layer"][1])
    card = write_card(student, served, recipe_facts(profile, "leap", 0)).read_text()

    assert "It serves the policy **fixed:2**: every text stops at layer 2 of 4" in card
    assert f"| STS-B Spearman at the served policy (fixed:2) | {served['stsb']:.3f} |" in card
    assert "| mean exit layer | 2.00 of 4 |" in card and "| layer reduction | 2.00x |" in card
    assert not _absolute_paths(card, tmp_path, student)
    assert 'SentenceTransformer("leap-seed0", trust_remote_code=True)' in card
    assert card.count("pip install leap") == 1 and "`pip install leap` from PyPI is an unrelated project" in card
    # The hub reads the front matter: metadata and a model-index holding the served policy's result.
    data = ModelCard(card).data
    assert data.library_name == "sentence-transformers" and data.language == ["en"] and "leap" in data.tags
    assert data.datasets and "stanfordnlp/snli" in data.datasets
    result = data.eval_results[0]
    assert (result.dataset_type, result.metric_type) == ("mteb/stsbenchmark-sts", "spearman_cosine")
    assert result.metric_value == pytest.approx(served["stsb"], abs=1e-4) and "fixed:2" in result.metric_name
    # A random base model has no license or hub id: both are left out, each with its reason, not invented.
    assert data.license is None and "# license: left out:" in card and "# base_model: left out:" in card


def test_numbers_of_another_policy_are_refused(student, small_data):
    profile = load_profile("smoke", {"data": {"data_dir": str(small_data)}})
    at_rule = experiment.evaluate(profile, student)["served"]
    save_policy(student, ExitPolicy("fixed", depth=1, theta=0.95, k=1, l_min=2))
    with pytest.raises(ValueError, match=r"serves fixed:1, but the numbers given were measured at rule"):
        write_card(student, at_rule)


def test_the_license_and_base_model_come_from_the_base_models_own_card(student):
    card = folder_card(student, None, {"initialised from": MINILM, "corpus": "nli_sentences"})
    data = ModelCard(card).data
    assert data.license == "apache-2.0" and data.base_model == MINILM  # all-MiniLM-L6-v2's card says apache-2.0
    assert "Not measured in this folder yet" in card and "model-index" not in card


def test_every_saved_folder_carries_leaps_card_not_sentence_transformers(student, tmp_path):
    card = (student / "README.md").read_text()
    assert card.startswith("---\n") and "It serves the policy **rule(theta=0.95,k=1,l_min=2)**" in card
    assert "This is a [sentence-transformers](https://www.SBERT.net) model" not in card
    # save() of a loaded model keeps the card while it serves what the card states, and writes a fresh one after the
    # policy or exit mode changed: never the stale numbers.
    model = load_sentence_transformer(student, device="cpu")
    model.save(str(tmp_path / "same"))
    assert (tmp_path / "same" / "README.md").read_text() == card
    model[0].exit_mode = "fixed:3"
    model.save(str(tmp_path / "changed"))
    changed = (tmp_path / "changed" / "README.md").read_text()
    assert changed != card and "Not measured in this folder yet" in changed
    assert "This is a [sentence-transformers]" not in changed


def test_leap_eval_leads_with_the_served_policy_and_says_which(student, small_data, capsys, caplog):
    from leap_core.cli import main

    save_policy(student, ExitPolicy("fixed", depth=3, theta=0.95, k=1, l_min=2))
    with caplog.at_level(logging.INFO, logger="leap_core"):
        assert main(["eval", str(student), "--profile", "smoke", "--data-dir", str(small_data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["served"]["policy"] == "fixed:3" and metrics["served"]["source"] == "leap_exit.json policy"
    assert metrics["served"]["stsb"] == pytest.approx(metrics["stsb_per_layer"][2])
    # A long evaluation says what it is doing: each pass is logged as it starts and ends.
    assert any("through all 4 layers ..." in message for message in caplog.messages)
    assert any("exiting (compact mode): done in" in message for message in caplog.messages)
    assert main(["eval", str(student), "--profile", "smoke", "--data-dir", str(small_data)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{student} serves fixed:3 (leap_exit.json policy):")
    assert f"| STS-B Spearman at the served policy (fixed:3) | {metrics['served']['stsb']:.3f} |" in shown
