"""ONNX export of a model at its chosen operating point: same embeddings as leap's encoder, checked on load."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from leap_core.encoder import EarlyExitEncoder  # noqa: E402
from leap_core.evaluation.pareto import save_policy  # noqa: E402
from leap_core.export import EXPORT_FILE, OnnxEncoder, export_onnx  # noqa: E402
from leap_core.models import resolve_model  # noqa: E402
from leap_core.policy import ExitPolicy  # noqa: E402

MODEL = "random-bert:layers=4,hidden=64,heads=2,seed=1"
TEXTS = ["one", "two words here and more words to pad the batch", "x", "a cat sits on the mat", ""]


def test_the_export_at_the_calibrated_cut_equals_leaps_encoder_and_int8_stays_close(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    save_policy(folder, ExitPolicy("fixed", depth=2, k=1, l_min=2))
    out = export_onnx(str(folder), tmp_path / "onnx", int8=True)
    settings = json.loads((out / EXPORT_FILE).read_text())
    assert settings["depth"] == 2 and settings["policy"] == "fixed:2" and settings["pooling"] == "mean"
    expected = EarlyExitEncoder.from_pretrained(folder).encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(OnnxEncoder(out, graph="model.onnx").encode(TEXTS, batch_size=2), expected, atol=1e-5)
    quantized = OnnxEncoder(out).encode(TEXTS)  # the folder's own graph: int8
    assert (quantized * expected).sum(-1).min() > 0.9
    assert OnnxEncoder(out).encode("one").shape == (64,)


def test_a_tampered_graph_is_refused_and_an_adaptive_policy_needs_a_depth(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    out = export_onnx(str(folder), tmp_path / "onnx", depth=3)
    assert json.loads((out / EXPORT_FILE).read_text())["policy"] == "fixed:3"
    with open(out / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="sha256 differs"):
        OnnxEncoder(out)
    save_policy(folder, ExitPolicy("rule", theta=0.9, k=1, l_min=2))
    with pytest.raises(ValueError, match="exits per sentence"):
        export_onnx(str(folder), tmp_path / "onnx2")
