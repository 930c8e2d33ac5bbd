import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from leap_core.train import teacher_cache as tc
from leap_core.models import resolve_model
from leap_core.pooling import pooled_layers

TEACHER = "random-bert:layers=4,hidden=32,heads=2,seed=3"
SENTENCES = [f"Sentence number {i} is about {'cats ' * (i % 5)}and dogs." for i in range(40)]


def _expected(sentences, layers):
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_model(TEACHER)
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        batch = tokenizer(sentences, padding=True, truncation=True, max_length=32, return_tensors="pt")
        pooled = pooled_layers(model(**batch, output_hidden_states=True).hidden_states, batch["attention_mask"])
    return pooled[[layer - 1 for layer in layers]]


def test_round_trip_matches_a_direct_forward_pass(tmp_path):
    path = tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path, max_length=32, batch_size=8,
                                  show_progress=False)
    cache = tc.load_teacher_cache(path, SENTENCES)
    assert cache.layers == [2, 4] and cache.sentences == SENTENCES
    assert cache.embeddings.shape == (2, 40, 32)
    torch.testing.assert_close(cache.embeddings, _expected(SENTENCES, [2, 4]), atol=2e-3, rtol=0)


def test_second_build_reuses_the_file_without_a_forward_pass(tmp_path, monkeypatch, caplog):
    path = tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    monkeypatch.setattr(tc, "_encode_chunk", lambda *a, **k: pytest.fail("teacher forward pass on a cache hit"))
    with caplog.at_level(logging.INFO):
        again = tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    assert again == path
    assert "no teacher forward pass" in caplog.text


def test_other_inputs_get_another_key(tmp_path):
    base = tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    assert tc.build_teacher_cache(TEACHER, SENTENCES[:-1], [4], tmp_path, max_length=32, show_progress=False) != base
    assert tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=16, show_progress=False) != base
    assert tc.build_teacher_cache(TEACHER, SENTENCES, [3, 4], tmp_path, max_length=32, show_progress=False) != base


def test_corrupt_file_is_rebuilt_not_used(tmp_path):
    path = tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    good = tc.load_teacher_cache(path).embeddings
    path.write_bytes(path.read_bytes()[:200])
    rebuilt = tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    torch.testing.assert_close(tc.load_teacher_cache(rebuilt).embeddings, good)


def test_a_flipped_bit_in_an_embedding_is_detected_and_rebuilt_never_a_hit(tmp_path, caplog):
    import numpy as np

    path = tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path, max_length=32, show_progress=False)
    good = tc.load_teacher_cache(path).embeddings
    table = pq.read_table(path)
    values = tc._layer_values(table, 4).copy()
    values.view(np.uint16)[7, 3] ^= 1 << 9  # one bit of one float16; the key and the row count stay valid
    flipped = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=pa.float16()), values.shape[1])
    pq.write_table(table.set_column(table.schema.get_field_index("layer_4"), "layer_4", flipped), path)
    with pytest.raises(ValueError, match="content does not match its sha256"):
        tc.load_teacher_cache(path)
    with caplog.at_level(logging.WARNING):
        rebuilt = tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path, max_length=32, show_progress=False)
    assert "does not match its sha256" in caplog.text
    torch.testing.assert_close(tc.load_teacher_cache(rebuilt).embeddings, good)


def test_stale_file_under_the_same_name_is_rebuilt(tmp_path):
    path = tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"leap_cache_key": b"stale"}), path)
    tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    assert pq.read_table(path).schema.metadata[b"leap_cache_key"] != b"stale"


