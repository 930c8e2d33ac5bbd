"""Serving and S3: the registered model behind MLflow's scoring server; files handed between steps through S3
(tampered or replaced objects, a forged shared teacher cache, a training pod lost)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from leap_core.pipeline import experiment

from leap_core import storage
from leap_core.train import teacher_cache as tc
from leap_core.models import resolve_model
from leap_core.pipeline.handoff import file_ref, local_path
from leap_core.reliability.common import TINY, Killed, Main, Row, error_of, float16_column, smoke


def probe_served_model(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """The registered model's code path and its answer to a null row, through MLflow's scoring server."""
    import mlflow.pyfunc  # optional: the pipeline extra
    from fastapi.testclient import TestClient  # optional: mlflow brings fastapi; its TestClient needs httpx (dev)
    from mlflow.pyfunc import scoring_server  # optional: the pipeline extra

    from leap_core.serve import registry  # imports mlflow at its top (optional: the pipeline extra)

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


def probe_s3(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """Files handed between steps through S3 (a local S3 server process): tampered objects, a pod lost mid-training."""
    profile, cache = smoke(work, data_dir)
    with storage.local_server("leap-reliability") as bucket:
        ref = file_ref(cache, f"{bucket}/handoff")
        bucket_name, key = storage.split(ref["uri"])
        storage.client().put_object(Bucket=bucket_name, Key=key, Body=b"not the cache",
                                    Metadata={storage.SHA256_KEY: ref["sha256"]})  # its recorded digest kept
        said = error_of(lambda: local_path(ref))
        out = [{"probe": "tampered file between steps", "tried": "the teacher cache a step put in S3 overwritten "
                "(its sha256 metadata kept) before the next step reads it", "outcome": said,
                "held": "sha256" in said and ref["uri"] in said}]
        out += _replaced_with_metadata(cache, bucket, work)

        def kill_at_step_3(step: int, terms: dict) -> None:
            if step == 3:
                raise Killed

        store = f"{bucket}/checkpoints"
        error_of(lambda: experiment.train_arm(profile, "leap", 0, cache, out_dir=work / "pod1" / "leap-seed0",
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


def _replaced_with_metadata(cache: Path, bucket: str, work: Path) -> list[Row]:
    """An S3 object replaced together with a matching sha256 in its metadata; a forged shared teacher cache."""
    ref = file_ref(cache, f"{bucket}/swapped")
    bucket_name, key = storage.split(ref["uri"])
    forged = b"a forged cache"
    storage.client().put_object(Bucket=bucket_name, Key=key, Body=forged,
                                Metadata={storage.SHA256_KEY: hashlib.sha256(forged).hexdigest()})
    said = error_of(lambda: local_path(ref))
    out = [{"probe": "S3 object replaced with matching metadata", "tried": "the teacher cache a step put in S3 "
            "replaced, its sha256 metadata replaced to match the new bytes", "outcome": said,
            "held": "is not the recorded" in said and ref["uri"] in said}]
    sentences = [f"Shared sentence {i} on {'maps ' * (i % 3)}and roads." for i in range(24)]
    built = tc.build_teacher_cache(TINY, sentences, [2, 4], work / "cache-one", max_length=32, show_progress=False)
    fake = work / "forged" / built.name
    fake.parent.mkdir(parents=True)
    _forge_cache(built, fake, sentences, [2, 4])
    shared = f"{bucket}/teacher-cache"
    storage.upload(fake, f"{shared}/{built.name}")
    said = error_of(lambda: tc.build_teacher_cache(TINY, sentences, [2, 4], work / "cache-two", max_length=32,
                                                   show_progress=False, shared_uri=shared))
    out.append({"probe": "forged shared teacher cache", "tried": "a cache with the right key and a self-consistent "
                "sha256 but other embeddings put in the shared S3 prefix", "outcome": said,
                "held": f"{shared}/{built.name}" in said and "fresh forward pass" in said})
    return out


def _forge_cache(built: Path, fake: Path, sentences: list[str], layers: list[int]) -> None:
    """At `fake`: `built`'s key and metadata over random unit embeddings, with a content sha256 that matches them."""
    meta = {k.decode(): v.decode() for k, v in pq.read_table(built).schema.metadata.items()}
    noise = np.random.default_rng(0).standard_normal((len(layers), len(sentences), 64)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=-1, keepdims=True)
    values = noise.astype(np.float16)
    columns = {"sentence": pa.array(sentences, type=pa.string())}
    columns.update({f"layer_{layer}": float16_column(values[position]) for position, layer in enumerate(layers)})
    meta["leap_content_sha256"] = tc.content_digest(sentences, list(values))
    pq.write_table(pa.table(columns).replace_schema_metadata(meta), fake)
