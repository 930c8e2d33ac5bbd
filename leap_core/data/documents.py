"""Longer training text for a retrofit: pseudo-documents from corpus sentences, and a user's own documents.

A model retrofitted on short sentences only learns nothing about the long inputs a search index holds,
so the generic recipe adds pseudo-documents (several corpus sentences joined), and "retrofit on the text
you index" reads the user's own unlabelled documents (`read_user_corpus`).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq

from leap_core.data.corpus import iter_lines, jsonl_record
from leap_core.data.errors import DataError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


def pseudo_documents(sentences: Sequence[str], n_documents: int, min_sentences: int, max_sentences: int,
                     seed: int) -> list[str]:
    """n_documents texts, each min..max_sentences distinct sentences drawn at random (seeded) and joined.

    Sentences are not reused across documents while the pool lasts; a pool too small for the request
    is an error, not a silent shortfall.
    """
    if not 1 <= min_sentences <= max_sentences:
        raise DataError(f"pseudo-documents: need 1 <= min_sentences <= max_sentences, got {min_sentences}, {max_sentences}")
    rng = random.Random(seed)
    sizes = [rng.randint(min_sentences, max_sentences) for _ in range(n_documents)]
    if sum(sizes) > len(sentences):
        raise DataError(f"pseudo-documents: {n_documents} documents need {sum(sizes)} sentences; the pool has "
                        f"{len(sentences)}")
    order = rng.sample(range(len(sentences)), sum(sizes))
    documents, start = [], 0
    for size in sizes:
        documents.append(" ".join(sentences[i] for i in order[start:start + size]))
        start += size
    return documents


def split_sentences(text: str, min_chars: int = 21) -> list[str]:
    """A document's sentences (split after . ! ? before a capital, digit or quote), those of min_chars or more."""
    return [part.strip() for part in _SENTENCE_END.split(text) if len(part.strip()) >= min_chars]


def _jsonl_text(path: Path, lineno: int, line: str) -> str:
    record = jsonl_record(path, lineno, line, required=("text",), optional=("title",))
    return (record.get("title", "") + " " + record["text"]).strip()  # BEIR's convention (retrieval.document_text)


def read_parquet_texts(path: Path) -> list[str]:
    """A Parquet file's texts: its "text" column, each prefixed by its "title" and a space when it has one
    (BEIR's convention); a missing or non-string field is a DataError naming the row."""
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if "text" not in table.column_names:
        raise DataError(f"{path}: no 'text' column (columns: {table.column_names})")
    texts = table.column("text").to_pylist()
    titles = table.column("title").to_pylist() if "title" in table.column_names else [""] * len(texts)
    for row, (text, title) in enumerate(zip(texts, titles), 1):
        if not isinstance(text, str):
            raise DataError(f"{path}, row {row}: field 'text' is missing or not a string")
        if title is not None and not isinstance(title, str):
            raise DataError(f"{path}, row {row}: field 'title' is not a string")
    return [((title or "") + " " + text).strip() for text, title in zip(texts, titles)]


def read_user_corpus(path: str | Path, min_chars: int = 21) -> list[str]:
    """A user's documents, deduplicated in file order: JSONL ("text", optional "title"; BEIR's corpus.jsonl
    works as is), Parquet (a "text" column, optional "title") or plain text (one document per line);
    .gz is read transparently. Documents shorter than min_chars are dropped; none left is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (--corpus takes a .jsonl, .parquet or .txt file, optionally .gz)")
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ".txt"
    if kind == ".parquet":
        texts = read_parquet_texts(path)
    elif kind in (".jsonl", ".json"):
        texts = [_jsonl_text(path, lineno, line) for lineno, line in iter_lines(path) if line.strip()]
    elif kind in (".txt", ".text", ".tsv"):
        texts = [" ".join(line.split()) for _, line in iter_lines(path)]
    else:
        raise DataError(f"{path}: unknown corpus format {kind!r} (expected .jsonl, .parquet or .txt, optionally .gz)")
    kept = list(dict.fromkeys(text for text in texts if len(text) >= min_chars))
    if not kept:
        raise DataError(f"{path}: no document of {min_chars} or more characters ({len(texts)} read)")
    return kept
