"""BEIR retrieval with an EarlyExitEncoder: streamed dense search, scored by beir's EvaluateRetrieval.

Documents are encoded as (title + " " + text).strip() (beir's own convention), queries as their text,
both with the same encoder mode, so "compact" means early exit on both sides. Search is exact cosine
top-k: the corpus is encoded chunk by chunk and each chunk is scored against a block of queries at a
time, merged into a running top-k with torch.topk. Memory holds the (Q, top_k) running lists, one
corpus chunk's embeddings and one (query_block, chunk_size) score block: it does not grow with the
corpus (apart from one id string and one exit-layer int per document).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from leap_core.evaluation.layers import exit_statistics
from leap_core.stats import mean_ci

log = logging.getLogger(__name__)

NDCG_KS = (1, 3, 5, 10)
RECALL_K = 100


def document_text(doc: dict[str, str]) -> str:
    """A BEIR document as the encoder reads it: title + " " + text, stripped."""
    return (doc.get("title", "") + " " + doc.get("text", "")).strip()


def subsample(corpus: dict, queries: dict, qrels: dict, max_docs: int | None = None,
              max_queries: int | None = None) -> tuple[dict, dict, dict]:
    """A deterministic smaller task for quick runs (None keeps everything).

    Queries: the first max_queries judged query ids in sorted order. Documents: every document judged
    for those queries first (so each query keeps its relevant documents, up to max_docs), then the
    rest in corpus order up to max_docs. Qrels are restricted to the kept queries and documents.
    """
    for name, value in (("max_docs", max_docs), ("max_queries", max_queries)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    query_ids = sorted(q for q in queries if q in qrels)
    if max_queries is not None:
        query_ids = query_ids[:max_queries]
    doc_ids = list(corpus)
    if max_docs is not None:
        judged = dict.fromkeys(d for q in query_ids for d in qrels[q] if d in corpus)
        doc_ids = list(dict.fromkeys([*judged, *corpus]))[:max_docs]
    kept_docs = set(doc_ids)
    new_qrels = {q: {d: s for d, s in qrels[q].items() if d in kept_docs} for q in query_ids}
    new_qrels = {q: rels for q, rels in new_qrels.items() if rels}
    return ({d: corpus[d] for d in doc_ids}, {q: queries[q] for q in query_ids if q in new_qrels}, new_qrels)


def score_block(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """Cosine scores (q, c) of normalised query and document embeddings: the only score matrix ever built."""
    return queries @ docs.T


def streaming_topk(query_embs: Any, doc_chunks: Iterable[Any], top_k: int = RECALL_K,
                   query_block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k documents per query, reading the corpus embeddings one chunk at a time.

    query_embs: (Q, d) normalised; doc_chunks: (c_i, d) normalised arrays, in corpus order.
    Returns (scores, indices), each (Q, min(top_k, N_docs)), best first; indices count documents
    across chunks from 0.
    """
    queries = torch.as_tensor(np.asarray(query_embs), dtype=torch.float32)
    n_queries = queries.shape[0]
    best_scores = torch.full((n_queries, top_k), -torch.inf)
    best_index = torch.full((n_queries, top_k), -1, dtype=torch.long)
    offset = 0
    for chunk in doc_chunks:
        docs = torch.as_tensor(np.asarray(chunk), dtype=torch.float32)
        chunk_index = torch.arange(offset, offset + docs.shape[0])
        for start in range(0, n_queries, query_block):
            stop = min(start + query_block, n_queries)
            scores = torch.cat([best_scores[start:stop], score_block(queries[start:stop], docs)], dim=1)
            index = torch.cat([best_index[start:stop], chunk_index.expand(stop - start, -1)], dim=1)
            top = torch.topk(scores, top_k, dim=1)
            best_scores[start:stop] = top.values
            best_index[start:stop] = index.gather(1, top.indices)
        offset += docs.shape[0]
    kept = min(top_k, offset)
    return best_scores[:, :kept].numpy(), best_index[:, :kept].numpy()


def _encode_chunks(encoder: Any, texts: list[str], mode: str, chunk_size: int, batch_size: int,
                   exit_layers: list[np.ndarray]) -> Iterator[np.ndarray]:
    for start in range(0, len(texts), chunk_size):
        embs, layers = encoder.encode(texts[start : start + chunk_size], batch_size=batch_size, mode=mode,
                                      normalize_embeddings=True, return_exit_layers=True)
        exit_layers.append(layers.astype(np.int16))
        yield embs


def retrieve(encoder: Any, corpus: dict[str, dict[str, str]], queries: dict[str, str], mode: str = "full",
             top_k: int = RECALL_K, batch_size: int = 32, chunk_size: int = 2048,
             query_block: int = 256) -> tuple[dict[str, dict[str, float]], np.ndarray, np.ndarray]:
    """Top-k results {qid: {doc_id: score}} with the encoder in `mode`, plus query and corpus exit layers."""
    doc_ids = list(corpus)
    query_ids = list(queries)
    query_embs, query_layers = encoder.encode([queries[q] for q in query_ids], batch_size=batch_size, mode=mode,
                                              normalize_embeddings=True, return_exit_layers=True)
    corpus_layers: list[np.ndarray] = []
    chunks = _encode_chunks(encoder, [document_text(corpus[d]) for d in doc_ids], mode, chunk_size, batch_size,
                            corpus_layers)
    scores, index = streaming_topk(query_embs, chunks, top_k, query_block)
    results = {q: {doc_ids[j]: float(s) for s, j in zip(row_scores, row_index)}
               for q, row_scores, row_index in zip(query_ids, scores, index)}
    corpus_exit = np.concatenate(corpus_layers).astype(np.int64) if corpus_layers else np.zeros(0, dtype=np.int64)
    return results, np.asarray(query_layers, dtype=np.int64), corpus_exit


