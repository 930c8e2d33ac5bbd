"""Evaluation suite: bootstrap CIs, layer dynamics, NN@10, sweep replay, streamed BEIR search, diagnostics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from transformers import BertConfig, BertModel

from leap_core.evaluation import retrieval
from leap_core.evaluation.calibrate import calibrate_encoder, choose_theta
from leap_core.evaluation.diagnose import checklist, diagnose, diagnose_encoder, diagnostics
from leap_core.evaluation.layers import contraction_ratios, cumulative_exit_rate, inter_layer_stability
from leap_core.evaluation.neighbours import knn, nn_statistics, overlap
from leap_core.evaluation.sweep import convergence_exits, exited_embeddings, full_sweep, pareto_front, patience_exits
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.stats import mean_ci, paired_difference_ci, seed_summary, spearman_ci, spearman_difference_ci

N_LAYERS = 4
SENTENCES = [
    "A man is playing a guitar.", "no", "Cats sleep.", "What is the capital of France?",
    "The committee approved the proposal after a long and heated debate that lasted until midnight.",
    "I went to the market yesterday and bought fish, bread and some apples for the week.",
    "ok then", "Numbers 1 2 3 4 5 6 7 8 9 10 11 12", "A woman slices an onion.",
    "The quick brown fox jumps over the lazy dog.", "Rain.", "Two children are playing in the snow.",
    "A dog runs across the field.", "The stock market fell sharply on Monday.", "She reads a book.",
    "Heavy rain caused flooding in the city centre.",
]

pytestmark = pytest.mark.usefixtures("one_thread")




def tiny_bert(vocab_size: int, seed: int = 0) -> BertModel:
    # initializer_range 0.2 (not 0.02) so adjacent layers differ and exits vary by row.
    torch.manual_seed(seed)
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=2,
                                intermediate_size=64, vocab_size=vocab_size, initializer_range=0.2)).eval()


class Identity(torch.nn.Module):
    def forward(self, hidden, *args, **kwargs):
        return hidden


def unit(angles_deg) -> np.ndarray:
    radians = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=-1)


# ---------------------------------------------------------------- stats

def test_mean_ci_covers_the_true_mean_at_about_95_percent():
    rng = np.random.default_rng(123)
    covered = 0
    for repeat in range(200):
        interval = mean_ci(rng.normal(1.0, 2.0, size=40), n_resamples=500, seed=repeat)
        covered += interval["low"] <= 1.0 <= interval["high"]
    assert 0.90 <= covered / 200 <= 0.99


def test_spearman_ci_is_scipy_spearman_and_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    interval = spearman_ci(x, y, n_resamples=300, seed=7)
    assert interval["estimate"] == pytest.approx(spearmanr(x, y).statistic)
    assert interval["low"] < interval["estimate"] < interval["high"]
    assert spearman_ci(x, y, n_resamples=300, seed=7) == interval
    assert spearman_ci(x, y, n_resamples=300, seed=8) != interval
    assert spearman_ci(x, y, n_resamples=300, seed=7, method="BCa")["method"] == "BCa"
    with pytest.raises(ValueError, match="differ in length"):
        spearman_ci(x, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        spearman_ci(np.r_[x[:-1], np.nan], y)


def test_paired_differences():
    rng = np.random.default_rng(1)
    a = rng.uniform(size=50)
    constant = paired_difference_ci(a + 0.1, a, n_resamples=200)
    assert (constant["estimate"], constant["low"], constant["high"]) == pytest.approx((0.1, 0.1, 0.1))
    gold = rng.normal(size=50)
    same = spearman_difference_ci(gold, gold, gold, n_resamples=200)
    assert (same["estimate"], same["low"], same["high"]) == pytest.approx((0.0, 0.0, 0.0))
    better = spearman_difference_ci(gold + 0.1 * rng.normal(size=50), rng.normal(size=50), gold, n_resamples=300)
    assert better["low"] > 0


def test_seed_summary_hand_case():
    summary = seed_summary([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * std 1 / sqrt(3)
    assert (summary["estimate"], summary["std"]) == pytest.approx((2.0, 1.0))
    assert (summary["low"], summary["high"]) == pytest.approx((2.0 - half, 2.0 + half))
    single = seed_summary([0.7])
    assert single["estimate"] == 0.7 and single["low"] is None and single["std"] is None


# ---------------------------------------------------------------- layer dynamics and NN@k

def test_layer_dynamics_hand_case():
    layer_embs = unit([[90.0], [60.0], [30.0], [0.0]])  # one row, 4 layers closing in on the last
    step = math.cos(math.pi / 6)  # every layer turns 30 degrees
    assert inter_layer_stability(layer_embs) == pytest.approx([None, step, step, step])
    distance = [1.0, 0.5, 1 - math.cos(math.pi / 6)]  # 1 - cos(e_l, e_4)
    ratios = contraction_ratios(layer_embs)
    assert ratios["per_layer"][:2] == pytest.approx([distance[1] / distance[0], distance[2] / distance[1]])
    assert ratios["per_layer"][2:] == [None, None]
    assert ratios["median"] == pytest.approx((distance[1] / distance[0] + distance[2] / distance[1]) / 2)
    assert cumulative_exit_rate(np.array([2, 3, 3, 5, 5]), 5) == pytest.approx([0.0, 0.2, 0.6, 0.6, 0.6])


def test_knn_and_overlap_hand_case():
    final = unit([0, 10, 30, 100, 180])
    assert knn(final, k=1)[:, 0].tolist() == [1, 0, 1, 2, 3]  # never the row itself
    assert knn(final, k=2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 4], [3, 2]]  # 100 deg: 30 (70 away), 180 (80)
    assert knn(final, k=2, block_size=2).tolist() == knn(final, k=2).tolist()
    assert overlap(np.array([[1, 2], [3, 4]]), np.array([[2, 5], [3, 4]])).tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="k must"):
        knn(final, k=5)


def test_nn_statistics_hand_case():
    final = unit([0, 10, 30, 100, 180])
    swapped = unit([180, 10, 30, 100, 0])  # rows 0 and 4 trade places in layer 1
    # layer-1 1-NN: [3, 4, 1, 2, 1] vs final [1, 0, 1, 2, 3] -> NN@1 per row [0, 0, 1, 1, 0]
    stats = nn_statistics(np.stack([swapped, final]), exit_layers=np.array([1, 1, 1, 2, 2]), k=1)
    assert stats["nn1_per_layer"] == pytest.approx([0.4, 1.0])
    assert stats["nn1_low_share_per_layer"] == pytest.approx([0.6, 0.0])
    assert stats["nn1_low_share_by_exit_layer"] == pytest.approx([2 / 3, 0.0])  # rows 0,1,2 exit at 1
    assert stats["exit_count_by_layer"] == [3, 2]


# ---------------------------------------------------------------- sweep

def clean_theta(layer_embs: np.ndarray, k: int, l_min: int) -> float:
    """A theta in the widest gap among the middle half of the tested cosines: varied exits, no borderline row."""
    cos = np.sort(np.concatenate([(layer_embs[l - 1] * layer_embs[l - 1 - k]).sum(-1)
                                  for l in range(max(l_min, k + 1), layer_embs.shape[0])]))
    lo, hi = len(cos) // 4, 3 * len(cos) // 4
    gaps = np.diff(cos[lo:hi + 1])
    i = int(np.argmax(gaps))
    assert gaps[i] > 1e-3
    return float(cos[lo + i] + gaps[i] / 2)


@pytest.mark.parametrize("k,l_min", [(1, 2), (2, 3)])
def test_replayed_exits_equal_the_encoders(tokenizer, k, l_min):
    encoder = EarlyExitEncoder(tiny_bert(tokenizer.vocab_size), tokenizer, k=k, l_min=l_min, device="cpu")
    layer_embs = encoder.layer_embeddings(SENTENCES, batch_size=5)
    encoder.theta = clean_theta(layer_embs, k, l_min)
    real, real_layers = encoder.encode(SENTENCES, batch_size=5, mode="compact", return_exit_layers=True)
    replayed = convergence_exits(layer_embs, encoder.theta, k, l_min)
    assert len(set(real_layers.tolist())) >= 2  # not a trivial case
    assert replayed.tolist() == real_layers.tolist()
    assert (exited_embeddings(layer_embs, replayed) * real).sum(-1).min() > 0.9999


def test_patience_rule_hand_case():
    # one row; steps between layers: 40, 1, 1, 38, 1, 1 degrees -> "stable" (cos >= 0.99) at layers 3, 4, 6, 7
    layer_embs = unit([[0], [40], [41], [42], [80], [81], [82]])
    assert patience_exits(layer_embs, 0.99, patience=1).tolist() == [3]
    assert patience_exits(layer_embs, 0.99, patience=2).tolist() == [4]
    assert patience_exits(layer_embs, 0.99, patience=2, l_min=5).tolist() == [7]  # the streak at 6 is 1: no exit
    assert patience_exits(layer_embs, 0.99, patience=3).tolist() == [7]
    assert convergence_exits(layer_embs, 0.99, k=1, l_min=1).tolist() == [3]  # patience 1 is the k=1 rule
    assert convergence_exits(layer_embs, 0.99, k=2, l_min=1).tolist() == [4]  # cos(p_4, p_2) = cos 2 degrees


def test_pareto_front_and_full_sweep():
    points = [dict(method="m", name=n, layer_reduction=r, q=q) for n, r, q in
              [("A", 1.0, 0.80), ("B", 1.5, 0.78), ("C", 1.5, 0.75), ("D", 2.0, 0.70), ("E", 1.2, 0.70)]]
    assert [p["name"] for p in pareto_front(points, "q")] == ["A", "B", "D"]

    # row 0 moves 50, 1, 1 degrees a layer (settles at layer 3), row 1 moves 60 degrees every layer
    layer_embs = unit([[0, 90], [50, 150], [51, 210], [52, 270]])
    sweep = full_sweep(layer_embs, lambda embs: {"q": float(embs[0] @ [1.0, 0.0])}, "q", thetas=(0.3, 0.99),
                       l_min=2, patiences=(1,))
    assert [p["depth"] for p in sweep["fixed"]] == [1, 2, 3, 4]
    assert [p["q"] for p in sweep["fixed"]] == pytest.approx(np.cos(np.deg2rad([0, 50, 51, 52])))
    # theta 0.3: cos 50 and cos 60 pass, both exit at l_min = 2; theta 0.99: row 0 at 3, row 1 runs to 4
    assert [p["mean_exit_layer"] for p in sweep["threshold"]] == [2.0, 3.5]
    assert sweep["patience"][0]["exit_distribution"] == [0.0, 0.0, 0.5, 0.5]
    # layer 1 is best and cutting at depth 2 is as fast as theta 0.3 and better: truncation wins here
    assert [(p["method"], p.get("depth")) for p in sweep["pareto"]] == [("fixed", 1)]
    assert not sweep["early_exit_beats_truncation"]
    assert all(p["layer_reduction"] == pytest.approx(4 / p["mean_exit_layer"]) for p in sweep["threshold"])


# ---------------------------------------------------------------- retrieval

def test_ndcg_hand_case_through_beir():
    qrels = {"q1": {"d1": 1, "d3": 2}, "q2": {"d2": 1}}
    results = {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7}, "q2": {"d1": 0.9, "d2": 0.5}}
    scored = retrieval.score_results(qrels, results)
    # q1: DCG = 1/log2(2) + 2/log2(4) = 2, IDCG = 2 + 1/log2(3); q2: d2 at rank 2 -> 1/log2(3)
    q1, q2 = 2 / (2 + 1 / math.log2(3)), 1 / math.log2(3)
    assert scored["ndcg@10_per_query"] == pytest.approx({"q1": q1, "q2": q2})
    assert scored["ndcg@10"] == pytest.approx((q1 + q2) / 2, abs=1e-5)
    assert scored["ndcg@1"] == pytest.approx((1 / 2 + 0) / 2)  # q1: gain 1 of ideal 2; q2: miss
    assert scored["recall@100"] == 1.0


def test_streaming_topk_equals_dense_search_and_bounds_score_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(7, 8)).astype(np.float32)
    docs = rng.normal(size=(53, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    dense = torch.topk(torch.from_numpy(queries @ docs.T), 5, dim=1)
    shapes = []
    real = retrieval.score_block
    monkeypatch.setattr(retrieval, "score_block", lambda q, d: shapes.append((q.shape[0], d.shape[0])) or real(q, d))
    chunks = (docs[i:i + 10] for i in range(0, 53, 10))
    scores, index = retrieval.streaming_topk(queries, chunks, top_k=5, query_block=3)
    assert index.tolist() == dense.indices.tolist()
    np.testing.assert_allclose(scores, dense.values.numpy(), atol=1e-6)
    assert max(q for q, _ in shapes) <= 3 and max(d for _, d in shapes) <= 10  # never a (Q, N_docs) matrix
    _, everything = retrieval.streaming_topk(queries, [docs[:30], docs[30:]], top_k=100)
    assert everything.shape == (7, 53) and sorted(everything[0].tolist()) == list(range(53))


def write_beir(folder, docs, queries, qrels):
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as out:
        for doc_id, (title, text) in docs.items():
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as out:
        for qid, text in queries.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, rels in qrels.items() for d, s in rels.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")


BEIR_DOCS = {f"d{i}": (f"Title {i}", s) for i, s in enumerate(SENTENCES)}
BEIR_QUERIES = {"q1": "a musician with a guitar", "q2": "food shopping", "q3": "weather and floods"}
BEIR_QRELS = {"q1": {"d0": 1}, "q2": {"d5": 2, "d8": 1}, "q3": {"d15": 1, "d10": 1}}


def test_evaluate_retrieval_streams_and_matches_dense(tmp_path, tokenizer, monkeypatch):
    """Streaming top-k over chunks scores exactly as a dense score matrix of the same embeddings would."""
    write_beir(tmp_path / "tiny", BEIR_DOCS, BEIR_QUERIES, BEIR_QRELS)
    encoder = EarlyExitEncoder(tiny_bert(tokenizer.vocab_size), tokenizer, theta=0.3, l_min=2, device="cpu")
    shapes, used = [], []
    real_block, real_topk = retrieval.score_block, retrieval.streaming_topk
    monkeypatch.setattr(retrieval, "score_block",
                        lambda q, d: shapes.append((q.shape[0], d.shape[0])) or real_block(q, d))

    def capture(query_embs, chunks, *args, **kwargs):
        chunks = [np.asarray(chunk) for chunk in chunks]
        used.append((np.asarray(query_embs), np.concatenate(chunks)))
        return real_topk(query_embs, chunks, *args, **kwargs)

    monkeypatch.setattr(retrieval, "streaming_topk", capture)
    got = retrieval.evaluate_retrieval(encoder, tmp_path / "tiny", modes=("full", "compact"), chunk_size=4,
                                       query_block=2, n_resamples=100)
    assert max(shapes) <= (2, 4) and len(used) == 2
    texts = [retrieval.document_text({"title": title, "text": text}) for title, text in BEIR_DOCS.values()]
    # The chunked encode is the encoder's own (full depth has no exit decision that float noise could flip).
    np.testing.assert_allclose(used[0][1], encoder.encode(texts, mode="full"), atol=1e-5)
    ids = list(BEIR_DOCS)
    for mode, (qs, docs) in zip(("full", "compact"), used):  # identical embeddings must give identical scores
        scores = qs @ docs.T
        dense = {q: {ids[j]: float(scores[i, j]) for j in range(len(ids))} for i, q in enumerate(BEIR_QUERIES)}
        want = retrieval.score_results(BEIR_QRELS, dense)
        assert got["modes"][mode]["ndcg@10_per_query"] == pytest.approx(want["ndcg@10_per_query"], abs=1e-12)
        assert got["modes"][mode]["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-12)
    exits = got["modes"]["compact"]["corpus_exit"]
    assert 0 < exits["exit_rate"] <= 1 and "corpus_exit" not in got["modes"]["full"]
    assert (got["n_docs"], got["n_queries"]) == (16, 3)


def test_subsample_keeps_judged_documents():
    corpus = {f"d{i}": {"title": "", "text": str(i)} for i in range(10)}
    queries = {"q1": "a", "q2": "b", "q3": "c"}
    qrels = {"q1": {"d7": 1}, "q2": {"d9": 1, "d2": 1}, "q3": {"d0": 1}}
    small_corpus, small_queries, small_qrels = retrieval.subsample(corpus, queries, qrels, max_docs=4, max_queries=2)
    assert list(small_corpus) == ["d7", "d9", "d2", "d0"]
    assert list(small_queries) == ["q1", "q2"] and small_qrels == {"q1": {"d7": 1}, "q2": {"d9": 1, "d2": 1}}


# ---------------------------------------------------------------- diagnostics and calibration

def test_diagnostic_rules_fire_one_at_a_time():
    cases = [
        ([0.2, 0.5, 0.69, 1.0], 0.3, 0.05, "flat_similarity_curve"),
        ([0.2, 0.8, 1.0], 0.0, 0.05, "zero_exit_rate"),
        ([0.5, 0.9, 1.0], 0.05, 0.20, "overhead_without_exits"),
        ([0.5, 0.9, 1.0], 0.05, 0.10, None),  # overhead within 15%
        ([0.5, 0.9, 1.0], 0.20, 0.30, None),  # overhead paid for by exits
        ([0.5, 0.9, 1.0], 0.05, None, None),  # overhead not measured
    ]
    for similarity, exit_rate, overhead, fired in cases:
        result = diagnostics(similarity, exit_rate, overhead)
        assert [name for name, d in result["diagnostics"].items() if d["fired"]] == ([fired] if fired else [])
        assert result["verdict"] == ("incompatible" if fired else "compatible")


def test_checklist_hand_case():
    passing = checklist([0.5, 0.95, 1.0], [0.4, 0.85, 1.0], exit_rate=0.6, mean_exit_layer=2.2)
    assert passing["target_layer"] == 2 and passing["passes"]
    failing = checklist([0.5, 0.93, 1.0], [0.4, 0.85, 1.0], exit_rate=0.5, mean_exit_layer=1.6)
    failed = [name for name, item in failing["items"].items() if not item["passes"]]
    assert failed == ["similarity_at_target", "exit_rate"]


def test_identity_layer_model_is_compatible(tokenizer):
    model = tiny_bert(tokenizer.vocab_size)
    for layer in (3, 4):  # p_3 = p_2 = p_4: converged from layer 2 on
        model.encoder.layer[layer - 1] = Identity()
    encoder = EarlyExitEncoder(model, tokenizer, theta=0.95, l_min=2, device="cpu")
    result = diagnose_encoder(encoder, SENTENCES, batch_size=8, warmup=0, runs=1)
    assert result["verdict"] == "compatible" and result["checklist"]["passes"]
    assert result["exit_rate"] == 1.0 and result["mean_exit_layer"] == 3.0  # cos(p_3, p_2) = 1 at the first test
    assert result["similarity_to_final"][1:] == pytest.approx([1.0, 1.0, 1.0])
    assert result["monitoring"]["runs"] == 1 and result["monitoring"]["full_seconds"] > 0


def test_random_model_folder_is_incompatible_and_cli_writes_json(tmp_path, tokenizer):
    from leap_core.cli import main

    folder = tmp_path / "random"
    tiny_bert(tokenizer.vocab_size).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (tmp_path / "stsb").mkdir()
    lines = ["score\tsentence1\tsentence2"] + [f"{i % 5}.0\t{a}\t{b}" for i, (a, b) in
                                              enumerate(zip(SENTENCES[::2], SENTENCES[1::2]))]
    (tmp_path / "stsb" / "test.tsv").write_text("\n".join(lines) + "\n")
    result = diagnose(str(folder), data_dir=tmp_path, measure_overhead=False)
    assert result["verdict"] == "incompatible" and result["l_min"] == 2  # half of 4 layers
    assert result["diagnostics"]["zero_exit_rate"]["fired"] and result["exit_rate"] == 0.0
    assert result["n_sentences"] == 16 and len(result["similarity_to_final"]) == N_LAYERS

    out = tmp_path / "reports" / "diagnose.json"
    assert main(["diagnose", str(folder), "--data-dir", str(tmp_path), "--max-sentences", "12",
                 "--no-overhead", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["verdict"] == "incompatible" and written["n_sentences"] == 12
    assert {"verdict", "exit_rate", "similarity_to_final"} <= set(written)


def test_choose_theta_hand_case():
    points = [dict(theta=t, layer_reduction=r, sts_drop=d, nn10=n) for t, r, d, n in
              [(0.90, 1.8, 0.030, 0.70), (0.93, 1.6, 0.008, 0.78), (0.95, 1.6, 0.005, 0.82), (0.99, 1.1, 0.0, 0.95)]]
    assert choose_theta(points, max_sts_drop=0.01)["theta"] == 0.95  # tie on reduction: the larger theta
    assert choose_theta(points, max_sts_drop=0.05)["theta"] == 0.90
    assert choose_theta(points, min_nn10=0.9)["theta"] == 0.99
    assert choose_theta(points, max_sts_drop=0.001, min_nn10=0.99) is None
    with pytest.raises(ValueError, match="floor"):
        choose_theta(points)


def test_calibrate_encoder_picks_the_fastest_theta_meeting_the_floor(tokenizer):
    from leap_core.data.sts import StsPairs

    pairs = StsPairs(SENTENCES[::2], SENTENCES[1::2], [float(i % 5) for i in range(8)])
    encoder = EarlyExitEncoder(tiny_bert(tokenizer.vocab_size), tokenizer, l_min=2, device="cpu")
    result = calibrate_encoder(encoder, pairs, max_sts_drop=0.05, thetas=(-1.0, 0.5, 0.999))
    never = result["points"][-1]
    assert never["exit_rate"] == 0.0 and never["sts_drop"] == pytest.approx(0.0) and never["nn10"] == 1.0
    assert result["points"][0]["mean_exit_layer"] == 2.0  # theta -1: every row exits at l_min
    meeting = [p for p in result["points"] if p["sts_drop"] <= 0.05]
    assert result["expected_layer_reduction"] == max(p["layer_reduction"] for p in meeting)


# ---------------------------------------------------------------- the whole suite

def test_evaluate_all_on_tiny_models(tmp_path, tokenizer):
    from leap_core.evaluation.suite import evaluate_all
    from leap_core.report.eval_report import render_markdown

    for seed in (0, 1):
        folder = tmp_path / f"model{seed}"
        tiny_bert(tokenizer.vocab_size, seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    (tmp_path / "stsb").mkdir()
    lines = ["score\tsentence1\tsentence2"] + [f"{(i * 7) % 5}.0\t{a}\t{b}" for i, (a, b) in
                                              enumerate(zip(SENTENCES, SENTENCES[3:] + SENTENCES[:3]))]
    for split in ("test", "dev"):
        (tmp_path / "stsb" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    write_beir(tmp_path / "beir" / "tiny", BEIR_DOCS, BEIR_QUERIES, BEIR_QRELS)
    results = evaluate_all({"a": str(tmp_path / "model0"), "b": str(tmp_path / "model1")}, tmp_path,
                           seed_groups={"ab": ["a", "b"]}, theta=0.5, l_min=2, n_resamples=100,
                           beir_sets=["beir/tiny"], measure_overhead=False)
    text = json.dumps(results, allow_nan=False)  # strict JSON
    assert json.loads(text)["models"]["a"]["sts"]["n_pairs"] == 16
    sts = results["models"]["a"]["sts"]
    assert sts["stsb_full_ci"]["low"] <= sts["stsb_full"] <= sts["stsb_full_ci"]["high"]
    assert len(sts["nn10_per_layer"]) == N_LAYERS and sts["nn10_per_layer"][-1] == 1.0
    assert results["comparisons"]["b"]["reference"] == "a"
    assert set(results["comparisons"]["b"]["beir"]["tiny"]) == {"full", "compact"}
    assert results["seed_groups"]["ab"]["stsb_full"]["estimate"] == pytest.approx(
        (sts["stsb_full"] + results["models"]["b"]["sts"]["stsb_full"]) / 2)
    assert results["models"]["a"]["calibration"]["floor"] == {"max_sts_drop": 0.01}
    markdown = render_markdown(results)
    assert "## BEIR" in markdown and "## Seeds: ab" in markdown and f"{sts['stsb_full']:.3f}" in markdown
