"""The shallow query encoder: the original's embeddings and first N layers, mean pool, a linear head.

q(x) = normalize(W normalize(mean_pool(h_N(x))) + b), with h_N the original's first N layers (trainable copies) and
(W, b) initialised to the identity or a closed-form ridge map onto the original's final embedding. It embeds
queries into the ORIGINAL model's space, so it searches an index the original built; the document model is
never touched. Saved as a sentence-transformers folder (Transformer, Pooling, Normalize, Dense, Normalize) plus
leap_query_encoder.json, which records the document model's weights hash: pairing with any other document model
is refused (check_pair).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from leap_core.retrofit.exit_branch import append_head
from leap_core.io import write_json_atomic, write_manifest
from leap_core.model_folder import layer_count, max_seq_length, model_fingerprint
from leap_core.models import (
    MODEL_KIND,
    build_student,
    load_weights,
    resolve_model,
    save_sentence_transformer,
)
from leap_core.pooling import mean_pool

RECORD_FILE = "leap_query_encoder.json"


def fit_ridge(pools: np.ndarray, targets: np.ndarray, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """(W (d, d), b (d,)) minimising ||[X 1] [W^T; b] - Y||^2 + ridge ||.||^2 in closed form (fit_heads's map)."""
    x = np.hstack([pools.astype(np.float64), np.ones((len(pools), 1))])
    solution = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ targets.astype(np.float64))
    return solution[:-1].T.astype(np.float32), solution[-1].astype(np.float32)


def apply_head(pools: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """normalize(pools W^T + b) row by row: a head on precomputed (normalised) pools."""
    mapped = pools @ weight.T + bias
    return mapped / np.maximum(np.linalg.norm(mapped, axis=-1, keepdims=True), 1e-12)


class ShallowQueryEncoder(nn.Module):
    """A transformer of N layers + mean pool + linear head, embedding queries into the original's space."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, head: nn.Linear | None = None,
                 max_length: int = 256):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        dim = model.config.hidden_size
        if head is None:
            head = nn.Linear(dim, dim)
            nn.init.eye_(head.weight)
            nn.init.zeros_(head.bias)
        self.head = head

    @property
    def depth(self) -> int:
        return len(self.model.encoder.layer)

    @property
    def is_static(self) -> bool:
        """Depth 0: token (+ position) embeddings, LayerNorm, mean pool and head; no attention, no layer."""
        return self.depth == 0

    @classmethod
    def from_original(cls, original: str, depth: int, max_length: int | None = None) -> "ShallowQueryEncoder":
        """The original's embeddings and first `depth` layers (models.build_student), identity head, no dropout.

        Depth 0 is the static point: the embedding output alone, mean-pooled, so a query costs a table lookup.
        """
        folder = resolve_model(original)
        layers = layer_count(folder)
        if not 0 <= depth <= layers:
            raise ValueError(f"query encoder depth must be in 0..{layers} (the original's layers), got {depth}")
        model, tokenizer = build_student(str(folder), depth)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        return cls(model, tokenizer, max_length=max_length or max_seq_length(folder) or 256)

    def set_head(self, weight: np.ndarray, bias: np.ndarray) -> None:
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight))
            self.head.bias.copy_(torch.as_tensor(bias))

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length or self.max_length,
                              return_tensors="pt")

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, d) normalised query embeddings of tokenized features."""
        wanted = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.model(**wanted).last_hidden_state
        pooled = F.normalize(mean_pool(hidden, features["attention_mask"]), dim=-1)
        return F.normalize(self.head(pooled), dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, d) float32 normalised embeddings; batches of similar length, returned in input order."""
        was_training = self.training
        self.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self(self.tokenize([texts[i] for i in rows])).float().numpy()
        self.train(was_training)
        return out


def save_query_encoder(encoder: ShallowQueryEncoder, folder: str | Path, document_model: str,
                       extra: dict | None = None) -> Path:
    """Write the encoder as a sentence-transformers folder + RECORD_FILE naming the document model by weights hash."""
    folder = save_sentence_transformer(encoder.model, encoder.tokenizer, folder, max_seq_length=encoder.max_length)
    append_head(folder, encoder.head.weight.detach().cpu().numpy().copy(),
                 encoder.head.bias.detach().cpu().numpy().copy())
    document = resolve_model(document_model)
    write_json_atomic(Path(folder) / RECORD_FILE, {
        "document_model": document_model, "document_fingerprint": model_fingerprint(document),
        "depth": encoder.depth, "max_length": encoder.max_length, **(extra or {})})
    write_manifest(folder, MODEL_KIND)  # the head and record are leap's too: a later save may replace the folder
    return Path(folder)


def read_record(folder: str | Path) -> dict:
    """The query encoder's RECORD_FILE; a folder without one is not a query encoder (ValueError)."""
    file = Path(folder) / RECORD_FILE
    if not file.is_file():
        raise ValueError(f"{folder}: not a query encoder (no {RECORD_FILE})")
    return json.loads(file.read_text(encoding="utf-8"))


def _dense_head(folder: Path) -> nn.Linear:
    """The Dense module's linear map, read from the folder's modules.json (sentence-transformers layout)."""
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    dense = [m for m in modules if m["type"].endswith("Dense")]
    if len(dense) != 1:
        raise ValueError(f"{folder}: expected one Dense head in modules.json, found {len(dense)}")
    tensors = load_file(str(folder / dense[0]["path"] / "model.safetensors"))
    weight = tensors["linear.weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(tensors["linear.bias"])
    return head


def load_query_encoder(folder: str | Path, document_model: str | None = None) -> ShallowQueryEncoder:
    """The saved encoder; with document_model, first check it is the document model it was trained for."""
    folder = Path(folder)
    record = read_record(folder)
    if document_model is not None:
        check_pair(folder, document_model)
    model = load_weights(folder)
    return ShallowQueryEncoder(model, AutoTokenizer.from_pretrained(str(folder)), _dense_head(folder),
                               max_length=int(record["max_length"])).eval()


def check_pair(folder: str | Path, document_model: str) -> None:
    """Refuse (ValueError naming both weights hashes) any document model but the one the encoder was trained for."""
    record = read_record(folder)
    found = model_fingerprint(resolve_model(document_model))
    if found != record["document_fingerprint"]:
        raise ValueError(
            f"{folder}: this query encoder was trained for the document model {record['document_model']} "
            f"(weights sha256 {record['document_fingerprint']}), but {document_model} has weights sha256 {found}: "
            "its queries would not share that index's space; embed the documents with the recorded model")
