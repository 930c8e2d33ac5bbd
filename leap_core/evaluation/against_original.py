"""A retrofit judged the way its users use it: every depth against the ORIGINAL model, on STS and retrieval.

For the full path and each fixed cut d of a retrofit: STS Spearman, BEIR NDCG@10 (every document, each
model's own max length), the mean cosine to the original's final embeddings, and index compatibility
(queries embedded at depth d against documents the ORIGINAL embedded at full depth: what a user whose
index was built by the original gets without re-embedding it). Every figure comes as a paired difference
with the original with a bootstrap CI (pairs for STS, queries for NDCG@10).

Embeddings come from EarlyExitEncoder.layer_embeddings, so one pass of a model gives every cut; a full
path whose weights hash like the original's IS the original and reuses its embeddings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from leap_core.config import ENCODE_BATCH_SIZE
from leap_core.io import atomic_path, sha256_strings

log = logging.getLogger(__name__)


def mean_cosine(embeddings: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of cos(embeddings[i], reference[i]); both (N, d), normalised."""
    return float(np.mean((embeddings * reference).sum(-1)))


def rank_ndcg10(query_embs: np.ndarray, doc_embs: np.ndarray, query_ids: list[str], doc_ids: list[str],
                qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Per-query NDCG@10 of exact cosine search (retrieval.streaming_topk, scored by beir via score_results)."""
    # deferred: at top, importing this module would load torch, scipy, tqdm
    from leap_core.evaluation.retrieval import RECALL_K, score_results, streaming_topk

    scores, index = streaming_topk(query_embs, [doc_embs], RECALL_K)
    results = {q: {doc_ids[j]: float(s) for s, j in zip(row_s, row_i)} for q, row_s, row_i in zip(query_ids, scores, index)}
    return score_results(qrels, results)["ndcg@10_per_query"]


def _ci(a: Sequence[float], b: Sequence[float], n_resamples: int) -> dict[str, float]:
    # deferred: at top, importing this module would load scipy
    from leap_core.stats import paired_difference_ci

    ci = paired_difference_ci(a, b, n_resamples=n_resamples, seed=0)
    return {"diff": ci["estimate"], "ci_low": ci["low"], "ci_high": ci["high"]}


def _sts_ci(a: np.ndarray, b: np.ndarray, gold: np.ndarray, n_resamples: int) -> dict[str, float]:
    # deferred: at top, importing this module would load scipy
    from leap_core.stats import spearman_difference_ci

    ci = spearman_difference_ci(a, b, gold, n_resamples=n_resamples, seed=0)
    return {"diff": ci["estimate"], "ci_low": ci["low"], "ci_high": ci["high"]}


class Embedder:
    """Every layer's normalised pools of one model (EarlyExitEncoder.layer_embeddings), remembered per text set.

    heads: {layer: (weight, bias)} exit heads (leap_core.retrofit.exit_branch) applied to those layers' pools, re-normalised.
    cache_dir and fingerprint (the model folder's weights hash): pools also kept on disk as .npy, keyed by the
    weights, the texts and the max length, so the original's are computed once for every run judged against it.
    """

    def __init__(self, encoder: Any, batch_size: int = ENCODE_BATCH_SIZE, heads: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
                 cache_dir: str | Path | None = None, fingerprint: str | None = None):
        self.encoder, self.batch_size, self.heads, self._memo = encoder, batch_size, heads or {}, {}
        self.cache_dir, self.fingerprint = (Path(cache_dir) if cache_dir else None), fingerprint

    def _pools(self, texts: list[str]) -> np.ndarray:
        if self.cache_dir is None or self.fingerprint is None:
            return self.encoder.layer_embeddings(texts, batch_size=self.batch_size)
        key = sha256_strings([self.fingerprint, str(self.encoder.max_length), sha256_strings(texts)])[:24]
        file = self.cache_dir / f"pools-{key}.npy"
        if file.is_file():
            return np.load(file, allow_pickle=False)
        pools = self.encoder.layer_embeddings(texts, batch_size=self.batch_size)
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, pools, allow_pickle=False)
        return pools

    def layers(self, name: str, texts: list[str]) -> np.ndarray:
        if name not in self._memo:
            pools = self._pools(texts)
            for layer, (weight, bias) in self.heads.items():
                mapped = pools[layer - 1] @ weight.T + bias
                pools[layer - 1] = mapped / np.maximum(np.linalg.norm(mapped, axis=-1, keepdims=True), 1e-12)
            self._memo[name] = pools
        return self._memo[name]


def sts_against_original(original: Embedder, full: Embedder, cuts: Embedder, depths: Sequence[int], pairs: Any,
                         name: str, n_resamples: int = 2000) -> dict[str, Any]:
    """STS Spearman of the full path and each cut, each minus the original's, with CIs; cosines to the original."""
    # deferred: at top, importing this module would load scipy
    from leap_core.evaluation.sts import pair_rows

    unique, idx1, idx2 = pair_rows(pairs)
    gold = np.asarray(pairs.scores, dtype=np.float64)
    original_layers = original.layers(name, unique)
    reference = original_layers[-1]
    pair_cos = lambda e: (e[idx1] * e[idx2]).sum(-1)  # noqa: E731
    out: dict[str, Any] = {"n_pairs": len(gold), "original": _spearman(pair_cos(reference), gold)}
    full_final = full.layers(name, unique)[-1]
    out.update(full=_spearman(pair_cos(full_final), gold), cos_full_to_original=mean_cosine(full_final, reference),
               full_minus_original=_sts_ci(pair_cos(full_final), pair_cos(reference), gold, n_resamples))
    cut_layers = cuts.layers(name, unique)
    out["cuts"] = {}
    for depth in depths:
        cut = cut_layers[depth - 1]
        out["cuts"][str(depth)] = {
            "stsb": _spearman(pair_cos(cut), gold), "cos_to_original": mean_cosine(cut, reference),
            "original_cut_stsb": _spearman(pair_cos(original_layers[depth - 1]), gold),
            "minus_original": _sts_ci(pair_cos(cut), pair_cos(reference), gold, n_resamples)}
    return out


def _spearman(predicted: np.ndarray, gold: np.ndarray) -> float:
    # deferred: at top, importing this module would load scipy
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, gold).statistic)


