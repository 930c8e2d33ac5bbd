"""An export's int8 graph chosen by measured quality: each candidate's cosine to the fp32 graph on check texts.

Dynamic int8 drifts from fp32 by a different amount per model and per scheme (issue 32; reports/int8.md measures
it), so `leap export --int8` measures instead of assuming. The candidates are onnxruntime's quantize_dynamic of the
exported fp32 graph, weights scaled per tensor or per output channel; each embeds the check texts through
OnnxEncoder (the tokenisation, batching and pooling a user gets) and is scored by the row-wise cosine to the fp32
graph's embeddings: mean, min and 1st percentile. `auto` keeps the candidate with the higher mean (per tensor on a
tie: the smaller graph); an explicit scheme is measured the same way, so every int8 export records its drift in
leap_onnx.json's "quantization"."check".

Check texts are the user's (--check-texts FILE: .txt one per line or .jsonl with "text", optionally .gz) or the
STS-B dev sentences of the configured data dir (leap_core.config: data.data_dir, LEAP_DATA_DIR overrides), never
a test split: the choice is made on dev.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from leap_core.config import load_profile
from leap_core.data import DataError
from leap_core.evaluation.diagnose import probe_sentences
from leap_core.io import sha256_file, sha256_strings, write_json_atomic
from leap_core.model_folder import EXPORT_FILE
from leap_core.schemas import OnnxExportFile, read_json, read_schema_file
from leap_core.serve.onnx_graph import GRAPHS, OnnxEncoder, quantization, quantize_graph

SCHEMES = ("auto", "per-tensor", "per-channel")
CANDIDATES = {"per-tensor": False, "per-channel": True}  # scheme -> quantize_dynamic's per_channel
CANDIDATE_GRAPHS = {"per-tensor": "model_int8_per_tensor.onnx", "per-channel": "model_int8_per_channel.onnx"}
MAX_CHECK_TEXTS = 1000  # enough for a stable mean and 1st percentile; ~10 s per graph for MiniLM on one core
CHECK_BATCH = 32
FORMATS = ".txt, one text a line, or .jsonl with \"text\"; .gz ok"
TEXTS_HELP = f"--check-texts FILE ({FORMATS})"


def int8_scheme(int8: bool, per_channel: bool, scheme: str | None) -> str | None:
    """The int8 graph's scheme (None: no int8 graph): `scheme`, or per-channel with per_channel, else per-tensor.

    per_channel is the older spelling of scheme "per-channel"; asking for both with a different scheme, or for a
    scheme without int8, is refused.
    """
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(f"--quantization {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if per_channel and not int8:
        raise ValueError("per_channel quantizes the int8 graph: ask for int8 too (--int8 --per-channel)")
    if scheme is not None and not int8:
        raise ValueError(f"--quantization {scheme} chooses the int8 graph: ask for int8 too (--int8)")
    if per_channel and scheme not in (None, "per-channel"):
        raise ValueError(f"--per-channel is --quantization per-channel; it contradicts --quantization {scheme}")
    if not int8:
        return None
    return "per-channel" if per_channel else (scheme or "per-tensor")


def read_check_texts(source: str | os.PathLike | None, limit: int = MAX_CHECK_TEXTS) -> tuple[str, list[str]]:
    """(where they came from, the first `limit` distinct texts): the file `source`, else the data dir's STS-B dev.

    Any fault is a one-line ValueError naming the file and --check-texts.
    """

    if source is not None:

        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"--check-texts {path}: no such file (expected {FORMATS})")
        try:
            from leap_core.query_encoder.sources import read_queries  # its package imports export: a cycle at import

            return str(path), read_queries(path)[:limit]
        except DataError as err:
            raise ValueError(f"--check-texts {err}") from None
    return _sts_dev_texts(limit)


def _sts_dev_texts(limit: int) -> tuple[str, list[str]]:
    """The configured STS-B dev file's first `limit` distinct sentences, or an error that names --check-texts."""

    data = load_profile().data
    path = Path(data.data_dir) / data.sts_dev
    if not path.is_file():
        raise ValueError(f"no texts to measure int8 against fp32 with: {path} (STS-B dev in the data dir, "
                         f"LEAP_DATA_DIR) not found; give {TEXTS_HELP}")
    return str(path), probe_sentences(data.data_dir, data.sts_dev, limit)


