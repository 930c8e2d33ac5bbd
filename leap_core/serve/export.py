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

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from leap_core.io import replace_folder
from leap_core.model_folder import EXPORT_FILE, folder_positions, max_seq_length, model_fingerprint
from leap_core.models import resolve_model
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.serve.int8_check import add_int8, int8_scheme, read_check_texts
from leap_core.serve.onnx_graph import (EXPORT_KIND, GRAPHS, OnnxEncoder, quantization, require_onnx, write_graphs,
                                        write_settings)
from leap_core.serve.served import cut_module, operating_point, trace_inputs

__all__ = ["GRAPHS", "OnnxEncoder", "export_onnx", "load_deployed", "require_onnx"]


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
    # query_encoder's package imports this module (points, bench): a cycle at import time, so read on use
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


def load_deployed(path: str | os.PathLike, **options: Any) -> Any:
    """One call for any leap folder: an ONNX export (leap_onnx.json) -> OnnxEncoder (options: precision,
    threads); a model folder or hub id -> EarlyExitEncoder serving its saved policy (options: its overrides)."""
    if (Path(path) / EXPORT_FILE).is_file():
        return OnnxEncoder(path, **options)
    return EarlyExitEncoder.from_pretrained(resolve_model(str(path)), **options)
