"""EarlyExitEncoder: equality with the model's forward, the exit rule, modes, loading, input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, BertConfig, BertModel, MPNetConfig, MPNetModel

from conftest import minilm_folder

from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.model_folder import EXIT_SETTINGS_FILE
from leap_core.pooling import mean_pool

N_LAYERS = 5
SENTENCES = [
    "A man is playing a guitar.",
    "no",
    "The committee approved the proposal after a long and heated debate that lasted until midnight.",
    "Cats sleep.",
    "What is the capital of France?",
    "I went to the market yesterday and bought fish, bread and some apples for the week.",
    "ok then",
    "Numbers 1 2 3 4 5 6 7 8 9 10 11 12",
    "A woman slices an onion.",
    "The quick brown fox jumps over the lazy dog.",
    "Rain.",
    "Two children are playing in the snow near a small wooden house.",
]

pytestmark = pytest.mark.usefixtures("one_thread")




def tiny_model(kind: str, vocab_size: int, seed: int = 0):
    # initializer_range 0.2 (not 0.02) so adjacent layers differ (cos ~0.1-0.7) and exits vary by row.
    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=2, intermediate_size=64,
                  vocab_size=vocab_size, initializer_range=0.2)
    if kind.startswith("bert"):  # "bert" uses SDPA attention, "bert-eager" the additive float mask
        attention = "eager" if kind == "bert-eager" else "sdpa"
        return BertModel(BertConfig(**common, attn_implementation=attention)).eval()
    return MPNetModel(MPNetConfig(**common)).eval()


@pytest.fixture(scope="module", params=["bert", "bert-eager", "mpnet"])
def model(request, tokenizer):
    return tiny_model(request.param, tokenizer.vocab_size)


def forward_reference(model, tokenizer, sentences):
    """The model's own forward + mean pool, normalised."""
    features = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    if isinstance(model, MPNetModel):
        features.pop("token_type_ids", None)
    with torch.no_grad():
        hidden = model(**features).last_hidden_state
    return F.normalize(mean_pool(hidden, features["attention_mask"]), dim=-1).numpy()


def rule_reference(layer_embs, theta, k, l_min):
    """Algorithm 1 in numpy on full-depth layer embeddings: (exit layers, exited embeddings)."""
    n_layers = layer_embs.shape[0]
    layers = np.full(layer_embs.shape[1], n_layers)
    for row in range(layer_embs.shape[1]):
        for layer in range(max(l_min, k + 1), n_layers):
            if layer_embs[layer - 1, row] @ layer_embs[layer - 1 - k, row] >= theta:
                layers[row] = layer
                break
    return layers, layer_embs[layers - 1, np.arange(layer_embs.shape[1])]


def mixed_theta(layer_embs, k, l_min):
    """A theta in the widest gap among the tested cosines' middle half: exits vary, no borderline row."""
    first = max(l_min, k + 1)
    cos = np.sort(np.concatenate([
        (layer_embs[l - 1] * layer_embs[l - 1 - k]).sum(-1) for l in range(first, layer_embs.shape[0])
    ]))
    lo, hi = len(cos) // 4, 3 * len(cos) // 4
    gaps = np.diff(cos[lo:hi + 1])
    i = int(np.argmax(gaps))
    assert gaps[i] > 2e-3, "tiny model gives no clean threshold"
    return float(cos[lo + i] + gaps[i] / 2)


def test_full_matches_model_forward(model, tokenizer):
    encoder = EarlyExitEncoder(model, tokenizer, device="cpu")
    got, layers = encoder.encode(SENTENCES, batch_size=5, mode="full", return_exit_layers=True)
    np.testing.assert_allclose(got, forward_reference(model, tokenizer, SENTENCES), atol=1e-5)
    assert layers.tolist() == [N_LAYERS] * len(SENTENCES)
    np.testing.assert_allclose(encoder.layer_embeddings(SENTENCES, batch_size=5)[-1], got, atol=1e-5)


