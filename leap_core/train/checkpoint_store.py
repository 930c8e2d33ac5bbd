"""A run folder's latest checkpoint mirrored in S3, so a training step restarted on another machine resumes it.

    <store>/checkpoint-<sha256[:16]>.pt   the tensors (immutable: named by content)
    <store>/train_log.jsonl              the log up to the checkpoint
    <store>/checkpoint.json              written last: the record that names the tensors (their sha256)

A kill between two uploads leaves the previous record pointing at its own tensors, never at half of a new pair.
Every download is sha256-checked (leap_core.storage); the local files are the trainer's own (training.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from leap_core import storage
from leap_core.io import atomic_path

log = logging.getLogger(__name__)

TENSORS, RECORD, LOG = "checkpoint.pt", "checkpoint.json", "train_log.jsonl"


def _tensors_key(store: str, sha256: str) -> str:
    return f"{store}/checkpoint-{sha256[:16]}.pt"


def push(folder: Path, store: str, previous_sha256: str | None = None) -> str:
    """Upload the folder's checkpoint (tensors, log, then record); returns the tensors' sha256."""
    record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    storage.upload(folder / TENSORS, _tensors_key(store, record["sha256"]))
    if (folder / LOG).is_file():
        storage.upload(folder / LOG, f"{store}/{LOG}")
    storage.upload(folder / RECORD, f"{store}/{RECORD}")
    if previous_sha256 and previous_sha256 != record["sha256"]:
        storage.delete(_tensors_key(store, previous_sha256))
    return record["sha256"]


def pull(folder: Path, store: str) -> bool:
    """Fetch the store's checkpoint into `folder` when the folder has none; True if one was fetched."""
    if (folder / RECORD).is_file() or not storage.exists(f"{store}/{RECORD}"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / RECORD) as tmp:  # read first, placed last: the local record also comes last
        storage.download(f"{store}/{RECORD}", tmp)
        record = json.loads(Path(tmp).read_text(encoding="utf-8"))
        storage.download(_tensors_key(store, record["sha256"]), folder / TENSORS, sha256=record["sha256"])
        if storage.exists(f"{store}/{LOG}"):
            storage.download(f"{store}/{LOG}", folder / LOG)
    log.info("checkpoint of step %s fetched from %s", record.get("step"), store)
    return True


def drop(store: str) -> None:
    """Remove the mirrored checkpoint once the run has finished (its model is handed on by reference)."""
    storage.delete_prefix(store)
