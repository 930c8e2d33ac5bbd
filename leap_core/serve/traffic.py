"""The traffic log: what monitoring needs from each served row (exit layer, length, optionally a sampled text).

Rows are buffered and flushed as one Parquet file per `flush_rows` rows, each written whole (a temporary file
renamed, or one S3 PUT), so a killed server loses at most its unflushed buffer and never leaves a torn file. The
log keeps at most `max_files` files: the oldest are deleted as new ones come (rotation, bounded size). Off by
default; LEAP_TRAFFIC_LOG=<folder or s3://bucket/prefix> turns it on for the served registry model.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from leap_core import storage
from leap_core.io import atomic_path

ENV_LOCATION, ENV_SAMPLE, ENV_FLUSH, ENV_FILES = ("LEAP_TRAFFIC_LOG", "LEAP_TRAFFIC_SAMPLE",
                                                 "LEAP_TRAFFIC_FLUSH_ROWS", "LEAP_TRAFFIC_MAX_FILES")
SCHEMA = pa.schema([("time", pa.float64()), ("exit_layer", pa.int16()), ("n_layers", pa.int16()),
                    ("text_chars", pa.int32()), ("text", pa.string())])
PREFIX = "traffic-"


@dataclass
class TrafficLog:
    """location: a folder or s3://bucket/prefix. sample_text: the share of rows whose text is kept (for monitor's
    NN@10 re-encoding and for retraining on your own traffic); 0 keeps none."""

    location: str
    flush_rows: int = 1000
    max_files: int = 100
    sample_text: float = 0.0
    seed: int | None = None
    _rows: list[tuple] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.flush_rows < 1 or self.max_files < 1 or not 0 <= self.sample_text <= 1:
            raise ValueError(f"traffic log {self.location}: flush_rows and max_files must be >= 1 and sample_text "
                             f"in [0, 1], got {self.flush_rows}, {self.max_files}, {self.sample_text}")
        self._random = random.Random(self.seed)
        if not storage.is_s3(self.location):
            Path(self.location).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls) -> "TrafficLog | None":
        """The log LEAP_TRAFFIC_LOG names, or None when it is unset (LEAP_TRAFFIC_SAMPLE: the text share;
        LEAP_TRAFFIC_FLUSH_ROWS, LEAP_TRAFFIC_MAX_FILES: the file size and count)."""
        location = os.environ.get(ENV_LOCATION)
        if not location:
            return None
        return cls(location, flush_rows=int(os.environ.get(ENV_FLUSH, "1000")),
                   max_files=int(os.environ.get(ENV_FILES, "100")), sample_text=float(os.environ.get(ENV_SAMPLE, "0")))

    def record(self, texts: Sequence[str], exit_layers: Sequence[int], n_layers: int) -> None:
        """One row per served text; flushes a file when the buffer holds flush_rows rows."""
        now = time.time()
        rows = [(now, int(layer), n_layers, len(text), text if self._random.random() < self.sample_text else None)
                for text, layer in zip(texts, exit_layers)]
        with self._lock:
            self._rows.extend(rows)
            while len(self._rows) >= self.flush_rows:
                chunk, self._rows = self._rows[:self.flush_rows], self._rows[self.flush_rows:]
                self._write(chunk)

    def flush(self) -> None:
        with self._lock:
            if self._rows:
                chunk, self._rows = self._rows, []
                self._write(chunk)

    def _write(self, rows: list[tuple]) -> None:
        table = pa.Table.from_pylist([dict(zip(SCHEMA.names, row)) for row in rows], schema=SCHEMA)
        name = f"{PREFIX}{time.time_ns():020d}-{os.getpid()}.parquet"  # sorts by time: rotation drops the oldest
        if storage.is_s3(self.location):
            with tempfile.TemporaryDirectory() as scratch:
                pq.write_table(table, Path(scratch) / name)
                storage.upload(Path(scratch) / name, f"{self.location.rstrip('/')}/{name}")
        else:
            with atomic_path(Path(self.location) / name) as tmp:
                pq.write_table(table, tmp)
        self._rotate()

    def _rotate(self) -> None:
        files = log_files(self.location)
        for old in files[:max(len(files) - self.max_files, 0)]:
            if storage.is_s3(old):
                storage.delete(old)
            else:
                Path(old).unlink(missing_ok=True)


def log_files(location: str) -> list[str]:
    """The log's finished files, oldest first (a folder's stray temporaries are not files of the log)."""
    if storage.is_s3(location):
        bucket, _ = storage.split(location)
        return [f"s3://{bucket}/{key}" for key in storage.list_prefix(location)
                if key.rsplit("/", 1)[-1].startswith(PREFIX) and key.endswith(".parquet")]
    return sorted(str(path) for path in Path(location).glob(f"{PREFIX}*.parquet"))


def read_traffic(location: str) -> pa.Table:
    """Every finished file of the log as one table (SCHEMA); a file that is not one the log wrote is named."""
    files = log_files(location)
    if not files:
        raise ValueError(f"{location}: no traffic log files ({PREFIX}*.parquet)")
    tables = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, file in enumerate(files):
            local = storage.download(file, Path(scratch) / f"{index}.parquet") if storage.is_s3(file) else file
            tables.append(_read_log_file(local, file))
    return pa.concat_tables(tables)


def _read_log_file(local: str | Path, shown: str) -> pa.Table:
    """One log file, checked: every SCHEMA column present (read_table would fill a missing one with nulls) and no
    null exit layer or depth (the log writes both for every row)."""
    try:
        missing = [name for name in SCHEMA.names if name not in pq.read_schema(local).names]
        table = None if missing else pq.read_table(local, schema=SCHEMA)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ValueError(f"{shown}: not a readable traffic log file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if missing:
        raise ValueError(f"{shown}: no column(s) {missing}: not a traffic log file (expected {SCHEMA.names})")
    for name in ("exit_layer", "n_layers"):
        if table.column(name).null_count:
            raise ValueError(f"{shown}: {table.column(name).null_count} of {table.num_rows} rows have a null "
                             f"{name} (the log writes one for every row)")
    return table


def replay(encoder: object, texts: Sequence[str], log: TrafficLog, batch_size: int = 32) -> None:
    """Serve `texts` in batches at the encoder's policy, as the registry model does, logging each batch."""
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        _, layers = encoder.encode(batch, mode="policy", return_exit_layers=True)
        log.record(batch, layers, encoder.num_layers)
    log.flush()
