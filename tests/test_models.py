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

    from leap_core.encoder import EarlyExitEncoder

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
