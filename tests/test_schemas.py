"""Every JSON file leap reads back is checked by its schema (leap_core.schemas): ranges, no NaN or inf, and one line
naming the file and the field for a missing key or a wrong type."""

import json
import os
import shutil

import pytest

from leap_core.schemas import (BranchFile, ExitSettingsFile, OnnxExportFile, ReferenceFile, read_schema_file,
                               validate)

TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"
SHA = "a" * 64
BRANCH = {"original": TINY, "original_fingerprint": SHA, "original_layers": 4, "exit_layers": [2, 3]}
REFERENCE = {"exit_distribution": [0.0, 0.5, 0.0, 0.5], "mean_exit_layer": 3.0, "n": 10, "n_layers": 4,
             "nn10": 0.9, "source": "t", "policy": {"kind": "rule", "theta": 0.9, "k": 1, "l_min": 2}}
ONNX = {"source": TINY, "source_fingerprint": SHA, "served_folder_fingerprint": SHA, "policy": "fixed:2", "depth": 2,
        "n_layers": 4, "max_length": 128, "max_positions": 512, "pooling": "mean", "normalized": True,
        "inputs": ["input_ids", "attention_mask"], "graph": "model.onnx", "graphs": {"fp32": "model.onnx"},
        "sha256": {"model.onnx": SHA}, "tokenizer_sha256": {"vocab.txt": SHA}}

QUERY = {**{k: v for k, v in ONNX.items() if k != "served_folder_fingerprint"}, "role": "query", "n_layers": 2,
         "policy": "query:2", "document_model": TINY, "document_fingerprint": SHA, "head": "dense",
         "quantization": None}


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


@pytest.mark.parametrize("schema,record,message", [
    (ExitSettingsFile, {"theta": float("nan")}, "theta: input should be a finite number"),
    (ExitSettingsFile, {"theta": float("inf")}, "theta: input should be a finite number"),
    (ExitSettingsFile, {"k": True}, "k: input should be a valid integer"),
    (ExitSettingsFile, {"policy": {"kind": "fixed"}}, "depth: a fixed policy needs its depth"),
    (ExitSettingsFile, {"policy": {"kind": "thresholds", "thresholds": [None, 2.0]}},
     r"policy.thresholds\[1\]: input should be less than or equal to 1"),
    (ExitSettingsFile, {"calibration": {"dev": {"quality": float("nan")}}}, "calibration: dev.quality: nan is not"),
    (BranchFile, {**BRANCH, "exit_layers": "2"}, "exit_layers: input should be a valid list"),
    (BranchFile, _without(BRANCH, "original_fingerprint"), "original_fingerprint: missing"),
    (BranchFile, {**BRANCH, "exit_layers": [2, 4]}, r"exit_layers: \[4\] are not below original_layers 4"),
    (BranchFile, {**BRANCH, "cut_depth": 1}, "cut_depth: 1 is not one of exit_layers"),
    (BranchFile, {**BRANCH, "original_layers": 4.0}, "original_layers: input should be a valid integer"),
    (ReferenceFile, {**REFERENCE, "mean_exit_layer": float("nan")}, "mean_exit_layer: input should be a finite"),
    (ReferenceFile, _without(REFERENCE, "n_layers"), "n_layers: missing"),
    (ReferenceFile, {**REFERENCE, "exit_distribution": [0.5, 0.5, 0.5, 0.5]}, "shares sum to 2"),
    (ReferenceFile, {**REFERENCE, "mean_exit_layer": 2.0}, "mean_exit_layer: 2 is not the mean"),
    (ReferenceFile, {**REFERENCE, "nn10": 1.5}, "nn10: input should be less than or equal to 1"),
    (OnnxExportFile, _without(ONNX, "max_length"), "max_length: missing"),
    (OnnxExportFile, _without(ONNX, "sha256"), "sha256: missing"),
    (OnnxExportFile, _without(ONNX, "graph"), "graph: missing"),
    (OnnxExportFile, _without(ONNX, "tokenizer_sha256"), "tokenizer_sha256: missing"),
    (OnnxExportFile, {**ONNX, "tokenizer_sha256": {}}, "tokenizer_sha256: dictionary should have at least 1 item"),
    (OnnxExportFile, {**ONNX, "max_length": 10 ** 6}, "max_length: 1000000 exceeds the model's 512 positions"),
    (OnnxExportFile, {**ONNX, "max_length": -1}, "max_length: input should be greater than or equal to 1"),
    (OnnxExportFile, {**ONNX, "graph": "/etc/passwd"}, "graph: '/etc/passwd' must be a plain file name"),
    (OnnxExportFile, {**ONNX, "sha256": {"../x.onnx": SHA}}, r"sha256.*'../x.onnx' must be a plain file name"),
    (OnnxExportFile, {**ONNX, "graph": "other.onnx"}, r"sha256: no hash for the graph\(s\) \['other.onnx'\]"),
    (OnnxExportFile, {**ONNX, "policy": "full"}, "policy: 'full' does not serve depth 2 of 4"),
    (OnnxExportFile, {**ONNX, "extra": 1}, "extra: unknown key"),
    (OnnxExportFile, {**ONNX, "graphs": {"fp32": "model.onnx", "int8": "model.onnx"}},
     "quantization: recorded exactly when there is an int8 graph"),
    (OnnxExportFile, {**QUERY, "policy": "fixed:2"}, "policy: 'fixed:2' does not serve depth 2 of 2"),
    (OnnxExportFile, _without(QUERY, "document_fingerprint"), "document_model: a query route names"),
])
def test_a_bad_record_is_one_line_naming_the_file_and_field(schema, record, message):
    with pytest.raises(ValueError, match=message) as err:
        validate(schema, record, "folder/file.json")
    assert str(err.value).startswith("folder/file.json: ") and "\n" not in str(err.value)


