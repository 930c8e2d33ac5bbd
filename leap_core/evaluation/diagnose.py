"""Is a model exit-compatible? The paper's three diagnostics, a verdict, and its deployment checklist.

Diagnostics (each "fires" on a sign of exit incompatibility), at theta = 0.95, k = 1, l_min = half
the depth (the paper's 6 of 12):
1. flat similarity-to-final curve: mean cos(e_l, e_L) < 0.7 at every layer before the last;
2. zero exit rate: no probe sentence exits before the last layer;
3. monitoring overhead > 15% with exit rate < 10%: the exit test costs more than it can save.
Verdict: "incompatible" when any fires, else "compatible".

Checklist (deploy early exit only if all pass), at the target exit layer t = round(mean exit layer)
(the rule of leap_core.serve.registry.target_layer): similarity to final at t >= 0.94, NN@10 at t >= 0.80,
exit rate > 50%.

Overhead = median time of the encoder's "monitored" mode (computes the exit test, never exits) over
its "full" mode, minus 1, on the same sentences, after warm-up runs, the two modes interleaved so
that load from other processes hits both alike.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any, Sequence

from leap_core.config import DataConfig, RegistryConfig
from leap_core.evaluation.layers import contraction_ratios, exit_statistics, inter_layer_stability, similarity_to_final
from leap_core.evaluation.neighbours import nn_statistics
from leap_core.timing import repeated_seconds

log = logging.getLogger(__name__)

THETA = 0.95
FLAT_SIMILARITY = 0.7
MAX_OVERHEAD = 0.15
LOW_EXIT_RATE = 0.10
# The deployment checklist is the registry's gate: one set of thresholds, kept in RegistryConfig.
MIN_SIMILARITY_AT_EXIT = RegistryConfig.min_similarity_at_exit
MIN_NN10 = RegistryConfig.min_nn10
MIN_EXIT_RATE = RegistryConfig.min_exit_rate


def default_l_min(n_layers: int) -> int:
    """Half the depth (6 of 12, as the paper), at least 1."""
    return max(1, n_layers // 2)


def diagnostics(similarity: Sequence[float], exit_rate: float, overhead: float | None) -> dict[str, Any]:
    """The three diagnostics and the verdict from measured values (overhead None: diagnostic 3 not run)."""
    before_last = [float(s) for s in similarity[:-1]]
    flat = bool(before_last) and max(before_last) < FLAT_SIMILARITY
    zero = exit_rate == 0.0
    costly = overhead is not None and overhead > MAX_OVERHEAD and exit_rate < LOW_EXIT_RATE
    checks = {
        "flat_similarity_curve": {"fired": flat, "max_similarity_before_last": max(before_last, default=None),
                                  "limit": FLAT_SIMILARITY},
        "zero_exit_rate": {"fired": zero, "exit_rate": float(exit_rate)},
        "overhead_without_exits": {"fired": bool(costly), "overhead": overhead, "exit_rate": float(exit_rate),
                                   "max_overhead": MAX_OVERHEAD, "low_exit_rate": LOW_EXIT_RATE},
    }
    verdict = "incompatible" if any(c["fired"] for c in checks.values()) else "compatible"
    return {"verdict": verdict, "diagnostics": checks}


def checklist(similarity: Sequence[float], nn10: Sequence[float], exit_rate: float,
              mean_exit_layer: float) -> dict[str, Any]:
    """The deployment checklist at the target exit layer t = round(mean_exit_layer), within 1..L."""
    target = min(max(int(round(mean_exit_layer)), 1), len(similarity))
    items = {
        "similarity_at_target": {"value": float(similarity[target - 1]), "min": MIN_SIMILARITY_AT_EXIT,
                                 "passes": float(similarity[target - 1]) >= MIN_SIMILARITY_AT_EXIT},
        "nn10_at_target": {"value": float(nn10[target - 1]), "min": MIN_NN10,
                           "passes": float(nn10[target - 1]) >= MIN_NN10},
        "exit_rate": {"value": float(exit_rate), "above": MIN_EXIT_RATE, "passes": float(exit_rate) > MIN_EXIT_RATE},
    }
    return {"target_layer": target, "items": items, "passes": all(i["passes"] for i in items.values())}


def monitoring_overhead(encoder: Any, sentences: Sequence[str], batch_size: int = 32, warmup: int = 1,
                        runs: int = 5) -> dict[str, Any]:
    """Median seconds of encode(mode="full") and encode(mode="monitored"), and overhead = monitored / full - 1.

    overhead_of_fastest compares the fastest runs instead: on a machine shared with other jobs it is
    the less noisy of the two (the diagnostic itself reads the median-based `overhead`).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs!r}, warmup={warmup!r}")
    calls = {mode: (lambda batch, size, mode=mode: encoder.encode(batch, batch_size=size, mode=mode))
             for mode in ("full", "monitored")}
    times = repeated_seconds(calls, list(sentences), batch_size, warmup, runs)  # the bench harness: rotated
    full, monitored = statistics.median(times["full"]), statistics.median(times["monitored"])
    return {"full_seconds": full, "monitored_seconds": monitored, "overhead": monitored / full - 1.0,
            "overhead_of_fastest": min(times["monitored"]) / min(times["full"]) - 1.0,
            "n_sentences": len(sentences), "batch_size": batch_size, "warmup": warmup, "runs": runs}


