"""MLflow tracking: metric rows, the train log, parent and nested runs in a real (SQLite) tracking store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leap_core import tracking


def test_default_uri_is_a_sqlite_file_at_the_repository_root(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{Path(__file__).resolve().parents[1] / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_metric_series_flattens_and_steps_lists_by_layer():
    rows = tracking.metric_series({"a": 1, "b": [0.5, 0.7], "c": {"d": 2}, "s": "x", "f": True, "n": None, "e": []})
    assert rows == [("a", 1.0, 0), ("b", 0.5, 1), ("b", 0.7, 2), ("c.d", 2.0, 0)]


def test_read_train_log_gives_every_term_by_step(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text(json.dumps({"step": 2, "epoch": 0, "lr": 0.1, "final": 0.9, "total": 1.5}) + "\n"
                   + json.dumps({"step": 4, "epoch": 0, "lr": 0.05, "final": 0.8, "total": 1.2}) + "\n")
    rows = tracking.read_train_log(log)
    assert ("train/final", 0.8, 4) in rows and ("train/total", 1.5, 2) in rows and ("train/lr", 0.05, 4) in rows
    assert len(rows) == 8  # epoch, lr, final, total at two steps


def test_read_train_log_names_the_bad_line(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "total": 1.0}\n{"step": 2, "total": \n')
    with pytest.raises(ValueError, match=r"train_log.jsonl: line 2: not valid JSON"):
        tracking.read_train_log(log)
    log.write_text('{"total": 1.0}\n')
    with pytest.raises(ValueError, match=r"line 1: expected an object with an integer 'step'"):
        tracking.read_train_log(log)


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


def test_parent_and_nested_arm_runs(uri, tmp_path):
    parent = tracking.start_flow_run("flow-test", "LeapFlow-1", "LeapFlow/1", {"profile": "smoke", "data": {"n": 96}},
                                     uri)
    arm = tracking.arm_run(parent, "leap", 0, "LeapFlow/1/train/4", {"objective": {"beta": 0.4}}, uri)
    mlflow_client = tracking.client(uri)
    run = mlflow_client.get_run(arm)
    assert run.data.tags[tracking.PARENT_TAG] == parent
    assert run.data.tags["metaflow.pathspec"] == "LeapFlow/1/train/4"
    assert run.data.tags["leap.arm"] == "leap" and run.data.params["objective.beta"] == "0.4"
    assert mlflow_client.get_run(parent).data.params == {"profile": "smoke", "data.n": "96"}
    # A retried task finds the same run instead of opening a second one.
    again = tracking.arm_run(parent, "leap", 0, "LeapFlow/1/train/9", {"objective": {"beta": 0.4}}, uri)
    assert again == arm and mlflow_client.get_run(arm).data.tags["metaflow.pathspec"] == "LeapFlow/1/train/9"
    assert tracking.arm_run(parent, "leap", 1, "LeapFlow/1/train/5", {}, uri) != arm  # another seed
    # Artifacts of a SQLite store live beside the database, wherever the flow was started from.
    location = mlflow_client.get_experiment_by_name("flow-test").artifact_location
    assert location == (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()


def test_training_losses_are_logged_once_and_metrics_by_layer(uri, tmp_path):
    parent = tracking.start_flow_run("flow-test", "LeapFlow-2", "LeapFlow/2", {}, uri)
    arm = tracking.arm_run(parent, "baseline", 0, "LeapFlow/2/train/4", {}, uri)
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "final": 1.0 / s, "total": 2.0 / s}) + "\n" for s in (1, 2, 3)))
    assert tracking.log_training(arm, log, uri) == 6
    assert tracking.log_training(arm, log, uri) == 0  # a retried task does not log the curve twice
    mlflow_client = tracking.client(uri)
    history = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(arm, "train/total"))
    assert history == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]

    tracking.log_evaluation(arm, {"stsb_exited": 0.7, "similarity_to_final": [0.2, 0.6, 1.0], "theta": 0.95}, uri)
    run = mlflow_client.get_run(arm)
    assert run.data.metrics["stsb_exited"] == 0.7
    series = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(arm, "similarity_to_final"))
    assert series == [(1, 0.2), (2, 0.6), (3, 1.0)]
    tracking.end_run(arm, "FAILED", uri)
    assert mlflow_client.get_run(arm).info.status == "FAILED"


def test_report_folder_becomes_run_artifacts(uri, tmp_path):
    parent = tracking.start_flow_run("flow-test", "LeapFlow-3", "LeapFlow/3", {}, uri)
    (tmp_path / "summary.md").write_text("# hi\n")
    tracking.log_folder(parent, tmp_path, "reports", uri)
    names = [f.path for f in tracking.client(uri).list_artifacts(parent, "reports")]
    assert names == ["reports/summary.md"]