def test_killed_build_resumes_from_finished_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "CHUNK", 16)
    real = tc._encode_chunk
    calls = []

    def dies_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tc, "_encode_chunk", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    assert not list(tmp_path.glob("*.parquet"))  # nothing half-written
    calls.clear()
    monkeypatch.setattr(tc, "_encode_chunk", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    path = tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    assert len(calls) == 2  # chunks 2 and 3 of 3; chunk 1 came from disk
    torch.testing.assert_close(tc.load_teacher_cache(path).embeddings, _expected(SENTENCES, [4]), atol=2e-3, rtol=0)


def test_a_file_that_is_no_cache_is_refused(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(ValueError, match="not a leap teacher cache"):
        tc.load_teacher_cache(path)


def test_text_an_earlier_cache_holds_is_not_encoded_again(tmp_path, monkeypatch):
    tc.build_teacher_cache(TEACHER, SENTENCES[:25], [2, 4], tmp_path, max_length=32, show_progress=False)
    tc.build_teacher_cache(TEACHER, SENTENCES[:25], [2, 4], tmp_path, max_length=16, show_progress=False)  # other spec
    encoded = []
    real = tc._encode_chunk
    monkeypatch.setattr(tc, "_encode_chunk", lambda model, tok, sentences, *a: encoded.extend(sentences)
                        or real(model, tok, sentences, *a))
    grown = SENTENCES[15:] + SENTENCES[:5]  # last week's text, 10 of them already cached, and new text
    cache = tc.load_teacher_cache(tc.build_teacher_cache(TEACHER, grown, [2, 4], tmp_path, max_length=32,
                                                         show_progress=False), grown)
    assert sorted(encoded) == sorted(SENTENCES[25:])  # only the text no cache of this spec holds
    torch.testing.assert_close(cache.embeddings, _expected(grown, [2, 4]), atol=2e-3, rtol=0)


def _killed_after_first_chunk(tmp_path, monkeypatch):
    """A build killed while encoding its second chunk of 16: chunk 1 and its checksum are on disk."""
    monkeypatch.setattr(tc, "CHUNK", 16)
    real = tc._encode_chunk

    def dies_on_second_chunk(*args, **kwargs):
        if dies_on_second_chunk.calls == 1:
            raise KeyboardInterrupt
        dies_on_second_chunk.calls += 1
        return real(*args, **kwargs)

    dies_on_second_chunk.calls = 0
    monkeypatch.setattr(tc, "_encode_chunk", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    calls = []
    monkeypatch.setattr(tc, "_encode_chunk", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    (chunk,) = tmp_path.glob("*.parts/chunk-00000-*.npy")
    return chunk, calls


@pytest.mark.parametrize("planted", ["nan with its checksum forged", "checksum missing", "checksum wrong"])
def test_a_bad_resumed_chunk_is_encoded_again_never_merged(tmp_path, monkeypatch, caplog, planted):
    import numpy as np

    from leap_core.io import sha256_file

    chunk, calls = _killed_after_first_chunk(tmp_path, monkeypatch)
    checksum = chunk.with_suffix(".sha256")
    assert checksum.read_text().strip() == sha256_file(chunk)  # written with the chunk
    if planted.startswith("nan"):
        np.save(chunk, np.full(np.load(chunk).shape, np.nan, dtype=np.float16))
        checksum.write_text(sha256_file(chunk))
    elif planted == "checksum missing":
        checksum.unlink()
    else:
        checksum.write_text("0" * 64)
    with caplog.at_level(logging.WARNING):
        path = tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    assert len(calls) == 3 and "encoding it again" in caplog.text  # chunk 1 too: it was not trusted
    cache = tc.load_teacher_cache(path)
    assert torch.isfinite(cache.embeddings).all()
    torch.testing.assert_close(cache.embeddings, _expected(SENTENCES, [4]), atol=2e-3, rtol=0)


def test_a_cache_with_nan_embeddings_is_never_written(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setattr(tc, "_encode_chunk", lambda model, tok, sentences, layers, *a: np.full(
        (len(layers), len(sentences), 32), np.nan, dtype=np.float16))
    with pytest.raises(ValueError, match="NaN or inf: not writing the cache"):
        tc.build_teacher_cache(TEACHER, SENTENCES, [4], tmp_path, max_length=32, show_progress=False)
    assert not list(tmp_path.glob("*.parquet"))
