"""Early exit inside sentence-transformers (leap_core/serve/st_module.py): the same embeddings and exit layers as
EarlyExitEncoder, every standard encode argument, settings that travel with save, and folders saved before."""

import json
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.quantization import quantize_embeddings

from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.models import load_model, resolve_model
from leap_core.serve.st_module import MODULE_TYPE, LeapEarlyExit, load_sentence_transformer, save_exit_folder

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


def _capture_encodes(monkeypatch) -> dict[str, np.ndarray]:
    """Every text SentenceTransformer.encode is given, with the embedding it returned (MTEB calls encode)."""
    seen: dict[str, np.ndarray] = {}
    original = SentenceTransformer.encode

    def recording(self, sentences, *args, **kwargs):
        out = original(self, sentences, *args, **kwargs)
        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        rows = np.atleast_2d(out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out))
        seen.update(zip(texts, rows))
        return out

    monkeypatch.setattr(SentenceTransformer, "encode", recording)
    return seen


def _decision_margins(folder, texts) -> np.ndarray:
    """Per text, the smallest |cos(p_l, p_{l-k}) - theta| over the layers its exit test looks at: how far float
    noise must move a cosine to change the row's exit layer."""
    engine = EarlyExitEncoder.from_pretrained(folder)
    layers = engine.layer_embeddings(texts)  # (L, N, d), normalised
    _, exit_layers = engine.encode(texts, mode="compact", return_exit_layers=True)
    k, first = engine.k, max(engine.l_min, engine.k + 1)
    margins = np.full(len(texts), np.inf)
    for layer in range(first, engine.num_layers):
        cos = (layers[layer - 1] * layers[layer - 1 - k]).sum(-1)
        looked = exit_layers >= layer
        margins[looked] = np.minimum(margins[looked], np.abs(cos[looked] - engine.theta))
    return margins


def test_mteb_sts_scores_the_embeddings_it_was_given_with_the_exit_statistics_of_its_run(leap_folder, data_dir,
                                                                                         monkeypatch):
    from leap_core.data import read_sts
    from leap_core.evaluation.layers import exit_statistics
    from leap_core.evaluation.mteb_run import run_mteb
    from leap_core.evaluation.sts import spearman

    exit_layers = _capture_exit_layers(monkeypatch)
    seen = _capture_encodes(monkeypatch)
    result = run_mteb(leap_folder, ["STSBenchmark"], data_dir)
    monkeypatch.undo()
    task = result["tasks"]["STSBenchmark"]
    assert task["data"] == "local" and task["main_metric"] == "cosine_spearman"
    pairs = read_sts(data_dir / "stsb" / "test.tsv")
    # Identical embeddings, identical score: leap's Spearman on exactly what MTEB was handed is MTEB's score, up to
    # rank swaps of pairs whose cosines tie within float32 rounding (MTEB's cosines are float32, leap's float64):
    # one swap moves rho by about 12 / n^3 = 5e-9 at n = 1379 pairs, so 1e-7 allows a few, not a real difference.
    ours = spearman(np.stack([seen[t] for t in pairs.sentences1]), np.stack([seen[t] for t in pairs.sentences2]),
                    pairs.scores)
    assert task["main_score"] == pytest.approx(ours, abs=1e-7)
    # The exit statistics are those of that very run: the layers its batches logged.
    assert task["exit"] == {**exit_statistics(np.concatenate(exit_layers), 4), "n_texts": len(pairs.sentences1) * 2}
    assert 0 < task["exit"]["exit_rate"] < 1


def _capture_exit_layers(monkeypatch) -> list[np.ndarray]:
    """The exit layers of every batch LeapEarlyExit runs, in order."""
    batches: list[np.ndarray] = []
    original = LeapEarlyExit.forward

    def recording(self, features, *args, **kwargs):
        out = original(self, features, *args, **kwargs)
        batches.append(out["exit_layer"].cpu().numpy())
        return out

    monkeypatch.setattr(LeapEarlyExit, "forward", recording)
    return batches


