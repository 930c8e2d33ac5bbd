"""S3 through boto3 against a real S3-compatible server process (moto_server on 127.0.0.1): sha256 on every read,
and the teacher cache shared across runs."""

import hashlib
import logging
import shutil

import pytest

pytest.importorskip("boto3")

from leap_core import storage  # noqa: E402
from leap_core.train import teacher_cache as tc  # noqa: E402

TEACHER = "random-bert:layers=4,hidden=32,heads=2,seed=3"
SENTENCES = [f"Sentence number {i} about {'birds ' * (i % 4)}and trees." for i in range(24)]


def test_a_download_is_checked_against_the_sha256_stored_with_the_object(s3_server, tmp_path):
    local = tmp_path / "a.txt"
    local.write_text("hello")
    digest = storage.upload(local, f"{s3_server}/x/a.txt")
    assert storage.exists(f"{s3_server}/x/a.txt") and not storage.exists(f"{s3_server}/x/missing")
    assert storage.download(f"{s3_server}/x/a.txt", tmp_path / "b.txt").read_text() == "hello"
    with pytest.raises(ValueError, match="is not the recorded"):
        storage.download(f"{s3_server}/x/a.txt", tmp_path / "c.txt", sha256="0" * 64)
    assert not (tmp_path / "c.txt").exists() and len(digest) == 64


def test_a_second_run_on_another_machine_reuses_the_teacher_cache_from_s3(s3_server, tmp_path, monkeypatch, caplog):
    shared = f"{s3_server}/caches"
    first = tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path / "one", max_length=32,
                                   show_progress=False, shared_uri=shared)
    expected = tc.load_teacher_cache(first).embeddings
    encode = tc._encode_chunk
    spot_checked = []

    def only_the_spot_check(model, tokenizer, sentences, *args):  # a hit runs the teacher on a sample, no more
        assert len(sentences) <= tc.SPOT_CHECK_ROWS, "teacher pass on an S3 cache hit"
        spot_checked.extend(sentences)
        return encode(model, tokenizer, sentences, *args)

    monkeypatch.setattr(tc, "_encode_chunk", only_the_spot_check)
    with caplog.at_level(logging.INFO):
        second = tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path / "two", max_length=32,
                                        show_progress=False, shared_uri=shared)
    assert "teacher cache hit in s3://" in caplog.text
    assert len(set(spot_checked)) == tc.SPOT_CHECK_ROWS and set(spot_checked) <= set(SENTENCES)
    assert (tc.load_teacher_cache(second).embeddings == expected).all()
    # An object altered in the bucket is never a hit: refused by its sha256, rebuilt, and put back.
    bucket, key = storage.split(f"{shared}/{first.name}")
    storage.client().put_object(Bucket=bucket, Key=key, Body=b"not parquet", Metadata={"sha256": "0" * 64})
    monkeypatch.setattr(tc, "_encode_chunk", encode)
    shutil.rmtree(tmp_path / "two")
    third = tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path / "two", max_length=32,
                                   show_progress=False, shared_uri=shared)
    assert (tc.load_teacher_cache(third).embeddings == expected).all()
    assert storage.download(f"{shared}/{first.name}", tmp_path / "again.parquet")  # the good one is back


def test_a_step_hands_the_next_a_file_or_folder_through_s3_not_a_shared_disk(s3_server, tmp_path, monkeypatch):
    from leap_core.pipeline import handoff as pipeline

    monkeypatch.setenv("LEAP_CACHE_DIR", str(tmp_path / "other-machine"))
    model = tmp_path / "writer" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.safetensors").write_bytes(b"abc")
    (model / "sub" / "config.json").write_text("{}")
    ref = pipeline.file_ref(model, store=f"{s3_server}/artifacts")
    assert ref["uri"].startswith("s3://leap-test/artifacts/") and sorted(ref["files"]) == [
        "sub/config.json", "weights.safetensors"]
    shutil.rmtree(tmp_path / "writer")  # the writer's disk is gone: the reader has only the reference
    local = pipeline.local_path(ref)
    assert str(local).startswith(str(tmp_path / "other-machine")) and (local / "sub" / "config.json").read_text() == "{}"
    single = tmp_path / "sentences.parquet"
    single.write_bytes(b"rows")
    assert pipeline.local_path(pipeline.file_ref(single, store=f"{s3_server}/artifacts")).read_bytes() == b"rows"
    bucket, key = storage.split(f"{ref['uri']}/weights.safetensors")
    storage.client().put_object(Bucket=bucket, Key=key, Body=b"abd", Metadata={"sha256": "0" * 64})
    shutil.rmtree(tmp_path / "other-machine")
    with pytest.raises(ValueError, match="is not the recorded"):
        pipeline.local_path(ref)


