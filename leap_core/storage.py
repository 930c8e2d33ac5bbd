"""Files by URI: s3://bucket/key through boto3, every read checked against a sha256: the one the caller's reference
holds (a hand-off between steps), else the one stored with the object.

boto3 finds credentials and the endpoint the usual way (AWS_* variables, ~/.aws; AWS_ENDPOINT_URL_S3 for an
S3-compatible server such as MinIO or moto_server), so another store is configuration, not code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from leap_core.io import atomic_path, sha256_file

SHA256_KEY = "sha256"  # the object's user metadata: the content's sha256, written by upload


def is_s3(uri: str | os.PathLike | None) -> bool:
    return str(uri or "").startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    """("bucket", "key") of s3://bucket/key."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri}: expected s3://bucket/key")
    return bucket, key


def client() -> Any:
    # deferred: at top, importing this module would load boto3
    import boto3

    return boto3.client("s3")


def exists(uri: str) -> bool:
    # deferred: at top, importing this module would load botocore
    from botocore.exceptions import ClientError

    bucket, key = split(uri)
    try:
        client().head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def upload(local: str | os.PathLike, uri: str) -> str:
    """Put a local file at `uri` with its sha256 as metadata; returns the sha256."""

    digest = sha256_file(local)
    bucket, key = split(uri)
    client().upload_file(str(local), bucket, key, ExtraArgs={"Metadata": {SHA256_KEY: digest}})
    return digest


def download(uri: str, local: str | os.PathLike, sha256: str | None = None) -> Path:
    """Fetch `uri` to `local` (atomically) if its content has the expected sha256 (given, else the object's own
    metadata); a mismatch is a ValueError and nothing is written.

    The metadata only catches corruption: whoever can replace an object can replace its metadata with it. A
    content-addressed hand-off (pipeline.local_path) therefore passes the sha256 its reference carries.
    """

    bucket, key = split(uri)
    s3 = client()
    expected = sha256 or s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get(SHA256_KEY)
    if not expected:
        raise ValueError(f"{uri}: no sha256 recorded with the object: not trusting its content")
    with atomic_path(local) as tmp:
        s3.download_file(bucket, key, str(tmp))
        found = sha256_file(tmp)
        if found != expected:
            raise ValueError(f"{uri}: content sha256 {found[:12]} is not the recorded {expected[:12]}: not using it")
    return Path(local)


def delete(uri: str) -> None:
    bucket, key = split(uri)
    client().delete_object(Bucket=bucket, Key=key)


def list_prefix(prefix: str) -> list[str]:
    """The keys of every object under s3://bucket/prefix/, in key order."""
    bucket, key = split(prefix)
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/")
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def delete_prefix(prefix: str) -> int:
    """Delete every object under s3://bucket/prefix/; returns how many."""
    bucket, _ = split(prefix)
    s3 = client()
    keys = list_prefix(prefix)
    for start in range(0, len(keys), 1000):  # S3's limit per DeleteObjects request
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
    return len(keys)


@contextlib.contextmanager
def local_server(bucket: str = "leap-test") -> Iterator[str]:
    """A real S3-compatible server process (moto_server) on a free 127.0.0.1 port, with `bucket` created, for
    tests and `leap reliability`; boto3 in this process (and its children) reaches it through AWS_* variables,
    restored on exit. Yields "s3://<bucket>"."""

    server = Path(sys.executable).parent / "moto_server"
    if not server.is_file() and not shutil.which("moto_server"):
        raise FileNotFoundError("moto_server is not installed (pip install 'moto[server]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([str(server) if server.is_file() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        for _ in range(100):
            try:
                client().create_bucket(Bucket=bucket)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        else:
            raise RuntimeError(f"moto_server did not answer on port {port}")
        yield f"s3://{bucket}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
