"""A model served at one depth: the operating point, the module that computes it, and its PyTorch encoder.

The operating point is what `leap calibrate` saved (full depth or `fixed:N`; an adaptive policy needs a depth),
or a depth given. For an exit branch, full depth is its original model and `fixed:N` its standalone N-layer cut
(exit_branch.save_cut, exit head included). The module is the folder's first N layers, mean pooling, any Dense
head and L2 normalisation: the graph `leap export` writes, and what TorchCutEncoder runs.

TorchCutEncoder is the PyTorch path without per-call Python: the module traced and frozen by TorchScript (one
C++ graph: no HF layer dispatch, attention mask building or pooling in Python per call), optionally with
dynamic int8 linear layers (torch.ao.quantization.quantize_dynamic) for users who cannot ship ONNX Runtime.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from leap_core.model_folder import exit_policy, has_branch, layer_count, max_seq_length, read_branch, read_exit_settings
from leap_core.retrofit.exit_branch import save_cut

# torch, transformers and the leap modules that import them (batching, encoder, models, st_module) are imported
# inside the functions that run PyTorch: an operating point and an ONNX encoder's loop need neither.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class OperatingPoint:
    """What serves a point: the folder whose first `depth` layers (plus head) compute it, and its label."""

    folder: Path
    depth: int
    policy: str
    model_layers: int  # the served model's full depth (an exit branch: its original's)


def _saved_depth(folder: Path, n_layers: int) -> int:
    """The depth of the folder's saved full or fixed policy (no leap_exit.json: the model as shipped, full)."""
    settings = read_exit_settings(folder)
    if not settings:
        return n_layers
    policy = exit_policy(settings)
    if policy.kind not in ("full", "fixed"):
        raise ValueError(f"{folder}: its policy {policy.name} exits per sentence; serve a fixed depth (--depth N)")
    return policy.depth if policy.kind == "fixed" else n_layers


def operating_point(model: str | os.PathLike, depth: int | None, scratch: Path) -> OperatingPoint:
    """The saved policy's point (or `depth`); an exit branch's cut is written under `scratch`."""
    from leap_core.models import original_of, resolve_model  # imports torch and transformers

    folder = resolve_model(str(model))
    branch = read_branch(folder) if has_branch(folder) else None
    is_branch = branch is not None and "cut_depth" not in branch
    n_layers = int(branch["original_layers"]) if is_branch else layer_count(folder)
    depth = _saved_depth(folder, n_layers) if depth is None else depth
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= n_layers:
        raise ValueError(f"{folder}: depth {depth!r} is not a layer of this model (1..{n_layers})")
    label = "full" if depth == n_layers else f"fixed:{depth}"
    if not is_branch:
        return OperatingPoint(folder, depth, label, n_layers)
    if depth == n_layers:
        return OperatingPoint(original_of(folder), depth, label, n_layers)
    # The cut holds exactly `depth` layers: the point runs all of them.
    return OperatingPoint(save_cut(folder, depth, scratch / "cut"), depth, label, n_layers)


def head_modules(folder: Path) -> list[Any]:
    """The sentence-transformers modules after the pooling, in order, as torch modules (Dense, Normalize)."""
    import torch  # the PyTorch paths only (see the note above INPUTS)
    import torch.nn.functional as F

    from leap_core.serve.st_module import tail_modules  # imports torch and sentence-transformers

    class Normalize(torch.nn.Module):
        def forward(self, x):
            return F.normalize(x, dim=-1)

    class Dense(torch.nn.Module):
        def __init__(self, linear: Any, activation: Any) -> None:
            super().__init__()
            self.linear, self.activation = linear, activation

        def forward(self, x):
            return self.activation(self.linear(x))

    head = []
    for module in tail_modules(folder):  # after the mean pool (checked there), in either folder layout
        kind = type(module).__name__
        if kind == "Dense":
            head.append(Dense(module.linear, module.activation_function))
        elif kind == "Normalize":
            head.append(Normalize())
        else:
            raise ValueError(f"{folder}: sentence-transformers module {kind} is not supported at a fixed depth")
    return head


