"""A model at its chosen operating point, exported to ONNX Runtime or frozen in PyTorch: the same embeddings as
leap's encoder, int8 close to fp32, and every file checked on load."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from leap_core.cli import main  # noqa: E402
from leap_core.encoder import EarlyExitEncoder  # noqa: E402
from leap_core.evaluation.pareto import save_policy  # noqa: E402
from leap_core.export import EXPORT_FILE, OnnxEncoder, export_onnx  # noqa: E402
from leap_core.models import resolve_model  # noqa: E402
from leap_core.policy import ExitPolicy  # noqa: E402
from leap_core.served import TorchCutEncoder, load_deployed  # noqa: E402

MODEL = "random-bert:layers=4,hidden=64,heads=2,seed=1"
TEXTS = ["one", "two words here and more words to pad the batch", "x", "a cat sits on the mat", ""]
INT8_MIN_COSINE = 0.95  # dynamic int8 of a tiny random model against its fp32 (real models: reports/bench_cpu.md)


@pytest.fixture
def folder(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), model)
    save_policy(model, ExitPolicy("fixed", depth=2, k=1, l_min=2))
    return model


def test_the_export_at_the_calibrated_cut_equals_leaps_encoder_and_int8_stays_close(folder, tmp_path):
    out = export_onnx(str(folder), tmp_path / "onnx", int8=True)
    settings = json.loads((out / EXPORT_FILE).read_text())
    assert settings["depth"] == 2 and settings["policy"] == "fixed:2" and settings["pooling"] == "mean"
    assert settings["graphs"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"} and settings["tokenizer_sha256"]
    expected = EarlyExitEncoder.from_pretrained(folder).encode(TEXTS, batch_size=2)
    fp32 = OnnxEncoder(out, precision="fp32")
    np.testing.assert_allclose(fp32.encode(TEXTS, batch_size=2), expected, atol=1e-4)
    assert fp32.precision == "fp32" and OnnxEncoder(out).precision == "int8"  # the folder's own graph: int8
    assert (OnnxEncoder(out).encode(TEXTS) * expected).sum(-1).min() > INT8_MIN_COSINE
    assert OnnxEncoder(out).encode("one").shape == (64,)
    served = load_deployed(out, precision="fp32")  # one call: the export folder serves through ONNX Runtime
    assert isinstance(served, OnnxEncoder) and np.allclose(served.encode(TEXTS), expected, atol=1e-4)
    assert isinstance(load_deployed(folder), EarlyExitEncoder)


def test_the_frozen_pytorch_path_equals_leaps_encoder_and_its_int8_stays_close(folder):
    expected = EarlyExitEncoder.from_pretrained(folder).encode(TEXTS, batch_size=2)
    frozen = TorchCutEncoder(folder)
    assert frozen.point.policy == "fixed:2" and frozen.precision == "fp32"
    np.testing.assert_allclose(frozen.encode(TEXTS, batch_size=2), expected, atol=1e-4)
    np.testing.assert_allclose(frozen.encode(TEXTS, batch_size=1), expected, atol=1e-4)  # unpadded batches too
    np.testing.assert_allclose(TorchCutEncoder(folder, script=False).encode(TEXTS), expected, atol=1e-4)
    assert (TorchCutEncoder(folder, int8=True).encode(TEXTS) * expected).sum(-1).min() > INT8_MIN_COSINE
    full = EarlyExitEncoder.from_pretrained(folder).encode(TEXTS, mode="full")
    np.testing.assert_allclose(TorchCutEncoder(folder, depth=4).encode(TEXTS), full, atol=1e-4)


def test_a_tampered_graph_or_tokenizer_is_refused(folder, tmp_path):
    out = export_onnx(str(folder), tmp_path / "onnx", depth=3)
    assert json.loads((out / EXPORT_FILE).read_text())["policy"] == "fixed:3"
    with pytest.raises(ValueError, match="no int8 graph"):
        OnnxEncoder(out, precision="int8")
    tokenizer_file = next(name for name in json.loads((out / EXPORT_FILE).read_text())["tokenizer_sha256"]
                          if name.endswith(".json"))
    original = (out / tokenizer_file).read_text()
    (out / tokenizer_file).write_text(original.replace("}", ' , "x": 1}', 1) if original.startswith("{") else original + " ")
    with pytest.raises(ValueError, match="tokenizer file differs"):
        OnnxEncoder(out)
    (out / tokenizer_file).write_text(original)
    OnnxEncoder(out)
    with open(out / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="graph differs"):
        OnnxEncoder(out)


def test_a_bad_depth_or_an_adaptive_policy_fails_clearly_and_writes_nothing(folder, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"depth 9 is not a layer of this model \(1..4\)"):
        export_onnx(str(folder), tmp_path / "bad", depth=9)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*[!k]"))  # no staging left behind
    assert main(["export", str(folder), "--out", str(tmp_path / "bad"), "--depth", "0"]) != 0
    assert "depth 0 is not a layer" in capsys.readouterr().err
    save_policy(folder, ExitPolicy("rule", theta=0.9, k=1, l_min=2))
    with pytest.raises(ValueError, match="exits per sentence"):
        export_onnx(str(folder), tmp_path / "onnx2")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a leap ONNX export"):
        export_onnx(str(folder), tmp_path / "taken", depth=2)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_a_model_without_exit_settings_exports_as_shipped_and_a_re_export_replaces_it(tmp_path):
    out = export_onnx(MODEL, tmp_path / "onnx")
    assert json.loads((out / EXPORT_FILE).read_text())["policy"] == "full"
    export_onnx(MODEL, out, depth=1)
    assert json.loads((out / EXPORT_FILE).read_text())["policy"] == "fixed:1"
    full = EarlyExitEncoder.from_pretrained(resolve_model(MODEL)).encode(TEXTS, mode="fixed:1")
    np.testing.assert_allclose(OnnxEncoder(out).encode(TEXTS), full, atol=1e-4)
