"""A model at its chosen operating point, exported to ONNX Runtime or frozen in PyTorch: the same embeddings as
leap's encoder, int8 close to fp32, and every file checked on load."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from leap_core.cli import main  # noqa: E402
from leap_core.serve.encoder import EarlyExitEncoder  # noqa: E402
from leap_core.evaluation.pareto import save_policy  # noqa: E402
from leap_core.serve.export import OnnxEncoder, export_onnx  # noqa: E402
from leap_core.model_folder import EXPORT_FILE  # noqa: E402
from leap_core.models import resolve_model  # noqa: E402
from leap_core.policy import ExitPolicy  # noqa: E402
from leap_core.serve.export import load_deployed  # noqa: E402
from leap_core.serve.served import TorchCutEncoder  # noqa: E402

MODEL = "random-bert:layers=4,hidden=64,heads=2,seed=1"
TEXTS = ["one", "two words here and more words to pad the batch", "x", "a cat sits on the mat", ""]
INT8_MIN_COSINE = 0.95  # dynamic int8 of a tiny random model against its fp32 (real models: reports/bench_cpu.md)


@pytest.fixture
def folder(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), model)
    save_policy(model, ExitPolicy("fixed", depth=2, k=1, l_min=2))
    return model


@pytest.fixture
def check_texts(tmp_path):
    """Check texts of varied length (int8_check measures every int8 candidate against fp32 on them)."""
    words = "the a cat dog sat on mat river hill runs quickly over under green old new".split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 13)) + f" {i}" for i in range(60)]
    path = tmp_path / "check.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


def test_the_export_at_the_calibrated_cut_equals_leaps_encoder_and_int8_stays_close(folder, tmp_path, check_texts):
    out = export_onnx(str(folder), tmp_path / "onnx", int8=True, check_texts=check_texts)
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


# ------------------------------------------------------------------ int8 chosen by measured quality (issue 32 item 7)


def _scales_per_channel(graph) -> bool:
    """Whether the int8 graph's weight scales are vectors (per output channel) rather than scalars (per tensor)."""
    import onnx

    shapes = [list(init.dims) for init in onnx.load(str(graph)).graph.initializer if init.name.endswith("_scale")]
    assert shapes, f"{graph}: no quantised weight"
    return any(shape for shape in shapes)


def _only_manifest_files(out) -> None:
    from leap_core.io import folder_files, read_manifest

    assert sorted(folder_files(out)) == sorted(read_manifest(out)["files"])
    settings = json.loads((out / EXPORT_FILE).read_text())
    assert sorted(settings["sha256"]) == ["model.onnx", "model_int8.onnx"]
    assert not list(out.glob("model_int8_per_*"))  # no candidate left behind


@pytest.mark.parametrize("worse", ["per-tensor", "per-channel"])
def test_auto_keeps_the_candidate_closer_to_fp32_and_records_both(folder, tmp_path, check_texts, monkeypatch, worse):
    from leap_core.serve import int8_check

    measure = int8_check.measure_graphs

    def skewed(*args, **kwargs):  # the real measurement, one candidate pushed away from fp32
        measured = measure(*args, **kwargs)
        measured[worse] = {key: value - 0.5 for key, value in measured[worse].items()}
        return measured

    monkeypatch.setattr(int8_check, "measure_graphs", skewed)
    out = export_onnx(str(folder), tmp_path / "onnx", int8=True, scheme="auto", check_texts=check_texts)
    kept = "per-tensor" if worse == "per-channel" else "per-channel"
    record = json.loads((out / EXPORT_FILE).read_text())["quantization"]
    assert record["per_channel"] is (kept == "per-channel") and record["check"]["chosen_by"] == "auto"
    assert sorted(record["check"]["candidates"]) == ["per-channel", "per-tensor"]
    assert record["check"]["candidates"][kept]["mean"] > record["check"]["candidates"][worse]["mean"]
    assert _scales_per_channel(out / "model_int8.onnx") is (kept == "per-channel")  # the graph kept is that one
    _only_manifest_files(out)
    OnnxEncoder(out)  # what it wrote loads


def test_auto_records_the_cosine_of_the_graph_it_kept(folder, tmp_path, check_texts):
    from leap_core.io import sha256_strings

    assert main(["export", str(folder), "--out", str(tmp_path / "onnx"), "--int8", "--check-texts",
                 str(check_texts), "--threads", "1"]) == 0  # `leap export --int8`: auto by default
    out = tmp_path / "onnx"
    check = json.loads((out / EXPORT_FILE).read_text())["quantization"]["check"]
    texts = check_texts.read_text().splitlines()
    assert check["n"] == len(texts) and check["texts_sha256"] == sha256_strings(texts)
    kept = max(check["candidates"], key=lambda name: check["candidates"][name]["mean"])
    cosines = (OnnxEncoder(out, precision="int8").encode(texts) * OnnxEncoder(out, precision="fp32").encode(texts))
    assert cosines.sum(-1).mean() == pytest.approx(check["candidates"][kept]["mean"], abs=1e-5)
    assert cosines.sum(-1).min() == pytest.approx(check["candidates"][kept]["min"], abs=1e-5)
    _only_manifest_files(out)


