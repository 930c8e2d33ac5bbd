"""Faults and bad inputs, tried for real on the smoke profile: what happened, and that nothing was lost.

Each probe builds what it needs in its own folder, does what an attacker, a kill or a careless user would, and
returns {probe, tried, outcome, held}: `held` is True when the system refused or recovered as it should. `leap
reliability` runs them all and writes reports/reliability.{json,md}; the same behaviours are pinned by tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"


class _Killed(Exception):
    pass


class _Payload:
    """Unpickling it would create a marker file: what a planted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _error(call: Callable[[], Any]) -> str:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the probe reports whatever was raised
        return f"{type(err).__name__}: {err}"
    return "no error"


def _smoke(work: Path, data_dir: Path) -> tuple[Any, Path]:
    from leap_core import experiment
    from leap_core.config import load_profile

    profile = load_profile("smoke", {"output_dir": str(work / "runs"), "data": {"data_dir": str(data_dir)}})
    return profile, experiment.cache_teacher(profile, experiment.extract(profile), show_progress=False)


def probe_checkpoints(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """A planted pickle, a forged checkpoint record, a torn log line."""
    import torch

    from leap_core import experiment
    from leap_core.io import sha256_file
    from leap_core.training import CHECKPOINT, CHECKPOINT_META

    profile, cache = _smoke(work, data_dir)
    marker, out = work / "payload-ran", []
    planted = work / "planted"
    planted.mkdir()
    torch.save({"x": _Payload(marker)}, planted / CHECKPOINT)
    steps = experiment.train_arm(profile, "leap", 0, cache, out_dir=planted).steps
    out.append({"probe": "planted checkpoint.pt", "tried": "a pickle payload saved as checkpoint.pt in a run folder",
                "outcome": f"not loaded (no checkpoint.json); trained from step 0 to {steps}; payload ran: "
                           f"{marker.exists()}", "held": not marker.exists()})

    def kill(step: int, terms: dict) -> None:
        if step == 3:
            raise _Killed

    forged = work / "forged"
    _error(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=forged, on_step=kill))
    meta = json.loads((forged / CHECKPOINT_META).read_text())
    torch.save({"x": _Payload(marker)}, forged / CHECKPOINT)
    (forged / CHECKPOINT_META).write_text(json.dumps({**meta, "sha256": sha256_file(forged / CHECKPOINT)}))
    said = _error(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=forged))
    out.append({"probe": "forged checkpoint", "tried": "a killed run's checkpoint.pt swapped for a payload, its "
                "record's sha256 forged to match", "outcome": f"{said}; payload ran: {marker.exists()}",
                "held": not marker.exists() and "not a checkpoint this run can load" in said})
    torn = work / "torn"
    _error(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=torn, on_step=kill))
    with open(torn / "train_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 4, "ep')
    result = experiment.train_arm(profile, "leap", 0, cache, out_dir=torn)
    logged = [json.loads(line)["step"] for line in (torn / "train_log.jsonl").read_text().splitlines()]
    out.append({"probe": "torn log line", "tried": "killed at step 3, a half-written line appended to the log",
                "outcome": f"resumed to step {result.steps}; log steps {logged}",
                "held": logged == list(range(1, result.steps + 1))})
    return out


def probe_lock_and_cache(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """A second trainer on a held run folder; a flipped bit in the teacher cache."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from leap_core import experiment
    from leap_core import teacher_cache as tc

    profile, cache = _smoke(work, data_dir)
    held = work / "held"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom leap_core.io import folder_lock\n"
        f"with folder_lock({str(held)!r}, what='trainer'):\n    print('held', flush=True)\n    time.sleep(120)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        said = _error(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=held))
    finally:
        holder.kill()
        holder.wait()
    out = [{"probe": "second trainer", "tried": "leap train on a run folder another process is training",
            "outcome": said, "held": f"pid {holder.pid}" in said and not (held / "train_log.jsonl").exists()}]
    path = Path(cache)
    table = pq.read_table(path)
    layer = json.loads(table.schema.metadata[b"layers"])[-1]
    values = tc._layer_values(table, layer).copy()
    values.view(np.uint16)[0, 0] ^= 1 << 3
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=pa.float16()), values.shape[1])
    pq.write_table(table.set_column(table.schema.get_field_index(f"layer_{layer}"), f"layer_{layer}", column), path)
    said = _error(lambda: tc.load_teacher_cache(path))
    rebuilt = experiment.cache_teacher(profile, experiment.extract(profile), show_progress=False)
    intact = _error(lambda: tc.load_teacher_cache(rebuilt)) == "no error"
    out.append({"probe": "flipped bit in the teacher cache", "tried": "one bit of one float16 embedding flipped "
                "(key and row count still valid)", "outcome": f"read: {said}; the next cache step rebuilt it: {intact}",
                "held": "does not match its sha256" in said and intact})
    return out


def probe_inputs(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """Bad exit settings, an unknown arm, corrupt weights, an altered export."""
    from leap_core.cli import main
    from leap_core.encoder import EarlyExitEncoder
    from leap_core.export import OnnxEncoder, export_onnx
    from leap_core.models import resolve_model

    out = []
    folder = work / "model"
    shutil.copytree(resolve_model(TINY), folder)
    for settings, what in (({"theta": 2.0, "k": 1, "l_min": 2}, "theta 2.0"),
                           ({"theta": 0.9, "k": 1, "l_min": 99}, "l_min 99 on a 4-layer model")):
        (folder / "leap_exit.json").write_text(json.dumps(settings))
        said = _error(lambda: EarlyExitEncoder.from_pretrained(folder))
        out.append({"probe": f"leap_exit.json with {what}", "tried": "exit settings that could never fire",
                    "outcome": said, "held": "leap_exit.json" in said})
    (folder / "leap_exit.json").unlink()
    runs = work / "arm-runs"
    code = _cli_code(main, ["train", "--profile", "smoke", "--data-dir", str(data_dir), "--set",
                            f"output_dir={runs}", "--arm", "no-such-arm"])
    out.append({"probe": "unknown --arm", "tried": "leap train --arm no-such-arm",
                "outcome": f"exit {code}; anything written: {runs.exists()}", "held": code == 2 and not runs.exists()})
    exported = export_onnx(str(folder), work / "onnx", depth=2, int8=True)
    (exported / "tokenizer_config.json").write_text((exported / "tokenizer_config.json").read_text() + " ")
    said = _error(lambda: OnnxEncoder(exported))
    out.append({"probe": "altered tokenizer in an ONNX export", "tried": "one byte appended to tokenizer_config.json",
                "outcome": said, "held": "differs from the one exported" in said})
    next(folder.glob("*.safetensors")).write_bytes(b"\0" * 64)
    said = _error(lambda: EarlyExitEncoder.from_pretrained(folder))
    out.append({"probe": "corrupt model.safetensors", "tried": "the weights file overwritten with zeros",
                "outcome": said, "held": str(folder) in said and "delete" in said})
    return out


def _cli_code(main: Callable, argv: list[str]) -> int:
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return main(argv)
        except SystemExit as refused:  # argparse refuses a bad option before the command runs
            return int(refused.code)


def _user_folder(path: Path, *extra: str) -> Path:
    """A folder of a user's own files (what no leap command may delete)."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("mine")
    for name in extra:
        (path / name).write_text("{}")
    return path


def _untouched(*folders: Path) -> bool:
    return all((folder / "thesis.tex").is_file() and (folder / "thesis.tex").read_text() == "mine"
               for folder in folders)


def probe_folders(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """--out into a user's folder (cut, export), a --name that is a path, two writers of one model folder."""
    from leap_core.cli import main
    from leap_core.exit_branch import BRANCH_FILE
    from leap_core.models import model_fingerprint, resolve_model

    branch = work / "branch"  # a stand-in exit branch: the tiny model and its record (cutting needs no training)
    shutil.copytree(resolve_model(TINY), branch)
    (branch / BRANCH_FILE).write_text(json.dumps({"original": TINY, "exit_layers": [2, 3], "original_layers": 4,
                                                  "original_fingerprint": model_fingerprint(resolve_model(TINY))}))
    existing, old = _user_folder(work / "existing"), _user_folder(work / "existing.old")
    code, said = _cli(main, ["cut", str(branch), "--depth", "2", "--out", str(existing)])
    out = [{"probe": "cut into an existing user folder", "tried": "leap cut BRANCH --depth 2 --out EXISTING, beside "
            "EXISTING.old (both a user's files)", "outcome": f"exit {code}: {said}; files kept: "
            f"{_untouched(existing, old)}", "held": code == 2 and _untouched(existing, old)}]
    user = _user_folder(work / "dir", "leap_onnx.json")
    code, said = _cli(main, ["export", str(branch), "--out", str(user), "--depth", "2"])
    out.append({"probe": "export over a user's folder", "tried": "leap export MODEL --out DIR, DIR holding {} as "
                "leap_onnx.json beside the user's files", "outcome": f"exit {code}: {said}; files kept: "
                f"{_untouched(user)}", "held": code == 2 and _untouched(user)})
    reports = work / "reports" / "pareto"
    code, said = _cli(main, ["pareto", TINY, "--profile", "smoke", "--data-dir", str(data_dir), "--name",
                             "../../escaped", "--out-dir", str(reports)])
    written = [p.name for p in work.rglob("escaped*")]
    out.append({"probe": "--name that is a path", "tried": "leap pareto MODEL --name ../../escaped",
                "outcome": f"exit {code}: {said}; written: {written or 'nothing'}", "held": code == 2 and not written})
    out.append(_concurrent_calibrate(work, data_dir, main))
    return out


def _concurrent_calibrate(work: Path, data_dir: Path, main: Callable) -> dict[str, Any]:
    """A second `leap calibrate --save` while another writer (a first calibrate) holds the model folder."""
    from leap_core.models import resolve_model

    folder = work / "model"
    shutil.copytree(resolve_model(TINY), folder)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom leap_core.io import writer_lock\n"
        f"with writer_lock({str(folder)!r}, what='calibrate --save'):\n    print('held', flush=True)\n"
        "    time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        code, said = _cli(main, ["calibrate", str(folder), "--profile", "smoke", "--data-dir", str(data_dir),
                                 "--set", f"output_dir={work / 'runs'}", "--save"])
    finally:
        holder.kill()
        holder.wait()
    written = (folder / "leap_exit.json").exists()
    return {"probe": "concurrent calibrate --save", "tried": "leap calibrate MODEL --save while a first one holds "
            "the model folder", "outcome": f"exit {code}: {said}; leap_exit.json written: {written}",
            "held": code == 2 and f"pid {holder.pid}" in said and not written}


def _cli(main: Callable, argv: list[str]) -> tuple[int, str]:
    """The CLI's exit code and its last line on stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):  # the command's report: not ours
        try:
            code = main(argv)
        except SystemExit as refused:
            code = int(refused.code)
    lines = err.getvalue().strip().splitlines()
    return code, lines[-1] if lines else ""


def probe_chunks(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """A NaN array planted as a resumed teacher-cache chunk, its checksum forged to match."""
    import numpy as np

    from leap_core import teacher_cache as tc
    from leap_core.io import sha256_file

    sentences = [f"Sentence {i} about {'rivers ' * (i % 3)}and hills." for i in range(40)]
    real, chunk_rows, calls = tc._encode_chunk, tc.CHUNK, []

    def killed_on_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise _Killed
        return real(*args, **kwargs)

    tc.CHUNK, tc._encode_chunk = 16, killed_on_second
    try:
        _error(lambda: tc.build_teacher_cache(TINY, sentences, [4], work, max_length=32, show_progress=False))
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


def probe_served_model(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """The registered model's code path and its answer to a null row, through MLflow's scoring server."""
    import mlflow.pyfunc
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    from leap_core import registry
    from leap_core.models import resolve_model

    saved = work / "pyfunc"
    mlflow.pyfunc.save_model(str(saved), python_model=str(registry.MODEL_CODE),
                             artifacts={"encoder": str(resolve_model(TINY))}, input_example=registry.INPUT_EXAMPLE)
    client = TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(saved))))
    answer = client.post("/invocations", json={"inputs": ["a sentence", None]})
    pickles = [p.name for p in saved.rglob("*.pkl")]
    return [{"probe": "null row to the served model", "tried": 'POST /invocations {"inputs": ["a sentence", null]}',
             "outcome": f"HTTP {answer.status_code}: {answer.json().get('message', '')[:160]}",
             "held": answer.status_code == 400},
            {"probe": "pickles in the registered model", "tried": "models-from-code save of the served model",
             "outcome": f"pickle files: {pickles or 'none'}", "held": not pickles}]


def probe_s3(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """Files handed between steps through S3 (a local S3 server process): tampered objects, a pod lost mid-training."""
    import torch
    from safetensors.torch import load_file

    from leap_core import experiment, storage
    from leap_core.pipeline import file_ref, local_path

    profile, cache = _smoke(work, data_dir)
    with storage.local_server("leap-reliability") as bucket:
        ref = file_ref(cache, f"{bucket}/handoff")
        bucket_name, key = storage.split(ref["uri"])
        storage.client().put_object(Bucket=bucket_name, Key=key, Body=b"not the cache",
                                    Metadata={storage.SHA256_KEY: ref["sha256"]})  # its recorded digest kept
        said = _error(lambda: local_path(ref))
        out = [{"probe": "tampered file between steps", "tried": "the teacher cache a step put in S3 overwritten "
                "(its sha256 metadata kept) before the next step reads it", "outcome": said,
                "held": "sha256" in said and ref["uri"] in said}]
        out += _replaced_with_metadata(cache, bucket, work)

        def kill_at_step_3(step: int, terms: dict) -> None:
            if step == 3:
                raise _Killed

        store = f"{bucket}/checkpoints"
        _error(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=work / "pod1" / "leap-seed0",
                                            on_step=kill_at_step_3, checkpoint_store=store))
        resumed = experiment.train_arm(profile, "leap", 0, cache, out_dir=work / "pod2" / "leap-seed0",
                                       checkpoint_store=store)
        straight = experiment.train_arm(profile, "leap", 0, cache, out_dir=work / "straight" / "leap-seed0")
        a, b = load_file(str(resumed.model_dir / "model.safetensors")), load_file(str(straight.model_dir /
                                                                                    "model.safetensors"))
        same = a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
        left = storage.client().list_objects_v2(Bucket=bucket_name, Prefix="checkpoints/").get("KeyCount", 0)
        out.append({"probe": "training pod lost", "tried": "training killed at step 3 on one disk, restarted on an "
                    "empty one with the checkpoint mirrored in S3", "outcome": f"resumed from S3 to step "
                    f"{resumed.steps}; weights equal to a run never killed: {same}; checkpoint objects left: {left}",
                    "held": same and left == 0})
    return out


def _replaced_with_metadata(cache: Path, bucket: str, work: Path) -> list[dict[str, Any]]:
    """An S3 object replaced together with a matching sha256 in its metadata; a forged shared teacher cache."""
    import hashlib

    import numpy as np
    import pyarrow.parquet as pq

    from leap_core import storage
    from leap_core import teacher_cache as tc
    from leap_core.pipeline import file_ref, local_path

    ref = file_ref(cache, f"{bucket}/swapped")
    bucket_name, key = storage.split(ref["uri"])
    forged = b"a forged cache"
    storage.client().put_object(Bucket=bucket_name, Key=key, Body=forged,
                                Metadata={storage.SHA256_KEY: hashlib.sha256(forged).hexdigest()})
    said = _error(lambda: local_path(ref))
    out = [{"probe": "S3 object replaced with matching metadata", "tried": "the teacher cache a step put in S3 "
            "replaced, its sha256 metadata replaced to match the new bytes", "outcome": said,
            "held": "is not the recorded" in said and ref["uri"] in said}]
    sentences = [f"Shared sentence {i} on {'maps ' * (i % 3)}and roads." for i in range(24)]
    built = tc.build_teacher_cache(TINY, sentences, [2, 4], work / "cache-one", max_length=32, show_progress=False)
    meta = {k.decode(): v.decode() for k, v in pq.read_table(built).schema.metadata.items()}
    noise = np.random.default_rng(0).standard_normal((2, len(sentences), 64)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=-1, keepdims=True)
    fake = work / "forged" / built.name
    fake.parent.mkdir(parents=True)
    tc._write_table(fake, meta["leap_cache_key"], meta["teacher"], sentences, [2, 4], 32, noise.astype(np.float16),
                    meta["leap_cache_spec"])
    shared = f"{bucket}/teacher-cache"
    storage.upload(fake, f"{shared}/{built.name}")
    said = _error(lambda: tc.build_teacher_cache(TINY, sentences, [2, 4], work / "cache-two", max_length=32,
                                                 show_progress=False, shared_uri=shared))
    out.append({"probe": "forged shared teacher cache", "tried": "a cache with the right key and a self-consistent "
                "sha256 but other embeddings put in the shared S3 prefix", "outcome": said,
                "held": f"{shared}/{built.name}" in said and "fresh forward pass" in said})
    return out


def _tiny_copy(folder: Path, settings: dict[str, Any] | None = None) -> Path:
    """A copy of the tiny model, with `settings` as its leap_exit.json when given."""
    from leap_core.models import resolve_model

    shutil.copytree(resolve_model(TINY), folder)
    if settings is not None:
        (folder / "leap_exit.json").write_text(json.dumps(settings))
    return folder


def _onnx_record(folder: Path) -> dict[str, Any]:
    """A well-formed leap_onnx.json for a stand-in export folder (a graph file and a tokenizer file)."""
    from leap_core.io import sha256_file

    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"a stand-in graph")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    digest = {name: sha256_file(folder / name) for name in ("model.onnx", "vocab.txt")}
    return {"source": TINY, "source_fingerprint": "0" * 64, "served_folder_fingerprint": "0" * 64,
            "policy": "fixed:2", "depth": 2, "n_layers": 4, "max_length": 128, "max_positions": 512,
            "pooling": "mean", "normalized": True, "inputs": ["input_ids", "attention_mask", "token_type_ids"],
            "graph": "model.onnx", "graphs": {"fp32": "model.onnx"}, "sha256": {"model.onnx": digest["model.onnx"]},
            "tokenizer_sha256": {"vocab.txt": digest["vocab.txt"]}}


def probe_schemas(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """NaN, wrong types, missing keys and out-of-range values in leap_exit.json, leap_branch.json, leap_onnx.json."""
    from leap_core.encoder import EarlyExitEncoder
    from leap_core.exit_branch import BRANCH_FILE, read_branch
    from leap_core.export import OnnxEncoder

    folder = _tiny_copy(work / "model", {"theta": float("nan"), "k": 1, "l_min": 2})  # json.dumps writes NaN
    said = _error(lambda: EarlyExitEncoder.from_pretrained(folder))
    out = [{"probe": "leap_exit.json with theta NaN", "tried": "a NaN theta in the model's exit settings",
            "outcome": said, "held": "leap_exit.json: theta" in said and "finite" in said}]
    record = {"original": TINY, "original_fingerprint": "0" * 64, "original_layers": 4, "exit_layers": [2, 3]}
    said = []
    for bad in ({**record, "exit_layers": "2"}, {k: v for k, v in record.items() if k != "original_layers"}):
        (folder / BRANCH_FILE).write_text(json.dumps(bad))
        said.append(_error(lambda: read_branch(folder)))
    out.append({"probe": "leap_branch.json with a wrong type or a missing key", "tried": "exit_layers \"2\"; "
                "original_layers deleted", "outcome": " / ".join(said),
                "held": "leap_branch.json: exit_layers" in said[0] and "leap_branch.json: original_layers" in said[1]})
    export = work / "export"
    good = _onnx_record(export)
    cases = {"missing max_length, sha256 or graph": [{k: v for k, v in good.items() if k != key}
                                                      for key in ("max_length", "sha256", "graph")],
             "max_length 1e6 or -1": [{**good, "max_length": 10 ** 6}, {**good, "max_length": -1}],
             "tokenizer_sha256 deleted": [{k: v for k, v in good.items() if k != "tokenizer_sha256"}],
             "graph an absolute path outside the folder": [{**good, "graph": "/model.onnx"}]}
    for what, records in cases.items():
        said = []
        for bad in records:
            (export / "leap_onnx.json").write_text(json.dumps(bad))
            said.append(_error(lambda: OnnxEncoder(export)))
        out.append({"probe": f"leap_onnx.json: {what}", "tried": f"{what} in an export's leap_onnx.json, loaded "
                    "by export.OnnxEncoder", "outcome": " / ".join(said),
                    "held": all(line.startswith("ValueError: ") and "leap_onnx.json: " in line for line in said)})
    return out


def _monitor_setup(work: Path, rows: int = 300) -> tuple[Path, Path, dict[str, Any]]:
    """A tiny model serving fixed:2, a log of `rows` texts it served, and a valid reference of depth 4."""
    from leap_core.encoder import EarlyExitEncoder
    from leap_core.traffic import TrafficLog, replay

    folder = _tiny_copy(work / "model", {"theta": 0.9, "k": 1, "l_min": 2, "policy": {"kind": "fixed", "depth": 2}})
    texts = [f"text {i} about {'rivers ' * (i % 4)}and the hills near town {i % 7}" for i in range(rows)]
    replay(EarlyExitEncoder.from_pretrained(folder), texts, TrafficLog(str(work / "log"), sample_text=1.0))
    reference = {"exit_distribution": [0.0, 0.0, 0.0, 1.0], "mean_exit_layer": 4.0, "n": rows, "n_layers": 4,
                 "nn10": None, "source": "probe"}
    return folder, work / "log", reference


def probe_reference(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """leap monitor's exit codes, and a reference with NaN, a missing key or another model's depth."""
    from leap_core.cli import main

    folder, log, reference = _monitor_setup(work)
    file = folder / "leap_reference.json"
    file.write_text(json.dumps(reference))
    alert, _ = _cli(main, ["monitor", str(folder), "--traffic", str(log)])
    code, said = _cli(main, ["monitor", str(folder), "--traffic", str(work / "no-log")])
    out = [{"probe": "monitor's alert has its own exit code", "tried": "leap monitor on traffic 2 layers shallower "
            "than its reference; then on a traffic log that is not there", "outcome": f"alert: exit {alert}; "
            f"error: exit {code}: {said}", "held": alert == 3 and code == 2}]
    cases = (("mean_exit_layer NaN", {**reference, "mean_exit_layer": float("nan")}, "mean_exit_layer"),
             ("a missing key", {k: v for k, v in reference.items() if k != "exit_distribution"}, "exit_distribution"),
             ("12 layers on a 4-layer model", {**reference, "exit_distribution": [0.0] * 11 + [1.0],
                                               "mean_exit_layer": 12.0, "n_layers": 12}, "n_layers"))
    for what, bad, field in cases:
        file.write_text(json.dumps(bad))
        code, said = _cli(main, ["monitor", str(folder), "--traffic", str(log)])
        out.append({"probe": f"leap_reference.json with {what}", "tried": f"leap monitor, its reference with {what}",
                    "outcome": f"exit {code}: {said}", "held": code == 2 and f"leap_reference.json: {field}" in said})
    return out


def _log_file(log: Path, columns: dict[str, Any]) -> None:
    """One Parquet file in the traffic log's naming, with these columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    log.mkdir(parents=True)
    pq.write_table(pa.table(columns), log / "traffic-00000000000000000001-1.parquet")


def probe_monitor_log(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """leap monitor on a one-row log, and on logs with a missing column, a null exit layer or no rows."""
    import pyarrow as pa

    from leap_core.cli import main

    folder, _, reference = _monitor_setup(work, rows=1)
    (folder / "leap_reference.json").write_text(json.dumps(reference))
    code, _ = _cli(main, ["monitor", str(folder), "--traffic", str(work / "log"), "--out", str(work / "one.json")])
    warned = json.loads((work / "one.json").read_text())["warnings"]
    out = [{"probe": "monitor on a one-row log", "tried": "leap monitor on a log of one row",
            "outcome": f"exit {code}; warnings: {warned}",
            "held": any("only 1 logged rows" in line for line in warned) and "Warning:" in
            (work / "one.md").read_text()}]
    int16 = lambda values: pa.array(values, type=pa.int16())  # noqa: E731
    logs = {"a missing column": {"time": [1.0], "n_layers": int16([4]), "text_chars": pa.array([3], pa.int32()),
                                 "text": ["abc"]},
            "a null exit_layer": {"time": [1.0], "exit_layer": int16([None]), "n_layers": int16([4]),
                                  "text_chars": pa.array([3], pa.int32()), "text": ["abc"]},
            "0 rows": {"time": pa.array([], pa.float64()), "exit_layer": int16([]), "n_layers": int16([]),
                       "text_chars": pa.array([], pa.int32()), "text": pa.array([], pa.string())}}
    for index, (what, columns) in enumerate(logs.items()):
        log = work / f"log{index}"
        _log_file(log, columns)
        code, said = _cli(main, ["monitor", str(folder), "--traffic", str(log)])
        out.append({"probe": f"traffic log with {what}", "tried": f"leap monitor on a log with {what}",
                    "outcome": f"exit {code}: {said}", "held": code == 2 and str(log) in said})
    return out


def probe_cli_errors(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """An exception no command expects (a bug) is one line naming its type; --debug shows the traceback."""
    import contextlib
    import io

    from leap_core import monitor
    from leap_core.cli import main

    def bug(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug\nover two lines")

    real, monitor.monitor = monitor.monitor, bug
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(["monitor", "anything", "--traffic", str(work)])
        debug = _error(lambda: main(["--debug", "monitor", "anything", "--traffic", str(work)]))
    finally:
        monitor.monitor = real
    lines = err.getvalue().strip().splitlines()
    return [{"probe": "uncaught exception in a command", "tried": "a RuntimeError (two lines) raised inside leap "
             "monitor; again with --debug", "outcome": f"exit {code}: {' / '.join(lines)}; with --debug: {debug}",
             "held": code == 2 and lines == ["leap: error: RuntimeError: a bug over two lines"]
             and debug.startswith("RuntimeError")}]


def probe_writers(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """A model saved over a user's folder or beside FOLDER.old; leap_reference.json written while a writer holds."""
    from leap_core.cli import main
    from leap_core.models import load_model, save_sentence_transformer

    model, tokenizer = load_model(TINY)
    existing, old = _user_folder(work / "existing"), _user_folder(work / "existing.old")
    said = _error(lambda: save_sentence_transformer(model, tokenizer, existing))
    fresh, fresh_old = work / "fresh", _user_folder(work / "fresh.old")
    save_sentence_transformer(model, tokenizer, fresh)
    again = _error(lambda: save_sentence_transformer(model, tokenizer, fresh))  # its own folder: replaced
    out = [{"probe": "model saved over a user's folder or beside FOLDER.old", "tried": "save_sentence_transformer "
            "into EXISTING (a user's files, beside EXISTING.old); into a new folder beside FRESH.old, twice",
            "outcome": f"{said}; re-save of its own folder: {again}; user files kept: "
            f"{_untouched(existing, old, fresh_old)}",
            "held": "not overwriting it" in said and again == "no error" and _untouched(existing, old, fresh_old)}]
    folder, log, _ = _monitor_setup(work / "monitor")
    (work / "reference.txt").write_text("\n".join(f"reference text {i} on hills" for i in range(30)) + "\n")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom leap_core.io import writer_lock\n"
        f"with writer_lock({str(folder)!r}, what='calibrate --save'):\n    print('held', flush=True)\n"
        "    time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        code, said = _cli(main, ["monitor", str(folder), "--traffic", str(log), "--reference-texts",
                                 str(work / "reference.txt"), "--save-reference"])
    finally:
        holder.kill()
        holder.wait()
    written = (folder / "leap_reference.json").exists()
    out.append({"probe": "leap_reference.json while another writer holds the folder", "tried": "leap monitor "
                "--save-reference while a calibrate --save holds the model folder",
                "outcome": f"exit {code}: {said}; leap_reference.json written: {written}",
                "held": code == 2 and f"pid {holder.pid}" in said and not written})
    return out


def probe_encode_inputs(work: Path, data_dir: Path) -> list[dict[str, Any]]:
    """A lone surrogate among the texts; a max_seq_length beyond the model's position table."""
    from leap_core.encoder import EarlyExitEncoder

    folder = _tiny_copy(work / "model", {"theta": 0.9, "k": 1, "l_min": 2})
    said = _error(lambda: EarlyExitEncoder.from_pretrained(folder).encode(["a sentence", "ok", "bad \ud800 text"]))
    out = [{"probe": "lone surrogate to encode", "tried": 'encode(["a sentence", "ok", "bad \\ud800 text"])',
            "outcome": said, "held": said.startswith("ValueError: sentences[2]")}]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 100000}))
    said = _error(lambda: EarlyExitEncoder.from_pretrained(folder))
    out.append({"probe": "max_seq_length beyond the model's positions", "tried": "max_seq_length 100000 on a model "
                "of 512 positions", "outcome": said,
                "held": said.startswith("ValueError: ") and "100000" in said and "512" in said and str(folder) in said})
    return out


