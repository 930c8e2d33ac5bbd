"""Files, locks and resume: planted and forged checkpoints, a torn log, a held run or model folder, a corrupt cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from leap_core.pipeline import experiment
from leap_core.train import teacher_cache as tc
from leap_core.io import sha256_file
from leap_core.models import load_model, save_sentence_transformer
from leap_core.reliability.common import (TINY, Killed, Main, Payload, Row, error_of, float16_column, held_by_another,
                                          monitor_setup, run_cli, smoke, untouched, user_folder)
from leap_core.train.training import CHECKPOINT, CHECKPOINT_META


def probe_checkpoints(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """A planted pickle, a forged checkpoint record, a torn log line."""
    profile, cache = smoke(work, data_dir)
    marker, out = work / "payload-ran", []
    planted = work / "planted"
    planted.mkdir()
    torch.save({"x": Payload(marker)}, planted / CHECKPOINT)
    steps = experiment.train_arm(profile, "leap", 0, cache, out_dir=planted).steps
    out.append({"probe": "planted checkpoint.pt", "tried": "a pickle payload saved as checkpoint.pt in a run folder",
                "outcome": f"not loaded (no checkpoint.json); trained from step 0 to {steps}; payload ran: "
                           f"{marker.exists()}", "held": not marker.exists()})

    def kill(step: int, terms: dict) -> None:
        if step == 3:
            raise Killed

    forged = work / "forged"
    error_of(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=forged, on_step=kill))
    meta = json.loads((forged / CHECKPOINT_META).read_text())
    torch.save({"x": Payload(marker)}, forged / CHECKPOINT)
    (forged / CHECKPOINT_META).write_text(json.dumps({**meta, "sha256": sha256_file(forged / CHECKPOINT)}))
    said = error_of(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=forged))
    out.append({"probe": "forged checkpoint", "tried": "a killed run's checkpoint.pt swapped for a payload, its "
                "record's sha256 forged to match", "outcome": f"{said}; payload ran: {marker.exists()}",
                "held": not marker.exists() and "not a checkpoint this run can load" in said})
    torn = work / "torn"
    error_of(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=torn, on_step=kill))
    with open(torn / "train_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 4, "ep')
    result = experiment.train_arm(profile, "leap", 0, cache, out_dir=torn)
    logged = [json.loads(line)["step"] for line in (torn / "train_log.jsonl").read_text().splitlines()]
    out.append({"probe": "torn log line", "tried": "killed at step 3, a half-written line appended to the log",
                "outcome": f"resumed to step {result.steps}; log steps {logged}",
                "held": logged == list(range(1, result.steps + 1))})
    return out


def probe_lock_and_cache(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """A second trainer on a held run folder; a flipped bit in the teacher cache."""
    profile, cache = smoke(work, data_dir)
    held = work / "held"
    with held_by_another("folder_lock", held, "trainer") as pid:
        said = error_of(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=held))
    out = [{"probe": "second trainer", "tried": "leap train on a run folder another process is training",
            "outcome": said, "held": f"pid {pid}" in said and not (held / "train_log.jsonl").exists()}]
    path = Path(cache)
    table = pq.read_table(path)
    layer = json.loads(table.schema.metadata[b"layers"])[-1]
    column = table.column(f"layer_{layer}").combine_chunks()  # (N, D) float16: the file's own layout
    values = column.values.to_numpy(zero_copy_only=False).reshape(len(column), -1).copy()
    values.view(np.uint16)[0, 0] ^= 1 << 3
    pq.write_table(table.set_column(table.schema.get_field_index(f"layer_{layer}"), f"layer_{layer}",
                                    float16_column(values)), path)
    said = error_of(lambda: tc.load_teacher_cache(path))
    rebuilt = experiment.cache_teacher(profile, experiment.extract(profile), show_progress=False)
    intact = error_of(lambda: tc.load_teacher_cache(rebuilt)) == "no error"
    out.append({"probe": "flipped bit in the teacher cache", "tried": "one bit of one float16 embedding flipped "
                "(key and row count still valid)", "outcome": f"read: {said}; the next cache step rebuilt it: {intact}",
                "held": "does not match its sha256" in said and intact})
    return out


def probe_chunks(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """A NaN array planted as a resumed teacher-cache chunk, its checksum forged to match."""
    sentences = [f"Sentence {i} about {'rivers ' * (i % 3)}and hills." for i in range(40)]
    # teacher_cache has no public per-chunk hook: the kill is stood in by patching its private chunk encoder
    real, chunk_rows, calls = tc._encode_chunk, tc.CHUNK, []

    def killed_on_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*args, **kwargs)

    tc.CHUNK, tc._encode_chunk = 16, killed_on_second
    try:
        error_of(lambda: tc.build_teacher_cache(TINY, sentences, [4], work, max_length=32, show_progress=False))
        (chunk,) = work.glob("*.parts/chunk-00000-*.npy")
        np.save(chunk, np.full(np.load(chunk).shape, np.nan, dtype=np.float16))
        chunk.with_suffix(".sha256").write_text(sha256_file(chunk))
        calls.clear()
        tc._encode_chunk = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
        path = tc.build_teacher_cache(TINY, sentences, [4], work, max_length=32, show_progress=False)
    finally:
        tc.CHUNK, tc._encode_chunk = chunk_rows, real
    finite = bool(np.isfinite(tc.load_teacher_cache(path).embeddings.numpy()).all())
    return [{"probe": "NaN chunk planted", "tried": "a killed cache build's first chunk replaced by NaN, its "
             "checksum forged to match, then resumed", "outcome": f"chunks encoded on resume: {len(calls)} of 3; "
             f"cache finite: {finite}", "held": finite and len(calls) == 3}]


def probe_writers(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """A model saved over a user's folder or beside FOLDER.old; leap_reference.json written while a writer holds."""
    model, tokenizer = load_model(TINY)
    existing, old = user_folder(work / "existing"), user_folder(work / "existing.old")
    said = error_of(lambda: save_sentence_transformer(model, tokenizer, existing))
    fresh, fresh_old = work / "fresh", user_folder(work / "fresh.old")
    save_sentence_transformer(model, tokenizer, fresh)
    again = error_of(lambda: save_sentence_transformer(model, tokenizer, fresh))  # its own folder: replaced
    out = [{"probe": "model saved over a user's folder or beside FOLDER.old", "tried": "save_sentence_transformer "
            "into EXISTING (a user's files, beside EXISTING.old); into a new folder beside FRESH.old, twice",
            "outcome": f"{said}; re-save of its own folder: {again}; user files kept: "
            f"{untouched(existing, old, fresh_old)}",
            "held": "not overwriting it" in said and again == "no error" and untouched(existing, old, fresh_old)}]
    folder, log, _ = monitor_setup(work / "monitor")
    (work / "reference.txt").write_text("\n".join(f"reference text {i} on hills" for i in range(30)) + "\n")
    with held_by_another("writer_lock", folder, "calibrate --save") as pid:
        code, said = run_cli(main, ["monitor", str(folder), "--traffic", str(log), "--reference-texts",
                                    str(work / "reference.txt"), "--save-reference"])
    written = (folder / "leap_reference.json").exists()
    out.append({"probe": "leap_reference.json while another writer holds the folder", "tried": "leap monitor "
                "--save-reference while a calibrate --save holds the model folder",
                "outcome": f"exit {code}: {said}; leap_reference.json written: {written}",
                "held": code == 2 and f"pid {pid}" in said and not written})
    return out