def beir_against_original(original: Embedder, full: Embedder, cuts: Embedder, depths: Sequence[int],
                          folder: str | Path, n_resamples: int = 2000, max_docs: int | None = None,
                          max_queries: int | None = None) -> dict[str, Any]:
    """NDCG@10 of the full path, each cut, and each cut's queries against the original's index, on one BEIR set.

    max_docs / max_queries: retrieval.subsample's quick-run cut (None, the default, keeps every document).
    """
    # deferred: at top, importing this module would load torch, scipy, tqdm
    from leap_core.data.beir import load_beir
    from leap_core.evaluation.retrieval import document_text, subsample

    corpus, queries, qrels = subsample(*load_beir(folder), max_docs, max_queries)
    query_ids = [q for q in queries if q in qrels]
    doc_ids = list(corpus)
    name = Path(str(folder)).name
    docs, texts = [document_text(corpus[d]) for d in doc_ids], [queries[q] for q in query_ids]
    orig_docs, orig_queries = original.layers(f"{name}/docs", docs)[-1], original.layers(f"{name}/queries", texts)[-1]
    ndcg = lambda q, d: rank_ndcg10(q, d, query_ids, doc_ids, qrels)  # noqa: E731
    per_query_original = list(ndcg(orig_queries, orig_docs).values())
    full_docs, full_queries = full.layers(f"{name}/docs", docs)[-1], full.layers(f"{name}/queries", texts)[-1]
    per_query_full = list(ndcg(full_queries, full_docs).values())
    out: dict[str, Any] = {
        "n_docs": len(doc_ids), "n_queries": len(query_ids),
        "original_ndcg10": float(np.mean(per_query_original)), "full_ndcg10": float(np.mean(per_query_full)),
        "full_minus_original": _ci(per_query_full, per_query_original, n_resamples),
        "cos_to_original_final": mean_cosine(full_docs, orig_docs),
        "cos_to_original_final_queries": mean_cosine(full_queries, orig_queries), "cuts": {}}
    cut_docs, cut_queries = cuts.layers(f"{name}/docs", docs), cuts.layers(f"{name}/queries", texts)
    orig_all_docs, orig_all_queries = original.layers(f"{name}/docs", docs), original.layers(f"{name}/queries", texts)
    for depth in depths:
        own = list(ndcg(cut_queries[depth - 1], cut_docs[depth - 1]).values())
        compat = list(ndcg(cut_queries[depth - 1], orig_docs).values())
        out["cuts"][str(depth)] = {
            "ndcg10": float(np.mean(own)), "minus_original": _ci(own, per_query_original, n_resamples),
            "index_compat_ndcg10": float(np.mean(compat)),
            "index_compat_minus_original": _ci(compat, per_query_original, n_resamples),
            "cos_to_original_final": mean_cosine(cut_docs[depth - 1], orig_docs),
            "cos_to_original_final_queries": mean_cosine(cut_queries[depth - 1], orig_queries),
            "original_cut_ndcg10": float(np.mean(list(ndcg(orig_all_queries[depth - 1], orig_all_docs[depth - 1]).values())))}
    log.info("%s: original %.4f, full %.4f", name, out["original_ndcg10"], out["full_ndcg10"])
    return out


def cheapest_cut(dev: dict[str, Any], max_sts_drop: float) -> int | None:
    """The smallest depth whose STS dev Spearman is within max_sts_drop of the original's (chosen on dev only)."""
    fits = [int(d) for d, cut in dev["cuts"].items() if cut["stsb"] >= dev["original"] - max_sts_drop]
    return min(fits) if fits else None
