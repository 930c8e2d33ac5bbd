"""Judging a query encoder against the original's index: NDCG@10, Recall@100, top-10 agreement, paired CIs.

Scores come from retrieval.score_results (beir's evaluator, per-query NDCG@10 by pytrec_eval) on exact cosine
search of the cached index; the CI is stats.paired_difference_ci over the same test queries (this encoder's
queries against the original's documents, minus the original's queries against them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leap_core.evaluation.retrieval import score_results
from leap_core.query_encoder.index import DocumentIndex
from leap_core.stats import paired_difference_ci

TOP = 10


def topk_overlap(found: np.ndarray, reference: np.ndarray, k: int = TOP) -> np.ndarray:
    """Per-query |top-k(found) & top-k(reference)| / k: agreement with the original's top-k (1.0 = the same set)."""
    if found.shape[0] != reference.shape[0]:
        raise ValueError(f"topk_overlap: {found.shape[0]} queries against {reference.shape[0]}")
    return np.array([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k for a, b in zip(found, reference)])


def search(index: DocumentIndex, query_embs: np.ndarray, query_ids: list[str],
           top_k: int = 100) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    """({qid: {doc_id: score}} top_k results for beir's evaluator, (Q, top_k) document indices, best first)."""
    scores, rows = index.topk(query_embs, top_k)
    results = {q: {index.doc_ids[j]: float(s) for s, j in zip(row_s, row_i)}
               for q, row_s, row_i in zip(query_ids, scores, rows)}
    return results, rows


def retrieval_row(index: DocumentIndex, query_embs: np.ndarray, query_ids: list[str],
                  qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """{"ndcg@10", "recall@100", "per_query" (NDCG@10 in query_ids order), "top": (Q, 100) indices}."""
    results, rows = search(index, query_embs, query_ids)
    scored = score_results(qrels, results, ndcg_ks=(10,))
    per_query = [scored["ndcg@10_per_query"].get(q, 0.0) for q in query_ids]
    return {"ndcg@10": float(np.mean(per_query)), "recall@100": scored["recall@100"], "per_query": per_query,
            "top": rows}


def compare_row(row: dict[str, Any], original: dict[str, Any], n_resamples: int = 2000) -> dict[str, Any]:
    """A row's JSON: NDCG@10, Recall@100, the NDCG@10 difference from original/original (paired bootstrap CI,
    absolute and relative to the original's mean) and agreement with the original's top-10 on the same queries."""
    base = original["ndcg@10"]
    ci = paired_difference_ci(row["per_query"], original["per_query"], n_resamples=n_resamples, seed=0)
    rel = (lambda value: value / base if base else float("nan"))  # noqa: E731
    return {"ndcg10": row["ndcg@10"], "recall100": row["recall@100"],
            "ndcg10_diff": ci["estimate"], "ndcg10_diff_ci": [ci["low"], ci["high"]],
            "ndcg10_rel": rel(ci["estimate"]), "ndcg10_rel_ci": [rel(ci["low"]), rel(ci["high"])],
            "agreement10": float(topk_overlap(row["top"], original["top"]).mean())}
