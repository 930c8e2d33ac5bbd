"""Data readers: distillation sentences, STS pairs, BEIR retrieval sets.

Every reader raises `DataError` (a ValueError) for bad input, naming the file and, where it
applies, the 1-based line number and field.
"""

from __future__ import annotations

from leap_core.data.beir import load_beir
from leap_core.data.corpus import (
    extract_sentences,
    load_corpus,
    read_sentences,
    read_sentences_parquet,
    read_tags,
    sentence_key,
    write_sentences_parquet,
)
from leap_core.data.errors import DataError
from leap_core.data.sts import StsPairs, read_sts, sts_sentences

__all__ = [
    "DataError",
    "StsPairs",
    "extract_sentences",
    "load_beir",
    "load_corpus",
    "read_sentences",
    "read_sentences_parquet",
    "read_sts",
    "read_tags",
    "sentence_key",
    "sts_sentences",
    "write_sentences_parquet",
]