@pytest.mark.parametrize("k,l_min", [(1, 2), (2, 3)])
def test_exit_rule_matches_numpy_reference(model, tokenizer, k, l_min):
    encoder = EarlyExitEncoder(model, tokenizer, k=k, l_min=l_min, device="cpu")
    layer_embs = encoder.layer_embeddings(SENTENCES, batch_size=1)
    encoder.theta = mixed_theta(layer_embs, k, l_min)
    want_layers, want = rule_reference(layer_embs, encoder.theta, k, l_min)
    assert len(set(want_layers.tolist())) >= 2  # the case is not trivial
    for mode in ("batch", "compact"):
        for batch_size in (1, 3, 8):
            got, layers = encoder.encode(SENTENCES, batch_size=batch_size, mode=mode, return_exit_layers=True)
            assert layers.tolist() == want_layers.tolist(), (mode, batch_size)
            assert (got * want).sum(-1).min() >= 0.9999, (mode, batch_size)


def test_compact_drops_exited_rows_and_padding_batch_runs_to_last_exit(model, tokenizer):
    encoder = EarlyExitEncoder(model, tokenizer, l_min=2, device="cpu")
    layer_embs = encoder.layer_embeddings(SENTENCES)
    encoder.theta = mixed_theta(layer_embs, 1, 2)
    want_layers, _ = rule_reference(layer_embs, encoder.theta, 1, 2)
    lengths = np.array([len(ids) for ids in tokenizer(SENTENCES)["input_ids"]])
    shapes = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[:2])))
             for layer in model.encoder.layer]
    try:
        encoder.encode(SENTENCES, batch_size=len(SENTENCES), mode="compact")
        compact, shapes[:] = list(shapes), []
        encoder.encode(SENTENCES, batch_size=len(SENTENCES), mode="batch")
        batched = list(shapes)
    finally:
        for hook in hooks:
            hook.remove()
    # Layer l runs the rows whose exit layer is >= l, padded to the longest of them.
    want_compact = [(int((want_layers >= l).sum()), int(lengths[want_layers >= l].max()))
                    for l in range(1, N_LAYERS + 1) if (want_layers >= l).any()]
    assert compact == want_compact
    assert batched == [(len(SENTENCES), int(lengths.max()))] * int(want_layers.max())


@pytest.mark.parametrize("mode", ["full", "monitored", "batch", "compact", "fixed:3"])
def test_batched_equals_one_at_a_time(model, tokenizer, mode):
    encoder = EarlyExitEncoder(model, tokenizer, l_min=2, device="cpu")
    encoder.theta = mixed_theta(encoder.layer_embeddings(SENTENCES), 1, 2)
    ref_mode = "batch" if mode == "compact" else mode
    singles = [encoder.encode(s, mode=ref_mode, batch_size=1, return_exit_layers=True) for s in SENTENCES]
    want = np.stack([e for e, _ in singles])
    want_layers = [int(layer) for _, layer in singles]
    expected_layers = {"full": N_LAYERS, "monitored": N_LAYERS, "fixed:3": 3}
    if mode in expected_layers:
        assert want_layers == [expected_layers[mode]] * len(SENTENCES)
    else:
        assert len(set(want_layers)) >= 2
    for batch_size in (1, 3, 8):
        got, layers = encoder.encode(SENTENCES, batch_size=batch_size, mode=mode, return_exit_layers=True)
        assert got.shape == (len(SENTENCES), 32) and got.dtype == np.float32
        assert layers.tolist() == want_layers, batch_size
        assert (got * want).sum(-1).min() >= 0.9999, batch_size


@pytest.mark.parametrize("theta,k,l_min,expected", [
    (-1.0, 1, 2, 2), (-1.0, 1, 1, 2), (-1.0, 2, 1, 3), (-1.0, 1, 4, 4), (-1.0, 1, 9, N_LAYERS), (1.01, 1, 2, N_LAYERS),
])
def test_exit_rule_extremes(model, tokenizer, theta, k, l_min, expected):
    encoder = EarlyExitEncoder(model, tokenizer, theta=theta, k=k, l_min=l_min, device="cpu")
    layer_embs = encoder.layer_embeddings(SENTENCES)
    for mode in ("batch", "compact"):
        got, layers = encoder.encode(SENTENCES, batch_size=4, mode=mode, return_exit_layers=True)
        assert layers.tolist() == [expected] * len(SENTENCES)
        np.testing.assert_allclose(got, layer_embs[expected - 1], atol=1e-5)


