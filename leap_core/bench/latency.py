"""Latency benchmark: every encoder mode and sentence-transformers, side by side in one process.

For each batch size b, batches of b sentences are drawn once (a seeded permutation of the sentence
list, cut into consecutive chunks) and every mode encodes the same batches. Iterations run round-robin
over the modes, in an order rotated each iteration, so load drift on a shared machine reaches every
mode alike; `warmup` untimed iterations come first.

Reported, per mode and batch size: median, p95 and the interquartile range of the time per batch
(ms, and ms per sentence), and
    speedup     = median(full) / median(mode)                     (same batch size)
    paired      = median over iterations i of full_i / mode_i     (drift-robust, beside it)
    theoretical = L / mean exit layer of the rows this mode returned (1 for full depth)
    efficiency  = speedup / theoretical
    overhead_monitored = median(monitored) / median(full) - 1         (headline: the worst batch size)
    full_vs_sentence_transformers = median(SentenceTransformer.encode) / median(full)   (the worst)
    layer_reduction = L / mean exit layer over every row "compact" returned
The timing itself (batches, rotation, warm-up, clocks, percentiles) is leap_core.timing's; the markdown is
bench_report's.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from leap_core.serve.encoder import EarlyExitEncoder, parse_mode
from leap_core.models import resolve_model
from leap_core.stats import bootstrap_ci
from leap_core.timing import (CLOCKS, TIMERS, compare_calls, draw_batches, environment, load_average, no_gc,
                              percentiles, timed_rotation)

PEER = "sentence_transformers"
DEFAULT_MODES = ("full", "monitored", "batch", "compact")
DEFAULT_BATCH_SIZES = (1, 8, 32)
# The paper's 50 + 200 on a GPU; a shared 2-core CPU gets fewer, with medians and interleaving for noise.
DEFAULT_ITERATIONS = {"cuda": (50, 200), "cpu": (10, 60)}
AGREEMENT_SENTENCES = 32  # rows checked against per-sentence batch-1 encoding, per batch size


def batch_mode_bound(exit_layers: Sequence[int], batch_size: int) -> float | None:
    """The most compaction can gain over the paper's batch mode from where rows exit, for batches in order.

    Batch mode runs every batch to its latest-exiting row; compaction runs each row to its own exit.
    So the layer work of batch over compact is mean_batches(max exit layer) / mean_rows(exit layer).
    exit_layers: the rows of consecutive batches of `batch_size`, in order (None if they do not tile).
    """
    layers = np.asarray(exit_layers, dtype=np.float64)
    if layers.size == 0 or layers.size % batch_size:
        return None
    return float(layers.reshape(-1, batch_size).max(axis=1).mean() / layers.mean())


def paired_overhead_ci(full: Sequence[float], monitored: Sequence[float], seed: int = 0) -> list[float] | None:
    """95% bootstrap CI (percentile, over iterations) of median(monitored_i / full_i) - 1; None under 3 pairs.

    Each iteration times both modes on the same batch back to back, so the ratio cancels drift that both share.
    """
    if len(full) != len(monitored) or len(full) < 3 or min(full) <= 0:
        return None
    ratios = np.asarray(monitored, dtype=np.float64) / np.asarray(full, dtype=np.float64) - 1.0
    ci = bootstrap_ci((ratios,), np.median, seed=seed)
    return [ci["low"], ci["high"]]


def summarize(
    seconds: dict[str, dict[int, list[float]]],
    exit_layers: dict[str, dict[int, list[int]]],
    n_layers: int,
) -> dict[str, Any]:
    """Turn raw timings into the report's table and headline numbers.

    seconds[mode][batch_size]: seconds per batch of each timed iteration (mode "full" is required;
    "monitored", "batch", "compact" and PEER are used when present); exit_layers[mode][batch_size]:
    every exit layer the mode returned (absent: full depth). Returns {"table": [...], headline keys}.
    """
    table = _timing_table(seconds, exit_layers, n_layers)
    medians = {(row["mode"], row["batch_size"]): row["median_ms"] for row in table}
    sizes = sorted({size for _, size in medians})

    def ratio(top: tuple[str, int], bottom: tuple[str, int]) -> float | None:
        return medians[top] / medians[bottom] if top in medians and bottom in medians else None

    def speedup(mode: str, size: int) -> float | None:
        return ratio(("full", size), (mode, size))

    def efficiency(mode: str, size: int) -> float | None:
        row = next((r for r in table if r["mode"] == mode and r["batch_size"] == size), None)
        value = speedup(mode, size)
        return value / row["theoretical_reduction"] if value is not None else None

    peer = {size: value for size in sizes if (value := ratio((PEER, size), ("full", size))) is not None}
    exiting = exit_layers.get("compact", exit_layers.get("batch", {}))
    exits = [layer for size in sizes for layer in exiting.get(size, [])]
    bs1_mode = "compact" if ("compact", 1) in medians else "batch"
    compact32, batch32 = speedup("compact", 32), speedup("batch", 32)
    return {
        "layer_reduction": n_layers / float(np.mean(exits)) if exits else None,
        **_overheads(table, seconds, sizes, ratio),
        "speedup_bs1": speedup(bs1_mode, 1),
        "speedup_bs1_vs_theoretical": efficiency(bs1_mode, 1),
        "speedup_bs32_compact": compact32,
        "speedup_bs32_compact_vs_theoretical": efficiency("compact", 32),
        "speedup_bs32_batch": batch32,
        "speedup_bs32_batch_vs_theoretical": efficiency("batch", 32),
        "compact_vs_batch_bs32": compact32 / batch32 if compact32 is not None and batch32 is not None else None,
        # The ceiling of compact_vs_batch_bs32 set by the exit distribution (padding trimming aside).
        "compact_vs_batch_bs32_bound": batch_mode_bound(exit_layers.get("compact", {}).get(32, []), 32),
        "full_vs_sentence_transformers": min(peer.values()) if peer else None,
        "full_vs_sentence_transformers_by_batch_size": {str(size): value for size, value in peer.items()},
        "table": table,
    }


def _timing_table(seconds: dict[str, dict[int, list[float]]], exit_layers: dict[str, dict[int, list[int]]],
                  n_layers: int) -> list[dict[str, Any]]:
    """One row per (mode, batch size): time percentiles, per-sentence times, depth, speedups against full."""
    table = []
    for mode, by_size in seconds.items():
        for batch_size, values in sorted(by_size.items()):
            stats = {key: value * 1e3 for key, value in percentiles(values).items()}
            layers = exit_layers.get(mode, {}).get(batch_size)
            mean_exit = float(np.mean(layers)) if layers is not None and len(layers) else float(n_layers)
            table.append({
                "mode": mode, "batch_size": batch_size, "iterations": len(values),
                "median_ms": stats["median"], "p95_ms": stats["p95"], "q25_ms": stats["q25"], "q75_ms": stats["q75"],
                "iqr_ms": stats["iqr"], "spread": stats["iqr"] / stats["median"] if stats["median"] > 0 else None,
                "median_ms_per_sentence": stats["median"] / batch_size, "p95_ms_per_sentence": stats["p95"] / batch_size,
                "mean_exit_layer": mean_exit, "theoretical_reduction": n_layers / mean_exit,
            })
    medians = {(row["mode"], row["batch_size"]): row["median_ms"] for row in table}
    for row in table:
        full = medians.get(("full", row["batch_size"]))
        row["speedup"] = full / row["median_ms"] if full is not None else None
        # Paired: full's time over this mode's in the same iteration, whose drift both shared.
        full_times = seconds.get("full", {}).get(row["batch_size"], [])
        mine = seconds[row["mode"]][row["batch_size"]]
        row["paired_speedup"] = (float(np.median(np.divide(full_times, mine)))
                                 if len(full_times) == len(mine) and min(mine, default=0) > 0 else None)
        row["efficiency"] = row["speedup"] / row["theoretical_reduction"] if row["speedup"] is not None else None
    return table


def _overheads(table: list[dict[str, Any]], seconds: dict[str, dict[int, list[float]]], sizes: list[int],
               ratio: Callable[[tuple[str, int], tuple[str, int]], float | None]) -> dict[str, Any]:
    """Monitored mode's cost over full, as a ratio of medians and paired per iteration (with a bootstrap CI)."""
    overhead = {size: ratio(("monitored", size), ("full", size)) for size in sizes}
    overhead = {size: value - 1.0 for size, value in overhead.items() if value is not None}
    paired = {(row["mode"], row["batch_size"]): row["paired_speedup"] for row in table}
    overhead_paired = {size: 1.0 / paired["monitored", size] - 1.0 for size in sizes
                       if paired.get(("monitored", size))}
    overhead_paired_ci = {size: ci for size in overhead_paired
                          if (ci := paired_overhead_ci(seconds["full"][size], seconds["monitored"][size]))}
    worst_paired = max(overhead_paired, key=overhead_paired.get) if overhead_paired else None
    return {
        # Headline overhead: the least favourable batch size; every size is listed beside.
        "overhead_monitored": max(overhead.values()) if overhead else None,
        "overhead_monitored_by_batch_size": {str(size): value for size, value in overhead.items()},
        "overhead_monitored_paired": max(overhead_paired.values()) if overhead_paired else None,
        "overhead_monitored_paired_by_batch_size": {str(size): value for size, value in overhead_paired.items()},
        # median of the per-iteration monitored/full - 1, with a bootstrap CI, at the worst batch size
        "overhead_monitored_paired_ci": overhead_paired_ci.get(worst_paired),
        "overhead_monitored_paired_ci_by_batch_size": {str(size): ci for size, ci in overhead_paired_ci.items()},
    }


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[dtype])


