"""S3 through boto3 against a real S3-compatible server process (moto_server on 127.0.0.1): sha256 on every read,
and the teacher cache shared across runs."""

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("boto3")

from leap_core import storage  # noqa: E402
from leap_core import teacher_cache as tc  # noqa: E402

TEACHER = "random-bert:layers=4,hidden=32,heads=2,seed=3"
SENTENCES = [f"Sentence number {i} about {'birds ' * (i % 4)}and trees." for i in range(24)]


@pytest.fixture(scope="module")
def s3_server():
    """moto_server as its own process on a free port; boto3 reaches it through AWS_ENDPOINT_URL_S3."""
    server = Path(sys.executable).parent / "moto_server"
    if not server.is_file():
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        for _ in range(100):
            try:
                storage.client().create_bucket(Bucket="leap-test")
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        else:
            pytest.fail("moto_server did not start")
        yield "s3://leap-test"
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
    monkeypatch.setattr(tc, "_encode_chunk", lambda *a, **k: pytest.fail("teacher pass on an S3 cache hit"))
    with caplog.at_level(logging.INFO):
        second = tc.build_teacher_cache(TEACHER, SENTENCES, [2, 4], tmp_path / "two", max_length=32,
                                        show_progress=False, shared_uri=shared)
    assert "teacher cache hit in s3://" in caplog.text
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
