"""Distillation sentences: read a one-sentence-per-line corpus, clean, hold out, dedupe, subsample."""

from __future__ import annotations

import gzip
import json
import random
import re
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from leap_core.data.errors import DataError
from leap_core.io import atomic_path

_NOT_KEY = re.compile(r"[^0-9a-z]+")
CORPUS_FILES = ("sentences.txt.gz", "sentences.txt")


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its newline) of a UTF-8 text file, plain or .gz.

    Decoded line by line so that a bad byte is reported with its line number.
    """
    path = _existing_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as handle:
            for raw in handle:
                lineno += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path}, line {lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
                    ) from None
                yield lineno, text.rstrip("\n")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}, after line {lineno}: cannot read ({exc})") from exc


def jsonl_record(path: Path, lineno: int, line: str, required: Sequence[str] = (),
                 optional: Sequence[str] = ()) -> dict:
    """One line of a JSON-lines file: an object whose `required` fields are strings, and its `optional` ones too
    when present; anything else is a DataError naming the file, line and field."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}")
    for field in required:
        if not isinstance(record.get(field), str):
            raise DataError(f"{path}, line {lineno}: field '{field}' is missing or not a string")
    for field in optional:
        if not isinstance(record.get(field, ""), str):
            raise DataError(f"{path}, line {lineno}: field '{field}' is not a string")
    return record


def read_sentences(path: str | Path) -> list[str]:
    """Sentences of a .txt or .txt.gz file, one per line, stripped; blank lines are skipped."""
    sentences = [text.strip() for _, text in iter_lines(path)]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise DataError(f"{path}: no sentence in the file")
    return sentences


def _hub_sentences(dataset_id: str, config: str | None) -> list[str]:
    import datasets  # lazy: only hub users pay for it

    data = datasets.load_dataset(dataset_id, config, split="train")
    columns = [
        name
        for name, feature in data.features.items()
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
    ]
    if not columns:
        raise DataError(f"hub:{dataset_id}: no string column in the train split")
    return [text for name in columns for text in data[name] if isinstance(text, str) and text.strip()]


def load_corpus(spec: str, data_dir: str | Path) -> list[str]:
    """Raw sentences named by `spec`.

    spec: a path (relative to data_dir, or absolute) to a .txt/.txt.gz file or to a folder holding
    sentences.txt.gz or sentences.txt; or "hub:<dataset id>[:<config>]", whose train split gives
    every value of every string column (needs internet).
    """
    if spec.startswith("hub:"):
        dataset_id, _, config = spec[len("hub:"):].partition(":")
        return _hub_sentences(dataset_id, config or None)
    path = Path(spec)
    if not path.is_absolute():
        path = Path(data_dir) / path
    if path.is_dir():
        for name in CORPUS_FILES:
            if (path / name).is_file():
                return read_sentences(path / name)
        raise DataError(f"{path}: folder holds none of {', '.join(CORPUS_FILES)}")
    if not path.name.endswith((".txt", ".txt.gz")):
        raise DataError(f"{path}: expected a .txt or .txt.gz file, or a folder holding one")
    return read_sentences(path)


def read_tags(path: str | Path, n_lines: int, corpus: str) -> list[str]:
    """One source tag per non-blank line of `corpus` (n_lines of them), read from a .txt/.txt.gz file."""
    tags = [text.strip() for _, text in iter_lines(path)]
    if len(tags) != n_lines:
        raise DataError(f"{path}: {len(tags)} tags for the {n_lines} sentences of {corpus}; "
                        "they must pair line by line")
    for lineno, tag in enumerate(tags, 1):
        if not tag:
            raise DataError(f"{path}, line {lineno}: empty tag")
    return tags


def sentences_of_sources(corpus: list[str], tags: list[str], sources: Sequence[str], n: int, offset: int = 0,
                         seed: int = 0) -> list[str]:
    """Distinct sentences tagged with one of `sources`, in one seeded order: items offset..offset+n of it, so
    samples at different offsets never share a sentence (a reference and a traffic drawn apart)."""
    unknown = sorted(set(sources) - set(tags))
    if unknown:
        raise DataError(f"sources {unknown} tag no sentence (known: {sorted(set(tags))})")
    wanted = set(sources)
    pool = list(dict.fromkeys(text for text, tag in zip(corpus, tags) if tag in wanted))
    random.Random(seed).shuffle(pool)
    if offset + n > len(pool):
        raise DataError(f"sources {sorted(wanted)}: {len(pool)} distinct sentences, asked for {offset}..{offset + n}")
    return pool[offset:offset + n]


