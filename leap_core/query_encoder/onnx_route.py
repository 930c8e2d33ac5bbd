"""The query route of a shallow query encoder (its folder or a Router package) as ONNX graphs tied to its documents.

The graph is ShallowQueryEncoder.forward itself, traced: the N layers (0: the static encoder's embedding table and
LayerNorm alone), mean pool, normalise, Dense, normalise. leap export writes it with export.py's machinery (fp32,
dynamic int8 per tensor or per channel, every file hashed); its leap_onnx.json has role "query" and names the
document model (name and weights sha256) whose index its queries search, so onnx_graph.check_onnx_pair can refuse another.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leap_core.model_folder import model_fingerprint, usable_positions
from leap_core.query_encoder.model import RECORD_FILE, ShallowQueryEncoder, read_record
from leap_core.query_encoder.package import route_modules
from leap_core.serve.onnx_graph import QUERY_ROLE, quantization, write_graphs, write_settings
from leap_core.serve.served import INPUTS, trace_inputs

ROLE = QUERY_ROLE


def is_query_route(model: str | os.PathLike) -> bool:
    """Whether `model` is a local query encoder folder or Router package (it holds leap_query_encoder.json)."""
    return (Path(model).expanduser() / RECORD_FILE).is_file()


def _kind(module: Any) -> str:
    return type(module).__name__


def encoder_from_route(folder: str | Path) -> ShallowQueryEncoder:
    """The folder's query route as a ShallowQueryEncoder (eager attention: what the ONNX exporter takes).

    The route must be exactly what save_query_encoder writes, so the graph is that encoder's forward and nothing
    a different module list would compute.
    """

    modules = route_modules(folder)
    kinds = [_kind(module) for module in modules]
    expected = ["Transformer", "Pooling", "Normalize", "Dense", "Normalize"]
    if kinds != expected:
        raise ValueError(f"{folder}: its query route is {kinds}; a leap query encoder is {expected}")
    transformer, pooling, _, dense, _ = modules
    if pooling.get_config_dict().get("pooling_mode") != "mean":
        raise ValueError(f"{folder}: its query route pools by {pooling.get_config_dict().get('pooling_mode')}; "
                         "a leap query encoder mean-pools")
    if not isinstance(dense.activation_function, nn.Identity):
        raise ValueError(f"{folder}: its query head has activation {_kind(dense.activation_function)}; "
                         "a leap query encoder's head is linear")
    model = transformer.model
    model.set_attn_implementation("eager")
    record = read_record(folder)
    return ShallowQueryEncoder(model, transformer.tokenizer, dense.linear, max_length=int(record["max_length"])).eval()


class _QueryGraph(nn.Module):
    """ShallowQueryEncoder.forward with positional inputs, as torch.onnx.export traces a module."""

    def __init__(self, encoder: ShallowQueryEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, *token_type_ids):
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids:
            features["token_type_ids"] = token_type_ids[0]
        return self.encoder(features)


def write_query_export(source: str | os.PathLike, folder: Path, depth: int | None, int8: bool,
                       per_channel: bool) -> None:
    """The query route's graphs, tokenizer and leap_onnx.json (role "query", its document model) in new `folder`."""
    record = read_record(source)
    encoder = encoder_from_route(source)
    if depth is not None and depth != encoder.depth:
        raise ValueError(f"{source}: a query encoder exports at its own depth {encoder.depth}, not --depth {depth} "
                         "(fit one at that depth with leap query-encoder)")
    # MPNet takes no token_type_ids: the graph's inputs are the ones its forward has.
    takes_types = "token_type_ids" in inspect.signature(encoder.model.forward).parameters
    names = INPUTS if takes_types else INPUTS[:2]
    folder.mkdir()
    with torch.no_grad():
        graphs = write_graphs(_QueryGraph(encoder).eval(), trace_inputs(encoder.tokenizer, names), names, folder,
                              int8, per_channel)
    tokenizer_files = [Path(name).name for name in encoder.tokenizer.save_pretrained(str(folder))]
    write_settings(folder, graphs, tokenizer_files, {
        "role": ROLE, "source": str(source), "source_fingerprint": model_fingerprint(source),
        "document_model": record["document_model"], "document_fingerprint": record["document_fingerprint"],
        "policy": f"query:{encoder.depth}", "depth": encoder.depth, "n_layers": encoder.depth,
        "max_length": encoder.max_length, "max_positions": usable_positions(encoder.model), "pooling": "mean",
        "normalized": True, "head": "dense",
        "inputs": list(names), "quantization": quantization(int8, per_channel)})