class Identity(torch.nn.Module):
    def forward(self, hidden, *args, **kwargs):
        return hidden


@pytest.mark.parametrize("identity_layers,k,l_min,expected", [
    ([3], 1, 2, 3),  # p_3 == p_2: cos 1
    ([3], 1, 4, N_LAYERS),  # the converged layer lies before l_min
    ([3, 4], 2, 2, 4),  # k=2: cos(p_4, p_2) = 1, while cos(p_3, p_1) is not
])
def test_exit_at_hand_built_converged_layer(tokenizer, identity_layers, k, l_min, expected):
    model = tiny_model("bert", tokenizer.vocab_size)
    for layer in identity_layers:
        model.encoder.layer[layer - 1] = Identity()
    encoder = EarlyExitEncoder(model, tokenizer, theta=0.999, k=k, l_min=l_min, device="cpu")
    layer_embs = encoder.layer_embeddings(SENTENCES)
    assert ((layer_embs[1:] * layer_embs[:-1]).sum(-1) < 0.999).sum() > 0
    got, layers = encoder.encode(SENTENCES, batch_size=4, return_exit_layers=True)
    assert layers.tolist() == [expected] * len(SENTENCES)
    np.testing.assert_allclose(got, layer_embs[expected - 1], atol=1e-5)


def test_fixed_depth_equals_layer_embeddings(model, tokenizer):
    encoder = EarlyExitEncoder(model, tokenizer, theta=-1.0, l_min=1, device="cpu")
    layer_embs = encoder.layer_embeddings(SENTENCES, batch_size=4)
    for depth in (1, 3, N_LAYERS):
        got, layers = encoder.encode(SENTENCES, batch_size=5, mode=f"fixed:{depth}", return_exit_layers=True)
        assert layers.tolist() == [depth] * len(SENTENCES)
        np.testing.assert_allclose(got, layer_embs[depth - 1], atol=1e-5)
    for bad in ("fixed:0", f"fixed:{N_LAYERS + 1}", "fixed:x", "fast"):
        with pytest.raises(ValueError, match="mode"):
            encoder.encode(SENTENCES, mode=bad)


def test_unnormalised_and_tensor_output(model, tokenizer):
    encoder = EarlyExitEncoder(model, tokenizer, device="cpu")
    raw = encoder.encode(SENTENCES[:3], mode="full", normalize_embeddings=False, convert_to_numpy=False)
    assert isinstance(raw, torch.Tensor) and raw.shape == (3, 32)
    features = tokenizer(SENTENCES[:3], padding=True, return_tensors="pt")
    if isinstance(model, MPNetModel):
        features.pop("token_type_ids")
    with torch.no_grad():
        want = mean_pool(model(**features).last_hidden_state, features["attention_mask"])
    torch.testing.assert_close(raw, want, atol=1e-5, rtol=1e-5)
    assert encoder.num_layers == N_LAYERS


def test_from_pretrained_round_trip(tmp_path, tokenizer):
    model = tiny_model("bert", tokenizer.vocab_size)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    original = EarlyExitEncoder(model, tokenizer, theta=0.5, k=2, l_min=3, device="cpu")
    written = original.save_exit_settings(tmp_path)
    assert written == tmp_path / EXIT_SETTINGS_FILE
    assert json.loads(written.read_text()) == {"theta": 0.5, "k": 2, "l_min": 3}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    loaded = EarlyExitEncoder.from_pretrained(tmp_path, device="cpu")
    # max_length: the tokenizer's model_max_length (512 here), as sentence-transformers reads it
    assert (loaded.theta, loaded.k, loaded.l_min, loaded.max_length) == (0.5, 2, 3, 512)
    want, want_layers = original.encode(SENTENCES, return_exit_layers=True)
    got, got_layers = loaded.encode(SENTENCES, return_exit_layers=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got_layers.tolist() == want_layers.tolist()

    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 16, "do_lower_case": false}')
    overridden = EarlyExitEncoder.from_pretrained(tmp_path, theta=0.7, device="cpu")
    assert (overridden.theta, overridden.k, overridden.l_min, overridden.max_length) == (0.7, 2, 3, 16)