def test_with_no_mlflow_server_the_flows_artifacts_go_to_the_s3_output_dir(s3_server, tmp_path):
    """tracking.experiment_id(artifact_store=s3://...): a new experiment keeps its artifacts there, not on disk."""
    from leap_core import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_flow_run("leap-s3", "run", "LeapFlow/1", {"a": 1}, uri,
                                     artifact_store=f"{s3_server}/mlflow")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "report.md").write_text("# a report\n")
    tracking.log_folder(run_id, tmp_path / "reports", "reports", uri)
    experiment = tracking.client(uri).get_experiment_by_name("leap-s3")
    assert experiment.artifact_location == f"{s3_server}/mlflow/leap-s3"
    keys = [item["Key"] for item in storage.client().list_objects_v2(Bucket="leap-test", Prefix="mlflow/leap-s3/")
            ["Contents"]]
    assert any(key.endswith(f"{run_id}/artifacts/reports/report.md") for key in keys), keys
    assert not (tmp_path / "mlruns").exists()


def test_delete_prefix_removes_only_what_is_under_it(s3_server, tmp_path):
    for key in ("ckpt/a/1", "ckpt/a/2", "ckpt/ab/3"):
        storage.client().put_object(Bucket="leap-test", Key=key, Body=b"x")
    assert storage.delete_prefix(f"{s3_server}/ckpt/a") == 2
    assert storage.exists(f"{s3_server}/ckpt/ab/3") and not storage.exists(f"{s3_server}/ckpt/a/1")


def test_an_object_replaced_with_matching_metadata_is_refused_by_the_reference(s3_server, tmp_path, monkeypatch):
    """The reader trusts the sha256 the previous step handed on, not the object's metadata (which a writer of the
    bucket replaces along with the object)."""
    from leap_core.pipeline import handoff as pipeline

    monkeypatch.setenv("LEAP_CACHE_DIR", str(tmp_path / "reader"))
    single = tmp_path / "sentences.parquet"
    single.write_bytes(b"rows")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"abc")
    (model / "config.json").write_text("{}")
    refs = [pipeline.file_ref(single, store=f"{s3_server}/swap"), pipeline.file_ref(model, store=f"{s3_server}/swap")]
    assert refs[1]["file_sha256"]["weights.safetensors"] == hashlib.sha256(b"abc").hexdigest()
    for ref, key in ((refs[0], refs[0]["uri"]), (refs[1], f"{refs[1]['uri']}/weights.safetensors")):
        bucket, name = storage.split(key)
        forged = b"forged content"
        storage.client().put_object(Bucket=bucket, Key=name, Body=forged,
                                    Metadata={storage.SHA256_KEY: hashlib.sha256(forged).hexdigest()})
        assert storage.download(key, tmp_path / "by-metadata")  # the metadata alone would have let it in
        with pytest.raises(ValueError, match="is not the recorded"):
            pipeline.local_path(ref)
    assert not [p for p in (tmp_path / "reader").rglob("*") if p.is_file()]  # nothing forged was kept


def test_a_forged_shared_teacher_cache_fails_the_spot_check_naming_it(s3_server, tmp_path):
    """A cache with the right key and a self-consistent sha256 but other embeddings (a bucket writer can make one)
    is caught by a fresh teacher pass on a sample of its rows."""
    import numpy as np

    shared = f"{s3_server}/forged-caches"
    built = tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path / "one", max_length=32,
                                   show_progress=False)
    table = tc.pq.read_table(built)
    meta = {key.decode(): value.decode() for key, value in table.schema.metadata.items()}
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, len(SENTENCES), 32)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=-1, keepdims=True)
    forged = tmp_path / "forged" / built.name
    forged.parent.mkdir()
    tc._write_table(forged, meta["leap_cache_key"], meta["teacher"], SENTENCES, [2, 4], 32,
                    noise.astype(np.float16), meta["leap_cache_spec"])
    storage.upload(forged, f"{shared}/{built.name}")
    remote = f"{shared}/{built.name}"
    with pytest.raises(ValueError, match=f"{remote}: shared teacher cache row .* cosine"):
        tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path / "two", max_length=32, show_progress=False,
                               shared_uri=shared)
    assert not list((tmp_path / "two").glob("*.parquet"))  # the forged copy is not kept
