"""Query latency and int8 quality: the original against shallow query encoders, in one process, interleaved.

Paths, timed on the sets' real test queries at batch 1 and 8 (timing.compare_calls: the same batches, paths
rotated, warm-up, medians and IQR):
    original · sentence-transformers · fp32    the model as shipped
    original · ONNX Runtime · fp32 / int8      int8 is the peer: what a CPU user has without leap
    depth N  · ONNX Runtime · fp32 / int8      each query encoder (leap export of its folder)
int8 is onnxruntime's dynamic quantisation per tensor and, with per_channel, per channel too. Quality: every
path's test-query NDCG@10 against the ORIGINAL's fp32 index of each set (documents are never re-embedded), as
a paired-bootstrap change from original/original; each set is judged with the query encoders trained on its text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from leap_core.data.beir import load_beir
from leap_core.model_folder import max_seq_length
from leap_core.models import resolve_model
from leap_core.query_encoder.evaluate import compare_row, retrieval_row, topk_overlap
from leap_core.query_encoder.experiment import original_pools
from leap_core.query_encoder.index import build_index
from leap_core.serve.export import OnnxEncoder, export_onnx
from leap_core.timing import compare_calls

log = logging.getLogger(__name__)
SHIPPED = "original · sentence-transformers · fp32"
PEER = "original · ONNX Runtime · int8"
PRECISIONS = ("fp32", "int8", "int8 per-channel")


@dataclass
class QueryPath:
    """One row: its name, depth (None: the original), precision and how it embeds (texts, batch size)."""

    name: str
    depth: int | None
    precision: str
    encode: Callable[[list[str], int], np.ndarray]


def export_paths(label: str, depth: int | None, source: Path, out: Path, threads: int,
                 per_channel: bool) -> list[QueryPath]:
    """ORT fp32 and int8 (and int8 per channel) of `source`, exported under `out` once (reused when there)."""

    exports = {"": {}, "-per-channel": {"per_channel": True}} if per_channel else {"": {}}
    paths = []
    for suffix, options in exports.items():
        folder = out.with_name(out.name + suffix)
        if not folder.exists():
            export_onnx(source, folder, int8=True, **options)
        for precision in ("fp32", "int8") if not suffix else ("int8",):
            shown = precision + (" per-channel" if suffix else "")
            encoder = OnnxEncoder(folder, precision=precision, threads=threads)
            paths.append(QueryPath(f"{label} · ONNX Runtime · {shown}", depth, shown, encoder.encode))
    return paths


def original_paths(original: str, workdir: Path, threads: int, per_channel: bool) -> list[QueryPath]:
    """The original as shipped (sentence-transformers fp32) and exported (ORT fp32, int8)."""
    # deferred: at top, importing this module would load transformers, sentence_transformers, datasets
    from leap_core.serve.st_module import plain_sentence_transformer

    folder = resolve_model(original)
    shipped = plain_sentence_transformer(folder, device="cpu")
    shipped.max_seq_length = max_seq_length(folder) or shipped.max_seq_length

    def encode_shipped(texts: list[str], size: int) -> np.ndarray:
        return shipped.encode(texts, batch_size=size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)

    return [QueryPath(SHIPPED, None, "fp32", encode_shipped),
            *export_paths("original", None, folder, workdir / "original-onnx", threads, per_channel)]


def encoder_paths(encoders: dict[int, Path], workdir: Path, tag: str, threads: int,
                  per_channel: bool) -> list[QueryPath]:
    """Each depth's query encoder in ORT fp32 and int8, exported under workdir/<tag>-depth<N>-onnx."""
    return [path for depth, folder in sorted(encoders.items())
            for path in export_paths(f"depth {depth}", depth, Path(folder), workdir / f"{tag}-depth{depth}-onnx",
                                     threads, per_channel)]


@dataclass
class JudgedSet:
    """One BEIR folder's test queries, the original's fp32 index of it and original/original's row."""

    name: str
    index: Any
    query_ids: list[str]
    texts: list[str]
    qrels: dict
    original: dict[str, Any]
    original_top10: np.ndarray  # the original's top-10 documents per query: what agreement is measured against


