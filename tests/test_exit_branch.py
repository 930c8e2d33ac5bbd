"""The exit branch retrofit: the full path stays the original, cuts land in its space, user corpora read strictly."""

import gzip
import json

import numpy as np
import pytest
import torch

from leap_core.config import load_profile
from leap_core.data import DataError
from leap_core.data.documents import pseudo_documents, read_user_corpus, split_sentences
from leap_core.evaluation.against_original import beir_against_original, cheapest_cut
from leap_core.retrofit.exit_branch import exit_layers
from leap_core.train.losses import BranchObjective, branch_loss
from leap_core.model_folder import model_fingerprint, read_branch
from leap_core.models import original_of, resolve_model

MODEL = "random-bert:layers=4,hidden=64,heads=2,seed=1"


@pytest.fixture()
def base(tmp_path, data_dir):
    return load_profile("smoke", {"output_dir": str(tmp_path / "runs"), "data": {"data_dir": str(data_dir)}})


def test_branch_loss_is_zero_only_when_every_exit_is_the_original_final():
    target = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    loss, terms = branch_loss(target.expand(3, -1, -1), target, contrast=1.0, temperature=0.05)
    assert loss.item() == pytest.approx(0.0, abs=1e-5) and set(terms) == {"cosine", "contrast", "total"}
    moved = torch.stack([target, torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)])
    assert branch_loss(moved, target, 1.0, 0.05)[0].item() > 0.1
    with pytest.raises(ValueError, match="1..4"):
        BranchObjective([2, 5], n_layers=4, dim=16)
    objective = BranchObjective([1, 3], n_layers=4, dim=16)  # heads start as the identity
    layers = torch.stack([target, torch.zeros_like(target), target, torch.zeros_like(target)])
    assert objective(layers, target.expand(4, -1, -1), 0.0)[1]["cosine"] == pytest.approx(0.0, abs=1e-6)
    rotation = torch.linalg.qr(torch.randn(16, 16))[0]
    objective.set_heads([rotation, rotation], [torch.zeros(16)] * 2)  # a head maps the layer's pool first
    rotated = torch.stack([target @ rotation] * 4)  # head(x) = x @ W.T: W = rotation undoes x = t @ rotation
    assert objective(rotated, target.expand(4, -1, -1), 0.0)[1]["cosine"] == pytest.approx(0.0, abs=1e-5)


def test_exit_layers_default_to_half_the_depth_and_stay_below_the_original():
    from leap_core.config import BranchConfig

    assert exit_layers(BranchConfig(), 6) == [3, 4, 5] and exit_layers(BranchConfig(), 12) == list(range(6, 12))
    assert exit_layers(BranchConfig(exit_layers=[5, 4, 4]), 12) == [4, 5]
    with pytest.raises(ValueError, match="below the original"):
        exit_layers(BranchConfig(exit_layers=[6]), 6)


def test_pseudo_documents_join_distinct_sentences_and_refuse_a_short_pool():
    pool = [f"sentence number {i}." for i in range(40)]
    docs = pseudo_documents(pool, 5, 2, 4, seed=0)
    used = [s + "." for doc in docs for s in doc.split(". ") if s]
    assert len(docs) == 5 and all(2 <= doc.count("sentence") <= 4 for doc in docs)
    assert len(set(used)) == len(used)  # no sentence twice
    assert docs == pseudo_documents(pool, 5, 2, 4, seed=0)
    with pytest.raises(DataError, match="pool has 40"):
        pseudo_documents(pool, 20, 3, 4, seed=0)
    assert split_sentences("The first one is here. A second one follows! 3 more words come here?", min_chars=10) == [
        "The first one is here.", "A second one follows!", "3 more words come here?"]


