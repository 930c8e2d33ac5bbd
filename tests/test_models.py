import numpy as np
import pytest
import torch

from leap_core.models import (ModelNotFoundError, build_student, layer_init_map, resolve_model,
                              save_sentence_transformer)
from leap_core.pooling import mean_pool

TINY = "random-bert:layers=3,hidden=32,heads=2,seed=7"


def test_layer_init_layouts():
    assert layer_init_map(6, 12, "cyclic") == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]
    assert layer_init_map(6, 12, "doubled") == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    with pytest.raises(ValueError, match="unknown layer_init"):
        layer_init_map(6, 12, "spiral")


def test_random_spec_is_deterministic_and_cached():
    first = resolve_model(TINY)
    assert resolve_model(TINY) == first
    with pytest.raises(ValueError, match="bad random model spec"):
        resolve_model("random-bert:layers=two")


def test_student_copies_embeddings_and_layers_cyclically():
    source_folder = resolve_model(TINY)
    from transformers import AutoModel

    source = AutoModel.from_pretrained(source_folder)
    student, _ = build_student(TINY, 6, "cyclic")
    assert student.config.num_hidden_layers == 6
    for target, origin in enumerate([0, 1, 2, 0, 1, 2]):
        for (name, a), (_, b) in zip(student.encoder.layer[target].state_dict().items(),
                                     source.encoder.layer[origin].state_dict().items()):
            assert torch.equal(a, b), name
    assert torch.equal(student.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight)


def test_saved_student_loads_in_sentence_transformers_at_full_depth(tmp_path):
    from sentence_transformers import SentenceTransformer

    student, tokenizer = build_student(TINY, 5, "cyclic")
    student.eval()
    folder = save_sentence_transformer(student, tokenizer, tmp_path / "student", max_seq_length=32)
    sentences = ["A man is playing a guitar.", "Two dogs run through the snow in the park."]
    ours = []
    with torch.no_grad():
        for sentence in sentences:
            batch = tokenizer([sentence], return_tensors="pt")
            pooled = mean_pool(student(**batch).last_hidden_state, batch["attention_mask"])
            ours.append(torch.nn.functional.normalize(pooled, dim=-1)[0].numpy())
    theirs = SentenceTransformer(str(folder), device="cpu").encode(sentences)
    np.testing.assert_allclose(np.stack(ours), theirs, atol=1e-5)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))


def test_unknown_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="no-such/model"):
        resolve_model("no-such/model")


def test_packaged_minilm_resolves_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert (folder / "config.json").is_file()


def test_a_corrupt_or_pickled_only_model_is_named_with_the_way_out(tmp_path):
    import shutil

    from leap_core.serve.encoder import EarlyExitEncoder

    folder = tmp_path / "model"
    shutil.copytree(resolve_model("random-bert:layers=2,hidden=32,heads=2,seed=0"), folder)
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=f"{folder}: its weights do not load .*delete the folder"):
        EarlyExitEncoder.from_pretrained(folder)
    weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="no .safetensors weights .*never loads pickled .bin"):
        EarlyExitEncoder.from_pretrained(folder)


