"""Every way a CPU user could serve the model, side by side in one process: the original as shipped and exported,
and ours at the chosen operating point (and at any extra depth asked for).

Paths (model x runtime x precision):
    original  sentence-transformers, PyTorch fp32     the model as shipped: the baseline of every speedup
    original  ONNX Runtime fp32 and dynamic int8        the peer a CPU user already has (`leap export` at full depth)
    original  PyTorch frozen, dynamic int8              (torch.ao quantize_dynamic: served.TorchCutEncoder)
    ours      leap EarlyExitEncoder at the point        the eager encoder (the path before the frozen one)
    ours      PyTorch frozen, fp32 and int8             served.TorchCutEncoder
    ours      ONNX Runtime, fp32 and int8               export.OnnxEncoder
Timing: timing.compare_calls (the same batches, paths interleaved in a rotated order, warm-up; medians and IQR),
torch and ONNX Runtime pinned to the same number of intra-op threads; the batch-1 profile's wall times through
timing.repeated_seconds. The markdown is deploy_report's.
Quality: STS-B test Spearman and NDCG@10 on each BEIR set's test-half queries (pareto.query_half) over every
document; rows that compute the same embeddings (one point's fp32 in any runtime) are evaluated once.
Headlines:
    vs_peer_int8[bs]      = median(original, ORT int8) / median(ours, ORT int8)
    vs_shipped[bs]        = median(original, sentence-transformers fp32) / median(ours, ORT int8)
    torch_vs_ort_fp32[bs] = median(ours, PyTorch frozen fp32) / median(ours, ORT fp32)     (same depth)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import transformers
from torch.profiler import ProfilerActivity, profile

from leap_core.data import read_sts
from leap_core.evaluation.pareto_points import beir_sets, sts_sets
from leap_core.model_folder import has_branch, max_seq_length, model_fingerprint, read_branch
from leap_core.models import resolve_model
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.serve.export import OnnxEncoder, export_onnx, require_onnx
from leap_core.serve.served import TorchCutEncoder, head_modules
from leap_core.timing import compare_calls, environment, repeated_seconds

log = logging.getLogger(__name__)
BATCH_SIZES = (1, 8, 32)
SHIPPED = "original · sentence-transformers · fp32"
PEER_INT8 = "original · ONNX Runtime · int8"
OURS_INT8 = "ours · ONNX Runtime · int8"
OURS_ORT_FP32 = "ours · ONNX Runtime · fp32"
OURS_TORCH = "ours · PyTorch frozen · fp32"
OURS_EAGER = "ours · leap encoder (eager) · fp32"
PROFILE_WARMUP = 10  # untimed batch-1 calls before profile_torch's wall times
# Issue 17's bar: speed over the peer and the shipped model, and quality within the original fp32's.
TARGETS = {"vs_peer_int8": 1.8, "vs_shipped_bs1": 10.0, "torch_vs_ort_fp32_bs1": 1.3, "max_sts_drop": 0.01,
           "max_ndcg_drop": 0.03}


@dataclass
class ServedPath:
    """One row: how it encodes (texts, batch_size) -> (N, d) normalised, and the rows it shares numbers with."""

    name: str
    model: str  # "original" or "ours"
    runtime: str
    precision: str
    policy: str
    depth: int
    encode: Callable[[list[str], int], np.ndarray]
    quality_key: str  # rows with one key compute the same embeddings (to fp32 rounding): evaluated once
    chosen: bool = True
    quality: dict[str, float] = field(default_factory=dict)
    tokenizer: Any = None


def _has_dense_head(folder: Path) -> bool:
    return any(type(module).__name__ == "Dense" for module in head_modules(folder))


def paths_at(label: str, model: str, depth: int | None, workdir: Path, threads: int,
             chosen: bool = True) -> list[ServedPath]:
    """`model` at one point (None: its saved policy): eager encoder, PyTorch frozen fp32/int8, ORT fp32/int8."""
    frozen, frozen_int8 = TorchCutEncoder(model, depth), TorchCutEncoder(model, depth, int8=True)
    point = frozen.point
    key = f"{model_fingerprint(point.folder)[:16]}@{point.depth}"
    tag = "" if chosen else f" at {point.policy}"

    def row(runtime: str, shown: str, precision: str, encode: Callable, kind: str) -> ServedPath:
        return ServedPath(f"{label} · {shown} · {precision}{tag}", label, runtime, precision, point.policy,
                          point.depth, encode, f"{key}/{kind}", chosen)

    rows = []
    if chosen and not _has_dense_head(point.folder):  # the eager encoder has no exit heads
        encoder = EarlyExitEncoder.from_pretrained(point.folder)
        mode = "full" if point.depth == encoder.num_layers else f"fixed:{point.depth}"
        rows.append(row("torch-eager", "leap encoder (eager)", "fp32",
                        lambda b, s: encoder.encode(b, batch_size=s, mode=mode), "fp32"))
    rows.append(row("torch-frozen", "PyTorch frozen", "fp32", frozen.encode, "fp32"))
    rows[-1].tokenizer = frozen.tokenizer
    rows.append(row("torch-frozen", "PyTorch frozen", "int8", frozen_int8.encode, "torch-int8"))
    exported = export_onnx(model, workdir / f"{label}-{point.policy.replace(':', '')}", depth, int8=True)
    for precision in ("fp32", "int8"):
        onnx = OnnxEncoder(exported, precision=precision, threads=threads)
        rows.append(row("onnxruntime", "ONNX Runtime", precision, onnx.encode,
                        "fp32" if precision == "fp32" else "onnx-int8"))
    return rows


def build_paths(model: str, original: str, workdir: Path, threads: int, depths: Sequence[int] = ()) -> list[ServedPath]:
    """The original as shipped, exported and quantised; ours at its chosen point and at each extra depth."""
    from leap_core.serve.st_module import plain_sentence_transformer  # imports sentence_transformers: only when run

    folder = resolve_model(original)
    shipped = plain_sentence_transformer(folder, device="cpu")  # as shipped: full depth
    shipped.max_seq_length = max_seq_length(folder) or shipped.max_seq_length
    exported = [row for row in paths_at("original", original, None, workdir, threads)
                if row.runtime == "onnxruntime" or row.precision == "int8"]
    fp32 = next(row for row in exported if row.precision == "fp32")
    paths = [ServedPath(SHIPPED, "original", "sentence-transformers", "fp32", "full", fp32.depth,
                        lambda b, s: shipped.encode(b, batch_size=s, normalize_embeddings=True,
                                                    convert_to_numpy=True, show_progress_bar=False),
                        fp32.quality_key), *exported]
    paths += paths_at("ours", model, None, workdir, threads)
    for depth in depths:
        paths += paths_at("ours", model, depth, workdir, threads, chosen=False)
    return paths


def measure_quality(paths: list[ServedPath], sets: list[Any], batch_size: int = 32) -> None:
    """Fill each path's quality on every set; one evaluation per quality_key, every document of each set."""
    done: dict[str, dict[str, float]] = {}
    for path in paths:
        if path.quality_key not in done:
            log.info("quality of %s on %s", path.name, [s.name for s in sets])
            scores = {}
            for eval_set in sets:
                embs = {group: path.encode(texts, batch_size) for group, texts in eval_set.groups.items()}
                scores[eval_set.name] = eval_set.quality(eval_set.per_item(embs))
            done[path.quality_key] = scores
        path.quality = done[path.quality_key]


