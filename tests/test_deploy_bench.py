"""The deployment bench: every serving path side by side, each row's quality, the ratios against the peer."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from leap_core.cli import main  # noqa: E402
from leap_core.bench.deploy_bench import (OURS_INT8, PEER_INT8, SHIPPED, headlines, quality_drops,  # noqa: E402
                                    ServedPath)
from leap_core.report.deploy_report import readme_rows, render_markdown  # noqa: E402
from leap_core.evaluation.pareto import save_policy  # noqa: E402
from leap_core.models import resolve_model  # noqa: E402
from leap_core.policy import ExitPolicy  # noqa: E402

ORIGINAL = "random-bert:layers=4,hidden=64,heads=2,seed=1"


def _path(name: str, quality: dict) -> ServedPath:
    return ServedPath(name, name.split(" ")[0], "x", "fp32", "full", 4, lambda b, s: None, name, quality=quality)


def test_headlines_divide_the_peers_median_by_ours_and_judge_each_target():
    timing = {"batch_sizes": {size: {SHIPPED: {"median": 20.0}, PEER_INT8: {"median": 4.0}, OURS_INT8: {"median": 2.0}}
                              for size in ("1", "32")}}
    paths = [_path(SHIPPED, {"stsb-test": 0.82, "scifact-test": 0.60}),
             _path(OURS_INT8, {"stsb-test": 0.815, "scifact-test": 0.57})]
    out = headlines(timing, paths)
    assert out["vs_peer_int8"] == {"bs1": 2.0, "bs32": 2.0} and out["vs_shipped"]["bs1"] == 10.0
    assert out["ours_int8_quality_drop"] == pytest.approx({"stsb-test": 0.005, "scifact-test": 0.05})
    targets = out["targets"]
    assert targets["vs_peer_int8_bs1"]["met"] and targets["vs_shipped_bs1"]["met"]
    assert targets["ours_int8_sts_drop"]["met"] and not targets["ours_int8_worst_ndcg_drop"]["met"]  # 5% > 3%
    assert targets["torch_vs_ort_fp32_bs1"]["value"] is None and targets["torch_vs_ort_fp32_bs1"]["met"] is None
    assert quality_drops({"nfcorpus-test": 0.33}, {"nfcorpus-test": 0.30}) == pytest.approx({"nfcorpus-test": -0.1})


def test_profile_times_each_call_and_the_tokenizer_through_the_harness(monkeypatch):
    from leap_core import timing
    from leap_core.bench.deploy_bench import PROFILE_WARMUP, profile_torch

    now, calls_made = [0.0], []

    def ours(batch, size):
        now[0] += 0.002
        calls_made.append((list(batch), size))

    def tokenizer(batch, **kwargs):
        now[0] += 0.0005

    monkeypatch.setitem(timing.CLOCKS, "wall", lambda: now[0])
    out = profile_torch({"ours": ours}, "a sentence", tokenizer, iterations=4)
    assert out["ours"]["wall_ms_per_call"] == pytest.approx(2.0)  # the median of the harness's timed calls
    assert out["tokenizer_ms_per_call"] == pytest.approx(0.5)
    assert calls_made == [(["a sentence"], 1)] * (PROFILE_WARMUP + 4 + 4)  # warm-up, timed, then profiled
    assert set(out["ours"]) == {"wall_ms_per_call", "aten_ops_per_call", "aten_self_ms_per_call", "top_ops"}


def test_bench_deploy_times_every_path_and_scores_each_once(tmp_path, data_dir):
    ours = tmp_path / "ours"
    shutil.copytree(resolve_model(ORIGINAL), ours)
    save_policy(ours, ExitPolicy("fixed", depth=2, k=1, l_min=2))
    out = tmp_path / "bench.json"
    assert main(["bench-deploy", str(ours), "--original", ORIGINAL, "--data-dir", str(data_dir), "--depth", "3",
                 "--batch-sizes", "1,2", "--warmup", "1", "--iterations", "3", "--max-docs", "40",
                 "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert {SHIPPED, PEER_INT8, OURS_INT8, "ours · leap encoder (eager) · fp32", "ours · PyTorch frozen · int8",
            "ours · ONNX Runtime · int8 at fixed:3"} <= set(rows)
    assert result["policy"] == "fixed:2" and rows[OURS_INT8]["depth"] == 2 and not rows[
        "ours · ONNX Runtime · int8 at fixed:3"]["chosen"]
    assert set(result["vs_peer_int8"]) == {"bs1", "bs2"} and all(v > 0 for v in result["vs_peer_int8"].values())
    for row in rows.values():
        assert set(row["timing"]) == {"1", "2"} and row["timing"]["1"]["median"] > 0
        assert set(row["quality"]) == {"stsb-test", "scifact-test", "nfcorpus-test"}
    # fp32 of one point in any runtime is one evaluation; int8 is scored on its own.
    assert rows[SHIPPED]["quality"] == rows["original · ONNX Runtime · fp32"]["quality"]
    assert rows["ours · leap encoder (eager) · fp32"]["quality"] == rows["ours · ONNX Runtime · fp32"]["quality"]
    assert rows[SHIPPED]["quality_drop"] == {"stsb-test": 0.0, "scifact-test": 0.0, "nfcorpus-test": 0.0}
    assert np.isclose(rows[PEER_INT8]["quality"]["stsb-test"], rows[SHIPPED]["quality"]["stsb-test"], atol=0.1)
    assert set(result["profile_bs1"]) >= {"ours · PyTorch frozen · fp32", "ours · leap encoder (eager) · fp32"}
    markdown = out.with_suffix(".md").read_text()
    assert markdown == render_markdown(result) and "## Against the bar" in markdown
    assert "sentence-transformers' ONNX backend" in markdown and len(readme_rows(result)) == 2 + len(rows)
