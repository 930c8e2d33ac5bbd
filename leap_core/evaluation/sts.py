"""STS evaluation: Spearman correlation of cosine similarities with gold scores, full depth and exited."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator

import numpy as np
from scipy.stats import spearmanr

from leap_core.evaluation.layers import common_component, exit_statistics, similarity_to_final

log = logging.getLogger(__name__)


@contextlib.contextmanager
def progress(what: str) -> Iterator[None]:
    """Log `what` as it starts and, with its seconds, as it ends: a long evaluation says what it is doing."""
    log.info("%s ...", what)
    started = time.perf_counter()
    yield
    log.info("%s: done in %.0f s", what, time.perf_counter() - started)


def spearman(emb1: np.ndarray, emb2: np.ndarray, scores: Any) -> float:
    """Spearman rho between cos(emb1[i], emb2[i]) and scores[i]; emb1, emb2 are (N, d)."""
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    gold = np.asarray(scores, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or gold.shape != (a.shape[0],):
        raise ValueError(
            f"spearman: emb1 {a.shape}, emb2 {b.shape} and scores {gold.shape} must be (N, d), (N, d), (N,)"
        )
    if a.shape[0] < 2:
        raise ValueError(f"spearman: needs at least 2 pairs, got {a.shape[0]}")
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return float(spearmanr(cos, gold).statistic)


def pair_rows(pairs: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each distinct sentence once (sentences1, then sentences2, first-seen order) and each pair's two rows.

    pairs: anything with .sentences1 and .sentences2; a sentence is encoded once however many pairs hold it.
    """
    unique = list(dict.fromkeys(list(pairs.sentences1) + list(pairs.sentences2)))
    row = {sentence: i for i, sentence in enumerate(unique)}
    idx1 = np.array([row[s] for s in pairs.sentences1], dtype=np.int64)
    idx2 = np.array([row[s] for s in pairs.sentences2], dtype=np.int64)
    return unique, idx1, idx2


def evaluate_sts(encoder: Any, pairs: Any, batch_size: int = 32) -> dict[str, Any]:
    """Score an EarlyExitEncoder on STS pairs (anything with .sentences1, .sentences2, .scores).

    Each unique sentence is encoded once at full depth (every layer) and once with early exit
    (mode "compact", the encoder's theta, k, l_min). Exit statistics count unique sentences.
    Returns stsb_full, stsb_exited, the exit statistics of layers.exit_statistics, similarity_to_final,
    common_component and stsb_per_layer (index l-1 = layer l), n_pairs, n_sentences, n_layers, theta, k, l_min.
    """
    s1, s2, gold = list(pairs.sentences1), list(pairs.sentences2), np.asarray(pairs.scores, dtype=np.float64)
    if not (len(s1) == len(s2) == len(gold)):
        raise ValueError(
            f"pairs: sentences1 ({len(s1)}), sentences2 ({len(s2)}) and scores ({len(gold)}) differ in length"
        )
    unique, idx1, idx2 = pair_rows(pairs)

    with progress(f"STS: {len(unique)} distinct sentences through all {encoder.num_layers} layers"):
        layer_embs = encoder.layer_embeddings(unique, batch_size=batch_size)
    with progress(f"STS: {len(unique)} sentences exiting (compact mode)"):
        exited, exit_layers = encoder.encode(
            unique, batch_size=batch_size, mode="compact", normalize_embeddings=True, return_exit_layers=True
        )
    n_layers = layer_embs.shape[0]
    per_layer = [spearman(embs[idx1], embs[idx2], gold) for embs in layer_embs]
    return {
        "stsb_full": per_layer[-1],
        "stsb_exited": spearman(exited[idx1], exited[idx2], gold),
        **exit_statistics(exit_layers, n_layers),
        "similarity_to_final": similarity_to_final(layer_embs),
        "common_component": common_component(layer_embs),
        "stsb_per_layer": per_layer,
        "n_pairs": len(s1),
        "n_sentences": len(unique),
        "n_layers": n_layers,
        "theta": encoder.theta,
        "k": encoder.k,
        "l_min": encoder.l_min,
    }