def sentence_key(sentence: str) -> str:
    """Dedup / held-out key: lower-cased, only [0-9a-z] kept ("It's OK!" -> "itsok")."""
    return _NOT_KEY.sub("", sentence.lower())


def extract_sentences(
    sentences: Iterable[str],
    n: int | None,
    min_chars: int,
    seed: int,
    exclude: Iterable[str] = (),
    tags: Sequence[str] | None = None,
) -> list[str]:
    """Clean, filter, dedupe and subsample distillation sentences.

    Each sentence has its whitespace collapsed; it is kept if len >= min_chars, its key
    (`sentence_key`) is non-empty and not the key of any `exclude` sentence (the held-out
    evaluation sets), and it is the first with its key. Then n of the survivors are drawn with
    random.Random(seed) and returned in their input order; n=None or n >= survivors keeps all.
    tags: one source tag per input sentence; n is then drawn equally across tags (`equal_quotas`),
    so that the biggest source does not set the genre of the whole sample.
    """
    sentences = list(sentences)
    if tags is not None and len(tags) != len(sentences):
        raise DataError(f"{len(tags)} source tags for {len(sentences)} sentences: they must pair line by line")
    if n is not None and n < 1:
        raise DataError(f"n must be >= 1 or None, got {n}")
    held_out = {sentence_key(s) for s in exclude}
    held_out.discard("")
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []  # (sentence, tag)
    total = short = no_key = excluded = duplicate = 0
    for position, raw in enumerate(sentences):
        total += 1
        text = " ".join(raw.split())
        if len(text) < min_chars:
            short += 1
            continue
        key = sentence_key(text)
        if not key:
            no_key += 1
        elif key in held_out:
            excluded += 1
        elif key in seen:
            duplicate += 1
        else:
            seen.add(key)
            kept.append((text, tags[position] if tags is not None else ""))
    if not kept:
        raise DataError(
            f"no sentence left: {total} given, {short} shorter than {min_chars} characters, "
            f"{no_key} without letters or digits, {excluded} held out, {duplicate} duplicates"
        )
    if n is None or n >= len(kept):
        return [text for text, _ in kept]
    rng = random.Random(seed)
    if tags is None:
        chosen = rng.sample(range(len(kept)), n)
    else:
        by_tag: dict[str, list[int]] = {}
        for index, (_, tag) in enumerate(kept):
            by_tag.setdefault(tag, []).append(index)
        quotas = equal_quotas({tag: len(rows) for tag, rows in by_tag.items()}, n)
        chosen = [index for tag in sorted(by_tag) for index in rng.sample(by_tag[tag], quotas[tag])]
    return [kept[i][0] for i in sorted(chosen)]


def equal_quotas(available: dict[str, int], n: int) -> dict[str, int]:
    """Split n draws as evenly as the groups allow: a group smaller than its share gives all it has and
    the rest is shared among the others (largest-remainder rounding, ties to the first name in sorted order)."""
    quotas = {name: 0 for name in available}
    open_groups = sorted(name for name, size in available.items() if size > 0)
    left = min(n, sum(available.values()))
    while left > 0 and open_groups:
        share, extra = divmod(left, len(open_groups))
        short = [name for name in open_groups if available[name] - quotas[name] <= share]
        if short:  # these cannot take a full share: give them all they have and share again
            for name in short:
                left -= available[name] - quotas[name]
                quotas[name] = available[name]
            open_groups = [name for name in open_groups if name not in short]
            continue
        for rank, name in enumerate(open_groups):
            quotas[name] += share + (rank < extra)
        left = 0
    return quotas


def write_sentences_parquet(sentences: Iterable[str], path: str | Path) -> None:
    """Write sentences atomically as a parquet file with one string column, `sentence`."""
    table = pa.table({"sentence": pa.array(list(sentences), type=pa.string())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_sentences_parquet(path: str | Path) -> list[str]:
    """Sentences from a parquet file written by `write_sentences_parquet`."""
    path = _existing_file(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    schema = table.schema
    if schema.names != ["sentence"] or not (
        pa.types.is_string(schema.field("sentence").type)
        or pa.types.is_large_string(schema.field("sentence").type)
    ):
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise DataError(f"{path}: expected one string column 'sentence', found ({found})")
    sentences = table.column("sentence").to_pylist()
    for row, text in enumerate(sentences, start=1):
        if text is None:
            raise DataError(f"{path}, row {row}: field 'sentence' is null")
    return sentences