def test_user_corpus_reads_jsonl_parquet_and_text_with_clear_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "corpus.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        handle.write(json.dumps({"_id": "1", "title": "A title", "text": "the first document's text"}) + "\n\n")
        handle.write(json.dumps({"text": "a second document, no title"}) + "\n")
    assert read_user_corpus(jsonl) == ["A title the first document's text", "a second document, no title"]
    table = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["parquet document number one", "parquet document number one"]}), table)
    assert read_user_corpus(table) == ["parquet document number one"]  # deduplicated
    text = tmp_path / "docs.txt"
    text.write_text("a plain text document line\nshort\n")
    assert read_user_corpus(text) == ["a plain text document line"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine document of enough length"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: malformed JSON"):
        read_user_corpus(bad)
    bad.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(DataError, match=r"line 1: field 'text' is missing or not a string"):
        read_user_corpus(bad)
    pq.write_table(pa.table({"body": ["x"]}), table)
    with pytest.raises(DataError, match="no 'text' column"):
        read_user_corpus(table)
    with pytest.raises(DataError, match="unknown corpus format"):
        read_user_corpus(_touch(tmp_path / "docs.csv"))
    with pytest.raises(DataError, match="no such file"):
        read_user_corpus(tmp_path / "missing.jsonl")


def _touch(path):
    path.write_text("x\n")
    return path


class FixedLayers:
    """An Embedder stand-in whose per-layer embeddings are given, keyed by the texts' role."""

    def __init__(self, by_role):
        self.by_role = by_role

    def layers(self, name, texts):
        return self.by_role[name.split("/")[1]]


def _beir_folder(tmp_path):
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"document {i}"} for i in range(4)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n"
                                                  for i in range(4)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4)))
    return folder


def test_index_compatibility_scores_shallow_queries_against_the_originals_documents(tmp_path):
    eye = np.eye(4, dtype=np.float32)
    shifted = np.roll(eye, 1, axis=0)  # each query points at the wrong document
    original = FixedLayers({"docs": np.stack([shifted, eye]), "queries": np.stack([shifted, eye])})
    # the cut's own documents are scrambled, but its queries land on the original's documents
    cut = FixedLayers({"docs": np.stack([shifted, shifted]), "queries": np.stack([eye, eye])})
    result = beir_against_original(original, original, cut, [1], _beir_folder(tmp_path), n_resamples=50)
    assert result["original_ndcg10"] == pytest.approx(1.0) and result["full_ndcg10"] == pytest.approx(1.0)
    assert result["full_minus_original"]["diff"] == 0.0 and result["cos_to_original_final"] == pytest.approx(1.0)
    one = result["cuts"]["1"]
    assert one["index_compat_ndcg10"] == pytest.approx(1.0) and one["index_compat_minus_original"]["diff"] == 0.0
    assert one["ndcg10"] < 0.7 and one["minus_original"]["diff"] < 0  # own index: the cut's docs are wrong
    assert one["cos_to_original_final"] == pytest.approx(0.0) and one["original_cut_ndcg10"] == pytest.approx(1.0)


def test_cheapest_cut_is_the_smallest_depth_within_the_floor_on_dev():
    dev = {"original": 0.80, "cuts": {"2": {"stsb": 0.70}, "3": {"stsb": 0.795}, "4": {"stsb": 0.81}}}
    assert cheapest_cut(dev, 0.01) == 3 and cheapest_cut(dev, 0.0) == 4 and cheapest_cut(dev, -0.1) is None


