"""Shallow query encoders (leap_core.query_encoder): sources, index cache, training, saving, pairing, judging."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from leap_core.data import DataError
from leap_core.query_encoder import (QueryEncoderConfig, ShallowQueryEncoder, TrainingSet, build_index, check_pair,
                                     load_query_encoder, pseudo_queries, read_corpus, read_queries, save_query_encoder,
                                     train)
from leap_core.query_encoder.losses import listwise_kl, query_loss

DOC_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=0"
OTHER_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=1"
TOPICS = ["vitamin D and bone health", "statins and breast cancer", "sugar and heart disease", "fish oil for the brain",
          "red meat and colon cancer", "green tea and weight", "soy and hormone levels", "fiber and gut bacteria"]


def _write_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    """A tiny BEIR folder: 24 documents (title + two sentences), 16 queries, the first 6 judged in qrels/test.tsv."""
    folder = tmp_path_factory.mktemp("tiny_beir")
    docs = [json.dumps({"_id": f"d{i}", "title": f"A study of {TOPICS[i % 8]} number {i}",
                        "text": f"We measured {TOPICS[i % 8]} in {10 * i + 5} adults. The effect was small but real."})
            for i in range(24)]
    queries = [json.dumps({"_id": f"q{i}", "text": f"does {TOPICS[i % 8]} matter {i}"}) for i in range(16)]
    queries.append(json.dumps({"_id": "q99", "text": "does vitamin D and bone health matter 0"}))  # copy of test q0
    _write_gz(folder / "corpus.jsonl.gz", docs)
    _write_gz(folder / "queries.jsonl.gz", queries)
    (folder / "qrels").mkdir()
    judged = "".join(f"q{i}\td{i}\t{1 + i % 2}\nq{i}\td{i + 8}\t1\n" for i in range(6))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judged)
    return folder


# ------------------------------------------------------------------ sources


def test_read_queries_each_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "q.txt").write_text("first query\n\n  second   query \nfirst query\n")
    assert read_queries(tmp_path / "q.txt") == ["first query", "second query"]  # deduplicated, blank skipped
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n{"text": "b", "_id": "2"}\n')
    assert read_queries(tmp_path / "q.jsonl") == ["a", "b"]
    _write_gz(tmp_path / "q.jsonl.gz", ['{"text": "zipped"}'])
    assert read_queries(tmp_path / "q.jsonl.gz") == ["zipped"]
    pq.write_table(pa.table({"text": ["p1", "p2"]}), tmp_path / "q.parquet")
    assert read_queries(tmp_path / "q.parquet") == ["p1", "p2"]


def test_read_queries_traffic_log(tmp_path):
    from leap_core.serve.traffic import TrafficLog

    log = TrafficLog(str(tmp_path / "log"), flush_rows=2, sample_text=1.0)
    log.record(["logged one", "logged two"], [3, 3], 6)
    log.flush()
    assert sorted(read_queries(tmp_path / "log")) == ["logged one", "logged two"]


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"text": "torn"\n', "bad.jsonl, line 2: malformed JSON"),
    ("bad.jsonl", '{"text": "ok"}\n{"_id": "1"}\n', "bad.jsonl, line 2: field 'text' is missing"),
    ("bad.jsonl", '{"text": "ok"}\n[1, 2]\n', "bad.jsonl, line 2: expected a JSON object"),
    ("empty.txt", "\n\n", "empty.txt: no query text"),
    ("q.csv", "a,b\n", "unknown query format '.csv'"),
])
def test_read_queries_bad_input_is_one_line_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        read_queries(tmp_path / name)
    assert "\n" not in str(err.value) and str(tmp_path / name) in str(err.value)


def test_read_queries_bad_parquet_and_missing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"query": ["x"]}), tmp_path / "q.parquet")
    with pytest.raises(DataError, match="q.parquet: no 'text' column"):
        read_queries(tmp_path / "q.parquet")
    pq.write_table(pa.table({"text": ["x", None]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match="n.parquet, row 2"):
        read_queries(tmp_path / "n.parquet")
    with pytest.raises(DataError, match="nowhere.txt: no such file"):
        read_queries(tmp_path / "nowhere.txt")


def test_beir_source_holds_out_the_test_queries(beir):
    texts = read_queries(beir)
    test_texts = {f"does {TOPICS[i % 8]} matter {i}" for i in range(6)}
    assert not test_texts & set(texts)  # judged ids q0..q5 are out ...
    assert "does vitamin D and bone health matter 0" not in texts  # ... and so is a copy of one under another id
    assert len(texts) == 10 and texts[0] == "does soy and hormone levels matter 6"
    assert len(read_queries(beir, exclude_split=None)) == 17 - 1  # nothing held out (q99 duplicates q0's text)


def test_beir_source_without_qrels_refuses(tmp_path, beir):
    folder = tmp_path / "noqrels"
    folder.mkdir()
    (folder / "queries.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    with pytest.raises(DataError, match="qrels/test.tsv: qrels file not found"):
        read_queries(folder)


def test_pseudo_queries_titles_first_and_exclusions(beir):
    corpus = read_corpus(beir)
    pseudo = pseudo_queries(corpus, 30, seed=0, exclude=["A study of vitamin D and bone health number 0"])
    assert len(pseudo) == 30 and all(p.startswith("A study of") for p in pseudo[:23])
    assert "A study of vitamin D and bone health number 0" not in pseudo
    assert pseudo == pseudo_queries(corpus, 30, seed=0, exclude=["A study of vitamin D and bone health number 0"])


def test_training_text_splits_dev_and_keeps_held_out_and_dev_text_out_of_the_pseudo_queries(beir):
    from leap_core.data.corpus import sentence_key
    from leap_core.query_encoder.sources import training_text

    corpus, real = read_corpus(beir), [f"A study of {TOPICS[i % 8]} number {i}" for i in range(12)]
    held_out = ["a study of green tea and weight number 21"]  # a title, on sentence_key
    train_real, dev, pseudo = training_text(real, corpus, 40, dev_size=10, seed=0, held_out=held_out)
    assert len(dev) == 4 and sorted(train_real + dev) == sorted(real)  # dev: at most a third of the real text
    assert not {sentence_key(t) for t in pseudo} & {sentence_key(t) for t in [*held_out, *dev]}
    assert not set(pseudo) & set(train_real) and pseudo
    assert training_text(real, corpus, 40, 10, 0, held_out) == (train_real, dev, pseudo)  # seeded
    assert training_text(real, corpus, 0, 10, 0)[2] == []


# ------------------------------------------------------------------ index, losses, model


@pytest.fixture(scope="module")
def index(beir, tmp_path_factory):
    return build_index(DOC_MODEL, beir, tmp_path_factory.mktemp("index"), batch_size=8)


def test_index_is_cached_by_model_and_corpus_hash(beir, index, tmp_path, monkeypatch):
    from leap_core.query_encoder import index as index_module

    cache = tmp_path / "cache"
    first = build_index(DOC_MODEL, beir, cache)
    assert first.doc_ids == [f"d{i}" for i in range(24)] and first.embeddings.shape == (24, 32)
    np.testing.assert_allclose(np.linalg.norm(first.embeddings, axis=1), 1.0, atol=1e-5)
    monkeypatch.setattr(index_module, "encode_documents", lambda *a, **k: pytest.fail("re-encoded a cached index"))
    again = build_index(DOC_MODEL, beir, cache)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert len(list(cache.glob("index-*.npy"))) == 1
    monkeypatch.undo()
    other = build_index(OTHER_MODEL, beir, cache)  # another model: its own file, never the first's
    assert other.model_fingerprint != first.model_fingerprint and len(list(cache.glob("index-*.npy"))) == 2


def test_killed_document_pass_resumes_from_its_saved_chunks(beir, index, tmp_path, monkeypatch, caplog):
    from leap_core.query_encoder import index as index_module
    from leap_core.serve.encoder import EarlyExitEncoder

    monkeypatch.setattr(index_module, "CHUNK", 8)  # 24 documents: 3 chunks
    real_encode, calls = EarlyExitEncoder.encode, []

    def encode_then_die(self, texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real_encode(self, texts, *args, **kwargs)

    monkeypatch.setattr(EarlyExitEncoder, "encode", encode_then_die)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed"):
        build_index(DOC_MODEL, beir, cache, batch_size=8)
    assert not list(cache.glob("index-*.npy")) and len(list(cache.glob("*.parts/chunk-*.npy"))) == 2
    (first_chunk,) = cache.glob("*.parts/chunk-00000-*.npy")
    first_chunk.write_bytes(first_chunk.read_bytes()[:-4] + b"\0\0\0\1")  # damaged: never trusted
    calls.clear()
    resumed = build_index(DOC_MODEL, beir, cache, batch_size=8)
    assert calls == [8, 8]  # the damaged first chunk and the third; the second was read back
    assert "does not match its checksum" in caplog.text
    np.testing.assert_allclose(resumed.embeddings, index.embeddings, atol=1e-5)
    assert not list(cache.glob("*.parts"))  # the finished index holds every chunk


def test_listwise_kl_is_zero_at_the_teacher_and_positive_elsewhere():
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    docs = torch.nn.functional.normalize(torch.randn(4, 5, 8), dim=-1)
    assert float(listwise_kl(teacher, teacher, docs, 0.05)) == pytest.approx(0.0, abs=1e-6)
    other = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert float(listwise_kl(other, teacher, docs, 0.05)) > 0
    loss, terms = query_loss(other, teacher, docs, 1.0, 1.0, 0.05, 0.5, 0.05)
    assert set(terms) == {"cosine", "kl", "in_batch", "total"}
    assert terms["total"] == pytest.approx(terms["cosine"] + terms["kl"] + 0.5 * terms["in_batch"], rel=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        listwise_kl(other, teacher, docs[:2], 0.05)


def _training_set(index, texts: list[str], cache: Path) -> TrainingSet:
    from leap_core.query_encoder.fit import original_pools

    pools = original_pools(DOC_MODEL, cache).layers("train", texts)
    targets = np.ascontiguousarray(pools[-1])
    return TrainingSet(texts, targets, index.topk(targets, 10)[1])


def test_training_lowers_the_loss_and_keeps_the_best_dev_state(beir, index, one_thread, tmp_path):
    texts = read_queries(beir) + pseudo_queries(read_corpus(beir), 40, seed=0)
    data = _training_set(index, texts, tmp_path)
    dev_texts = texts[:6]
    dev_top = data.top_docs[:6]
    encoder = ShallowQueryEncoder.from_original(DOC_MODEL, 1)
    config = QueryEncoderConfig(steps=40, batch_size=8, lr=1e-3, head_lr=1e-2, eval_every=10, in_batch=0.5,
                                head_init="identity", kl_top_k=10)
    history = train(encoder, data, index, dev_texts, dev_top, config)
    losses = [entry["total"] for entry in history["losses"]]
    assert losses[-1] < losses[0]
    assert [e["step"] for e in history["evals"]] == [0, 10, 20, 30, 40]
    best = max(e["dev_agreement10"] for e in history["evals"])
    assert history["best_dev_agreement10"] == best
    from leap_core.query_encoder.train import dev_agreement

    assert dev_agreement(encoder, index, dev_texts, dev_top) == pytest.approx(best)  # the kept state is the best


def test_saved_folder_round_trips_and_refuses_another_document_model(tmp_path, one_thread):
    encoder = ShallowQueryEncoder.from_original(DOC_MODEL, 1)
    rng = np.random.default_rng(0)
    encoder.set_head(np.eye(32, dtype=np.float32) + 0.1 * rng.standard_normal((32, 32)).astype(np.float32),
                     0.05 * rng.standard_normal(32).astype(np.float32))
    texts = ["does fish oil help", "vitamin D and bone health in older adults"]
    folder = save_query_encoder(encoder, tmp_path / "qe", DOC_MODEL, {"training": {"steps": 0}})
    record = json.loads((folder / "leap_query_encoder.json").read_text())
    assert record["depth"] == 1 and record["document_model"] == DOC_MODEL and len(record["document_fingerprint"]) == 64
    loaded = load_query_encoder(folder, document_model=DOC_MODEL)
    np.testing.assert_allclose(loaded.encode(texts), encoder.encode(texts), atol=1e-5)
    from sentence_transformers import SentenceTransformer  # the same folder serves in sentence-transformers

    st_embs = SentenceTransformer(str(folder), device="cpu").encode(texts)
    np.testing.assert_allclose(st_embs, encoder.encode(texts), atol=1e-5)
    check_pair(folder, DOC_MODEL)
    with pytest.raises(ValueError, match="trained for the document model") as err:
        load_query_encoder(folder, document_model=OTHER_MODEL)
    from leap_core.model_folder import model_fingerprint
    from leap_core.models import resolve_model

    assert record["document_fingerprint"] in str(err.value)
    assert model_fingerprint(resolve_model(OTHER_MODEL)) in str(err.value)
    with pytest.raises(ValueError, match="not a query encoder"):
        check_pair(tmp_path, DOC_MODEL)


def test_depth_outside_the_original_is_refused():
    with pytest.raises(ValueError, match="depth must be in 0..2"):
        ShallowQueryEncoder.from_original(DOC_MODEL, 3)
    with pytest.raises(ValueError, match="head_init"):
        QueryEncoderConfig(head_init="zeros")


# ------------------------------------------------------------------ the experiment on one BEIR folder


def test_judge_set_rows_and_report(beir, tmp_path, one_thread):
    from leap_core.query_encoder.experiment import SetPlan, judge_set
    from leap_core.query_encoder.results import chosen_entry
    from leap_core.report.query_encoder_report import render_markdown

    plan = SetPlan(str(beir), n_pseudo=30, dev_size=3, depths=[1], steps={1: 6}, zero_shot_depths=[1])
    config = QueryEncoderConfig(steps=4, batch_size=8, eval_every=3, kl_top_k=10, in_batch=0.5)
    updates = []
    result = judge_set(DOC_MODEL, plan, config, tmp_path / "cache", tmp_path / "models", updates.append, n_resamples=50)
    assert result["n_test_queries"] == 6 and result["train_queries"] + result["dev_queries"] == 10
    rows = result["depths"]["1"]
    assert set(rows) >= {"raw_cut", "ridge_head", "recipe"} and len(updates) == 3
    for row in (rows["raw_cut"], rows["ridge_head"], rows["recipe"], result["zero_shot"]["1"]):
        assert 0 <= row["ndcg10"] <= 1 and 0 <= row["agreement10"] <= 1
        low, high = row["ndcg10_rel_ci"]
        assert low <= row["ndcg10_rel"] <= high
    assert rows["recipe"]["steps"] == 6 and [e["step"] for e in rows["recipe"]["evals"]] == [0, 3, 6]
    load_query_encoder(rows["recipe"]["folder"], document_model=DOC_MODEL)
    report = {DOC_MODEL: {"sets": {"tiny": result}, "chosen": chosen_entry({"tiny": result}, floor=0.0)}}
    assert report[DOC_MODEL]["chosen"]["depth"] == 1
    assert chosen_entry({"tiny": result}, floor=1.01)["depth"] is None
    markdown = render_markdown(report)
    assert "| 1 | ridge head only |" in markdown and "zero-shot" in markdown
    json.dumps(report)  # JSON-ready


# ------------------------------------------------------------------ leap query-encoder (fit and judge)

FAST_RECIPE = ["--recipe", "steps=4", "--recipe", "batch_size=8", "--recipe", "eval_every=2",
               "--recipe", "kl_top_k=10"]


@pytest.fixture
def query_file(tmp_path) -> Path:
    """40 distinct unlabelled query texts, none of them a test query of the tiny BEIR folder."""
    path = tmp_path / "logged_queries.txt"
    path.write_text("".join(f"what about {TOPICS[i % 8]} in group {i}\n" for i in range(40)))
    return path


def _leap(*argv: str) -> int:
    from leap_core.cli import main

    return main([str(a) for a in argv])


def test_fit_saves_the_first_depth_that_reaches_the_floor(beir, query_file, tmp_path, one_thread):
    out, report = tmp_path / "qe", tmp_path / "fit.json"
    code = _leap("query-encoder", DOC_MODEL, "--queries", query_file, "--corpus", beir, "--out", out, "--floor", "0",
                 "--pseudo", "20", "--dev-size", "10", "--report", report, "--cache-dir", tmp_path / "cache",
                 *FAST_RECIPE)
    assert code == 0
    result = json.loads(report.read_text())
    assert result["chosen"] == 1 and result["dev_texts"] == 10 and result["train_texts"] == 30 + 20
    assert 0 <= result["depths"]["1"]["dev_agreement10"] <= 1
    encoder = load_query_encoder(out, document_model=DOC_MODEL)  # paired with the index's model, by weights hash
    assert encoder.depth == 1 and encoder.encode(["a query"]).shape == (1, 32)


def test_fit_below_the_floor_saves_nothing_and_says_the_best(beir, query_file, tmp_path, one_thread, capsys):
    out = tmp_path / "qe"
    code = _leap("query-encoder", DOC_MODEL, "--queries", query_file, "--corpus", beir, "--out", out,
                 "--floor", "1.0", "--pseudo", "0", "--dev-size", "10", "--cache-dir", tmp_path / "cache",
                 "--recipe", "steps=2", "--recipe", "batch_size=8", "--recipe", "eval_every=2",
                 "--recipe", "kl_top_k=10", "--recipe", "lr=0")  # lr 0: the ridge head alone, below a perfect 1.0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "no depth reached dev top-10 agreement 1.0 (best: depth 1 at" in err[0]


def test_fit_refuses_too_few_queries_and_bad_recipes(beir, tmp_path, capsys):
    few = tmp_path / "few.txt"
    few.write_text("one query\nanother query\n")
    assert _leap("query-encoder", DOC_MODEL, "--queries", few, "--corpus", beir, "--cache-dir", tmp_path) == 2
    assert f"{few}: 2 distinct query texts; a query encoder needs at least 30" in capsys.readouterr().err
    assert _leap("query-encoder", DOC_MODEL, "--queries", few, "--corpus", beir, "--recipe", "stepz=3") == 2
    assert "--recipe stepz=3: expected KEY=VALUE" in capsys.readouterr().err
    assert _leap("query-encoder", DOC_MODEL, "--queries", few, "--corpus", beir, "--depth", "2") == 2
    assert "--depth 2: a query encoder has 0..1 of" in capsys.readouterr().err
    assert _leap("query-encoder", DOC_MODEL, "--corpus", beir) == 2
    assert "--queries is required with --corpus" in capsys.readouterr().err


def test_judge_any_beir_folder_with_one_command(beir, tmp_path, one_thread):
    report = tmp_path / "judged.json"
    code = _leap("query-encoder", DOC_MODEL, "--beir", beir, "--report", report, "--pseudo", "20", "--dev-size", "3",
                 "--floor", "0", "--cache-dir", tmp_path / "cache", *FAST_RECIPE)
    assert code == 0
    entry = json.loads(report.read_text())[DOC_MODEL]
    result = entry["sets"][beir.name]
    assert result["n_test_queries"] == 6 and set(result["depths"]["1"]) == {"raw_cut", "ridge_head", "recipe",
                                                                             "ridge_fit_texts"}
    assert entry["chosen"]["depth"] == 1 and beir.name in entry["chosen"]["ndcg10_rel"]
    assert "| 1 | recipe |" in report.with_suffix(".md").read_text()


def test_depth_zero_is_a_static_encoder_that_trains_its_token_table(beir, query_file, tmp_path, one_thread):
    out, report = tmp_path / "static", tmp_path / "fit.json"
    before = ShallowQueryEncoder.from_original(DOC_MODEL, 0)
    assert before.is_static and before.depth == 0
    code = _leap("query-encoder", DOC_MODEL, "--queries", query_file, "--corpus", beir, "--out", out, "--floor", "0",
                 "--depth", "0", "--pseudo", "0", "--dev-size", "10", "--report", report,
                 "--cache-dir", tmp_path / "cache", "--recipe", "steps=4", "--recipe", "batch_size=8",
                 "--recipe", "eval_every=2", "--recipe", "kl_top_k=10", "--recipe", "lr=0.05")
    assert code == 0 and json.loads(report.read_text())["chosen"] == 0
    assert load_query_encoder(out, document_model=DOC_MODEL).depth == 0


def test_only_the_static_encoder_trains_the_token_table(beir, index, one_thread):
    from leap_core.query_encoder.fit import train_at_depth

    texts = [f"what about {TOPICS[i % 8]} in group {i}" for i in range(16)]
    pools = np.stack([ShallowQueryEncoder.from_original(DOC_MODEL, d).encode(texts) for d in (1, 2)])
    dev_top = index.topk(pools[-1][:4], 10)[1]
    config = QueryEncoderConfig(steps=2, batch_size=8, eval_every=2, kl_top_k=10)
    for depth, trains_table in ((0, True), (1, False)):
        encoder, history = train_at_depth(DOC_MODEL, depth, texts, pools, index, (texts[:4], dev_top), config)
        assert encoder.model.embeddings.word_embeddings.weight.requires_grad is trains_table
        assert [e["step"] for e in history["evals"]] == [0, 2]


# ------------------------------------------------------------------ speed and int8 quality (infra/query_encoder_bench.py)


def test_query_bench_times_every_path_against_the_peer_and_judges_int8(beir, tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    from leap_core.query_encoder.bench import PEER, SHIPPED, run_query_bench
    from leap_core.report.query_encoder_report import render_speed

    folder = save_query_encoder(ShallowQueryEncoder.from_original(DOC_MODEL, 1), tmp_path / "tiny-depth1", DOC_MODEL)
    result = run_query_bench(DOC_MODEL, {"tiny": {1: folder}}, {"tiny": str(beir)}, tmp_path / "work",
                             tmp_path / "cache", threads=1, batch_sizes=(1, 8), warmup=1, iterations=3,
                             per_channel=False, n_resamples=50)
    names = [p["name"] for p in result["paths"]]
    assert names == [SHIPPED, "original · ONNX Runtime · fp32", PEER, "depth 1 · ONNX Runtime · fp32",
                     "depth 1 · ONNX Runtime · int8"]
    assert result["queries_timed"] == 6 and set(result["timing"]["batch_sizes"]) == {"1", "8"}
    assert result["timing"]["batch_sizes"]["1"][PEER]["speedup"] == 1.0
    speedup = result["speedup_vs_peer_int8"]["1"]["bs1"]
    assert speedup == result["timing"]["batch_sizes"]["1"]["depth 1 · ONNX Runtime · int8"]["speedup"] > 0
    quality = result["quality"]
    assert abs(quality[SHIPPED]["tiny"]["ndcg10_rel"]) < 1e-6  # the shipped model IS original/original
    assert quality["original · ONNX Runtime · fp32"]["tiny"]["agreement10"] > 0.99
    assert set(quality) == set(names) and all(0 <= quality[n]["tiny"]["ndcg10"] <= 1 for n in names)
    table = "\n".join(render_speed(result))
    assert "| depth 1 · ONNX Runtime · int8 |" in table and "x |" in table


def test_report_merges_runs_and_shows_a_retrofits_cuts_as_query_encoders(tmp_path):
    from leap_core.query_encoder.results import attach_other_cuts, merge_set
    from leap_core.report.query_encoder_report import render_markdown

    row = {"ndcg10": 0.2, "recall100": 0.3, "ndcg10_rel": -0.1, "ndcg10_rel_ci": [-0.2, 0.0], "agreement10": 0.5,
           "dev_agreement10": 0.5}
    first = {"set": "tiny", "plan": {"depths": [1]}, "depths": {"1": {"recipe": row}}, "n_test_queries": 6,
             "n_docs": 24, "train_queries": 9, "pseudo_queries": 0, "dev_queries": 3, "train_source": "x",
             "original": {"ndcg10": 0.5, "recall100": 0.6}}
    second = {**first, "plan": {"depths": [0]}, "depths": {"0": {"recipe": {**row, "ndcg10": 0.1}}}}
    merged = merge_set(merge_set(None, first), second)
    assert set(merged["depths"]) == {"0", "1"} and merged["plans"] == [{"depths": [1]}, {"depths": [0]}]
    cut = {"index_compat_ndcg10": 0.25, "index_compat_minus_original": {"diff": -0.25, "ci_low": -0.3, "ci_high": -0.2}}
    retrofit = {"org/tiny-model": {"beir": {"tiny": {"original_ndcg10": 0.5}},
                                   "evaluation": {"beir": {"tiny": {"cuts": {"3": cut}}}},
                                   "peer": {"evaluation": {"beir": {"tiny": {"cuts": {"4": cut}}}}}}}
    (tmp_path / "retrofit.json").write_text(json.dumps(retrofit))
    entry = {"sets": {"tiny": merged}, "chosen": {"depth": None}}
    attach_other_cuts(entry, "tiny-model", tmp_path / "retrofit.json")
    assert entry["other_cuts"]["exit branch (generic text)"]["tiny"]["3"]["ndcg10_rel"] == pytest.approx(-0.5)
    assert entry["other_cuts"]["AdaptiveLayerLoss peer"]["tiny"]["4"]["ndcg10_rel_ci"] == pytest.approx([-0.6, -0.4])
    markdown = render_markdown({"tiny-model": entry})
    assert "| AdaptiveLayerLoss peer | 4 | -50.0% [-60.0, -40.0] |" in markdown
    assert markdown.index("| 0 | recipe |") < markdown.index("| 1 | recipe |")