def test_mteb_and_leap_eval_exit_each_text_alike_unless_float_noise_sits_on_theta(leap_folder, data_dir,
                                                                                  monkeypatch):
    """MTEB batches texts as sentence-transformers does, leap eval by token length: padding differs, so pools
    differ by float32 noise (cosines by ~1e-7). A row whose cosine sits within that noise of theta may then exit a
    layer apart; every other row must get the same exit and embedding. The margin 2e-6 is twenty times that noise
    (the tiny model's cosines all lie within 3e-4 of each other, so a wider margin would leave few rows to check)."""
    from leap_core.data import read_sts
    from leap_core.evaluation.mteb_run import run_mteb

    seen = _capture_encodes(monkeypatch)
    run_mteb(leap_folder, ["STSBenchmark"], data_dir)
    monkeypatch.undo()
    pairs = read_sts(data_dir / "stsb" / "test.tsv")
    texts = sorted(set(pairs.sentences1) | set(pairs.sentences2))
    ours = EarlyExitEncoder.from_pretrained(leap_folder).encode(texts, mode="compact")
    theirs = np.stack([seen[t] for t in texts])
    theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    decided = _decision_margins(leap_folder, texts) > 2e-6
    assert decided.mean() > 0.9  # the check below covers nearly every row
    np.testing.assert_allclose(theirs[decided], ours[decided], atol=1e-5)


def test_the_model_card_holds_the_runs_own_numbers_and_how_to_exit(leap_folder, data_dir, tmp_path):
    from leap_core.pipeline import experiment
    from leap_core.config import load_profile
    from leap_core.serve.model_card import recipe_facts, write_card

    profile = load_profile("smoke", {"data": {"data_dir": str(data_dir)}})
    folder = tmp_path / "leap-seed0" / "model"
    shutil.copytree(leap_folder, folder)
    metrics = experiment.evaluate(profile, folder)
    served = metrics["served"]  # the folder serves its rule: the exited numbers are the served ones
    card = write_card(folder, served, recipe_facts(profile, "leap", 0)).read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers") and "# leap-seed0" in card
    assert f"| teacher | {profile.models.teacher} |" in card
    assert f"| STS-B Spearman at the served policy ({served['policy']}) | {metrics['stsb_exited']:.3f} |" in card
    assert f"| exit rate (texts leaving before the last layer) | {metrics['exit_rate']:.1%} |" in card
    assert 'SentenceTransformer("leap-seed0", trust_remote_code=True)' in card and "exit_mode='full'" in card
    assert str(tmp_path) not in card
    assert SentenceTransformer(str(folder), trust_remote_code=True, device="cpu").encode(["a"]).shape == (1, 64)


def test_the_shipped_code_restates_leaps_default_rule_and_load_check_and_imports_one_way():
    """leap_early_exit.py must load with sentence-transformers alone, so it restates what it shares with leap (the
    default rule, the load-option check); the import goes one way (it imports st_module when leap is installed, no
    leap module imports it: st_module copies it by path)."""
    import ast
    from pathlib import Path

    import leap_core
    from leap_core.serve import leap_early_exit, st_module
    from leap_core.model_folder import exit_rule

    from leap_core.policy import ExitPolicy

    for saved in [{}, {"theta": 0.5}, {"k": 2, "l_min": 3}]:  # a key leap_exit.json lacks: the same default
        thresholds, depth = leap_early_exit.exit_vector(saved, 8, None)
        np.testing.assert_array_equal(thresholds, ExitPolicy("rule", **exit_rule(saved)).vector(8))
    assert leap_early_exit.EXIT_KWARGS == st_module.EXIT_KWARGS
    for args in [(None, None), ({"exit_mode": "full"}, "torch"), (None, None, "fixed:2"),
                 ({"exit_mode": "full"}, None, "fixed:2")]:
        assert leap_early_exit.check_load_options(*args) == st_module.check_load_options(*args)
    for args in [({"torch_dtype": "float16"}, None), (None, "onnx")]:
        with pytest.raises(ValueError) as theirs:
            leap_early_exit.check_load_options(*args)
        with pytest.raises(ValueError) as ours:
            st_module.check_load_options(*args)
        assert str(theirs.value) == str(ours.value)
    importers = []
    for file in Path(leap_core.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "leap_core.serve.leap_early_exit":
                importers.append(file.name)
    assert importers == []
    assert st_module.REMOTE_CODE.read_text() == Path(leap_early_exit.__file__).read_text()
