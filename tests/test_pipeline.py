"""The flow's helpers in leap_core.pipeline.handoff: arm plan, file references, arm outcomes, threads per task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from leap_core.pipeline import handoff as pipeline
from leap_core.config import load_profile


def test_arm_plan_of_each_profile():
    plan = pipeline.plan_arms
    assert [(p["arm"], p["seed"], p["group"]) for p in plan(load_profile("smoke"))] == [
        ("baseline", 0, "main"), ("leap", 0, "main"), ("final_only", 0, "ablation"), ("beta_0.2", 0, "sweep")]
    for name in ("cpu", "paper"):
        full = plan(load_profile(name))
        assert len(full) == 2 * 3 + 4 + 5  # {baseline, leap} x 3 seeds + 4 ablation + 5 sweep arms, once each
        assert {p["seed"] for p in full if p["group"] != "main"} == {0}
        assert [p["arm"] for p in full if p["group"] == "sweep"] == ["beta_0.1", "beta_0.2", "beta_0.4", "beta_0.6",
                                                                     "beta_0.8"]
        assert [p["arm"] for p in full if p["group"] == "ablation"] == ["final_only", "plus_inter", "plus_contrast",
                                                                        "plus_exit"]


def test_the_cpu_ablation_adds_one_term_at_a_time_at_leaps_weights():
    cpu = load_profile("cpu")
    leap = cpu.objective_for("leap")
    final_only, plus_inter = cpu.objective_for("final_only"), cpu.objective_for("plus_inter")
    plus_contrast, plus_exit = cpu.objective_for("plus_contrast"), cpu.objective_for("plus_exit")
    assert (final_only.alpha, final_only.beta, final_only.delta, final_only.late) == (0, 0, 0, 0)
    assert (plus_inter.alpha, plus_inter.delta, plus_inter.beta) == (leap.alpha, 0, 0)
    assert (plus_contrast.delta, plus_contrast.beta) == (leap.delta, 0)
    assert (plus_exit.beta, plus_exit.late, plus_exit.sharpness) == (leap.beta, 0, leap.sharpness)
    assert cpu.training_for("plus_exit").max_steps == 60 and cpu.training_for("leap").max_steps == 0


def test_file_references_notice_changed_content(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"abc")
    ref = pipeline.file_ref(tmp_path / "model")
    assert ref["uri"].startswith("file://") and pipeline.local_path(ref) == (tmp_path / "model").resolve()
    (tmp_path / "model" / "weights.bin").write_bytes(b"abd")
    with pytest.raises(ValueError, match="changed since it was written"):
        pipeline.local_path(ref)
    with pytest.raises(ValueError, match="expected a file:// or s3:// URI"):
        pipeline.local_path({"uri": "http://host/x", "sha256": ref["sha256"]})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipeline.local_path({"uri": (tmp_path / "gone").as_uri(), "sha256": ref["sha256"]})


def test_a_failed_arm_is_named_and_never_chosen_as_best():
    from metaflow.exception import MetaflowExceptionWrapper

    def task(arm, seed, stsb=None, train_failure=None, eval_failure=None):
        metrics = None if stsb is None else {"stsb_exited": stsb}
        return SimpleNamespace(spec={"arm": arm, "seed": seed, "group": "main"}, metrics=metrics,
                               train_failure=train_failure, eval_failure=eval_failure, arm_run_id=f"run-{arm}-{seed}",
                               model={"uri": f"file:///m/{arm}{seed}", "sha256": "0"}, train_seconds=1.0)

    try:
        raise ValueError("late_layers [99] beyond the student's 4 layers")
    except ValueError as err:
        boom = MetaflowExceptionWrapper(err)
    results = [pipeline.arm_result(t) for t in (
        task("leap", 0, stsb=0.70), task("leap", 1, stsb=0.72), task("final_only", 0, train_failure=boom),
        task("leap", 2, eval_failure=MetaflowExceptionWrapper(RuntimeError("out of memory"))))]
    assert [(r["status"], r["failed_step"]) for r in results] == [
        ("ok", None), ("ok", None), ("failed", "train"), ("failed", "evaluate")]
    assert results[2]["error"] == "builtins.ValueError: late_layers [99] beyond the student's 4 layers"
    assert pipeline.best_result(results)["seed"] == 1
    assert pipeline.best_result(results, "baseline") is None


def test_threads_per_task_share_the_cores_among_workers(monkeypatch):
    monkeypatch.delenv("LEAP_TORCH_THREADS", raising=False)
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 8)
    monkeypatch.setenv("METAFLOW_RUN_MAX_WORKERS", "2")
    assert pipeline.task_threads() == 4
    monkeypatch.setenv("METAFLOW_RUN_MAX_WORKERS", "16")
    assert pipeline.task_threads() == 1
    monkeypatch.setenv("LEAP_TORCH_THREADS", "3")
    assert pipeline.task_threads() == 3
