"""How a shallow query encoder ships: a sentence-transformers Router package (query route + the original as the
document route), its query route as ONNX fp32/int8 tied to its document model, and the registered pyfunc's role."""

import json
from pathlib import Path

import numpy as np
import pytest

from leap_core.model_folder import model_fingerprint
from leap_core.models import resolve_model
from leap_core.query_encoder import ShallowQueryEncoder, load_query_encoder, save_query_encoder
from leap_core.query_encoder.package import is_router_package, package_router

DOC_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=0"
OTHER_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=1"
TEXTS = ["does fish oil help", "vitamin D and bone health in older adults", "x", ""]
INT8_MIN_COSINE = 0.95  # dynamic int8 of a tiny random model against its fp32, as tests/test_export.py


def _encoder(depth: int) -> ShallowQueryEncoder:
    """The document model's first `depth` layers with a head away from the identity (query != document route)."""
    encoder = ShallowQueryEncoder.from_original(DOC_MODEL, depth)
    rng = np.random.default_rng(depth)
    encoder.set_head(np.eye(32, dtype=np.float32) + 0.2 * rng.standard_normal((32, 32)).astype(np.float32),
                     0.05 * rng.standard_normal(32).astype(np.float32))
    return encoder


@pytest.fixture(scope="module")
def query_folder(tmp_path_factory) -> Path:
    return save_query_encoder(_encoder(1), tmp_path_factory.mktemp("qe") / "qe", DOC_MODEL)


@pytest.fixture(scope="module")
def package(query_folder, tmp_path_factory) -> Path:
    return package_router(query_folder, tmp_path_factory.mktemp("pkg") / "router")


# ------------------------------------------------------------------ the Router package


def test_plain_sentence_transformers_routes_queries_to_the_shallow_encoder(query_folder, package, one_thread):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(package), device="cpu")
    shallow = load_query_encoder(query_folder).encode(TEXTS)
    original = SentenceTransformer(str(resolve_model(DOC_MODEL)), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(model.encode_query(TEXTS), shallow, atol=1e-5)
    np.testing.assert_allclose(model.encode_document(TEXTS), original, atol=1e-5)
    np.testing.assert_allclose(model.encode(TEXTS), original, atol=1e-5)  # no task: the original (default route)
    assert not np.allclose(shallow, original, atol=1e-2)  # the routes really differ
    assert is_router_package(package) and not is_router_package(query_folder)
    assert (package / "leap_query_encoder.json").read_bytes() == (query_folder / "leap_query_encoder.json").read_bytes()
    types = json.loads((package / "router_config.json").read_text())["types"].values()
    assert all(kind.startswith("sentence_transformers.") for kind in types)  # loads without leap


def test_packaging_checks_the_document_model_and_never_replaces_a_users_folder(query_folder, package, tmp_path):
    with pytest.raises(ValueError, match="trained for the document model") as err:
        package_router(query_folder, tmp_path / "wrong", document_model=OTHER_MODEL)
    assert model_fingerprint(resolve_model(OTHER_MODEL)) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "wrong").exists() and not list(tmp_path.iterdir())  # nothing built, nothing left
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not overwriting it"):
        package_router(query_folder, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="already a Router package"):
        package_router(package, tmp_path / "again")
    again = package_router(query_folder, tmp_path / "pkg", document_model=str(resolve_model(DOC_MODEL)))
    assert package_router(query_folder, again) == again  # an earlier package is replaced whole


# ------------------------------------------------------------------ the query route as ONNX


