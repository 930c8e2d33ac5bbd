"""`leap verify-report`: every number of report.json against the MLflow runs it names."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from leap_core import tracking
from leap_core.report.aggregate import SEED_KEYS

LATENCY_KEYS = ("speedup_bs1", "speedup_bs32_compact", "speedup_bs32_batch", "overhead_monitored",
                "full_vs_sentence_transformers")


def verify_against_mlflow(report_path: str | Path, tracking_uri: str | None = None,
                          tolerance: float = 1e-9) -> list[str]:
    """Differences between report.json and the MLflow runs it names (empty list: they agree).

    Every arm's headline metrics against its nested run, and the latency headline against the parent run.
    tracking_uri: the report's own when None and $MLFLOW_TRACKING_URI is unset.
    """

    report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or report["run"].get("tracking_uri")
    client = tracking.client(uri)
    problems = []

    def compare(run_id: str, expected: Mapping[str, Any], what: str) -> None:
        # deferred: at top, importing this module would load mlflow
        from mlflow.exceptions import MlflowException

        try:
            logged = client.get_run(run_id).data.metrics
        except MlflowException:
            problems.append(f"{what}: MLflow run {run_id} is not in the tracking store {uri} (give the store the "
                            "run logged to: --tracking-uri or MLFLOW_TRACKING_URI)")
            return
        for key, value in expected.items():
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = key.replace("@", "_at_")
            if name not in logged:
                problems.append(f"{what}: {name} is not logged in MLflow run {run_id}")
            elif not math.isclose(logged[name], float(value), rel_tol=tolerance, abs_tol=tolerance):
                problems.append(f"{what}: {name} is {value} in the report but {logged[name]} in MLflow run {run_id}")

    checked = 0
    for arm in report["arms"]:
        if arm["status"] == "ok" and arm.get("mlflow_run_id"):
            compare(arm["mlflow_run_id"], {k: arm["metrics"].get(k) for k in SEED_KEYS},
                    f"{arm['arm']}-seed{arm['seed']}")
            checked += 1
    if report.get("latency") and report["run"].get("mlflow_run_id"):
        latency = report["latency"]
        compare(report["run"]["mlflow_run_id"],
                {f"latency.{k}": latency.get(k) for k in LATENCY_KEYS},
                "latency")
    if not checked:
        problems.append("the report names no successful arm with an MLflow run")
    return problems