def test_retrofit_branch_keeps_the_original_bit_for_bit_and_its_max_length(base, tmp_path, capsys):
    from leap_core.cli import main
    from leap_core.model_folder import max_seq_length, read_exit_settings

    original = resolve_model(MODEL)
    before = model_fingerprint(original)
    out = tmp_path / "retrofit.json"
    assert main(["retrofit", MODEL, "--profile", "smoke", "--data-dir", str(base.data.data_dir), "--set",
                 f"output_dir={base.output_dir}", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())[MODEL]
    assert MODEL in capsys.readouterr().out and MODEL in out.with_suffix(".md").read_text()
    assert read_exit_settings(summary["model_dir"])["policy"]["kind"] == summary["policy"]["policy"]["kind"]  # saved
    assert model_fingerprint(original) == before == summary["original_fingerprint"]
    evaluation = summary["evaluation"]
    assert summary["full_is_original"] and summary["stsb_full"] == summary["original_stsb"]
    for scores in summary["beir"].values():
        assert scores["full_ndcg10"] == scores["original_ndcg10"] and scores["cos_to_original_final"] == pytest.approx(1.0)
    assert evaluation["sts_test"]["full_minus_original"]["diff"] == 0.0
    branch = summary["model_dir"]
    assert base.branch.max_length == 32 != max_seq_length(original)
    assert max_seq_length(branch) == max_seq_length(original) == evaluation["max_length"]["cuts"]
    assert read_branch(branch)["exit_layers"] == summary["exit_layers"] == [2, 3]
    assert original_of(branch) == original
    cut = summary["cheapest_cut"]
    assert cut is None or set(cut["ndcg10"]) == set(cut["index_compat_ndcg10"]) == {"scifact", "nfcorpus"}


def test_a_branch_refuses_an_original_whose_weights_changed(tmp_path):
    from leap_core.model_folder import BRANCH_FILE

    folder = tmp_path / "branch"
    folder.mkdir()
    (folder / BRANCH_FILE).write_text(json.dumps({"original": MODEL, "original_fingerprint": "0" * 64,
                                                  "original_layers": 4, "exit_layers": [2]}))
    with pytest.raises(ValueError, match="weights hash differs"):
        original_of(folder)
    with pytest.raises(ValueError, match="not an exit branch"):
        read_branch(tmp_path)


def test_a_cut_is_a_standalone_model_equal_to_the_branch_at_that_depth(base, tmp_path):
    from sentence_transformers import SentenceTransformer

    from leap_core.cli import main
    from leap_core.serve.encoder import EarlyExitEncoder
    from leap_core.evaluation.against_original import Embedder
    from leap_core.retrofit.exit_branch import train_branch
    from leap_core.model_folder import load_heads

    branch = train_branch(base, MODEL).model_dir
    assert main(["cut", str(branch), "--depth", "2", "--out", str(tmp_path / "cut2")]) == 0
    texts = ["a short query", "a somewhat longer text about embeddings and search"]
    standalone = SentenceTransformer(str(tmp_path / "cut2"), device="cpu").encode(texts)
    heads = load_heads(branch)
    assert sorted(heads) == [2, 3] and heads[2][0].shape == (64, 64)
    inside = Embedder(EarlyExitEncoder.from_pretrained(str(branch)), heads=heads).layers("t", texts)[1]
    np.testing.assert_allclose(standalone, inside, atol=1e-5)
    plain = EarlyExitEncoder.from_pretrained(str(branch)).encode(texts, mode="fixed:2")
    assert not np.allclose(standalone, plain, atol=1e-3)  # the head is part of the deployed cut
    assert read_branch(tmp_path / "cut2")["cut_depth"] == 2
    card = (tmp_path / "cut2" / "README.md").read_text()  # leap's card, not the one sentence-transformers re-saves
    assert "It serves the policy **full**" in card and "cut to 2 layers" in card and "SBERT.net" not in card
    # The deployable paths at that point: the same cut, head included, in ONNX Runtime and frozen PyTorch.
    pytest.importorskip("onnxruntime")
    from leap_core.serve.export import OnnxEncoder, export_onnx
    from leap_core.serve.served import TorchCutEncoder

    exported = OnnxEncoder(export_onnx(str(branch), tmp_path / "onnx2", depth=2), precision="fp32")
    np.testing.assert_allclose(exported.encode(texts), standalone, atol=1e-4)
    np.testing.assert_allclose(TorchCutEncoder(str(branch), depth=2).encode(texts), standalone, atol=1e-4)
    at_full = TorchCutEncoder(str(branch), depth=4)  # full depth of a branch is its original
    assert at_full.point.folder == original_of(branch) and at_full.point.policy == "full"
    original = SentenceTransformer(str(original_of(branch)), device="cpu").encode(texts)
    np.testing.assert_allclose(at_full.encode(texts), original, atol=1e-4)
    with pytest.raises(ValueError, match="trained exits"):
        main(["--debug", "cut", str(branch), "--depth", "1", "--out", str(tmp_path / "cut1")])
    assert main(["cut", str(branch), "--depth", "1", "--out", str(tmp_path / "cut1")]) == 2  # one line, no traceback