def score_results(qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]],
                  ndcg_ks: Iterable[int] = NDCG_KS, recall_k: int = RECALL_K,
                  ignore_identical_ids: bool = True) -> dict[str, Any]:
    """beir's EvaluateRetrieval.evaluate (NDCG@ndcg_ks, Recall@recall_k) and per-query NDCG@10.

    Per-query values come from pytrec_eval, the evaluator beir itself uses, on the same results (after
    beir drops documents whose id equals the query id when ignore_identical_ids), so their mean is
    beir's NDCG@10 up to beir's rounding to 5 decimals.
    """
    # deferred: at top, importing this module would load beir, pytrec_eval
    import pytrec_eval
    from beir.retrieval.evaluation import EvaluateRetrieval

    ks = sorted(set(ndcg_ks) | {recall_k, 10})
    ndcg, _map, recall, _precision = EvaluateRetrieval.evaluate(qrels, results, ks, ignore_identical_ids)
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(results)
    return {
        **{f"ndcg@{k}": ndcg[f"NDCG@{k}"] for k in ndcg_ks},
        f"recall@{recall_k}": recall[f"Recall@{recall_k}"],
        "ndcg@10_per_query": {q: float(v["ndcg_cut_10"]) for q, v in sorted(per_query.items())},
    }


def evaluate_retrieval(encoder: Any, folder: str | Path, modes: Iterable[str] = ("full", "compact"),
                       split: str = "test", max_docs: int | None = None, max_queries: int | None = None,
                       batch_size: int = 32, chunk_size: int = 2048, query_block: int = 256,
                       n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
                       ignore_identical_ids: bool = True) -> dict[str, Any]:
    """A BEIR-layout folder (leap_core.data.load_beir) scored for each encoder mode.

    Returns {"dataset", "split", "n_docs", "n_queries", "modes": {mode: {ndcg@1/3/5/10, recall@100,
    ndcg@10_per_query, ndcg@10_ci (bootstrap over queries), query_exit, corpus_exit (exit
    statistics; absent for "full")}}}. max_docs / max_queries: see subsample (default: everything).
    """
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data.beir import load_beir

    corpus, queries, qrels = subsample(*load_beir(folder, split), max_docs, max_queries)
    out: dict[str, Any] = {"dataset": Path(str(folder)).name, "split": split, "n_docs": len(corpus),
                           "n_queries": len(queries), "modes": {}}
    n_layers = encoder.num_layers
    for mode in modes:
        results, query_layers, corpus_layers = retrieve(encoder, corpus, queries, mode, RECALL_K, batch_size,
                                                        chunk_size, query_block)
        scored = score_results(qrels, results, ignore_identical_ids=ignore_identical_ids)
        per_query = list(scored["ndcg@10_per_query"].values())
        scored["ndcg@10_ci"] = (mean_ci(per_query, n_resamples=n_resamples, seed=seed, confidence=confidence)
                                if len(per_query) > 1 else None)
        if mode != "full":
            scored["query_exit"] = exit_statistics(query_layers, n_layers)
            scored["corpus_exit"] = exit_statistics(corpus_layers, n_layers)
        log.info("%s %s: ndcg@10 %.4f", out["dataset"], mode, scored["ndcg@10"])
        out["modes"][mode] = scored
    return out


class Ndcg10:
    """Per-query NDCG@10 of exact cosine search, by pytrec_eval (beir's own evaluator), for one query set.

    Built once per (qrels, ids) and called per embedding pair: only the top 10 (after beir's rule that drops a
    document whose id is the query's) are scored, which gives the same NDCG@10 as scoring beir's top 100.
    """

    def __init__(self, qrels: dict[str, dict[str, int]], query_ids: list[str], doc_ids: list[str]):
        # deferred: at top, importing this module would load pytrec_eval
        import pytrec_eval

        self.query_ids, self.doc_ids = query_ids, doc_ids
        self.evaluator = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in query_ids}, {"ndcg_cut.10"})

    def __call__(self, query_embs: np.ndarray, doc_embs: np.ndarray) -> np.ndarray:
        scores, index = streaming_topk(query_embs, [doc_embs], 11)
        results = {}
        for query, row_s, row_i in zip(self.query_ids, scores, index):
            hits = [(self.doc_ids[j], float(s)) for s, j in zip(row_s, row_i) if self.doc_ids[j] != query]
            results[query] = dict(hits[:10])
        scored = self.evaluator.evaluate(results)
        return np.array([scored[q]["ndcg_cut_10"] for q in self.query_ids])
