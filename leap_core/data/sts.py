"""STS pairs (sentence1, sentence2, gold score) from the STS-B tsv or raw csv layout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from leap_core.data.corpus import iter_lines
from leap_core.data.errors import DataError

TSV_HEADER = ["score", "sentence1", "sentence2"]
RAW_FIELDS = 7  # genre, file, year, id, score, sentence1, sentence2 (+ optional source fields)


@dataclass
class StsPairs:
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    genres: list[str] | None = None  # the raw layout's first field (e.g. main-news); None for the tsv layout

    def __post_init__(self) -> None:
        if self.genres is not None and len(self.genres) != len(self.scores):
            raise ValueError(f"StsPairs: {len(self.genres)} genres for {len(self.scores)} pairs")
        if not len(self.sentences1) == len(self.sentences2) == len(self.scores):
            raise ValueError(
                f"StsPairs: {len(self.sentences1)} sentences1, {len(self.sentences2)} sentences2, "
                f"{len(self.scores)} scores"
            )

    def __len__(self) -> int:
        return len(self.scores)

    def unique_sentences(self) -> list[str]:
        """Distinct sentences in first-seen order, reading pair by pair (s1 before s2)."""
        pairs = zip(self.sentences1, self.sentences2)
        return list(dict.fromkeys(s for pair in pairs for s in pair))


def read_sts(path: str | Path) -> StsPairs:
    """Read STS pairs with quoting off (a `"` is an ordinary character).

    Two layouts, told apart by the first line:
      tsv: header `score<TAB>sentence1<TAB>sentence2`, then 3 fields a line;
      raw STS-B csv (plain or .gz): no header, 7+ fields a line, genre = field 1, score = field 5,
      sentences = 6, 7.
    Sentences are stripped of surrounding whitespace; blank lines are skipped.
    """
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    genres: list[str] = []
    layout = None
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if layout is None:
            if [f.strip() for f in fields] == TSV_HEADER:
                layout = "tsv"
                continue
            if len(fields) >= RAW_FIELDS:
                layout = "raw"
            else:
                raise DataError(
                    f"{path}, line {lineno}: expected the header 'score\\tsentence1\\tsentence2' "
                    f"or a raw STS-B line of {RAW_FIELDS}+ tab-separated fields, got {len(fields)} field(s)"
                )
        if layout == "tsv":
            if len(fields) != len(TSV_HEADER):
                raise DataError(f"{path}, line {lineno}: expected 3 tab-separated fields, got {len(fields)}")
            score_text, first, second = fields
        else:
            if len(fields) < RAW_FIELDS:
                raise DataError(
                    f"{path}, line {lineno}: expected {RAW_FIELDS}+ tab-separated fields, got {len(fields)}"
                )
            score_text, first, second = fields[4], fields[5], fields[6]
            genres.append(fields[0].strip())
        try:
            score = float(score_text)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataError(f"{path}, line {lineno}: field 'score' is not a number: {score_text!r}")
        first, second = first.strip(), second.strip()
        for name, text in (("sentence1", first), ("sentence2", second)):
            if not text:
                raise DataError(f"{path}, line {lineno}: field '{name}' is empty")
        s1.append(first)
        s2.append(second)
        scores.append(score)
    if not scores:
        raise DataError(f"{path}: no sentence pair in the file")
    return StsPairs(s1, s2, scores, genres if layout == "raw" else None)


def sts_sentences(data_dir: str | Path, relative_paths: Iterable[str]) -> list[str]:
    """Every distinct sentence of the STS files (relative to data_dir, or absolute): the held-out set."""
    sentences: dict[str, None] = {}
    for rel in relative_paths:
        path = Path(rel) if Path(rel).is_absolute() else Path(data_dir) / rel
        sentences.update(dict.fromkeys(read_sts(path).unique_sentences()))
    return list(sentences)