def cut_module(folder: Path, depth: int, attention: str = "eager") -> tuple[Any, tuple[str, ...]]:
    """The model's first `depth` layers, mean pool, head and normalisation as one traceable module; its inputs.

    attention: "eager" (what the ONNX exporter takes) or "sdpa" (torch's fused attention kernel, for PyTorch).
    """
    import torch  # the PyTorch paths only (see the note above INPUTS)
    import torch.nn.functional as F

    from leap_core.models import load_weights  # imports torch and transformers

    model = load_weights(folder, attn_implementation=attention).eval()
    if not 1 <= depth <= len(model.encoder.layer):
        raise ValueError(f"{folder}: depth {depth}: the model has {len(model.encoder.layer)} layers")
    model.encoder.layer = model.encoder.layer[:depth]
    model.config.num_hidden_layers = depth
    head = head_modules(folder)

    class Cut(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.head = torch.nn.Sequential(*head)

        def forward(self, input_ids, attention_mask, *token_type_ids):
            extra = {"token_type_ids": token_type_ids[0]} if token_type_ids else {}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return F.normalize(self.head(pooled), dim=-1)

    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters  # MPNet has none
    return Cut().eval(), INPUTS if takes_types else INPUTS[:2]


def trace_inputs(tokenizer: Any, names: Sequence[str]) -> tuple[Any, ...]:
    """A padded two-row sample: tracing with padding keeps the attention mask in the graph."""
    import torch  # the PyTorch paths only (see the note above INPUTS)

    sample = tokenizer(["a short text", "a somewhat longer text to pad the batch"], padding=True, return_tensors="pt")
    return tuple(sample.get(name, torch.zeros_like(sample["input_ids"])) for name in names)


class BatchedEncoder:
    """Tokenise, batch by length (longest first, as leap's encoder does), run, restore order: the shared loop."""

    tokenizer: Any
    max_length: int
    inputs: Sequence[str]

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, d) normalised float32 embeddings ((d,) for one str)."""
        from leap_core.serve.batching import check_sentences  # imports torch

        single = isinstance(sentences, str)
        items = check_sentences([sentences] if single else sentences)  # str rows, each valid Unicode
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        order = np.argsort([-len(text) for text in items], kind="stable")
        chunks = []
        for start in range(0, len(items), batch_size):
            batch = [items[i] for i in order[start:start + batch_size]]
            encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="np")
            chunks.append(self._run({name: encoded.get(name, np.zeros_like(encoded["input_ids"])).astype(np.int64)
                                     for name in self.inputs}))
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
        embeddings = embeddings[np.argsort(order)] if len(items) else embeddings
        return embeddings[0] if single else embeddings


def quantize_int8(module: Any) -> Any:
    """Dynamic int8 of every nn.Linear (weights int8 per tensor, activations quantised per call), CPU only."""
    import torch  # the PyTorch paths only (see the note above INPUTS)
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch marks its quantized tensor API deprecated (in favour of torchao)
        warnings.simplefilter("ignore")
        return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


class TorchCutEncoder(BatchedEncoder):
    """A model at its operating point (operating_point) in PyTorch: TorchScript-frozen, fp32 or dynamic int8.

    script=False runs the same module eagerly (the reference the frozen graph is checked against).
    """

    def __init__(self, model: str | os.PathLike, depth: int | None = None, int8: bool = False, script: bool = True):
        import torch  # the PyTorch paths only (see the note above INPUTS)
        from transformers import AutoTokenizer  # as torch

        from leap_core.models import check_max_length  # imports torch and transformers

        scratch = Path(tempfile.mkdtemp(prefix="leap-cut-"))
        try:
            self.point = operating_point(model, depth, scratch)
            module, self.inputs = cut_module(self.point.folder, self.point.depth, attention="sdpa")
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.point.folder))
            self.max_length = max_seq_length(self.point.folder) or 128
            check_max_length(self.max_length, module.model, f"{self.point.folder}: max_seq_length")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        module = quantize_int8(module) if int8 else module
        if script:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
                module = torch.jit.freeze(torch.jit.trace(module, trace_inputs(self.tokenizer, self.inputs),
                                                          check_trace=False))
        self.module = module
        self.precision = "int8" if int8 else "fp32"

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch  # the PyTorch paths only (see the note above INPUTS)

        with torch.inference_mode():
            return self.module(*(torch.from_numpy(feed[name]) for name in self.inputs)).numpy()
