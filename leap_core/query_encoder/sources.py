"""Unlabelled query text for a query encoder: files, BEIR queries (test ids held out), traffic logs, pseudo-queries,
and the split of it into training text and a dev slice (training_text) that fit, experiment and loop share.

Every reader returns texts deduplicated in source order and raises DataError (a ValueError) naming the file and,
where it applies, the 1-based line or row, for bad input. Relevance labels are never read, except the test
split's query ids, which are only used to keep those queries OUT of the training text.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

from leap_core.data.corpus import iter_lines, jsonl_record, sentence_key
from leap_core.data.documents import read_parquet_texts, split_sentences
from leap_core.data.errors import DataError
from leap_core.serve.traffic import read_traffic

QUERY_FILES = ("queries.jsonl", "queries.jsonl.gz")


def _kind(path: Path) -> str:
    """A file's format from its last suffix before an optional .gz: .txt, .jsonl or .parquet."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1] if suffixes else ".txt"


def _dedupe(texts: Iterable[str]) -> list[str]:
    """Stripped, whitespace-collapsed, non-empty texts, first occurrence kept."""
    return list(dict.fromkeys(t for t in (" ".join(text.split()) for text in texts) if t))


def read_jsonl_queries(path: Path, exclude_ids: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """JSONL, one object per line with a string "text" (BEIR's "_id" too, when present); ids in exclude_ids dropped."""
    texts = []
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        record = jsonl_record(path, lineno, line, required=("text",), optional=("_id",))
        if record.get("_id") not in exclude_ids:
            texts.append(record["text"])
    return texts


def read_parquet_queries(path: Path) -> list[str]:
    """A Parquet file's "text" column, each prefixed by its "title" when it has one (data.documents.read_parquet_texts;
    a null row is an error naming the row)."""
    return read_parquet_texts(path)


def read_traffic_queries(location: str | Path) -> list[str]:
    """The texts the traffic log (leap_core.serve.traffic) sampled; rows logged without text are skipped."""
    table = read_traffic(str(location))
    if "text" not in table.column_names:
        raise DataError(f"{location}: the traffic log has no 'text' column")
    return [text for text in table.column("text").to_pylist() if text]


def test_query_ids(folder: Path, split: str = "test") -> set[str]:
    """The query ids judged in <folder>/qrels/<split>.tsv (only the ids: the judgments are never read)."""
    qrels = folder / "qrels" / f"{split}.tsv"
    if not qrels.is_file():
        raise DataError(f"{qrels}: qrels file not found, so the {split} queries cannot be held out")
    ids = set()
    for lineno, line in iter_lines(qrels):
        fields = line.split("\t")
        if lineno == 1 and not (len(fields) >= 3 and fields[2].strip().lstrip("-").isdigit()):
            continue  # the header
        if len(fields) < 3:
            raise DataError(f"{qrels}, line {lineno}: expected 3 tab-separated fields, got {len(fields)}")
        ids.add(fields[0])
    return ids


def _beir_queries_file(folder: Path) -> Path:
    found = next((folder / name for name in QUERY_FILES if (folder / name).is_file()), None)
    if found is None:
        raise DataError(f"{folder}: no queries.jsonl or queries.jsonl.gz (a BEIR folder's queries)")
    return found


def read_beir_queries(folder: str | Path, exclude_split: str | None = "test") -> list[str]:
    """A BEIR folder's queries.jsonl[.gz], less the queries judged in qrels/<exclude_split>.tsv (None: keep all).

    A query whose text equals (on sentence_key) a held-out query's text is dropped too: a copy under another id.
    """
    folder = Path(folder)
    path = _beir_queries_file(folder)
    held_out = test_query_ids(folder, exclude_split) if exclude_split else set()
    texts = read_jsonl_queries(path, exclude_ids=held_out)
    if held_out:
        held_texts = {sentence_key(t) for t in read_held_out_queries(folder, exclude_split)}
        texts = [t for t in texts if sentence_key(t) not in held_texts]
    return texts


def read_held_out_queries(folder: str | Path, split: str = "test") -> list[str]:
    """The texts of the queries judged in qrels/<split>.tsv (to keep copies of them out of any training text)."""
    folder = Path(folder)
    ids = test_query_ids(folder, split)
    texts, path = [], _beir_queries_file(folder)
    for lineno, line in iter_lines(path):
        if line.strip():
            record = jsonl_record(path, lineno, line, required=("text",), optional=("_id",))
            if record.get("_id") in ids:
                texts.append(record["text"])
    return texts


def read_queries(source: str | Path, exclude_split: str | None = "test") -> list[str]:
    """Query texts from SOURCE: a .txt (one per line), .jsonl ("text"), .parquet ("text") file, optionally .gz;
    a BEIR folder (queries.jsonl[.gz], the exclude_split queries held out); or a traffic-log folder.

    Deduplicated in source order; no text at all is an error naming the source.
    """
    path = Path(source)
    if path.is_dir():
        is_beir = any((path / name).is_file() for name in QUERY_FILES)
        texts = read_beir_queries(path, exclude_split) if is_beir else read_traffic_queries(path)
    elif not path.is_file():
        raise DataError(f"{path}: no such file or folder (queries come from a .txt, .jsonl or .parquet file, "
                        "a BEIR folder or a traffic-log folder)")
    elif _kind(path) == ".parquet":
        texts = read_parquet_queries(path)
    elif _kind(path) in (".jsonl", ".json"):
        texts = read_jsonl_queries(path)
    elif _kind(path) in (".txt", ".text", ".tsv"):
        texts = [line for _, line in iter_lines(path)]
    else:
        raise DataError(f"{path}: unknown query format {_kind(path)!r} (expected .txt, .jsonl or .parquet, "
                        "optionally .gz)")
    kept = _dedupe(texts)
    if not kept:
        raise DataError(f"{path}: no query text in it")
    return kept


def corpus_file(path: str | Path) -> Path:
    """The corpus.jsonl[.gz] of a BEIR folder, or the file itself (DataError when there is none)."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (path / n).is_file()]
        if not found:
            raise DataError(f"{path}: no corpus.jsonl or corpus.jsonl.gz")
        return found[0]
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found")
    return path


def read_corpus(path: str | Path) -> dict[str, dict[str, str]]:
    """A BEIR corpus.jsonl[.gz] (or the folder holding it): doc_id -> {"title", "text"}, in file order."""
    path = corpus_file(path)
    corpus: dict[str, dict[str, str]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        record = jsonl_record(path, lineno, line, required=("_id", "text"), optional=("title",))
        if record["_id"] in corpus:
            raise DataError(f"{path}, line {lineno}: document id {record['_id']!r} appears twice")
        corpus[record["_id"]] = {"title": record.get("title", ""), "text": record["text"]}
    if not corpus:
        raise DataError(f"{path}: no document in the file")
    return corpus


def pseudo_queries(corpus: dict[str, dict[str, str]], n: int, seed: int = 0, min_chars: int = 21,
                   max_chars: int = 300, exclude: Iterable[str] = ()) -> list[str]:
    """Up to n query-like texts from the corpus's own documents: every title, then sentences drawn (seeded).

    Texts of min_chars..max_chars characters; those equal (on sentence_key) to a text in `exclude` (e.g. the
    held-out queries) are dropped. Titles come first because they read most like queries.
    """
    banned = {sentence_key(t) for t in exclude}
    fits = lambda t: min_chars <= len(t) <= max_chars and sentence_key(t) not in banned  # noqa: E731
    titles = _dedupe(doc.get("title", "") for doc in corpus.values())
    titles = [t for t in titles if fits(t)]
    seen = set(titles)
    sentences = _dedupe(s for doc in corpus.values() for s in split_sentences(doc["text"], min_chars))
    sentences = [s for s in sentences if fits(s) and s not in seen]
    rng = random.Random(seed)
    rng.shuffle(titles)
    rng.shuffle(sentences)
    return (titles + sentences)[:n]


def split_dev(texts: list[str], dev_size: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, dev): dev_size texts drawn with `seed` (at most a third of them), the rest in source order."""
    size = min(dev_size, len(texts) // 3)
    dev = set(random.Random(seed).sample(range(len(texts)), size))
    return [t for i, t in enumerate(texts) if i not in dev], [texts[i] for i in sorted(dev)]


def training_text(real: list[str], corpus: dict[str, dict[str, str]], n_pseudo: int, dev_size: int, seed: int,
                  held_out: Iterable[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """(real training texts, dev texts, pseudo-queries): `real` split by split_dev, then up to n_pseudo
    pseudo-queries from `corpus` (0: none): none equal on sentence_key to a held-out or dev text, none equal to a
    real training text.

    The one split of query text into training text and the dev slice that stops training and chooses the depth:
    fit (a user's queries), experiment (a BEIR folder's non-test queries, the test ones held out) and loop
    (logged queries, the hashed slice held out) all call it.
    """
    train_real, dev = split_dev(real, dev_size, seed)
    pseudo = pseudo_queries(corpus, n_pseudo, seed, exclude=[*held_out, *dev]) if n_pseudo else []
    seen = set(train_real)
    return train_real, dev, [t for t in pseudo if t not in seen]
