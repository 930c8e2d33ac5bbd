"""The timed-rotation harness every bench goes through: same batches, rotated order, warm-up, medians, ratios."""

from __future__ import annotations

import pytest

from leap_core import timing
from leap_core.timing import compare_calls, draw_batches, percentiles, repeated_seconds, rotate

SENTENCES = [f"sentence {i}" for i in range(10)]


@pytest.fixture
def clock(monkeypatch):
    """A virtual wall clock: [now]; calls advance it by their cost, so every time is known exactly."""
    now = [0.0]
    monkeypatch.setitem(timing.CLOCKS, "wall", lambda: now[0])
    return now


def costing(clock, cost_ms: float, seen: list | None = None):
    def call(batch, size):
        clock[0] += cost_ms * 1e-3 * len(batch)
        if seen is not None:
            seen.append((list(batch), size))
        return len(batch)
    return call


def test_draw_batches_is_deterministic_and_wraps():
    first = draw_batches(SENTENCES, 4, 3, seed=0)
    assert first == draw_batches(SENTENCES, 4, 3, seed=0)
    assert [len(batch) for batch in first] == [4, 4, 4]
    flat = [s for batch in first for s in batch]
    assert sorted(flat[:10]) == sorted(SENTENCES)  # one whole permutation, then it starts again
    assert flat[10:] == flat[:2]
    assert [b[0] for b in draw_batches(SENTENCES, 1, 3, seed=0)] == flat[:3]
    with pytest.raises(ValueError, match="no sentences"):
        draw_batches([], 1, 1)


def test_rotate_gives_every_call_the_same_batch_in_a_rotated_order_after_warmup(clock):
    order: list[str] = []

    def named(name, cost):
        def call(batch, size):
            order.append(name)
            clock[0] += cost
            return name, tuple(batch)
        return call

    batches = [["a"], ["b"], ["c"], ["d"]]
    calls = {"x": named("x", 1.0), "y": named("y", 2.0), "z": named("z", 3.0)}
    timed = list(rotate(calls, batches, 1, warmup=1))
    assert order == ["x", "y", "z", "y", "z", "x", "z", "x", "y", "x", "y", "z"]  # warm-up runs too
    assert [name for name, _, _ in timed] == order[3:]
    assert all(seconds == {"x": 1.0, "y": 2.0, "z": 3.0}[name] for name, seconds, _ in timed)
    assert [result for name, _, result in timed if name == "y"] == [("y", ("b",)), ("y", ("c",)), ("y", ("d",))]


def test_repeated_seconds_times_one_batch_again_and_again(clock):
    seen: list = []
    seconds = repeated_seconds({"slow": costing(clock, 4.0, seen), "fast": costing(clock, 1.0)}, ["p", "q"], 2,
                               warmup=2, runs=3)
    assert seconds == {"slow": pytest.approx([8e-3] * 3), "fast": pytest.approx([2e-3] * 3)}
    assert seen == [(["p", "q"], 2)] * 5


def test_compare_calls_percentiles_speedup_and_paired_keep_their_shape(clock):
    seen: dict[str, list] = {"base": [], "half": []}
    calls = {"base": costing(clock, 10.0, seen["base"]), "half": costing(clock, 5.0, seen["half"])}
    result = compare_calls(calls, "base", SENTENCES, batch_sizes=(1, 4), warmup=1, iterations=3)
    assert set(result) == {"batch_sizes", "baseline", "warmup", "iterations", "timer", "threads"}
    assert result["baseline"] == "base" and result["timer"] == "time.perf_counter (wall)"
    assert list(result["batch_sizes"]) == ["1", "4"]
    row = result["batch_sizes"]["4"]["half"]
    assert set(row) == {"p5", "q25", "median", "q75", "p95", "iqr", "speedup", "paired"}
    assert row["median"] == pytest.approx(20.0) and row["iqr"] == pytest.approx(0.0)  # ms: 4 sentences x 5 ms
    assert row["speedup"] == pytest.approx(2.0) and row["paired"] == pytest.approx(2.0)
    assert result["batch_sizes"]["1"]["base"]["speedup"] == 1.0
    assert seen["base"] == seen["half"]  # the same batches, warm-up included
    assert [batch for batch, size in seen["base"] if size == 4] == draw_batches(SENTENCES, 4, 4)


def test_percentiles():
    stats = percentiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats["median"] == 3.0 and stats["q25"] == 2.0 and stats["q75"] == 4.0 and stats["iqr"] == 2.0
    assert stats["p5"] == pytest.approx(1.2) and stats["p95"] == pytest.approx(4.8)


def test_monitoring_overhead_is_timed_by_the_harness(clock):
    """The eval suite's overhead (diagnose.monitoring_overhead) goes through repeated_seconds and its clock."""
    from leap_core.evaluation.diagnose import monitoring_overhead

    class Encoder:
        def encode(self, sentences, batch_size, mode):
            clock[0] += {"full": 0.010, "monitored": 0.0102}[mode] * len(sentences)

    result = monitoring_overhead(Encoder(), SENTENCES[:4], batch_size=2, warmup=1, runs=3)
    assert result["full_seconds"] == pytest.approx(0.04) and result["monitored_seconds"] == pytest.approx(0.0408)
    assert result["overhead"] == pytest.approx(0.02) and result["overhead_of_fastest"] == pytest.approx(0.02)
    assert result["runs"] == 3 and result["warmup"] == 1