@pytest.mark.parametrize("flags,per_channel", [(["--quantization", "per-tensor"], False),
                                               (["--quantization", "per-channel"], True), (["--per-channel"], True)])
def test_a_named_scheme_is_measured_and_recorded(folder, tmp_path, check_texts, flags, per_channel):
    out = tmp_path / "onnx"
    assert main(["export", str(folder), "--out", str(out), "--int8", *flags, "--check-texts", str(check_texts)]) == 0
    record = json.loads((out / EXPORT_FILE).read_text())["quantization"]
    scheme = "per-channel" if per_channel else "per-tensor"
    assert record["per_channel"] is per_channel and record["check"]["chosen_by"] == "flag"
    assert list(record["check"]["candidates"]) == [scheme]
    assert _scales_per_channel(out / "model_int8.onnx") is per_channel
    texts = check_texts.read_text().splitlines()
    cosines = (OnnxEncoder(out).encode(texts) * OnnxEncoder(out, precision="fp32").encode(texts)).sum(-1)
    assert cosines.mean() == pytest.approx(record["check"]["candidates"][scheme]["mean"], abs=1e-5)
    _only_manifest_files(out)


def test_bad_check_texts_or_options_fail_in_one_line_naming_the_file(folder, tmp_path, capsys, monkeypatch):
    import gzip

    (tmp_path / "texts.csv").write_text("a,b\n")
    (tmp_path / "texts.jsonl").write_text('{"body": "no text field"}\n')
    (tmp_path / "texts.txt.gz").write_bytes(b"not gzip at all")
    with gzip.open(tmp_path / "empty.txt.gz", "wt") as handle:
        handle.write("\n\n")
    for name in ("missing.txt", "texts.csv", "texts.jsonl", "texts.txt.gz", "empty.txt.gz"):
        assert main(["export", str(folder), "--out", str(tmp_path / "onnx"), "--int8",
                     "--check-texts", str(tmp_path / name)]) == 2
        said = capsys.readouterr().err.strip()
        assert "\n" not in said and "--check-texts" in said and str(tmp_path / name) in said, said
    monkeypatch.setenv("LEAP_DATA_DIR", str(tmp_path / "no-data"))  # no STS-B dev to default to
    assert main(["export", str(folder), "--out", str(tmp_path / "onnx"), "--int8"]) == 2
    said = capsys.readouterr().err.strip()
    assert "\n" not in said and "--check-texts" in said and "stsb/dev.tsv" in said, said
    for flags in (["--quantization", "per-tensor"], ["--int8", "--per-channel", "--quantization", "per-tensor"]):
        assert main(["export", str(folder), "--out", str(tmp_path / "onnx"), *flags]) == 2
        assert "\n" not in capsys.readouterr().err.strip()
    assert not (tmp_path / "onnx").exists()  # refused before anything was built


def test_an_export_written_before_the_check_still_loads_and_the_schema_refuses_bad_cosines(folder, tmp_path,
                                                                                          check_texts):
    from leap_core.schemas import OnnxExportFile, validate

    out = export_onnx(str(folder), tmp_path / "onnx", int8=True, scheme="auto", check_texts=check_texts)
    settings = json.loads((out / EXPORT_FILE).read_text())
    old = {**settings, "quantization": {key: value for key, value in settings["quantization"].items()
                                        if key != "check"}}
    (out / EXPORT_FILE).write_text(json.dumps(old))
    assert OnnxEncoder(out).precision == "int8"  # an earlier export: no check record, still served
    check = settings["quantization"]["check"]
    kept = "per-channel" if settings["quantization"]["per_channel"] else "per-tensor"
    other = "per-tensor" if kept == "per-channel" else "per-channel"

    def with_check(**changes):
        return {**settings, "quantization": {**settings["quantization"], "check": {**check, **changes}}}

    nan = {**check["candidates"], kept: {**check["candidates"][kept], "mean": float("nan")}}
    better = {key: min(1.0, value + 0.5) for key, value in check["candidates"][kept].items()}
    worse = {**check["candidates"], other: better}  # the kept graph is no longer the closest to fp32
    for values, message in (
            (with_check(candidates=nan), f"quantization.check.candidates.{kept}.mean: input should be a finite number"),
            (with_check(candidates=worse), "is below the best candidate's"),
            (with_check(candidates={kept: check["candidates"][kept]}), "chosen_by auto measures 2"),
            (with_check(candidates={other: check["candidates"][other]}, chosen_by="flag"), "was not measured"),
            (with_check(n=0), "quantization.check.n: input should be greater than or equal to 1")):
        with pytest.raises(ValueError, match=message):
            validate(OnnxExportFile, json.loads(json.dumps(values)), out / EXPORT_FILE, folder=out)
    validate(OnnxExportFile, settings, out / EXPORT_FILE, folder=out)  # the record as written passes