def check_agreement(encoder: EarlyExitEncoder, sentences: Sequence[str], modes: Sequence[str],
                    batch_sizes: Sequence[int], peer: Callable[[list[str], int], Any] | None = None,
                    ) -> list[dict[str, Any]]:
    """Each mode at each batch size against per-sentence batch-1 encoding of the same rule.

    The reference of "compact" is "batch" at batch size 1 (the paper's rule, one row at a time);
    peer(sentences, batch_size), when given, is compared with our "full" at batch size 1.
    Returns rows {mode, batch_size, min_cosine, exit_layers_equal (None for the peer)}.
    """
    rows = []
    if peer is not None:
        want = encoder.encode(list(sentences), batch_size=1, mode="full")
        for batch_size in batch_sizes:
            got = np.asarray(peer(list(sentences), batch_size), dtype=np.float32)
            rows.append({"mode": PEER, "batch_size": batch_size, "min_cosine": float((got * want).sum(-1).min()),
                         "exit_layers_equal": None})
    for mode in modes:
        reference_mode = "batch" if mode == "compact" else mode
        want, want_layers = encoder.encode(list(sentences), batch_size=1, mode=reference_mode, return_exit_layers=True)
        for batch_size in batch_sizes:
            got, layers = encoder.encode(list(sentences), batch_size=batch_size, mode=mode, return_exit_layers=True)
            rows.append({"mode": mode, "batch_size": batch_size, "min_cosine": float((got * want).sum(-1).min()),
                         "exit_layers_equal": bool(np.array_equal(layers, want_layers))})
    return rows