def test_good_records_pass_as_they_are():
    for schema, record in ((BranchFile, BRANCH), (ReferenceFile, REFERENCE), (OnnxExportFile, ONNX),
                           (OnnxExportFile, QUERY),
                           (ExitSettingsFile, {"theta": 0.9, "k": 1, "l_min": 2, "policy": {"kind": "fixed",
                                                                                          "depth": 2}})):
        assert validate(schema, record, "f.json") == record
    assert validate(ReferenceFile, REFERENCE, "f.json", n_layers=4) == REFERENCE
    with pytest.raises(ValueError, match="n_layers: the reference is for 4 layers, the model has 12"):
        validate(ReferenceFile, REFERENCE, "f.json", n_layers=12)


def test_an_export_name_may_not_lead_out_of_its_folder_through_a_symlink(tmp_path):
    (tmp_path / "export").mkdir()
    os.symlink("/etc/hostname", tmp_path / "export" / "vocab.txt")
    (tmp_path / "export" / "leap_onnx.json").write_text(json.dumps(ONNX))
    with pytest.raises(ValueError, match="leap_onnx.json: 'vocab.txt' leads outside the folder"):
        read_schema_file(tmp_path / "export" / "leap_onnx.json", OnnxExportFile)


def test_a_file_that_is_not_json_or_not_an_object_is_named(tmp_path):
    (tmp_path / "leap_branch.json").write_text('{"original": ')
    with pytest.raises(ValueError, match="leap_branch.json: line 1: not valid JSON"):
        read_schema_file(tmp_path / "leap_branch.json", BranchFile)
    (tmp_path / "leap_branch.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="leap_branch.json: expected a JSON object"):
        read_schema_file(tmp_path / "leap_branch.json", BranchFile)


def test_what_leap_writes_passes_its_schema(tmp_path):
    """The reference monitor measures and the export's leap_onnx.json (with max_positions) are valid records."""
    from leap_core.serve.encoder import EarlyExitEncoder
    from leap_core.model_folder import folder_positions
    from leap_core.models import resolve_model
    from leap_core.serve.monitor import reference_profile

    encoder = EarlyExitEncoder.from_pretrained(resolve_model(TINY), l_min=2, theta=0.9)
    reference = reference_profile(encoder, [f"text {i} on hills and rivers" for i in range(20)], "t")
    assert validate(ReferenceFile, json.loads(json.dumps(reference)), "r.json", n_layers=4)["n"] == 20
    assert folder_positions(resolve_model(TINY)) == 512
    pytest.importorskip("onnxruntime")
    from leap_core.serve.export import export_onnx
    from leap_core.model_folder import EXPORT_FILE

    out = export_onnx(TINY, tmp_path / "onnx", depth=2, int8=True)
    written = json.loads((out / EXPORT_FILE).read_text())
    written.setdefault("max_positions", folder_positions(resolve_model(TINY)))  # until export.py writes it
    assert validate(OnnxExportFile, written, out / EXPORT_FILE, folder=out)["depth"] == 2


def test_every_read_site_checks_its_file(tmp_path):
    from leap_core.model_folder import BRANCH_FILE, REFERENCE_FILE, read_branch, read_exit_settings
    from leap_core.models import resolve_model
    from leap_core.serve.monitor import read_reference

    folder = tmp_path / "model"
    shutil.copytree(resolve_model(TINY), folder)
    (folder / "leap_exit.json").write_text('{"l_min": Infinity}')
    with pytest.raises(ValueError, match="leap_exit.json: l_min: input should be a valid integer"):
        read_exit_settings(folder)
    (folder / BRANCH_FILE).write_text(json.dumps({**BRANCH, "original_layers": "4"}))
    with pytest.raises(ValueError, match="leap_branch.json: original_layers: input should be a valid integer"):
        read_branch(folder)
    (folder / REFERENCE_FILE).write_text(json.dumps({**REFERENCE, "n": 0}))
    with pytest.raises(ValueError, match="leap_reference.json: n: input should be greater than or equal to 1"):
        read_reference(folder, 4)
