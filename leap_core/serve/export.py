"""A model at its chosen operating point as an ONNX Runtime graph (fp32, dynamic int8), in a self-describing folder.

The operating point is what `leap calibrate` saved (full depth or `fixed:N`; an adaptive policy needs --depth),
or a depth given. For an exit branch, full depth is its original model and `fixed:N` its standalone N-layer cut
(exit_branch.save_cut, exit head included). The graph is the model's first N layers, its mean pooling, any Dense
head and L2 normalisation, exported by torch.onnx.export (TorchScript exporter: the dynamo one needs onnxscript)
with dynamic batch and length; int8 is onnxruntime.quantization.quantize_dynamic of that graph, its weights per
tensor or per output channel, chosen by measured quality (int8_check: `auto` keeps the candidate closer to fp32 on
check texts) or named; leap_onnx.json's "quantization" records the scheme and every candidate's cosine to fp32.

A shallow query encoder (its folder or a Router package, leap_core.query_encoder) exports its query route instead:
leap_core.query_encoder.onnx_route writes the graph, with role "query" and the document model it pairs with.

The folder holds the graphs, the tokenizer and `leap_onnx.json` (policy, depth, max length, pooling, the source's
weights hash, and the sha256 of every graph and tokenizer file), so OnnxEncoder loads it with one call and refuses
a graph or tokenizer that is not the one exported. It is written beside its target and swapped into place
(io.replace_folder): only an earlier export whose manifest lists every file in it is ever replaced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from leap_core.model_folder import EXPORT_FILE
from leap_core.schemas import OnnxExportFile, read_schema_file
from leap_core.serve.served import BatchedEncoder, OperatingPoint, cut_module, operating_point, trace_inputs

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
    from leap_core.io import sha256_file, write_json_atomic

    write_json_atomic(folder / EXPORT_FILE, {
        **settings, "graph": graphs[-1],
        "graphs": {precision: name for precision, name in GRAPHS.items() if name in graphs},
        "sha256": {name: sha256_file(folder / name) for name in graphs},
        "tokenizer_sha256": {name: sha256_file(folder / name) for name in sorted(set(tokenizer_files))
                             if (folder / name).is_file()}})


def export_onnx(model: str | os.PathLike, out: str | os.PathLike, depth: int | None = None, int8: bool = False,
                per_channel: bool = False, scheme: str | None = None, check_texts: str | os.PathLike | None = None,
                threads: int | None = None) -> Path:
    """Export MODEL at `depth` (default: its calibrated full or fixed:N) to the new folder `out`; returns it.

    A shallow query encoder folder or Router package exports its query route (onnx_route.write_query_export).
    scheme: the int8 graph's quantisation, "auto" (both candidates measured, the one closer to fp32 kept),
    "per-tensor" or "per-channel"; None is per-channel with per_channel (its older spelling), else per-tensor, as
    callers that label their rows by scheme expect (`leap export` defaults to auto). Every int8 graph is measured
    against fp32 on check_texts (int8_check.read_check_texts: default the data dir's STS-B dev) with `threads`
    ONNX Runtime threads, and leap_onnx.json records it.
    `out` may not exist yet, be empty, or be an earlier leap export whose manifest lists every file in it
    (replaced whole, atomically: io.replace_folder); anything else is refused and left untouched.
    """
    from leap_core.serve.int8_check import add_int8, int8_scheme, read_check_texts
    from leap_core.io import replace_folder
    from leap_core.query_encoder.onnx_route import is_query_route, write_query_export

    require_onnx()
    chosen = int8_scheme(int8, per_channel, scheme)  # a bad combination is refused before anything is built
    texts = read_check_texts(check_texts) if chosen else None  # so is a bad --check-texts
    write = write_query_export if is_query_route(model) else _write_export

    def build(folder: Path) -> None:
        write(model, folder, depth, False, False)  # the fp32 graph, tokenizer and leap_onnx.json
        if chosen:
            add_int8(folder, chosen, texts, threads)

    return replace_folder(Path(out), build, EXPORT_KIND)


def _write_export(model: str | os.PathLike, folder: Path, depth: int | None, int8: bool, per_channel: bool) -> None:
    """The graphs, tokenizer and leap_onnx.json of MODEL at its point, written into the new `folder` (int8 here is
    unmeasured: export_onnx passes False and adds its int8 graph with int8_check.add_int8)."""
    from transformers import AutoTokenizer

    from leap_core.model_folder import folder_positions, max_seq_length, model_fingerprint
    from leap_core.models import resolve_model

    scratch = Path(tempfile.mkdtemp(prefix=".scratch.", dir=folder.parent))  # a branch's cut: not exported
    try:
        point = operating_point(model, depth, scratch)
        folder.mkdir()
        tokenizer = AutoTokenizer.from_pretrained(str(point.folder))
        module, names = cut_module(point.folder, point.depth)
        graphs = write_graphs(module, trace_inputs(tokenizer, names), names, folder, int8, per_channel)
        tokenizer_files = [Path(name).name for name in tokenizer.save_pretrained(str(folder))]
        write_settings(folder, graphs, tokenizer_files, {
            "source": str(model), "source_fingerprint": model_fingerprint(resolve_model(str(model))),
            "served_folder_fingerprint": model_fingerprint(point.folder), "policy": point.policy,
            "depth": point.depth, "n_layers": point.model_layers,
            "max_length": max_seq_length(point.folder) or 128, "max_positions": folder_positions(point.folder),
            "pooling": "mean", "normalized": True, "inputs": list(names),
            "quantization": quantization(int8, per_channel)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _verify(folder: Path, files: dict[str, str], what: str) -> None:
    from leap_core.io import sha256_file

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
        _verify(self.folder, {name: self.settings["sha256"][name]}, "graph")
        _verify(self.folder, self.settings.get("tokenizer_sha256", {}), "tokenizer file")
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
        trained for; see onnx_route.check_onnx_pair."""
        from leap_core.query_encoder.onnx_route import check_onnx_pair

        check_onnx_pair(self.folder, document_model)

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]