def run_benchmark(
    model_path: str | os.PathLike,
    sentences: Sequence[str],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    modes: Sequence[str] = DEFAULT_MODES,
    warmup: int | None = None,
    iterations: int | None = None,
    include_sentence_transformers: bool = True,
    device: str | None = None,
    dtype: str = "auto",
    clock: str = "wall",
    seed: int = 0,
    **encoder_overrides: Any,
) -> dict[str, Any]:
    """Time every mode (and SentenceTransformer.encode at full depth) on the same batches.

    model_path: a model folder or hub id (its leap_exit.json gives theta, k, l_min; encoder_overrides win).
    sentences: the pool batches are drawn from (STS-B test). warmup / iterations: None picks
    DEFAULT_ITERATIONS for the device. dtype: "auto" (fp16 autocast on CUDA as in the paper, fp32
    on CPU), "fp32", "fp16" or "bf16". clock: "wall" or "process" (CPU seconds of this process: for a
    CPU shared with other jobs, with torch.set_num_threads(1); ignored on CUDA, timed by events).
    Returns summarize()'s dict plus settings, agreement and environment.
    """
    sentences = _checked_arguments(sentences, batch_sizes, clock, dtype)
    folder = resolve_model(str(model_path))
    encoder = EarlyExitEncoder.from_pretrained(folder, device=device, **encoder_overrides)
    dev = encoder.device
    warmup, iterations, dtype = _device_settings(dev, warmup, iterations, dtype, clock)
    for mode in modes:
        parse_mode(encoder.policy.mode() if mode == "policy" else mode, encoder.num_layers)  # fails before timing
    calls = _calls(encoder, folder, modes, include_sentence_transformers)
    load_before = load_average()
    started = time.perf_counter()
    with _autocast(dev, dtype), torch.inference_mode(), no_gc():
        probe = draw_batches(sentences, AGREEMENT_SENTENCES, 1, seed)[0]
        agreement = check_agreement(encoder, probe, modes, batch_sizes, calls.get(PEER))
        seconds, exit_layers = _time_rotated(calls, modes, sentences, batch_sizes, warmup, iterations, seed, dev, clock)
    result = summarize(seconds, exit_layers, encoder.num_layers)
    result["settings"] = {
        "model": str(model_path), "model_path": str(folder), "n_layers": encoder.num_layers,
        "hidden_size": encoder.dim, **encoder.rule,
        "max_length": encoder.max_length, "modes": list(modes), "peer": PEER if include_sentence_transformers else None,
        "batch_sizes": list(batch_sizes), "warmup": warmup, "iterations": iterations, "dtype": dtype,
        "timer": "cuda events" if dev.type == "cuda" else TIMERS[clock],
        "n_sentences_pool": len(sentences), "seed": seed,
        "order": "round-robin over modes each iteration, order rotated per iteration",
        "wall_seconds": time.perf_counter() - started,
    }
    result["agreement"] = agreement
    result["environment"] = environment(dev) | {"load_average_before": load_before,
                                                "load_average_after": load_average()}
    return result


