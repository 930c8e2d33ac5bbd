"""An exported folder's ONNX graphs: writing them (fp32 traced, dynamic int8), their leap_onnx.json, and reading
them back (OnnxEncoder, every file checked against its recorded sha256; check_onnx_pair for a query route).

export.py builds a folder from a model with these; int8_check measures the int8 candidates; the query encoder's
onnx_route writes its query route with them. This module imports none of those, nor torch at module level: an
ONNX encoder serves without PyTorch (torch, transformers and onnxruntime are imported where they are used).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from leap_core.io import sha256_file, write_json_atomic
from leap_core.model_folder import EXPORT_FILE, model_fingerprint
from leap_core.schemas import OnnxExportFile, read_schema_file
from leap_core.serve.served import BatchedEncoder

QUERY_ROLE = "query"  # leap_onnx.json's role of a query route: it names the document model it pairs with

GRAPHS = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
EXPORT_KIND = "ONNX export"  # the folder's kind in its manifest (io.replace_folder)


def require_onnx() -> Any:
    """onnxruntime, or an error that says how to install the optional extra."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise ValueError(f"ONNX export and serving need the onnx extra: pip install -e \".[onnx]\" ({err})") from None
    return onnxruntime


def quantization(int8: bool, per_channel: bool) -> dict[str, Any] | None:
    """What leap_onnx.json records about the int8 graph (None: no int8 graph); per_channel without int8 is refused."""
    if per_channel and not int8:
        raise ValueError("per_channel quantizes the int8 graph: ask for int8 too (--int8 --per-channel)")
    if not int8:
        return None
    return {"method": "onnxruntime dynamic", "weight_type": "QInt8", "per_channel": per_channel}


def quantize_graph(fp32: Path, target: Path, per_channel: bool) -> Path:
    """onnxruntime's dynamic int8 of the graph `fp32` as `target`: QInt8 weights, one scale per tensor or (per_channel)
    per output channel; activations quantised per call."""
    # deferred: at top, importing this module would load onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs a line per tensor on the root logger
    try:
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        root.setLevel(level)
    return target


def write_graphs(module: Any, example: tuple[Any, ...], names: tuple[str, ...], out: Path, int8: bool,
                 per_channel: bool = False) -> list[str]:
    """`module` traced on `example` as out/model.onnx (dynamic batch and length) and, with int8, its dynamic int8
    quantisation as out/model_int8.onnx (weights per tensor, or per output channel); the graph file names.
    export_onnx asks only for the fp32 graph and adds the measured int8 one itself (int8_check.add_int8)."""
    # deferred: at top, importing this module would load torch
    import torch

    torch.onnx.export(module, example, str(out / GRAPHS["fp32"]), input_names=list(names),
                      output_names=["embedding"], dynamo=False, opset_version=17,
                      dynamic_axes={**{name: {0: "batch", 1: "tokens"} for name in names}, "embedding": {0: "batch"}})
    graphs = [GRAPHS["fp32"]]
    if int8:
        quantize_graph(out / GRAPHS["fp32"], out / GRAPHS["int8"], per_channel)
        graphs.append(GRAPHS["int8"])
    return graphs


def write_settings(folder: Path, graphs: list[str], tokenizer_files: list[str], settings: dict[str, Any]) -> None:
    """leap_onnx.json: `settings` plus the graphs by precision and the sha256 of every graph and tokenizer file."""
    write_json_atomic(folder / EXPORT_FILE, {
        **settings, "graph": graphs[-1],
        "graphs": {precision: name for precision, name in GRAPHS.items() if name in graphs},
        "sha256": {name: sha256_file(folder / name) for name in graphs},
        "tokenizer_sha256": {name: sha256_file(folder / name) for name in sorted(set(tokenizer_files))
                             if (folder / name).is_file()}})


def verify_files(folder: Path, files: dict[str, str], what: str) -> None:
    """Refuse (one line) any of `files` whose sha256 is not the one recorded: the graph or tokenizer exported."""
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            raise ValueError(f"{path}: {what} differs from the one exported (sha256 in {EXPORT_FILE}): not loading it")


class OnnxEncoder(BatchedEncoder):
    """Embeds with an exported folder's graph in ONNX Runtime: the same tokenisation, depth and pooling as leap's.

    precision: "fp32" or "int8" (default: the folder's "graph", int8 when it was exported). Every graph and
    tokenizer file is checked against its recorded sha256 before loading.
    """

    def __init__(self, folder: str | os.PathLike, precision: str | None = None, threads: int | None = None,
                 graph: str | None = None):
        # deferred: at top, importing this module would load transformers
        from transformers import AutoTokenizer

        ort = require_onnx()
        self.folder = Path(folder)
        settings_file = self.folder / EXPORT_FILE
        if not settings_file.is_file():
            raise ValueError(f"{self.folder}: not a leap ONNX export (no {EXPORT_FILE})")
        self.settings = read_schema_file(settings_file, OnnxExportFile)  # ranges, names inside the folder
        if precision is not None and precision not in self.settings.get("graphs", {}):
            raise ValueError(f"{settings_file}: no {precision} graph (has {sorted(self.settings.get('graphs', {}))})")
        name = graph or (self.settings["graphs"][precision] if precision else self.settings["graph"])
        if name not in self.settings["sha256"]:
            raise ValueError(f"{self.folder / name}: not listed in {EXPORT_FILE}: not loading it")
        verify_files(self.folder, {name: self.settings["sha256"][name]}, "graph")
        verify_files(self.folder, self.settings.get("tokenizer_sha256", {}), "tokenizer file")
        options = ort.SessionOptions()
        # Idle ORT threads otherwise spin between calls and take the cores from torch in the same process (bench).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.graph = name
        self.session = ort.InferenceSession(str(self.folder / name), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.max_length = int(self.settings["max_length"])
        self.inputs = tuple(self.settings["inputs"])
        self.precision = next((key for key, value in self.settings.get("graphs", {}).items() if value == name), None)

    @property
    def role(self) -> str | None:
        """"query" for a query route (pair it only with its document model), None for a symmetric model."""
        return self.settings.get("role")

    def check_document_model(self, document_model: str) -> None:
        """Refuse (one-line ValueError naming both weights hashes) a document model this query route was not
        trained for; see check_onnx_pair."""
        check_onnx_pair(self.folder, document_model)

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]


def check_onnx_pair(folder: str | os.PathLike, document_model: str) -> None:
    """Refuse (one-line ValueError naming both weights hashes) pairing a query route export with a document model
    other than the one its leap_onnx.json names; an export that is not a query route is refused too."""
    from leap_core.models import resolve_model  # imports torch: loading a graph stays torch-free (module note)

    settings_file = Path(folder) / EXPORT_FILE
    if not settings_file.is_file():
        raise ValueError(f"{folder}: not a leap ONNX export (no {EXPORT_FILE})")
    settings = read_schema_file(settings_file, OnnxExportFile)
    if settings.get("role") != QUERY_ROLE:
        raise ValueError(f"{folder}: not a query route export (role {settings.get('role')!r}): it names no "
                         "document model to pair with")
    found = model_fingerprint(resolve_model(document_model))
    if found != settings["document_fingerprint"]:
        raise ValueError(
            f"{folder}: this query route was exported for the document model {settings['document_model']} "
            f"(weights sha256 {settings['document_fingerprint']}), but {document_model} has weights sha256 {found}: "
            "its queries would not share that index's space; embed the documents with the recorded model")