PROBES = (probe_checkpoints, probe_lock_and_cache, probe_inputs, probe_folders, probe_chunks, probe_served_model,
          probe_s3, probe_schemas, probe_reference, probe_monitor_log, probe_cli_errors, probe_writers,
          probe_encode_inputs)
SCHEMA_AND_EXIT_PROBES = PROBES[-6:]  # issue 31's second part: no model, data or S3 server needed, seconds to run


def run_probes(data_dir: str | Path, work: str | Path, probes: tuple[Callable, ...] = PROBES) -> list[dict[str, Any]]:
    """Every probe (or those given), each group in its own subfolder of `work`."""
    results = []
    for probe in probes:
        folder = Path(work) / probe.__name__
        folder.mkdir(parents=True, exist_ok=True)
        results += probe(folder, Path(data_dir))
    for row in results:  # the report names files relative to the probes' folder, not this machine's temp dir
        row["outcome"] = row["outcome"].replace(str(Path(work).resolve()), "<work>").replace(str(work), "<work>")
    return results


def render_markdown(results: list[dict[str, Any]]) -> str:
    held = sum(row["held"] for row in results)
    lines = ["# Reliability: faults and bad inputs, tried", "",
             f"Generated by `leap reliability` (leap_core/reliability.py) on the smoke profile: {held} of "
             f"{len(results)} held (refused with a message naming what, or recovered with nothing lost).", "",
             "| probe | tried | what happened | held |", "|---|---|---|---|"]
    for row in results:
        outcome = row["outcome"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['probe']} | {row['tried']} | {outcome} | {'yes' if row['held'] else '**no**'} |")
    return "\n".join(lines) + "\n"
