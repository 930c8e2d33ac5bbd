"""Early exit inside sentence-transformers (leap_core/st_module.py): the same embeddings and exit layers as
EarlyExitEncoder, every standard encode argument, settings that travel with save, and folders saved before."""

import json
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.quantization import quantize_embeddings

from leap_core.encoder import EarlyExitEncoder
from leap_core.models import load_model, resolve_model
from leap_core.st_module import MODULE_TYPE, LeapEarlyExit, load_sentence_transformer, save_exit_folder

TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"
TEXTS = ["a man is playing a guitar on stage", "the cat sat on the mat", "stocks fell sharply on monday",
         "x", "a woman slices an onion in a small kitchen while the radio plays", "two dogs run in the snow",
         "the committee will meet again next week to discuss the budget", "hello"] * 3


def _median_theta(folder) -> float:
    """A theta that half the rows pass at layer 2 (cos(p_2, p_1)): the exit layers then differ between rows."""
    layers = EarlyExitEncoder.from_pretrained(folder, l_min=2).layer_embeddings(TEXTS)
    return float(np.median((layers[1] * layers[0]).sum(-1)))


@pytest.fixture(scope="module")
def leap_folder(tmp_path_factory):
    """A folder as the trainer writes it: LeapEarlyExit + Normalize, leap_exit.json, prompts."""
    model, tokenizer = load_model(TINY)
    folder = tmp_path_factory.mktemp("st") / "student"
    save_exit_folder(model, tokenizer, folder, 64, {"theta": 0.9, "k": 1, "l_min": 2})
    save_exit_folder(model, tokenizer, folder, 64, {"theta": _median_theta(folder), "k": 1, "l_min": 2})
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": "query: ", "document": ""}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


def test_sentence_transformer_encodes_like_the_encoder_compact_with_the_same_exit_layers(leap_folder):
    assert json.loads((leap_folder / "modules.json").read_text())[0]["type"] == MODULE_TYPE
    engine = EarlyExitEncoder.from_pretrained(leap_folder)
    expected, expected_layers = engine.encode(TEXTS, mode="compact", return_exit_layers=True)
    assert 1 < len(set(expected_layers.tolist()))  # rows leave at different layers
    model = SentenceTransformer(str(leap_folder), trust_remote_code=True, device="cpu")
    assert isinstance(model[0], LeapEarlyExit)
    np.testing.assert_allclose(model.encode(TEXTS), expected, atol=1e-6)
    rows = model.encode(TEXTS, output_value=None)
    assert [int(row["exit_layer"]) for row in rows] == expected_layers.tolist()
    # Without the flag sentence-transformers >= 6 refuses any class outside its own package, saying so.
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(leap_folder), device="cpu")


def test_the_exit_mode_switches_per_call_and_per_model(leap_folder):
    engine = EarlyExitEncoder.from_pretrained(leap_folder)
    model = load_sentence_transformer(leap_folder, device="cpu")
    np.testing.assert_allclose(model.encode(TEXTS, exit_mode="full"), engine.encode(TEXTS, mode="full"), atol=1e-6)
    model[0].exit_mode = "fixed:2"
    np.testing.assert_allclose(model.encode(TEXTS), engine.encode(TEXTS, mode="fixed:2"), atol=1e-6)
    assert not np.allclose(model.encode(TEXTS), model.encode(TEXTS, exit_mode="full"), atol=1e-3)
    with pytest.raises(ValueError, match="unknown mode"):
        load_sentence_transformer(leap_folder, exit_mode="sometimes")


def test_every_standard_encode_argument_works_with_early_exit(leap_folder):
    engine = EarlyExitEncoder.from_pretrained(leap_folder)
    model = load_sentence_transformer(leap_folder, device="cpu")
    exited = engine.encode(TEXTS, mode="compact")
    prompted = engine.encode(["query: " + text for text in TEXTS], mode="compact")
    np.testing.assert_allclose(model.encode(TEXTS, prompt_name="query"), prompted, atol=1e-6)
    np.testing.assert_allclose(model.encode_query(TEXTS), prompted, atol=1e-6)
    np.testing.assert_allclose(model.encode_document(TEXTS), exited, atol=1e-6)
    as_int8 = model.encode(TEXTS, precision="int8")
    assert as_int8.dtype == np.int8
    np.testing.assert_array_equal(as_int8, quantize_embeddings(model.encode(TEXTS), precision="int8"))
    np.testing.assert_allclose(model.encode(TEXTS, truncate_dim=16), model.encode(TEXTS)[:, :16], atol=1e-6)
    tensor = model.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (len(TEXTS), 64)
    assert model.similarity(tensor[:2], tensor[:2]).shape == (2, 2)