def judged_set(original: str, folder: str, cache_dir: Path) -> JudgedSet:
    """The set as reports/query_encoder.json judged it: the same cached index and original query pools."""

    name = Path(folder).name
    index = build_index(original, folder, cache_dir)
    _, queries, qrels = load_beir(folder, "test", cache_dir=cache_dir)
    ids = [q for q in queries if q in qrels]
    texts = [queries[q] for q in ids]
    pools = original_pools(original, cache_dir).layers(f"{name}/test", texts)
    return JudgedSet(name, index, ids, texts, qrels, retrieval_row(index, pools[-1], ids, qrels),
                     index.topk(pools[-1], 10)[1])


def path_quality(paths: Sequence[QueryPath], judged: JudgedSet, n_resamples: int = 2000) -> dict[str, Any]:
    """{path name: compare_row} of each path's test queries against the set's original index."""

    out = {}
    for path in paths:
        embeddings = path.encode(judged.texts, 32)
        row = compare_row(retrieval_row(judged.index, embeddings, judged.query_ids, judged.qrels), judged.original,
                          n_resamples)
        row["agreement10"] = float(topk_overlap(judged.index.topk(embeddings, 10)[1], judged.original_top10).mean())
        out[path.name] = row
    return out


def time_paths(paths: Sequence[QueryPath], queries: Sequence[str], batch_sizes: Sequence[int], warmup: int,
               iterations: int) -> dict[str, Any]:
    """timing.compare_calls over the paths on real queries, the peer (original, ORT int8) as the baseline."""
    return compare_calls({p.name: p.encode for p in paths}, PEER, list(queries), batch_sizes, warmup, iterations)


def speedups(timing: dict[str, Any], paths: Sequence[QueryPath]) -> dict[str, dict[str, Any]]:
    """{depth: {"bs<N>": median(peer) / median(depth's ORT int8), "precision"}} for every timed batch size; the
    per-channel graph where it was timed (per tensor costs the query encoders 3-8 points of NDCG@10)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(paths, key=lambda p: "per-channel" in p.precision):  # per-channel last: it wins
        if path.depth is not None and path.precision.startswith("int8"):
            out[str(path.depth)] = {**{f"bs{size}": rows[path.name]["speedup"]
                                       for size, rows in timing["batch_sizes"].items()}, "precision": path.precision}
    return out


def run_query_bench(original: str, encoders: dict[str, dict[int, Path]], folders: dict[str, str], workdir: Path,
                    cache_dir: Path, threads: int = 1, batch_sizes: Sequence[int] = (1, 8), warmup: int = 10,
                    iterations: int = 100, per_channel: bool = True, n_resamples: int = 2000) -> dict[str, Any]:
    """Quality of every path on each set (its own encoders), then timing on every set's test queries together
    (the first set's encoders: one architecture per depth, so the same cost), interleaved in one process."""

    torch.set_num_threads(threads)
    base = original_paths(original, workdir, threads, per_channel)
    quality: dict[str, dict[str, Any]] = {}
    queries: list[str] = []
    for name, folder in folders.items():
        judged = judged_set(original, folder, cache_dir)
        queries += judged.texts
        own = encoder_paths(encoders[name], workdir, name, threads, per_channel)
        for path_name, row in path_quality(base + own, judged, n_resamples).items():
            quality.setdefault(path_name, {})[name] = row
        log.info("quality on %s: %d paths", name, len(base) + len(own))
    timed = base + encoder_paths(encoders[next(iter(folders))], workdir, next(iter(folders)), threads, per_channel)
    timing = time_paths(timed, queries, batch_sizes, warmup, iterations)
    return {"original": original, "threads": threads, "queries_timed": len(queries),
            "timed_with": f"{next(iter(folders))}'s encoders",
            "paths": [{"name": p.name, "depth": p.depth, "precision": p.precision} for p in timed],
            "quality": quality, "timing": timing, "speedup_vs_peer_int8": speedups(timing, timed)}