@pytest.mark.parametrize("layers_in_config,kind", [(4, "missing"), (1, "unexpected")])
def test_weights_that_do_not_match_config_json_are_refused_naming_the_keys(tmp_path, layers_in_config, kind):
    """transformers would fill missing layers with random weights (different on every load) and only warn."""
    import json
    import shutil

    from leap_core.models import load_weights

    folder = tmp_path / "model"
    shutil.copytree(resolve_model("random-bert:layers=2,hidden=32,heads=2,seed=0"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = layers_in_config
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{folder}: its weights do not match config.json: {kind} \['encoder.layer"):
        load_weights(folder)


# ---------------------------------------------------------------- leap_core.model_folder: the folder's files


def test_the_default_exit_rule_is_exit_configs_and_what_the_folder_saves_wins(tmp_path):
    import dataclasses

    from leap_core.config import ExitConfig
    from leap_core.model_folder import exit_policy, exit_rule, read_exit_settings, saved_policy, write_exit_settings
    from leap_core.policy import ExitPolicy

    assert exit_rule() == dataclasses.asdict(ExitConfig()) == {"theta": 0.95, "k": 1, "l_min": 6}
    assert exit_rule({"theta": 0.9, "policy": {"kind": "full"}}) == {"theta": 0.9, "k": 1, "l_min": 6}
    assert exit_rule({"k": 2}, fallback={"k": 3, "l_min": 2}) == {"theta": 0.95, "k": 2, "l_min": 2}
    assert read_exit_settings(tmp_path) == {} and saved_policy(tmp_path) is None  # no leap_exit.json
    write_exit_settings(tmp_path, ExitPolicy("fixed", depth=2, theta=0.8, k=1, l_min=2), {"by": "test"})
    saved = read_exit_settings(tmp_path)
    assert saved == {"theta": 0.8, "k": 1, "l_min": 2, "policy": {"kind": "fixed", "depth": 2},
                     "calibration": {"by": "test"}}
    assert saved_policy(tmp_path) == exit_policy(saved) == ExitPolicy("fixed", depth=2, theta=0.8, k=1, l_min=2)
    assert exit_policy({"theta": 0.5}) == ExitPolicy("rule", theta=0.5, k=1, l_min=6)


def test_max_seq_length_reads_either_sentence_transformers_layout(tmp_path):
    import json

    from leap_core.model_folder import ST_CONFIG_FILE, TOKENIZER_CONFIG_FILE, max_seq_length

    assert max_seq_length(tmp_path) is None
    (tmp_path / TOKENIZER_CONFIG_FILE).write_text(json.dumps({"model_max_length": int(1e30)}))  # "no limit"
    assert max_seq_length(tmp_path) is None
    (tmp_path / TOKENIZER_CONFIG_FILE).write_text(json.dumps({"model_max_length": 384}))
    assert max_seq_length(tmp_path) == 384
    (tmp_path / ST_CONFIG_FILE).write_text(json.dumps({"max_seq_length": 128}))  # sentence-transformers < 6 wins
    assert max_seq_length(tmp_path) == 128
    (tmp_path / ST_CONFIG_FILE).write_text(json.dumps({"max_seq_length": 0}))
    with pytest.raises(ValueError, match=f"{ST_CONFIG_FILE}: max_seq_length must be a positive integer"):
        max_seq_length(tmp_path)
    (tmp_path / ST_CONFIG_FILE).write_text("{")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        max_seq_length(tmp_path)


def test_the_models_shape_and_modules_come_from_its_folder(tmp_path):
    from leap_core.model_folder import (folder_positions, has_branch, is_mean_pooling, layer_count, read_branch,
                                        read_modules, read_pooling)
    from leap_core.serve.st_module import save_exit_folder

    folder = resolve_model(TINY)
    assert layer_count(folder) == 3 and folder_positions(folder) == 512
    assert [entry["type"].rsplit(".", 1)[-1] for entry in read_modules(folder)] == ["Transformer", "Pooling",
                                                                                     "Normalize"]
    assert is_mean_pooling(read_pooling(folder)) and not is_mean_pooling({"pooling_mode": "cls"})
    assert read_modules(tmp_path) is None and read_pooling(tmp_path) is None
    assert not has_branch(folder)
    with pytest.raises(ValueError, match="not an exit branch"):
        read_branch(folder)
    student, tokenizer = build_student(TINY, 3)
    exits = save_exit_folder(student, tokenizer, tmp_path / "exits", 32, {"theta": 0.9, "k": 1, "l_min": 2})
    assert read_modules(exits)[0]["type"] == "leap_early_exit.LeapEarlyExit" and layer_count(exits) == 3


def test_only_model_folder_names_a_model_folders_files():
    """The file names are defined once (model_folder); the shipped leap_early_exit.py restates its own."""
    import ast
    from pathlib import Path

    import leap_core
    from leap_core import model_folder

    names = {model_folder.EXIT_SETTINGS_FILE, model_folder.BRANCH_FILE, model_folder.REFERENCE_FILE,
             model_folder.EXPORT_FILE, model_folder.REMOTE_CODE_FILE, model_folder.HEADS_FILE}
    package = Path(leap_core.__file__).parent
    defined = []
    for file in package.rglob("*.py"):
        if file.name in ("model_folder.py", "leap_early_exit.py") or "reliability" in file.parts:
            continue  # the reliability probes write broken files on purpose
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in names:
                defined.append(f"{file.relative_to(package)}:{node.lineno}")
    assert defined == []