def test_max_length_is_read_where_sentence_transformers_6_saves_it(tmp_path, tokenizer):
    """sentence-transformers 6 keeps max_seq_length as the tokenizer's model_max_length: so must we."""
    from sentence_transformers import SentenceTransformer

    from leap_core.models import save_sentence_transformer

    save_sentence_transformer(tiny_model("bert", tokenizer.vocab_size), tokenizer, tmp_path, max_seq_length=24)
    assert SentenceTransformer(str(tmp_path), device="cpu").max_seq_length == 24
    assert EarlyExitEncoder.from_pretrained(tmp_path, device="cpu").max_length == 24
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["model_max_length"] = int(1e30)  # "no limit": the encoder keeps its default
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert EarlyExitEncoder.from_pretrained(tmp_path, device="cpu").max_length == 128


def test_a_max_seq_length_past_the_position_table_is_refused_at_load_naming_both(tmp_path, tokenizer):
    from leap_core.models import save_sentence_transformer

    save_sentence_transformer(tiny_model("bert", tokenizer.vocab_size), tokenizer, tmp_path / "m", max_seq_length=24)
    config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 100000}))
    with pytest.raises(ValueError, match=r"m: max_seq_length 100000 exceeds the model's 512 token positions "
                                         r"\(max_position_embeddings 512\)") as err:
        EarlyExitEncoder.from_pretrained(tmp_path / "m", device="cpu")
    assert "\n" not in str(err.value)
    assert EarlyExitEncoder.from_pretrained(tmp_path / "m", device="cpu", max_length=64).max_length == 64  # given: wins


def test_from_pretrained_without_settings_uses_defaults(tmp_path, tokenizer):
    tiny_model("mpnet", tokenizer.vocab_size).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # MPNetConfig's default 512 positions start at padding_idx + 1: 510 tokens fit, not the tokenizer's 512.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 510}))
    loaded = EarlyExitEncoder.from_pretrained(tmp_path, device="cpu")
    assert (loaded.theta, loaded.k, loaded.l_min) == (0.95, 1, 6)
    assert isinstance(loaded.model, MPNetModel)


@pytest.mark.parametrize("content,message", [
    ('{"theta": 0.9, "patience": 2}', "unknown key"),
    ('{\n"theta": 0.9,\n}', "line 3"),
    ('{"theta": "high"}', "theta: input should be a valid number"),
    ('{"k": 1.5}', "k: input should be a valid integer"),
    ('{"theta": NaN}', "theta: input should be a finite number"),
])
def test_bad_exit_settings_name_the_file(tmp_path, content, message):
    (tmp_path / EXIT_SETTINGS_FILE).write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        EarlyExitEncoder.from_pretrained(tmp_path)
    assert EXIT_SETTINGS_FILE in str(err.value)