def diagnose_encoder(encoder: Any, sentences: Sequence[str], batch_size: int = 32, timing_sentences: int = 256,
                     warmup: int = 1, runs: int = 5, measure_overhead: bool = True) -> dict[str, Any]:
    """Diagnostics, verdict and checklist of an EarlyExitEncoder (its theta, k, l_min) on probe sentences.

    Layer dynamics and NN@10 come from one full-depth pass (layer_embeddings); exits from the encoder's
    own "compact" mode; overhead is timed on the first `timing_sentences` sentences.
    """
    items = list(sentences)
    if len(items) < 11:
        raise ValueError(f"sentences: need at least 11 probe sentences (NN@10), got {len(items)}")
    layer_embs = encoder.layer_embeddings(items, batch_size=batch_size)
    _, exit_layers = encoder.encode(items, batch_size=batch_size, mode="compact", return_exit_layers=True)
    n_layers = layer_embs.shape[0]
    stats = exit_statistics(exit_layers, n_layers)
    similarity = similarity_to_final(layer_embs)
    neighbours = nn_statistics(layer_embs, exit_layers)
    overhead = None
    if measure_overhead:
        overhead = monitoring_overhead(encoder, items[:timing_sentences], batch_size, warmup, runs)
    verdict = diagnostics(similarity, stats["exit_rate"], overhead["overhead"] if overhead else None)
    return {
        "verdict": verdict["verdict"],
        "exit_rate": stats["exit_rate"],
        "similarity_to_final": similarity,
        **encoder.rule,
        "n_layers": n_layers, "n_sentences": len(items),
        **{key: value for key, value in stats.items() if key != "exit_rate"},
        "inter_layer_stability": inter_layer_stability(layer_embs),
        "contraction": contraction_ratios(layer_embs),
        **neighbours,
        "monitoring": overhead,
        "diagnostics": verdict["diagnostics"],
        "checklist": checklist(similarity, neighbours["nn10_per_layer"], stats["exit_rate"], stats["mean_exit_layer"]),
    }


def probe_sentences(data_dir: str | Path | None = None, sts_file: str = "stsb/test.tsv",
                    max_sentences: int | None = None) -> list[str]:
    """Distinct sentences of an STS file (relative to data_dir, default the profile default's), first max_sentences."""
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import read_sts

    path = Path(sts_file)
    if not path.is_absolute():
        path = Path(data_dir if data_dir is not None else DataConfig().data_dir) / path
    sentences = read_sts(path).unique_sentences()
    return sentences[:max_sentences] if max_sentences is not None else sentences


def diagnose(model: str, data_dir: str | Path | None = None, sts_file: str = "stsb/test.tsv",
             max_sentences: int | None = None, theta: float = THETA, k: int = 1, l_min: int | None = None,
             batch_size: int = 32, device: str | None = None, **options: Any) -> dict[str, Any]:
    """diagnose_encoder for any transformers / sentence-transformers folder, hub id or `random-bert:` spec.

    The model's own leap_exit.json is ignored: the diagnostics use the paper's fixed settings
    (theta 0.95, k 1, l_min = half the depth unless given). options: diagnose_encoder's.
    """
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.model_folder import layer_count
    from leap_core.models import resolve_model
    from leap_core.serve.encoder import EarlyExitEncoder

    folder = resolve_model(str(model))
    n_layers = layer_count(folder)
    encoder = EarlyExitEncoder.from_pretrained(folder, theta=theta, k=k, device=device,
                                               l_min=l_min if l_min is not None else default_l_min(n_layers))
    result = diagnose_encoder(encoder, probe_sentences(data_dir, sts_file, max_sentences), batch_size, **options)
    log.info("%s: %s (exit rate %.3f)", model, result["verdict"], result["exit_rate"])
    return {"model": str(model), "model_path": str(folder), "probe": sts_file, **result}