def test_the_query_route_exports_as_onnx_equal_to_the_torch_encoder(query_folder, package, tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    from leap_core.serve.export import OnnxEncoder, export_onnx
    from leap_core.model_folder import EXPORT_FILE

    expected = load_query_encoder(query_folder).encode(TEXTS)
    for name, source in (("folder", query_folder), ("package", package)):
        out = export_onnx(source, tmp_path / name, int8=True)
        settings = json.loads((out / EXPORT_FILE).read_text())
        assert settings["role"] == "query" and settings["document_model"] == DOC_MODEL
        assert settings["document_fingerprint"] == model_fingerprint(resolve_model(DOC_MODEL))
        assert settings["depth"] == 1 and settings["quantization"]["per_channel"] is False
        np.testing.assert_allclose(OnnxEncoder(out, precision="fp32").encode(TEXTS, batch_size=2), expected, atol=1e-4)
        assert (OnnxEncoder(out).encode(TEXTS) * expected).sum(-1).min() > INT8_MIN_COSINE
    out = export_onnx(query_folder, tmp_path / "per-channel", int8=True, per_channel=True)
    record = json.loads((out / EXPORT_FILE).read_text())["quantization"]
    assert {key: value for key, value in record.items() if key != "check"} == {
        "method": "onnxruntime dynamic", "weight_type": "QInt8", "per_channel": True}
    assert list(record["check"]["candidates"]) == ["per-channel"]  # the query route's int8 drift is measured too
    assert (OnnxEncoder(out).encode(TEXTS) * expected).sum(-1).min() > INT8_MIN_COSINE


def test_the_static_depth_zero_encoder_exports_too(tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    from leap_core.serve.export import OnnxEncoder, export_onnx

    folder = save_query_encoder(_encoder(0), tmp_path / "static", DOC_MODEL)
    out = export_onnx(folder, tmp_path / "onnx")
    np.testing.assert_allclose(OnnxEncoder(out).encode(TEXTS), load_query_encoder(folder).encode(TEXTS), atol=1e-4)


def test_an_exported_query_route_refuses_another_document_model(query_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from leap_core.cli import main
    from leap_core.serve.export import OnnxEncoder, export_onnx
    from leap_core.serve.onnx_graph import check_onnx_pair

    assert main(["export", str(query_folder), "--out", str(tmp_path / "onnx"), "--int8"]) == 0  # `leap export`
    encoder = OnnxEncoder(tmp_path / "onnx")
    assert encoder.role == "query"
    encoder.check_document_model(DOC_MODEL)
    with pytest.raises(ValueError, match="exported for the document model") as err:
        encoder.check_document_model(OTHER_MODEL)
    said = str(err.value)
    assert model_fingerprint(resolve_model(DOC_MODEL)) in said and model_fingerprint(resolve_model(OTHER_MODEL)) in said
    assert "\n" not in said
    symmetric = export_onnx(DOC_MODEL, tmp_path / "symmetric")
    with pytest.raises(ValueError, match="not a query route export"):
        check_onnx_pair(symmetric, DOC_MODEL)


def test_bad_export_options_are_refused_before_anything_is_written(query_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    from leap_core.serve.export import export_onnx

    with pytest.raises(ValueError, match="per_channel quantizes the int8 graph"):
        export_onnx(query_folder, tmp_path / "a", per_channel=True)
    with pytest.raises(ValueError, match="exports at its own depth 1, not --depth 2"):
        export_onnx(query_folder, tmp_path / "b", depth=2)
    assert [path.name for path in tmp_path.iterdir()] == [".b.leap.lock"]  # the writer lock: no folder, no staging


# ------------------------------------------------------------------ the registered model's role


def test_the_registered_package_serves_either_route_by_role(package, tmp_path, one_thread):
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server
    from sentence_transformers import SentenceTransformer

    from leap_core.serve import registry

    from leap_core import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.client(uri).create_run(tracking.experiment_id("route-test", uri)).info.run_id
    version = registry.register(package, {}, run_id, "routed", uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/routed/{version}", dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=uri))
    assert "serving_router.py" in (local / "MLmodel").read_text() and "role" in (local / "MLmodel").read_text()
    assert "sentence-transformers==" in (local / "requirements.txt").read_text()
    client = TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(local))))
    direct = SentenceTransformer(str(package), device="cpu")
    answers = {role: client.post("/invocations", json={"inputs": TEXTS[:2], **({"params": {"role": role}} if role
                                                                                  else {})})
               for role in ("query", "document", None)}
    assert all(answer.status_code == 200 for answer in answers.values()), answers
    embedded = {role: np.array([row["embedding"] for row in answer.json()["predictions"]])
                for role, answer in answers.items()}
    np.testing.assert_allclose(embedded["query"], direct.encode_query(TEXTS[:2]), atol=1e-5)
    np.testing.assert_allclose(embedded["document"], direct.encode_document(TEXTS[:2]), atol=1e-5)
    np.testing.assert_allclose(embedded[None], embedded["document"], atol=1e-6)  # the default role: the original
    refused = client.post("/invocations", json={"inputs": TEXTS[:2], "params": {"role": "passage"}})
    assert refused.status_code == 400 and "params.role 'passage' is not a route" in refused.text, refused.text
    with pytest.raises(ValueError, match=r"expected one of \['query', 'document'\]"):
        registry.check_role("passage")