def _checked_arguments(sentences: Sequence[str], batch_sizes: Sequence[int], clock: str, dtype: str) -> list[str]:
    sentences = list(sentences)
    for index, item in enumerate(sentences):
        if not isinstance(item, str):
            raise TypeError(f"sentences[{index}] is {type(item).__name__}, expected str")
    if not sentences:
        raise ValueError("no sentences to benchmark")
    for size in batch_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch sizes must be integers >= 1, got {size!r}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if dtype not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"dtype must be auto, fp32, fp16 or bf16, got {dtype!r}")
    return sentences


def _device_settings(dev: torch.device, warmup: int | None, iterations: int | None, dtype: str,
                     clock: str) -> tuple[int, int, str]:
    """(warmup, iterations, dtype) with the device's defaults for what was left to it."""
    default_warmup, default_iterations = DEFAULT_ITERATIONS["cuda" if dev.type == "cuda" else "cpu"]
    warmup = default_warmup if warmup is None else warmup
    iterations = default_iterations if iterations is None else iterations
    if iterations < 1 or warmup < 0:
        raise ValueError(f"iterations must be >= 1 and warmup >= 0, got {iterations} and {warmup}")
    if clock == "process" and dev.type == "cpu" and torch.get_num_threads() != 1:
        raise ValueError("clock 'process' sums CPU time over threads: set torch.set_num_threads(1) first")
    return warmup, iterations, ("fp16" if dev.type == "cuda" else "fp32") if dtype == "auto" else dtype


def _calls(encoder: EarlyExitEncoder, folder: Path, modes: Sequence[str],
           include_sentence_transformers: bool) -> dict[str, Callable[[list[str], int], Any]]:
    """What is timed: each encoder mode (with its exit layers), and sentence-transformers at full depth."""
    calls: dict[str, Callable[[list[str], int], Any]] = {
        mode: (lambda batch, size, mode=mode: encoder.encode(batch, batch_size=size, mode=mode,
                                                             return_exit_layers=True))
        for mode in modes
    }
    if include_sentence_transformers:
        from leap_core.serve.st_module import plain_sentence_transformer  # imports sentence_transformers: only with a peer

        peer = plain_sentence_transformer(folder, device=str(encoder.device))  # full depth, never exits
        peer.max_seq_length = encoder.max_length  # same truncation as ours
        peer.eval()
        calls[PEER] = lambda batch, size: peer.encode(batch, batch_size=size, normalize_embeddings=True,
                                                      convert_to_numpy=True, show_progress_bar=False)
    return calls


def _time_rotated(calls: dict[str, Callable[[list[str], int], Any]], modes: Sequence[str], sentences: list[str],
                  batch_sizes: Sequence[int], warmup: int, iterations: int, seed: int, dev: torch.device,
                  clock: str) -> tuple[dict[str, dict[int, list[float]]], dict[str, dict[int, list[int]]]]:
    """Seconds per batch of every call (timed_rotation) and the exit layers of the encoder modes."""
    seconds: dict[str, dict[int, list[float]]] = {name: {size: [] for size in batch_sizes} for name in calls}
    exit_layers: dict[str, dict[int, list[int]]] = {mode: {size: [] for size in batch_sizes} for mode in modes}
    for batch_size in batch_sizes:
        for name, elapsed, result in timed_rotation(calls, sentences, batch_size, warmup, iterations, seed, dev,
                                                    clock):
            seconds[name][batch_size].append(elapsed)
            if name in exit_layers:
                exit_layers[name][batch_size].extend(int(x) for x in result[1])
    return seconds, exit_layers


# CLOCKS, compare_calls and draw_batches are timing's, re-exported for callers of bench (tests/test_pareto.py).
__all__ = ["CLOCKS", "DEFAULT_BATCH_SIZES", "DEFAULT_MODES", "PEER", "batch_mode_bound", "check_agreement",
           "compare_calls", "draw_batches", "paired_overhead_ci", "run_benchmark", "summarize"]
