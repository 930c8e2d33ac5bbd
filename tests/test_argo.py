"""The Argo Workflows templates of the flows render here, with no cluster: the weekly schedule and the GPU
requests of the training and evaluation steps are in them (what `argo-workflows create` would deploy)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOWS = {  # flow file: (steps that ask for a GPU, a CPU-only step)
    "leap_flow.py": (("train", "evaluate", "retrieval", "latency", "retrofit"), "extract"),
    "retrain_flow.py": (("retrofit", "gate"), "extract"),
}


def render(flow: str, tmp_path: Path, **settings: str) -> dict:
    """`argo-workflows create --only-json`: Argo needs an S3 datastore (the code package is put there, even for
    --only-json); no Kubernetes API is called."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("METAFLOW_", "LEAP_"))}
    env.update(METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3="s3://leap-test/argo-metaflow",
               METAFLOW_HOME=str(tmp_path), USERNAME="ci", HF_HUB_OFFLINE="1", **settings)
    done = subprocess.run([sys.executable, f"flows/{flow}", "--no-pylint", "argo-workflows", "create",
                           "--only-json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # the WorkflowTemplate; Metaflow's messages go to stderr


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_the_argo_template_holds_the_weekly_schedule_and_the_gpu_requests(flow, s3_server, tmp_path):
    template = render(flow, tmp_path)
    assert "metaflow/triggers" not in template["metadata"]["annotations"]  # deploys without Argo Events too
    assert template["kind"] == "WorkflowTemplate"
    assert json.loads(template["metadata"]["annotations"]["metaflow/cron"])["schedule"] == "0 0 ? * SUN"
    steps = {t["name"]: t for t in template["spec"]["templates"]}
    gpu_steps, cpu_step = FLOWS[flow]
    for name in gpu_steps:
        resources = steps[name]["container"]["resources"]
        assert resources["limits"] == {"nvidia.com/gpu": "1"} and float(resources["requests"]["cpu"]) == 4.0, name
    assert steps[cpu_step]["container"]["resources"]["limits"] == {}  # CPU steps ask for no GPU


def test_with_argo_events_configured_a_monitor_alert_also_starts_the_retrain(s3_server, tmp_path):
    template = render("retrain_flow.py", tmp_path, METAFLOW_ARGO_EVENTS_EVENT="leap",
                      METAFLOW_ARGO_EVENTS_EVENT_SOURCE="leap-events", METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT="operate")
    annotations = template["metadata"]["annotations"]
    assert json.loads(annotations["metaflow/triggers"]) == [{"name": "leap_monitor_alert", "type": "event"}]
    assert json.loads(annotations["metaflow/cron"])["schedule"] == "0 0 ? * SUN"
