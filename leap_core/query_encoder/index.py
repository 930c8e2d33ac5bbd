"""The document index: the ORIGINAL model's embeddings of a corpus, computed once and cached on disk.

The cache is keyed by the model folder's weights hash (model_folder.model_fingerprint) and the corpus file's sha256
(plus the max length), so every query encoder trained or judged against the same original and corpus reuses it,
and a changed model or corpus never reads a stale one. Documents are encoded as retrieval.document_text
(title + " " + text) at the original's own max length, as the original's users built their index.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leap_core.config import ENCODE_BATCH_SIZE
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.evaluation.retrieval import document_text, streaming_topk
from leap_core.io import (atomic_path, cache_root, load_checked_array, save_checked_array, sha256_file,
                          write_json_atomic, writer_lock)
from leap_core.model_folder import model_fingerprint
from leap_core.models import resolve_model
from leap_core.query_encoder.sources import corpus_file, read_corpus

log = logging.getLogger(__name__)
CHUNK = 512  # documents per encode call: progress is logged between chunks


@dataclass
class DocumentIndex:
    """doc_ids (N,), embeddings (N, d) normalised float32, and what they were computed from."""

    doc_ids: list[str]
    embeddings: np.ndarray
    model_fingerprint: str
    corpus_sha256: str
    max_length: int

    def topk(self, query_embs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices) of the k best documents per query by cosine, best first (retrieval.streaming_topk)."""
        return streaming_topk(query_embs, [self.embeddings], min(k, len(self.doc_ids)))


def index_files(cache_dir: Path, fingerprint: str, corpus_sha: str, max_length: int) -> tuple[Path, Path]:
    """(embeddings .npy, record .json) of one (model, corpus, max length): index-<model>-<corpus>-<len>."""
    stem = f"index-{fingerprint[:16]}-{corpus_sha[:16]}-{max_length}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _read_cached(npy: Path, record_file: Path, fingerprint: str, corpus_sha: str) -> DocumentIndex | None:
    if not (npy.is_file() and record_file.is_file()):
        return None
    record = json.loads(record_file.read_text(encoding="utf-8"))
    if record.get("model_fingerprint") != fingerprint or record.get("corpus_sha256") != corpus_sha:
        return None  # a 16-hex prefix collision: recompute rather than trust it
    embeddings = np.load(npy, allow_pickle=False)
    if embeddings.shape[0] != len(record["doc_ids"]):
        return None
    return DocumentIndex(record["doc_ids"], embeddings, fingerprint, corpus_sha, record["max_length"])


def encode_documents(encoder, texts: list[str], batch_size: int = ENCODE_BATCH_SIZE,
                     parts: Path | None = None) -> np.ndarray:
    """The encoder's full-depth normalised embeddings of texts (N, d), CHUNK at a time with progress logged.

    parts: a folder where each chunk is saved (checksummed) as it is done, so that a killed pass resumes there;
    the caller names it by everything the chunks depend on (model, corpus, max length).
    """
    parts_done, started = [], time.perf_counter()
    for number, start in enumerate(range(0, len(texts), CHUNK)):
        rows = texts[start:start + CHUNK]
        chunk_path = parts / f"chunk-{number:05d}-of-{CHUNK}.npy" if parts else None
        chunk = _resumed_chunk(chunk_path, (len(rows), encoder.dim)) if chunk_path else None
        if chunk is None:
            chunk = encoder.encode(rows, batch_size=batch_size, mode="full",
                                   normalize_embeddings=True).astype(np.float32)
            if chunk_path:
                save_checked_array(chunk_path, chunk)
        parts_done.append(chunk)
        log.info("documents %d/%d (%.0f s)", start + len(rows), len(texts), time.perf_counter() - started)
    return np.concatenate(parts_done) if parts_done else np.zeros((0, encoder.dim), np.float32)


def _resumed_chunk(chunk_path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    if not chunk_path.is_file():
        return None
    chunk, problem = load_checked_array(chunk_path, shape, "float32")
    if problem is not None:
        log.warning("document chunk %s: %s: encoding it again", chunk_path, problem)
    return chunk


def build_index(model: str, corpus: str | Path, cache_dir: str | Path | None = None,
                batch_size: int = ENCODE_BATCH_SIZE) -> DocumentIndex:
    """MODEL's index of CORPUS (a BEIR corpus.jsonl[.gz] or its folder): read from the cache, or encoded once.

    cache_dir: default <leap cache>/query_encoder (LEAP_CACHE_DIR or ~/.cache/leap).
    """
    folder, path = resolve_model(model), corpus_file(corpus)
    fingerprint, corpus_sha = model_fingerprint(folder), sha256_file(path)
    encoder = EarlyExitEncoder.from_pretrained(str(folder), theta=0.95, k=1, l_min=1)  # mode="full" below: no exit
    cache = Path(cache_dir) if cache_dir else cache_root() / "query_encoder"
    npy, record_file = index_files(cache, fingerprint, corpus_sha, encoder.max_length)
    if (found := _read_cached(npy, record_file, fingerprint, corpus_sha)) is not None:
        log.info("document index of %s from %s", path, npy)
        return found
    parts = npy.with_suffix(".parts")  # each chunk as it is done: a killed pass resumes from the last one
    with writer_lock(parts, what="document pass"):
        if (found := _read_cached(npy, record_file, fingerprint, corpus_sha)) is not None:
            return found  # another process finished it between the check above and taking the lock
        documents = read_corpus(path)
        embeddings = encode_documents(encoder, [document_text(doc) for doc in documents.values()], batch_size,
                                      parts)
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, embeddings, allow_pickle=False)
        write_json_atomic(record_file, {"model": model, "model_fingerprint": fingerprint, "corpus": str(path),
                                        "corpus_sha256": corpus_sha, "max_length": encoder.max_length,
                                        "doc_ids": list(documents)})
        shutil.rmtree(parts, ignore_errors=True)  # the pass created it; the index now holds every chunk
    return DocumentIndex(list(documents), embeddings, fingerprint, corpus_sha, encoder.max_length)
