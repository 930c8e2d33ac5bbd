"""The one timed-rotation harness of every bench: callables timed against each other in one process.

Every call gets the same batches; iterations run round-robin over the calls in an order rotated each iteration
(so load drift on a shared machine reaches every call alike and none always runs first); `warmup` untimed
iterations come first. Times are seconds per call (CUDA work bracketed by events); summaries are percentiles
(median, IQR, p95) and, against a baseline, speedup = median(baseline) / median(call) and the drift-robust
paired = median over iterations of baseline_i / call_i.

    rotate            (name, seconds, result) of every timed call over given batches
    timed_rotation    rotate over draw_batches(sentences): consecutive chunks of one seeded permutation
    repeated_seconds  {name: [seconds]} of calls on one batch, again and again (a median latency, an overhead)
    compare_calls     per batch size: each call's percentiles (ms), speedup and paired against a baseline

Its benches: bench.run_benchmark (encoder modes vs sentence-transformers), deploy_bench (serving paths, the
batch-1 profile), query_encoder.bench and query_encoder.loop's latency gate, evaluation.pareto.chosen_speed and
evaluation.diagnose.monitoring_overhead (the eval suite's overhead). Elapsed seconds logged for progress
(training, evaluation) are not benches and keep their own time.perf_counter.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

Call = Callable[[list[str], int], Any]  # (batch, batch_size) -> anything
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
TIMERS = {"wall": "time.perf_counter (wall)", "process": "time.process_time (CPU)"}  # as the reports name them
CPU = torch.device("cpu")


def draw_batches(sentences: Sequence[str], batch_size: int, n_batches: int, seed: int = 0) -> list[list[str]]:
    """n_batches batches of batch_size sentences: consecutive chunks of one seeded permutation, wrapping."""
    if not sentences:
        raise ValueError("no sentences to benchmark")
    order = np.random.default_rng(seed).permutation(len(sentences))
    picks = np.resize(order, batch_size * n_batches)  # np.resize repeats the permutation when it runs out
    return [[sentences[i] for i in picks[start : start + batch_size]] for start in range(0, len(picks), batch_size)]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p5, q25, median, q75, p95 and iqr of the values (in their unit)."""
    q = np.percentile(np.asarray(values, dtype=np.float64), [5, 25, 50, 75, 95])
    return {"p5": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "p95": float(q[4]),
            "iqr": float(q[3] - q[1])}


def timed(call: Callable[[], Any], device: torch.device = CPU, clock: str = "wall") -> tuple[float, Any]:
    """(seconds, result) of one call; CUDA work is bracketed by events and waited for.

    clock "process" counts this process's CPU seconds instead of wall seconds: with one torch thread
    it is the latency an idle machine would show, and it ignores time the scheduler gives to others.
    """
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = call()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3, result
    now = CLOCKS[clock]
    started = now()
    result = call()
    return now() - started, result


@contextlib.contextmanager
def no_gc() -> Any:
    """No garbage-collector pauses inside timed calls (as timeit does); one collection before."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def rotate(calls: dict[str, Call], batches: Sequence[list[str]], batch_size: int, warmup: int,
           dev: torch.device = CPU, clock: str = "wall") -> Iterator[tuple[str, float, Any]]:
    """(name, seconds, result) of every timed call: at step i every call gets batches[i], in an order rotated
    each step so that no call always runs first; the first `warmup` steps run and are dropped."""
    names = list(calls)
    for step, batch in enumerate(batches):
        shift = step % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, result = timed(lambda: calls[name](batch, batch_size), dev, clock)
            if step >= warmup:
                yield name, elapsed, result


def timed_rotation(calls: dict[str, Call], sentences: Sequence[str], batch_size: int, warmup: int, iterations: int,
                   seed: int = 0, dev: torch.device = CPU, clock: str = "wall") -> Iterator[tuple[str, float, Any]]:
    """rotate over warmup + iterations batches drawn from the sentences (draw_batches, seeded)."""
    yield from rotate(calls, draw_batches(list(sentences), batch_size, warmup + iterations, seed), batch_size,
                      warmup, dev, clock)


def repeated_seconds(calls: dict[str, Call], batch: list[str], batch_size: int, warmup: int, runs: int,
                     dev: torch.device = CPU, clock: str = "wall") -> dict[str, list[float]]:
    """{name: seconds of each timed run}: every call on the same batch, warmup + runs times, rotated."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for name, elapsed, _ in rotate(calls, [batch] * (warmup + runs), batch_size, warmup, dev, clock):
        seconds[name].append(elapsed)
    return seconds


def compare_calls(calls: dict[str, Call], baseline: str, sentences: Sequence[str],
                  batch_sizes: Sequence[int] = (1, 32), warmup: int = 5, iterations: int = 40,
                  seed: int = 0) -> dict[str, Any]:
    """Time callables (batch, batch_size) on the same batches, interleaved and rotated, after warm-up.

    Per batch size: each call's time percentiles (ms), speedup = median(baseline) / median(call), and paired =
    median over iterations of baseline_i / call_i (drift-robust).
    """
    names, out = list(calls), {}
    with torch.inference_mode(), no_gc():
        for size in batch_sizes:
            seconds: dict[str, list[float]] = {name: [] for name in names}
            for name, elapsed, _ in timed_rotation(calls, sentences, size, warmup, iterations, seed):
                seconds[name].append(elapsed)
            base = np.asarray(seconds[baseline])
            out[str(size)] = {name: {**{k: v * 1e3 for k, v in percentiles(times).items()},
                                     "speedup": float(np.median(base) / np.median(times)),
                                     "paired": float(np.median(base / np.asarray(times)))}
                              for name, times in seconds.items()}
    return {"batch_sizes": out, "baseline": baseline, "warmup": warmup, "iterations": iterations,
            "timer": TIMERS["wall"], "threads": torch.get_num_threads()}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, threads and hardware the timings were taken on."""
    import sentence_transformers  # heavy: only when a bench has run
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None