def branch_original(model: str) -> str:
    """The model an exit branch was trained against (what users serve now): the one `ours` is compared with."""
    if not has_branch(resolve_model(model)):
        raise ValueError(f"{model}: not an exit branch: give --original (the model users serve now)")
    return read_branch(resolve_model(model))["original"]


def quality_sets(data_dir: Path, sts_file: str, beir: Sequence[str], max_docs: int | None = None) -> list[Any]:
    """STS-B test and each BEIR set's test-half queries over its documents (max_docs: a subsample, quick runs)."""
    sets = sts_sets("stsb-test", read_sts(data_dir / sts_file))
    for folder in beir:
        sets += [s for s in beir_sets(data_dir / folder, max_docs) if s.name.endswith("-test")]
    return sets


def profile_torch(calls: dict[str, Callable[[list[str], int], Any]], sentence: str, tokenizer: Any,
                  iterations: int = 50, top: int = 8) -> dict[str, Any]:
    """Where a batch-1 call's time goes in each PyTorch path: its wall time unprofiled, torch.profiler's ops (self
    CPU time, which leaves out the Python between them), and the tokenizer's share."""
    out: dict[str, Any] = {}
    for name, call in calls.items():
        wall = repeated_seconds({name: call}, [sentence], 1, PROFILE_WARMUP, iterations)[name]
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iterations):
                call([sentence], 1)
        events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "quantized::"))]
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out[name] = {
            "wall_ms_per_call": float(np.median(wall)) * 1e3,  # unprofiled
            "aten_ops_per_call": sum(e.count for e in events) / iterations,
            "aten_self_ms_per_call": sum(e.self_cpu_time_total for e in events) / iterations / 1e3,
            "top_ops": [{"op": e.key, "self_ms_per_call": e.self_cpu_time_total / iterations / 1e3,
                         "calls_per_call": e.count / iterations} for e in ranked]}
    tokenize = {"tokenizer": lambda batch, _: tokenizer(batch, padding=True, truncation=True, return_tensors="np")}
    seconds = repeated_seconds(tokenize, [sentence], 1, 0, iterations)["tokenizer"]
    out["tokenizer_ms_per_call"] = sum(seconds) / iterations * 1e3  # the mean over the calls
    return out


def sentence_transformers_onnx_backend() -> dict[str, Any]:
    """Whether sentence-transformers' backend="onnx" can load here: it needs optimum's ORTModelForFeatureExtraction."""
    try:
        from optimum.onnxruntime import ORTModelForFeatureExtraction  # noqa: F401
    except Exception as err:  # noqa: BLE001 - ImportError, or optimum failing against this transformers
        return {"loads": False, "why": f"optimum.onnxruntime does not import with transformers "
                                       f"{transformers.__version__}: {type(err).__name__}: {err}"}
    return {"loads": True, "why": "optimum.onnxruntime imports: SentenceTransformer(folder, backend='onnx') works"}


