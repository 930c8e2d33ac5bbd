"""Confidence intervals: bootstrap over pairs or queries (scipy.stats.bootstrap), t-intervals across seeds.

Every interval is a dict {"estimate", "low", "high", "confidence", "method", "n"} (plus "n_resamples"
for the bootstrap), JSON-ready. The bootstrap draws from numpy's default_rng(seed): same inputs and
seed, same interval.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

METHODS = ("percentile", "BCa", "basic")
# Resamples evaluated per vectorised call: bounds memory at BATCH x n floats per input array.
BATCH = 250


def _vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: holds NaN or infinite values (first at index {int(np.argmin(np.isfinite(array)))})")
    return array


def _same_length(arrays: dict[str, np.ndarray], minimum: int = 2) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n < minimum:
        raise ValueError(f"need at least {minimum} values to resample, got {n}")
    return n


def spearman_statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho along `axis`: Pearson r of the ranks (average ranks for ties), as scipy.stats.spearmanr."""
    return stats.pearsonr(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis).statistic


def bootstrap_ci(
    data: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    method: str = "percentile",
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap CI of statistic(*data) with paired resampling (the same indices for every array).

    statistic must be vectorised: called with arrays of shape (batch, n) and `axis=-1`, it returns (batch,).
    method: "percentile" (default), "BCa" or "basic" (scipy.stats.bootstrap's methods).
    When every resample gives the same value (constant data) the interval is [estimate, estimate].
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in data)
    n = len(arrays[0])
    estimate = float(statistic(*arrays, axis=-1))
    result = stats.bootstrap(
        arrays, statistic, n_resamples=n_resamples, batch=BATCH, vectorized=True, paired=True, axis=-1,
        confidence_level=confidence, method=method, rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)) and np.ptp(result.bootstrap_distribution) == 0:
        low = high = estimate  # degenerate data: scipy returns NaN, the spread is really zero
    return {"estimate": estimate, "low": low, "high": high, "confidence": confidence, "method": method,
            "n": n, "n_resamples": n_resamples}


def spearman_ci(predicted: Any, gold: Any, **options: Any) -> dict[str, Any]:
    """CI of Spearman(predicted, gold) over STS pairs: pairs are resampled (predicted[i], gold[i]) together.

    predicted: one similarity per pair (e.g. cos of the two embeddings); gold: the pair's score.
    options: bootstrap_ci's confidence, n_resamples, method, seed.
    """
    x, y = _vector(predicted, "predicted"), _vector(gold, "gold")
    _same_length({"predicted": x, "gold": y}, minimum=3)
    return bootstrap_ci((x, y), spearman_statistic, **options)


def spearman_difference_ci(predicted_a: Any, predicted_b: Any, gold: Any, **options: Any) -> dict[str, Any]:
    """CI of Spearman(a, gold) - Spearman(b, gold) on the same pairs, both recomputed on each resample."""
    a, b, y = _vector(predicted_a, "predicted_a"), _vector(predicted_b, "predicted_b"), _vector(gold, "gold")
    _same_length({"predicted_a": a, "predicted_b": b, "gold": y}, minimum=3)

    def difference(a, b, y, axis=-1):
        return spearman_statistic(a, y, axis=axis) - spearman_statistic(b, y, axis=axis)

    return bootstrap_ci((a, b, y), difference, **options)


def mean_ci(values: Any, **options: Any) -> dict[str, Any]:
    """Bootstrap CI of the mean of per-item values (e.g. per-query NDCG@10)."""
    x = _vector(values, "values")
    _same_length({"values": x})
    return bootstrap_ci((x,), np.mean, **options)


def paired_difference_ci(values_a: Any, values_b: Any, **options: Any) -> dict[str, Any]:
    """Bootstrap CI of mean(a - b) where a[i], b[i] belong to the same item (query, pair): A minus B."""
    a, b = _vector(values_a, "values_a"), _vector(values_b, "values_b")
    _same_length({"values_a": a, "values_b": b})

    def difference(a, b, axis=-1):
        return np.mean(a - b, axis=axis)

    return bootstrap_ci((a, b), difference, **options)


def seed_summary(values: Any, confidence: float = 0.95) -> dict[str, Any]:
    """Across-seeds summary: mean, sample std (ddof 1), and the t-interval mean +- t_{(1+c)/2, n-1} std / sqrt(n).

    With one seed, std, low and high are None (no spread can be estimated).
    """
    x = _vector(values, "values")
    if len(x) == 0:
        raise ValueError("values: need at least one seed's value")
    n, mean = len(x), float(x.mean())
    if n == 1:
        return {"estimate": mean, "std": None, "low": None, "high": None, "confidence": confidence, "method": "t",
                "n": 1}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * std / math.sqrt(n)
    return {"estimate": mean, "std": std, "low": mean - half, "high": mean + half, "confidence": confidence,
            "method": "t", "n": n}
