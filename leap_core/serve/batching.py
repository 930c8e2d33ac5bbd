"""Texts to the encoder's batches: input checks, one tokenisation per text, and right-padded, length-sorted batches.

A corpus is tokenised once, in chunks, into compact int arrays (every text's ids end to end, plus one pad); a batch
gathers its rows' ids from them, sorted by token length, longest first, so a batch holds similar lengths.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence

import numpy as np
import torch

TOKENIZE_CHUNK = 4096  # texts per tokenizer call: a large corpus never sits in Python lists at once


def check_sentences(sentences: Any) -> list[str]:
    """The sentences as a list, checked before any compute: every item a str (empty allowed) of valid Unicode."""
    if isinstance(sentences, (bytes, bytearray)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"sentences must be a str or a sequence of str, got {type(sentences).__name__}")
    items = list(sentences)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"sentences[{index}] is {type(item).__name__}, expected str")
    check_encodable(items)
    return items


def check_encodable(items: Sequence[str]) -> None:
    """A one-line ValueError naming the row when a text holds a lone surrogate ("\\ud800", what a bad decode leaves):
    the tokenizer would fail with a TypeError naming no row. One join and encode in C: cheap beside the model."""
    try:
        "".join(items).encode("utf-8")
    except UnicodeEncodeError:
        for row, item in enumerate(items):  # the rare path: find the row
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"sentences[{row}]: not valid Unicode text ({item[err.start]!r} at character "
                                 f"{err.start}, a lone surrogate); decode its source with errors='replace' or drop "
                                 "the row") from None


def check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def tokenize(tokenizer: Any, items: list[str], max_length: int,
             token_types: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Tokenize every item once: (lengths (N,), {key: all items' ids end to end, plus one pad}).

    Truncated to max_length; in chunks, so a large corpus is held as compact int arrays. token_types: keep the
    token type ids too (the model's embeddings take them).
    """
    wanted = ["input_ids"] + (["token_type_ids"] if token_types else [])
    lengths, flat = [], {key: [] for key in wanted}
    for start in range(0, len(items), TOKENIZE_CHUNK):
        encoded = tokenizer(items[start : start + TOKENIZE_CHUNK], truncation=True, max_length=max_length,
                            return_attention_mask=False)
        lengths.extend(map(len, encoded["input_ids"]))
        for key in [key for key in flat if key in encoded]:
            flat[key].append(np.fromiter(itertools.chain.from_iterable(encoded[key]), dtype=np.int64))
    pads = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": tokenizer.pad_token_type_id or 0}
    # The trailing pad lets pad_batch gather padding positions from a valid index.
    return np.asarray(lengths, dtype=np.int64), {
        key: np.concatenate(parts + [np.array([pads[key]], dtype=np.int64)]) for key, parts in flat.items() if parts
    }


def pad_batch(lengths: np.ndarray, starts: np.ndarray, flat: dict[str, np.ndarray],
              index: np.ndarray) -> dict[str, Any]:
    """Right-padded tensors of the items `index`, their attention mask, and their lengths on the host."""
    batch_lengths = lengths[index]
    columns = np.arange(max(int(batch_lengths.max()), 1))
    real = columns < batch_lengths[:, None]
    # Padding positions read the trailing pad of each flat array.
    positions = np.where(real, starts[index][:, None] + columns, -1)
    features: dict[str, Any] = {key: torch.from_numpy(ids[positions]) for key, ids in flat.items()}
    features["attention_mask"] = torch.from_numpy(real.astype(np.int64))
    features["lengths"] = batch_lengths
    return features


def length_sorted_batches(tokenizer: Any, items: list[str], batch_size: int, max_length: int,
                          token_types: bool) -> tuple[np.ndarray, Iterator[dict[str, Any]]]:
    """Batches sorted by token length, longest first, so a batch holds similar lengths.

    Returns (unsort, batches): row unsort[i] of the concatenated batch outputs is input item i.
    """
    lengths, flat = tokenize(tokenizer, items, max_length, token_types)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    order = np.argsort(-lengths, kind="stable")
    batches = (pad_batch(lengths, starts, flat, order[start : start + batch_size])
               for start in range(0, len(items), batch_size))
    return np.argsort(order), batches