def cosine_summary(found: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """cos(found_i, reference_i) per row: its mean, min and 1st percentile (p01), clipped to [-1, 1]."""
    if found.shape != reference.shape or found.ndim != 2 or not len(found):
        raise ValueError(f"cosine_summary: embeddings of shape {found.shape} against {reference.shape}")
    norms = np.linalg.norm(found, axis=1) * np.linalg.norm(reference, axis=1)
    cosines = np.clip((found * reference).sum(axis=1) / np.maximum(norms, 1e-12), -1.0, 1.0).astype(np.float64)
    if not np.isfinite(cosines).all():
        raise ValueError("cosine_summary: the int8 graph gave non-finite embeddings")
    return {"mean": float(cosines.mean()), "min": float(cosines.min()), "p01": float(np.percentile(cosines, 1))}


def best_candidate(measured: dict[str, dict[str, float]]) -> str:
    """argmax over candidates of the mean cosine to fp32; the first listed (per tensor) on a tie."""
    return max(measured, key=lambda name: measured[name]["mean"])


def measure_graphs(folder: Path, graphs: dict[str, str], texts: Sequence[str],
                   threads: int | None = None) -> dict[str, dict[str, float]]:
    """{name: cosine_summary} of each graph file in `folder` (listed in its leap_onnx.json) against its fp32 graph."""

    reference = OnnxEncoder(folder, precision="fp32", threads=threads).encode(list(texts), CHECK_BATCH)
    return {name: cosine_summary(OnnxEncoder(folder, graph=graph, threads=threads).encode(list(texts), CHECK_BATCH),
                                 reference)
            for name, graph in graphs.items()}


def add_int8(folder: Path, scheme: str, texts: tuple[str, list[str]], threads: int | None = None) -> str:
    """Quantise `folder`'s fp32 graph by `scheme` (auto: both candidates), measure, keep the chosen one as its
    int8 graph, delete the other, and record the choice and every candidate's cosine in leap_onnx.json.

    `texts` is read_check_texts' (source, texts). Returns the scheme kept.
    """

    source, items = texts
    if not items:
        raise ValueError(f"--check-texts {source}: no text in it")
    names = list(CANDIDATES) if scheme == "auto" else [scheme]
    graphs = {name: CANDIDATE_GRAPHS[name] for name in names}
    for name, graph in graphs.items():
        quantize_graph(folder / GRAPHS["fp32"], folder / graph, CANDIDATES[name])
    settings = read_json(folder / EXPORT_FILE)
    # Listed (hashed) so that OnnxEncoder loads the candidates through its own checks.
    write_json_atomic(folder / EXPORT_FILE, {**settings, "sha256": {
        **settings["sha256"], **{graph: sha256_file(folder / graph) for graph in graphs.values()}}})
    measured = measure_graphs(folder, graphs, items, threads)
    chosen = best_candidate(measured)
    os.replace(folder / graphs[chosen], folder / GRAPHS["int8"])
    for name in names:
        (folder / graphs[name]).unlink(missing_ok=True)
    settings.update({"graph": GRAPHS["int8"], "graphs": {**settings["graphs"], "int8": GRAPHS["int8"]},
                     "sha256": {**settings["sha256"], GRAPHS["int8"]: sha256_file(folder / GRAPHS["int8"])},
                     "quantization": {**quantization(True, CANDIDATES[chosen]), "check": check_record(
                         source, items, measured, "auto" if scheme == "auto" else "flag")}})
    write_json_atomic(folder / EXPORT_FILE, settings)
    read_schema_file(folder / EXPORT_FILE, OnnxExportFile)  # what was written is what OnnxEncoder will accept
    return chosen


def check_record(source: str, texts: Sequence[str], measured: dict[str, dict[str, float]],
                 chosen_by: str) -> dict[str, Any]:
    """leap_onnx.json's quantization.check: the texts (source, sha256, n), each candidate's cosine, who chose."""

    return {"texts": source, "texts_sha256": sha256_strings(list(texts)), "n": len(texts),
            "candidates": measured, "chosen_by": chosen_by}