def test_save_and_load_keep_the_settings_and_policy(leap_folder, tmp_path):
    model = load_sentence_transformer(leap_folder, device="cpu", policy="fixed:3")
    model.save(str(tmp_path / "copy"))
    saved = json.loads((tmp_path / "copy" / "leap_exit.json").read_text())
    original = json.loads((leap_folder / "leap_exit.json").read_text())
    assert saved == {**original, "policy": {"kind": "fixed", "depth": 3}}
    again = SentenceTransformer(str(tmp_path / "copy"), trust_remote_code=True, device="cpu")
    assert again[0].engine.policy == model[0].engine.policy and again[0].engine.rule == model[0].engine.rule
    assert again.prompts == model.prompts and again.max_seq_length == 64
    np.testing.assert_allclose(again.encode(TEXTS), model.encode(TEXTS), atol=1e-6)


def test_a_folder_saved_before_loads_with_early_exit(leap_folder, tmp_path):
    """Transformer + Pooling + Normalize with leap_exit.json beside: what the trainer wrote until now."""
    old = tmp_path / "old"
    shutil.copytree(resolve_model(TINY), old)
    shutil.copy(leap_folder / "leap_exit.json", old / "leap_exit.json")
    model = load_sentence_transformer(old, device="cpu")
    assert isinstance(model[0], LeapEarlyExit) and type(model[1]).__name__ == "Normalize"
    engine = EarlyExitEncoder.from_pretrained(old)
    np.testing.assert_allclose(model.encode(TEXTS), engine.encode(TEXTS, mode="compact"), atol=1e-6)
    plain = SentenceTransformer(str(old), device="cpu")  # as it was: full depth
    np.testing.assert_allclose(plain.encode(TEXTS, normalize_embeddings=True), engine.encode(TEXTS, mode="full"),
                               atol=1e-5)


def test_mteb_sts_on_local_data_scores_as_leap_eval_with_the_exit_statistics_of_its_run(leap_folder, data_dir):
    from leap_core import experiment
    from leap_core.config import load_profile
    from leap_core.data import read_sts
    from leap_core.evaluation.layers import exit_statistics
    from leap_core.evaluation.mteb_run import run_mteb

    result = run_mteb(leap_folder, ["STSBenchmark"], data_dir)
    task = result["tasks"]["STSBenchmark"]
    ours = experiment.evaluate(load_profile("smoke", {"data": {"data_dir": str(data_dir)}}), leap_folder)
    assert task["data"] == "local" and task["main_metric"] == "cosine_spearman"
    assert task["main_score"] == pytest.approx(ours["stsb_exited"], abs=1e-6)
    pairs = read_sts(data_dir / "stsb" / "test.tsv")
    texts = list(pairs.sentences1) + list(pairs.sentences2)  # what MTEB encodes, duplicates included
    _, layers = EarlyExitEncoder.from_pretrained(leap_folder).encode(texts, mode="compact", return_exit_layers=True)
    assert task["exit"] == {**exit_statistics(layers, 4), "n_texts": len(texts)}
    assert 0 < task["exit"]["exit_rate"] < 1


def test_the_model_card_holds_the_runs_own_numbers_and_how_to_exit(leap_folder, data_dir, tmp_path):
    from leap_core import experiment
    from leap_core.config import load_profile
    from leap_core.model_card import recipe_facts, write_card

    profile = load_profile("smoke", {"data": {"data_dir": str(data_dir)}})
    folder = tmp_path / "leap-seed0" / "model"
    shutil.copytree(leap_folder, folder)
    metrics = experiment.evaluate(profile, folder)
    card = write_card(folder, metrics, recipe_facts(profile, "leap", 0)).read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers") and "# leap-seed0" in card
    assert f"base_model: {profile.models.student_init}" in card and f"| teacher | {profile.models.teacher} |" in card
    assert f"| STS-B Spearman, exited (served) | {metrics['stsb_exited']:.3f} |" in card
    assert f"| exit rate (rows leaving before the last layer) | {metrics['exit_rate']:.1%} |" in card
    assert f"SentenceTransformer({str(folder)!r}, trust_remote_code=True)" in card and "exit_mode='full'" in card
    assert SentenceTransformer(str(folder), trust_remote_code=True, device="cpu").encode(["a"]).shape == (1, 64)
