"""A model at its chosen operating point as an ONNX Runtime graph (fp32, or dynamic int8), in a self-describing folder.

The graph is the model cut to the policy's depth (full depth or `fixed:N`: the operating points `leap calibrate`
chooses when no adaptive policy wins), with mean pooling and L2 normalisation inside, exported by
torch.onnx.export (TorchScript exporter: the dynamo one needs onnxscript) with dynamic batch and length;
int8 is onnxruntime.quantization.quantize_dynamic of that graph. The folder holds the graph, the tokenizer and
`leap_onnx.json` (policy, depth, max length, pooling, the source model's weights hash, each file's sha256), so
OnnxEncoder.from_folder loads it with one call and checks what it loads.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

EXPORT_FILE = "leap_onnx.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _cut_module(folder: Path, depth: int) -> tuple[Any, tuple[str, ...]]:
    """The model's first `depth` layers, mean-pooled and normalised, as one traceable module, and its input names."""
    import inspect

    import torch
    import torch.nn.functional as F
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    if not 1 <= depth <= len(model.encoder.layer):
        raise ValueError(f"depth {depth}: the model has {len(model.encoder.layer)} layers")
    model = copy.deepcopy(model)
    model.encoder.layer = model.encoder.layer[:depth]
    model.config.num_hidden_layers = depth

    class Cut(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *token_type_ids):
            extra = {"token_type_ids": token_type_ids[0]} if token_type_ids else {}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1)

    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters  # MPNet has none
    return Cut().eval(), INPUTS if takes_types else INPUTS[:2]


def export_onnx(model: str, out: str | Path, depth: int | None = None, int8: bool = False) -> Path:
    """Export MODEL at `depth` (default: its calibrated policy when that is full or fixed:N) to the folder `out`."""
    import torch
    from transformers import AutoTokenizer

    from leap_core.encoder import EarlyExitEncoder
    from leap_core.io import sha256_file, write_json_atomic
    from leap_core.models import model_fingerprint, resolve_model

    folder = resolve_model(str(model))
    encoder = EarlyExitEncoder.from_pretrained(folder)
    policy = encoder.policy
    if depth is None:
        if policy.kind not in ("full", "fixed"):
            raise ValueError(f"{folder}: its policy {policy.name} exits per sentence; export a fixed depth (--depth N)")
        depth = policy.depth if policy.kind == "fixed" else encoder.num_layers
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    sample = tokenizer(["a short text", "a somewhat longer text to pad the batch"], padding=True, return_tensors="pt")
    module, names = _cut_module(folder, depth)
    inputs = tuple(sample.get(name, torch.zeros_like(sample["input_ids"])) for name in names)
    graph = out / "model.onnx"
    torch.onnx.export(module, inputs, str(graph), input_names=list(names), output_names=["embedding"], dynamo=False,
                      opset_version=17,
                      dynamic_axes={**{name: {0: "batch", 1: "tokens"} for name in names}, "embedding": {0: "batch"}})
    files = ["model.onnx"]
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(graph), str(out / "model_int8.onnx"), weight_type=QuantType.QInt8)
        files.append("model_int8.onnx")
    tokenizer.save_pretrained(str(out))
    write_json_atomic(out / EXPORT_FILE, {
        "source": str(model), "source_fingerprint": model_fingerprint(folder), "depth": depth,
        "n_layers": encoder.num_layers, "policy": f"fixed:{depth}" if depth < encoder.num_layers else "full",
        "max_length": encoder.max_length, "pooling": "mean", "normalized": True, "inputs": list(names),
        "graph": files[-1], "sha256": {name: sha256_file(out / name) for name in files}})
    return out


class OnnxEncoder:
    """Embeds with an exported folder's graph in ONNX Runtime: the same tokenisation, depth and pooling as leap's."""

    def __init__(self, folder: str | Path, graph: str | None = None, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from leap_core.io import sha256_file

        self.folder = Path(folder)
        settings_file = self.folder / EXPORT_FILE
        if not settings_file.is_file():
            raise ValueError(f"{self.folder}: not a leap ONNX export (no {EXPORT_FILE})")
        self.settings = json.loads(settings_file.read_text(encoding="utf-8"))
        name = graph or self.settings["graph"]
        expected = self.settings["sha256"].get(name)
        if expected is None or sha256_file(self.folder / name) != expected:
            raise ValueError(f"{self.folder / name}: sha256 differs from {EXPORT_FILE} (or not listed): not loading it")
        options = ort.SessionOptions()
        # Idle ORT threads otherwise spin between calls and take the cores from torch in the same process (bench).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.folder / name), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.max_length = int(self.settings["max_length"])

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, d) normalised float32 embeddings ((d,) for one str), batches sorted by length as leap's encoder does."""
        single = isinstance(sentences, str)
        items = [sentences] if single else list(sentences)
        order = np.argsort([-len(text) for text in items], kind="stable")
        chunks = []
        for start in range(0, len(items), batch_size):
            batch = [items[i] for i in order[start:start + batch_size]]
            encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="np")
            feed = {name: encoded.get(name, np.zeros_like(encoded["input_ids"])).astype(np.int64)
                    for name in self.settings["inputs"]}
            chunks.append(self.session.run(None, feed)[0])
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
        embeddings = embeddings[np.argsort(order)] if len(items) else embeddings
        return embeddings[0] if single else embeddings