def test_input_validation(model, tokenizer):
    encoder = EarlyExitEncoder(model, tokenizer, l_min=2, theta=0.5, device="cpu")
    empty, empty_layers = encoder.encode([], return_exit_layers=True)
    assert empty.shape == (0, 32) and empty_layers.shape == (0,)
    assert encoder.layer_embeddings([]).shape == (N_LAYERS, 0, 32)

    blank, spaces = encoder.encode(["", "   "])
    assert np.isfinite(blank).all()
    np.testing.assert_allclose(blank, spaces, atol=1e-6)  # both tokenise to [CLS] [SEP]

    vector, layer = encoder.encode("A single sentence.", return_exit_layers=True)
    assert vector.shape == (32,) and 1 <= int(layer) <= N_LAYERS

    long_text = " ".join(["word"] * 5000)
    longer_text = long_text + " other words past the limit"
    long_emb = encoder.encode([long_text, longer_text, "short"], batch_size=3)
    assert np.isfinite(long_emb).all()
    np.testing.assert_allclose(long_emb[0], long_emb[1], atol=1e-6)  # both cut at max_length tokens

    before = encoder.encode(SENTENCES[:3])
    calls = []
    hook = model.embeddings.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(TypeError, match=r"sentences\[2\] is int"):
            encoder.encode(["fine", "also fine", 7, "never reached"])
        with pytest.raises(TypeError, match=r"sentences\[0\] is NoneType"):
            encoder.layer_embeddings([None])
        with pytest.raises(TypeError, match="sequence of str"):
            encoder.encode(42)
        with pytest.raises(ValueError, match=r"^sentences\[1\]: not valid Unicode text \('\\ud800' at character 4"):
            encoder.encode(["fine", "bad \ud800 text", "never reached"])
        with pytest.raises(ValueError, match=r"^sentences\[0\]: not valid Unicode"):
            encoder.layer_embeddings(["\udfff"])
    finally:
        hook.remove()
    assert calls == []  # rejected before any compute
    np.testing.assert_array_equal(encoder.encode(SENTENCES[:3]), before)

    for bad in (dict(k=0), dict(l_min=0), dict(max_length=1)):
        with pytest.raises(ValueError):
            EarlyExitEncoder(model, tokenizer, device="cpu", **bad)
    positions = model.config.max_position_embeddings - (2 if isinstance(model, MPNetModel) else 0)
    with pytest.raises(ValueError, match=f"max_length {positions + 1} exceeds the model's {positions} token positions"):
        EarlyExitEncoder(model, tokenizer, device="cpu", max_length=positions + 1)
    assert EarlyExitEncoder(model, tokenizer, device="cpu", max_length=positions).max_length == positions
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(SENTENCES, batch_size=0)


FAMILIES = {"bert": BertConfig, "mpnet": MPNetConfig}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_full_depth_is_automodels_output_under_each_attention(family, attention, tokenizer):
    """The encoder builds its attention mask itself (no private transformers API): padded batches at full depth
    must still give AutoModel's own forward, under each attention implementation the installed transformers has."""
    config = FAMILIES[family](hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=2, intermediate_size=64,
                              vocab_size=tokenizer.vocab_size, initializer_range=0.2)
    torch.manual_seed(0)
    try:
        model = AutoModel.from_config(config, attn_implementation=attention).eval()
    except ValueError as err:  # transformers 5.25: MPNet has eager attention only (it says so)
        pytest.skip(f"{family} has no {attention} attention in this transformers: {err}")
    encoder = EarlyExitEncoder(model, tokenizer, device="cpu")
    got = encoder.encode(SENTENCES, batch_size=5, mode="full")  # batches of mixed lengths: padding is masked
    np.testing.assert_allclose(got, forward_reference(model, tokenizer, SENTENCES), atol=1e-5)


def test_a_decoder_configuration_is_refused(tokenizer):
    decoder = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   vocab_size=tokenizer.vocab_size, is_decoder=True))
    with pytest.raises(ValueError, match="decoder"):
        EarlyExitEncoder(decoder, tokenizer, device="cpu")


def test_real_minilm_full_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    sentences = SENTENCES[:5]
    want = SentenceTransformer(minilm_folder(), device="cpu").encode(sentences)
    encoder = EarlyExitEncoder.from_pretrained(minilm_folder(), device="cpu")
    assert encoder.max_length == 256 and encoder.num_layers == 6
    got = encoder.encode(sentences, mode="full")
    assert (got * want).sum(-1).min() >= 0.9999


