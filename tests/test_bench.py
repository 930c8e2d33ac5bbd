"""Latency benchmark: headline arithmetic, the timing loop's bookkeeping, agreement, markdown (bench_report).

The harness itself (batches, rotation, clocks) is tested in test_timing.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from leap_core import timing
from leap_core.bench.latency import PEER, run_benchmark, summarize
from leap_core.report.bench_report import render_markdown
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.timing import draw_batches

N_LAYERS = 4
SENTENCES = [
    "A man is playing a guitar.",
    "no",
    "The committee approved the proposal after a long and heated debate that lasted until midnight.",
    "Cats sleep.",
    "What is the capital of France?",
    "I went to the market yesterday and bought fish, bread and some apples for the week.",
    "ok then",
    "A woman slices an onion.",
    "The quick brown fox jumps over the lazy dog.",
    "Two children are playing in the snow near a small wooden house.",
]
REQUIRED = {"layer_reduction", "overhead_monitored", "speedup_bs1", "speedup_bs32_compact", "speedup_bs32_batch",
            "full_vs_sentence_transformers"}

pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny BERT folder (4 layers x 32) with the MiniLM tokenizer and exit settings whose exits vary."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=2,
                                 intermediate_size=64, vocab_size=tokenizer.vocab_size, initializer_range=0.2)).eval()
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    encoder = EarlyExitEncoder(model, tokenizer, k=1, l_min=2, device="cpu")
    # theta mid-way across the widest gap among the tested cosines: exits vary, no borderline row.
    layer_embs = encoder.layer_embeddings(SENTENCES)
    cos = np.sort(np.concatenate([(layer_embs[l - 1] * layer_embs[l - 2]).sum(-1) for l in range(2, N_LAYERS)]))
    middle = cos[len(cos) // 4: 3 * len(cos) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    assert middle[gap + 1] - middle[gap] > 2e-3
    encoder.theta = float((middle[gap] + middle[gap + 1]) / 2)
    encoder.save_exit_settings(folder)
    return folder


def test_summarize_hand_computed():
    ms = 1e-3
    seconds = {
        "full": {1: [10 * ms, 12 * ms, 11 * ms], 32: [90 * ms, 100 * ms, 130 * ms]},
        "monitored": {1: [11.22 * ms] * 3, 32: [101 * ms] * 3},
        "batch": {1: [6 * ms] * 3, 32: [80 * ms] * 3},
        "compact": {1: [5.5 * ms] * 3, 32: [50 * ms, 40 * ms, 60 * ms]},
        PEER: {1: [13.2 * ms] * 3, 32: [105 * ms] * 3},
    }
    exits = {"compact": {1: [2, 4, 3], 32: [2, 2, 2, 4, 4, 4]}, "batch": {1: [2, 4, 3], 32: [2, 2, 2, 4, 4, 4]},
             "full": {1: [4, 4, 4], 32: [4] * 6}}
    result = summarize(seconds, exits, n_layers=4)
    assert REQUIRED <= set(result)
    # medians: full 11 / 100, monitored 11.22 / 101, batch 6 / 80, compact 5.5 / 50, peer 13.2 / 105
    assert result["speedup_bs1"] == pytest.approx(2.0)
    assert result["speedup_bs32_compact"] == pytest.approx(2.0)
    assert result["speedup_bs32_batch"] == pytest.approx(1.25)
    assert result["compact_vs_batch_bs32"] == pytest.approx(1.6)
    assert result["overhead_monitored"] == pytest.approx(0.02)  # the worse of 2% (bs 1) and 1% (bs 32)
    assert result["overhead_monitored_by_batch_size"] == pytest.approx({"1": 0.02, "32": 0.01})
    # paired, bs 1: full/monitored per iteration 10/11.22, 12/11.22, 11/11.22 -> median 11/11.22
    assert result["overhead_monitored_paired_by_batch_size"]["1"] == pytest.approx(0.02)
    # bs 32: monitored/full per iteration 101/90, 101/100, 101/130 -> median 1.01; the CI spans those ratios
    low, high = result["overhead_monitored_paired_ci_by_batch_size"]["32"]
    assert 101 / 130 - 1 <= low <= 0.01 <= high <= 101 / 90 - 1
    assert result["overhead_monitored_paired_ci"] == result["overhead_monitored_paired_ci_by_batch_size"]["1"]
    assert result["full_vs_sentence_transformers"] == pytest.approx(1.05)  # the worse of 1.2 and 1.05
    # exits 2,4,3 and 2,2,2,4,4,4: mean 3 of 4 layers, at each batch size and over all 9 rows
    assert result["layer_reduction"] == pytest.approx(4 / 3)
    assert result["speedup_bs1_vs_theoretical"] == pytest.approx(1.5)
    assert result["speedup_bs32_compact_vs_theoretical"] == pytest.approx(1.5)
    assert result["speedup_bs32_batch_vs_theoretical"] == pytest.approx(1.25 / (4 / 3))
    row = next(r for r in result["table"] if r["mode"] == "compact" and r["batch_size"] == 32)
    assert row["median_ms"] == pytest.approx(50)
    assert row["median_ms_per_sentence"] == pytest.approx(50 / 32)
    assert row["iqr_ms"] == pytest.approx(10)  # quartiles 45 and 55
    assert row["p95_ms"] == pytest.approx(59)
    assert row["mean_exit_layer"] == pytest.approx(3)
    assert row["paired_speedup"] == pytest.approx(130 / 60)  # per iteration: 90/50, 100/40, 130/60
    peer = next(r for r in result["table"] if r["mode"] == PEER and r["batch_size"] == 1)
    assert peer["speedup"] == pytest.approx(11 / 13.2) and peer["theoretical_reduction"] == 1.0


def test_batch_mode_bound_is_latest_exit_over_mean_exit():
    from leap_core.bench.latency import batch_mode_bound

    # two batches of 2: batch mode runs 4 then 3 layers (3.5 a batch); rows exit at 2.75 on average
    assert batch_mode_bound([2, 4, 3, 2], 2) == pytest.approx(3.5 / 2.75)
    assert batch_mode_bound([5, 5, 5, 5], 2) == pytest.approx(1.0)  # no spread: nothing to gain
    assert batch_mode_bound([2, 4, 3], 2) is None and batch_mode_bound([], 32) is None
    exits = {"compact": {32: [6] * 31 + [12] + [7] * 32}}
    result = summarize({"full": {32: [0.1]}, "compact": {32: [0.05]}}, exits, n_layers=12)
    assert result["compact_vs_batch_bs32_bound"] == pytest.approx(((12 + 7) / 2) / ((6 * 31 + 12 + 7 * 32) / 64))


def test_summarize_missing_modes_give_none():
    result = summarize({"full": {8: [0.01, 0.02]}}, {}, n_layers=6)
    assert REQUIRED <= set(result)
    assert result["speedup_bs1"] is None and result["overhead_monitored"] is None
    assert result["full_vs_sentence_transformers"] is None and result["layer_reduction"] is None
    assert "| full | 8 |" in render_markdown(result | {"settings": _settings(), "environment": _env()})


def _settings():
    return {"model": "m", "n_layers": 6, "hidden_size": 8, "theta": 0.9, "k": 1, "l_min": 3, "warmup": 1,
            "iterations": 2, "dtype": "fp32", "timer": "t", "order": "o"}


def _env():
    return {"device": "cpu", "cpu_model": "x", "torch": "2", "torch_threads": 1}


COST_MS = {"full": 10.0, "monitored": 10.2, "batch": 8.0, "compact": 5.0, PEER: 12.5}  # per sentence


def test_run_benchmark_times_each_mode_on_the_same_batches(model_dir, monkeypatch):
    """A virtual clock that each encode call advances by its mode's cost: the loop must attribute it right."""
    from sentence_transformers import SentenceTransformer

    now = [0.0]
    seen: dict[tuple[str, int], list[list[str]]] = {}
    real_encode, real_peer = EarlyExitEncoder.encode, SentenceTransformer.encode

    def encode(self, sentences, batch_size=32, mode="compact", **kwargs):
        now[0] += COST_MS[mode] * 1e-3 * len(sentences)
        seen.setdefault((mode, batch_size), []).append(list(sentences))
        return real_encode(self, sentences, batch_size=batch_size, mode=mode, **kwargs)

    def peer_encode(self, sentences, batch_size=32, **kwargs):
        now[0] += COST_MS[PEER] * 1e-3 * len(sentences)
        seen.setdefault((PEER, batch_size), []).append(list(sentences))
        return real_peer(self, sentences, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(EarlyExitEncoder, "encode", encode)
    monkeypatch.setattr(SentenceTransformer, "encode", peer_encode)
    monkeypatch.setitem(timing.CLOCKS, "wall", lambda: now[0])
    warmup, iterations = 1, 2
    result = run_benchmark(model_dir, SENTENCES, batch_sizes=(1, 32), warmup=warmup, iterations=iterations,
                           device="cpu")

    assert REQUIRED <= set(result)
    assert result["speedup_bs1"] == pytest.approx(2.0)
    assert result["speedup_bs32_compact"] == pytest.approx(2.0)
    assert result["speedup_bs32_batch"] == pytest.approx(1.25)
    assert result["overhead_monitored"] == pytest.approx(0.02)
    assert result["full_vs_sentence_transformers"] == pytest.approx(1.25)
    assert {(r["mode"], r["batch_size"], r["iterations"]) for r in result["table"]} == {
        (mode, size, iterations) for mode in [*COST_MS] for size in (1, 32)}
    # Every mode, the peer included, saw the same batches (after the agreement check's calls).
    for size in (1, 32):
        want = draw_batches(SENTENCES, size, warmup + iterations)
        for mode in [*COST_MS]:
            assert seen[mode, size][-len(want):] == want
    # The theoretical reduction comes from the exit layers compact returned on the timed batches.
    encoder = EarlyExitEncoder.from_pretrained(model_dir, device="cpu")
    timed = [s for batch in draw_batches(SENTENCES, 32, warmup + iterations)[warmup:] for s in batch]
    _, layers = real_encode(encoder, timed, batch_size=32, mode="compact", return_exit_layers=True)
    row = next(r for r in result["table"] if r["mode"] == "compact" and r["batch_size"] == 32)
    assert row["theoretical_reduction"] == pytest.approx(N_LAYERS / layers.mean())
    assert len(set(layers.tolist())) >= 2
    assert row["efficiency"] == pytest.approx(2.0 / row["theoretical_reduction"])
    assert result["settings"]["warmup"] == warmup and result["settings"]["iterations"] == iterations
    assert {"torch", "torch_threads", "device", "cpu_model"} <= set(result["environment"])


def test_run_benchmark_real_clock_agreement_and_markdown(model_dir):
    result = run_benchmark(model_dir, SENTENCES, batch_sizes=(1, 4), warmup=1, iterations=2, device="cpu")
    assert {(row["mode"], row["batch_size"]) for row in result["agreement"]} == {
        (mode, size) for mode in [*COST_MS] for size in (1, 4)}
    for row in result["agreement"]:  # the peer encodes the same model: it agrees with our full depth
        assert row["min_cosine"] >= 0.9999 and row["exit_layers_equal"] is (None if row["mode"] == PEER else True)
    assert all(row["median_ms"] > 0 for row in result["table"])
    assert result["speedup_bs32_compact"] is None  # no batch size 32 was run
    text = render_markdown(result)
    assert "| compact | 4 |" in text and f"| {PEER} | 1 |" in text
    assert "1 warm-up + 2 timed iterations" in text and "exit layers identical" in text


def test_run_benchmark_rejects_bad_settings_before_timing(model_dir):
    with pytest.raises(ValueError, match="mode"):
        run_benchmark(model_dir, SENTENCES, modes=("full", "fast"), device="cpu")
    with pytest.raises(ValueError, match="clock"):
        run_benchmark(model_dir, SENTENCES, clock="sundial", device="cpu")
    with pytest.raises(TypeError, match=r"sentences\[1\] is int"):
        run_benchmark(model_dir, ["fine", 3], device="cpu")


def test_cli_writes_json_and_markdown(model_dir, tmp_path):
    from leap_core.cli import main

    (tmp_path / "stsb").mkdir()
    rows = [f"{i}.0\t{SENTENCES[i]}\t{SENTENCES[i + 1]}" for i in range(4)]
    (tmp_path / "stsb" / "test.tsv").write_text("score\tsentence1\tsentence2\n" + "\n".join(rows) + "\n")
    out = tmp_path / "reports" / "bench_cpu.json"
    main(["bench", str(model_dir), "--data-dir", str(tmp_path), "--batch-sizes", "1,2", "--modes", "full,compact",
          "--warmup", "0", "--iterations", "2", "--no-peer", "--theta", "0.5", "--out", str(out)])
    result = json.loads(out.read_text())
    assert REQUIRED <= set(result)
    assert result["settings"]["theta"] == 0.5 and result["settings"]["n_sentences_pool"] == 5  # distinct sentences
    assert {(row["mode"], row["batch_size"]) for row in result["table"]} == {
        (mode, size) for mode in ("full", "compact") for size in (1, 2)}
    assert "| compact | 2 |" in out.with_suffix(".md").read_text()


COMMITTED = Path(__file__).resolve().parents[1] / "reports" / "bench_exit_cpu.json"


@pytest.mark.skipif(not COMMITTED.is_file(), reason="no committed latency benchmark")
def test_committed_report_rebuilds_byte_for_byte():
    result = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert render_markdown(result) == COMMITTED.with_suffix(".md").read_text(encoding="utf-8")