def _ratio(timing: dict[str, Any], top: str, bottom: str, size: int) -> float | None:
    rows = timing["batch_sizes"].get(str(size), {})
    if top not in rows or bottom not in rows:
        return None
    return rows[top]["median"] / rows[bottom]["median"]


def headlines(timing: dict[str, Any], paths: list[ServedPath]) -> dict[str, Any]:
    """The ratios issue 17 asks for, each beside its target, and each row's quality against the original fp32."""
    sizes = [int(size) for size in timing["batch_sizes"]]
    out: dict[str, Any] = {
        "vs_peer_int8": {f"bs{s}": _ratio(timing, PEER_INT8, OURS_INT8, s) for s in sizes},
        "vs_shipped": {f"bs{s}": _ratio(timing, SHIPPED, OURS_INT8, s) for s in sizes},
        "torch_vs_ort_fp32": {f"bs{s}": _ratio(timing, OURS_TORCH, OURS_ORT_FP32, s) for s in sizes},
        "eager_vs_ort_fp32": {f"bs{s}": _ratio(timing, OURS_EAGER, OURS_ORT_FP32, s) for s in sizes},
    }
    reference = next(path.quality for path in paths if path.name == SHIPPED)
    ours = next(path for path in paths if path.name == OURS_INT8)
    drops = quality_drops(ours.quality, reference)
    out["ours_int8_quality_drop"] = drops
    checks = {
        "vs_peer_int8_bs1": (out["vs_peer_int8"].get("bs1"), TARGETS["vs_peer_int8"], "min"),
        "vs_peer_int8_bs32": (out["vs_peer_int8"].get("bs32"), TARGETS["vs_peer_int8"], "min"),
        "vs_shipped_bs1": (out["vs_shipped"].get("bs1"), TARGETS["vs_shipped_bs1"], "min"),
        "torch_vs_ort_fp32_bs1": (out["torch_vs_ort_fp32"].get("bs1"), TARGETS["torch_vs_ort_fp32_bs1"], "max"),
        "ours_int8_sts_drop": (drops.get("stsb-test"), TARGETS["max_sts_drop"], "max"),
        "ours_int8_worst_ndcg_drop": (max((v for k, v in drops.items() if k != "stsb-test"), default=None),
                                      TARGETS["max_ndcg_drop"], "max"),
    }
    out["targets"] = {name: {"value": value, "target": target, "kind": kind,
                             "met": None if value is None else (value >= target if kind == "min" else value <= target)}
                      for name, (value, target, kind) in checks.items()}
    return out


def quality_drops(quality: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Drop from the reference: absolute for STS (Spearman), relative for NDCG@10 (positive = worse)."""
    return {name: (reference[name] - value if name.startswith("stsb") else (reference[name] - value) / reference[name])
            for name, value in quality.items() if name in reference and reference[name]}


def run_deploy_bench(model: str, original: str, sentences: Sequence[str], sets: list[Any], workdir: Path,
                     depths: Sequence[int] = (), batch_sizes: Sequence[int] = BATCH_SIZES, threads: int | None = None,
                     warmup: int = 10, iterations: int = 100, quality: bool = True) -> dict[str, Any]:
    """Build every path, measure its quality (sets) and time them all in one process; the report's dict."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    paths = build_paths(model, original, workdir, threads, depths)
    if quality:
        measure_quality(paths, sets)
    timing = compare_calls({path.name: path.encode for path in paths}, SHIPPED, list(sentences), batch_sizes,
                           warmup, iterations)
    torch_paths = {path.name: path.encode for path in paths if path.model == "ours" and path.chosen
                   and path.runtime.startswith("torch") and path.precision == "fp32"}
    ours = next(path for path in paths if path.name == OURS_TORCH)
    result = {
        "model": str(model), "original": str(original), "policy": ours.policy, "depth": ours.depth,
        "extra_depths": list(depths), "threads": threads,
        "rows": [{"name": p.name, "model": p.model, "runtime": p.runtime, "precision": p.precision,
                  "policy": p.policy, "depth": p.depth, "chosen": p.chosen, "quality": p.quality,
                  "quality_drop": {}, "timing": {size: timing["batch_sizes"][size][p.name]
                                                 for size in timing["batch_sizes"]}} for p in paths],
        "timing": {key: value for key, value in timing.items() if key != "batch_sizes"},
        "quality_sets": [s.name for s in sets] if quality else [],
        "profile_bs1": profile_torch(torch_paths, sentences[0], ours.tokenizer),
        "sentence_transformers_onnx": sentence_transformers_onnx_backend(),
        "environment": environment(torch.device("cpu")) | {"onnxruntime": _ort_version()},
    }
    reference = next(path.quality for path in paths if path.name == SHIPPED)
    for row in result["rows"]:
        row["quality_drop"] = quality_drops(row["quality"], reference)
    result.update(headlines(timing, paths))
    return result


def _ort_version() -> str:
    return require_onnx().__version__