@pytest.mark.parametrize("mode", ["full", "batch", "compact"])
def test_awkward_rows_leave_their_batch_mates_intact(model, tokenizer, mode, monkeypatch):
    """Empty, blank and over-long texts share a batch with ordinary ones: every row as if encoded alone."""
    encoder = EarlyExitEncoder(model, tokenizer, l_min=2, device="cpu")
    encoder.theta = mixed_theta(encoder.layer_embeddings(SENTENCES), 1, 2)
    awkward = ["", SENTENCES[0], "   \t\n", " ".join(["word"] * 3000), SENTENCES[2], "\u00a0", SENTENCES[5]]
    ref_mode = "batch" if mode == "compact" else mode
    singles = [encoder.encode(s, mode=ref_mode, return_exit_layers=True) for s in awkward]
    monkeypatch.setattr("leap_core.serve.batching.TOKENIZE_CHUNK", 3)  # tokenized in several chunks, same result
    got, layers = encoder.encode(awkward, batch_size=len(awkward), mode=mode, return_exit_layers=True)
    assert np.isfinite(got).all() and got.shape == (len(awkward), 32)
    assert layers.tolist() == [int(layer) for _, layer in singles]
    assert (got * np.stack([e for e, _ in singles])).sum(-1).min() >= 0.9999
    np.testing.assert_allclose(got[[1, 4, 6]], encoder.encode([SENTENCES[i] for i in (0, 2, 5)], mode=mode), atol=1e-5)


@pytest.mark.parametrize("settings, field", [({"theta": 2.0, "k": 1, "l_min": 2}, "theta"),
                                              ({"theta": 0.9, "k": 1, "l_min": 99}, "l_min 99"),
                                              ({"theta": 0.9, "k": 0, "l_min": 2}, "k")])
def test_exit_settings_out_of_range_are_refused_naming_the_file_and_field(tmp_path, settings, field):
    import json
    import shutil

    from leap_core.models import resolve_model

    folder = tmp_path / "model"
    shutil.copytree(resolve_model("random-bert:layers=4,hidden=32,heads=2,seed=0"), folder)
    (folder / "leap_exit.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=f"leap_exit.json: {field}"):
        EarlyExitEncoder.from_pretrained(folder)


def test_the_cli_and_profiles_refuse_a_threshold_that_can_never_fire(tmp_path, capsys):
    from leap_core.cli import main
    from leap_core.config import load_profile

    with pytest.raises(SystemExit):
        main(["diagnose", "random-bert:layers=4,hidden=32,heads=2,seed=0", "--theta", "2.0"])
    assert "outside [-1, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"exit: l_min 9 is deeper than the model's 4 layers"):
        load_profile("smoke", {"exit": {"l_min": 9}})
    with pytest.raises(ValueError, match=r"smoke.yaml: exit.theta: input should be less than or equal to 1, got 1.5"):
        load_profile("smoke", {"exit": {"theta": 1.5}})


def test_a_folder_without_exit_settings_loads_at_the_default_rule_and_saved_settings_win(tmp_path, caplog):
    """One default rule (config.ExitConfig's, model_folder.exit_rule) for every loader; leap_exit.json wins."""
    import logging
    import shutil

    from leap_core.model_folder import exit_rule
    from leap_core.models import resolve_model
    from leap_core.serve.st_module import load_sentence_transformer

    folder = tmp_path / "plain"
    shutil.copytree(resolve_model("random-bert:layers=4,hidden=32,heads=2,seed=0"), folder)
    with caplog.at_level(logging.WARNING, logger="leap_core.serve.encoder"):
        encoder = EarlyExitEncoder.from_pretrained(folder, device="cpu")
    assert encoder.rule == exit_rule() and encoder.policy.kind == "rule"
    assert "the exit rule is the default theta=0.95, k=1, l_min=6" in caplog.text
    assert load_sentence_transformer(folder, device="cpu")[0].engine.rule == exit_rule()
    (folder / EXIT_SETTINGS_FILE).write_text(json.dumps({"theta": 0.5, "l_min": 2}))
    assert EarlyExitEncoder.from_pretrained(folder, device="cpu").rule == {"theta": 0.5, "k": 1, "l_min": 2}
    assert EarlyExitEncoder.from_pretrained(folder, device="cpu", k=2).rule == {"theta": 0.5, "k": 2, "l_min": 2}
