"""MLflow tracking: one parent run per flow run, one nested run per arm, losses and metrics logged to them.

Runs are addressed by id through an MlflowClient, so each Metaflow task (its own process, maybe its
own machine) opens the run it was handed instead of relying on MLflow's per-process active run.
Default tracking store: `sqlite:///<repo>/mlflow.db`, artifacts in `mlruns/` beside the database;
MLFLOW_TRACKING_URI (e.g. a server started by infra/mlflow_server.sh) replaces both.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

REPO = Path(__file__).resolve().parent.parent
# Where a run's arm / seed live, so a retried task finds the run it already opened.
ARM_TAG, SEED_TAG, PATHSPEC_TAG = "leap.arm", "leap.seed", "metaflow.pathspec"
PARENT_TAG = "mlflow.parentRunId"  # what makes a run "nested" in MLflow
TRAIN_PREFIX = "train/"
_BATCH = 1000  # MLflow's limit of metrics per log_batch request
_PARAM_BATCH = 100


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite file at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"


def client(uri: str | None = None):
    """An MlflowClient for `uri` (default: tracking_uri()), with telemetry off (machines here are offline)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # deferred: at top, importing this module would load mlflow
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str, uri: str | None = None, artifact_store: str | None = None) -> str:
    """Id of experiment `name`, created if missing.

    Its artifacts: with a server, where the server puts them (`--artifacts-destination`); with no server, under
    artifact_store (s3://...) when given, else beside the SQLite file (not in ./mlruns of whatever the cwd is).
    """
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        pass
    elif artifact_store:
        location = f"{artifact_store.rstrip('/')}/{name}"
    elif uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns").as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"a.b": leaf}; leaves are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


PER_ITEM = "_per_query"  # per-query scores stay in the report's JSON, not one MLflow metric per query


def metric_series(metrics: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """Evaluation metrics as (key, value, step) rows MLflow can plot.

    A number is one row at step 0; a list of numbers is a series with step l for element l-1 (so a
    per-layer list is plotted by layer, 1-indexed); nested mappings are flattened with "."; bools,
    strings and None are not metrics and are skipped, as are per-query scores; "@" becomes "_at_".
    """
    rows = []
    for key, value in flatten(metrics).items():
        if PER_ITEM in key:
            continue
        key = key.replace("@", "_at_")  # MLflow refuses "@" in names (ndcg@10 -> ndcg_at_10)
        if _is_number(value):
            rows.append((key, float(value), 0))
        elif isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
            rows.extend((key, float(v), step) for step, v in enumerate(value, start=1))
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_train_log(path: str | Path) -> list[tuple[str, float, int]]:
    """Rows of a trainer's train_log.jsonl as ("train/<term>", value, step) for every numeric field."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number}: not valid JSON: {err.msg}") from err
        if not isinstance(entry, dict) or not _is_number(entry.get("step")):
            raise ValueError(f"{path}: line {number}: expected an object with an integer 'step'")
        step = int(entry["step"])
        rows.extend((f"{TRAIN_PREFIX}{key}", float(value), step)
                    for key, value in entry.items() if key != "step" and _is_number(value))
    return rows


def log_rows(run_id: str, rows: Iterable[tuple[str, float, int]], uri: str | None = None) -> int:
    """Log (key, value, step) metric rows in batches; returns how many were logged."""

    # deferred: at top, importing this module would load mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value if math.isfinite(value) else float("nan"), now, step) for key, value, step in rows]
    mlflow_client = client(uri)
    for start in range(0, len(metrics), _BATCH):
        mlflow_client.log_batch(run_id, metrics=metrics[start:start + _BATCH])
    return len(metrics)


def log_params(run_id: str, params: Mapping[str, Any], uri: str | None = None) -> None:
    """Log a (nested) mapping as flat string params; logging the same values again is harmless."""
    # deferred: at top, importing this module would load mlflow
    from mlflow.entities import Param

    flat = [Param(key, str(value)[:6000]) for key, value in flatten(params).items()]
    mlflow_client = client(uri)
    for start in range(0, len(flat), _PARAM_BATCH):
        mlflow_client.log_batch(run_id, params=flat[start:start + _PARAM_BATCH])


def start_flow_run(experiment: str, run_name: str, pathspec: str, params: Mapping[str, Any],
                   uri: str | None = None, artifact_store: str | None = None) -> str:
    """Open the parent run of one flow run, tagged with its Metaflow pathspec; returns the run id."""
    mlflow_client = client(uri)
    run = mlflow_client.create_run(experiment_id(experiment, uri, artifact_store), run_name=run_name,
                                   tags={PATHSPEC_TAG: pathspec, "leap.kind": "flow"})
    log_params(run.info.run_id, params, uri)
    return run.info.run_id


def arm_run(parent_run_id: str, arm: str, seed: int, pathspec: str, params: Mapping[str, Any],
            uri: str | None = None) -> str:
    """The nested run of one arm and seed under `parent_run_id`: reused if it exists (a retried task), else opened.

    Tags: the arm, the seed and the pathspec of the task that opened it (each later step adds its own).
    """
    mlflow_client = client(uri)
    parent = mlflow_client.get_run(parent_run_id)
    found = mlflow_client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{ARM_TAG}` = '{arm}' "
                      f"and tags.`{SEED_TAG}` = '{seed}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        mlflow_client.set_tag(run_id, PATHSPEC_TAG, pathspec)
    else:
        run_id = mlflow_client.create_run(
            parent.info.experiment_id, run_name=f"{arm}-seed{seed}",
            tags={PARENT_TAG: parent_run_id, ARM_TAG: arm, SEED_TAG: str(seed), PATHSPEC_TAG: pathspec},
        ).info.run_id
    log_params(run_id, params, uri)
    return run_id


def log_training(run_id: str, train_log: str | Path, uri: str | None = None) -> int:
    """Per-term losses by step from a trainer's train_log.jsonl, once (a retried task logs nothing twice)."""
    if client(uri).get_metric_history(run_id, f"{TRAIN_PREFIX}total"):
        return 0
    return log_rows(run_id, read_train_log(train_log), uri)


def log_evaluation(run_id: str, metrics: Mapping[str, Any], uri: str | None = None) -> int:
    """Every numeric evaluation metric (per-layer lists as series by layer) and the full dict as eval.json."""
    client(uri).log_dict(run_id, dict(metrics), "eval.json")
    return log_rows(run_id, metric_series(metrics), uri)


def tag(run_id: str, tags: Mapping[str, Any], uri: str | None = None) -> None:
    mlflow_client = client(uri)
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, str(value)[:5000])


def log_folder(run_id: str, folder: str | Path, artifact_path: str | None = None, uri: str | None = None) -> None:
    """Upload a folder's files (e.g. reports/<profile>/) as run artifacts."""
    client(uri).log_artifacts(run_id, str(folder), artifact_path)


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    """Close a run: FINISHED, FAILED or KILLED."""
    client(uri).set_terminated(run_id, status)
