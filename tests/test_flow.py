"""The Metaflow DAG end to end on the smoke profile, against a real MLflow server; resume after a kill.

The flow runs in subprocesses exactly as a user runs it (`python flows/leap_flow.py run ...`) with a
temporary Metaflow datastore, card root, output and report folders. The smoke profile is used as
is, except that STS-B test is cut to its first 120 pairs so evaluation takes a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FLOW = REPO / "flows" / "leap_flow.py"
SERVER = REPO / "infra" / "mlflow_server.sh"
MODEL_NAME = "leap-student-smoke"
KILL_ENV = "LEAP_TEST_KILL_TRAINING"
STS_PAIRS = 120


def load_flow_module():
    spec = importlib.util.spec_from_file_location("leap_flow", FLOW)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- helpers of the flow, in process


def test_the_flow_file_takes_its_helpers_from_the_library():
    flow = load_flow_module()
    from leap_core.pipeline import handoff as pipeline

    assert flow.plan_arms is pipeline.plan_arms and flow.local_path is pipeline.local_path
    from metaflow.graph import FlowGraph

    graph = FlowGraph(flow.LeapFlow)
    path, node = [], graph["start"]
    while True:
        path.append(node.name)
        if node.type == "end":
            break
        node = graph[node.out_funcs[0]]
    assert path == ["start", "extract", "cache_teacher", "train", "evaluate", "join", "retrieval", "latency",
                    "retrofit", "report", "promote", "end"]
    assert graph["cache_teacher"].type == "foreach" and graph["join"].type == "join"


# ---------------------------------------------------------------- subprocess plumbing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def smoke_profile(folder: Path, data_dir: Path, arms: dict | None = None, lean: bool = False) -> Path:
    """params/smoke.yaml with an absolute data dir and a 120-pair STS-B test file (named smoke.yaml: same profile name).

    lean: without the steps that only evaluate (BEIR, the external models' diagnosis, the retrofit), for tests of
    the plumbing.
    """
    values = yaml.safe_load((REPO / "params" / "smoke.yaml").read_text())
    lines = (data_dir / "stsb" / "test.tsv").read_text(encoding="utf-8").splitlines()[:STS_PAIRS + 1]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sts_test_small.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    values["data"].update(data_dir=str(data_dir), sts_eval=str(folder / "sts_test_small.tsv"))
    if arms is not None:
        values.update(arms=arms, ablation_arms=[], sweep_arms=[])
    if lean:
        values["evaluation"].update(beir=[], diagnose_external=False, bench_batch_sizes=[1])
        values["retrofit_models"] = []
    path = folder / "smoke.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def flow_env(root: Path, tracking_uri: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("METAFLOW_", "LEAP_"))}
    env.update(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root / "metaflow"), METAFLOW_CARD_LOCALROOT=str(root / "cards"),
               MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_flow(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    # A session of its own, as a terminal gives a command: the kill hook takes down this group only.
    return subprocess.run([sys.executable, str(FLOW), "--no-pylint", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout, start_new_session=True)


def flow_args(root: Path, profile: Path) -> list[str]:
    return ["run", "--profile", str(profile), "--output-dir", str(root / "runs"), "--reports-dir",
            str(root / "reports"), "--max-workers", "4"]


# ---------------------------------------------------------------- end to end against an MLflow server


@contextlib.contextmanager
def running_mlflow_server(home: Path, **settings: str):
    """infra/mlflow_server.sh on a free localhost port, its state in `home` (settings: its environment)."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_HOME": str(home), **settings}
    env.pop("MLFLOW_HOST", None)
    with open(log, "w") as out:
        process = subprocess.Popen(["bash", str(SERVER)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process, 120, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, mlflow_server, data_dir):
    """The smoke DAG killed in training (SIGKILL to the whole run, as a lost machine), then `resume`d to the end.

    One scenario serves both must-haves: the run must finish end to end after resume, with one parent
    MLflow run, one nested run per arm, reports, a registered champion; and it must not redo the teacher pass.
    """
    root = tmp_path_factory.mktemp("flow")
    profile = smoke_profile(root / "profile", data_dir)
    env = flow_env(root, mlflow_server)
    started = time.monotonic()
    killed = run_flow(flow_args(root, profile), {**env, KILL_ENV: "leap:3"})
    (root / "killed.log").write_text(killed.stdout + killed.stderr)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-6000:]
    arm_dir = root / "runs" / "smoke" / "leap-seed0"
    checkpoint_left = (arm_dir / "checkpoint.pt").is_file() and not (arm_dir / "train_result.json").exists()
    resumed = run_flow(["resume"], env)
    (root / "resumed.log").write_text(resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    print(f"smoke flow, killed and resumed: {time.monotonic() - started:.0f} s")
    return {"root": root, "uri": mlflow_server, "killed_log": killed.stdout + killed.stderr,
            "resumed_log": resumed.stdout + resumed.stderr, "checkpoint_left": checkpoint_left}


def test_a_run_killed_in_training_resumes_without_a_teacher_pass(smoke_run):
    assert "teacher cache miss" in smoke_run["killed_log"]  # the first run built the cache ...
    assert smoke_run["checkpoint_left"]  # ... and died in the middle of training the leap arm
    log = smoke_run["resumed_log"]
    assert "teacher cache miss" not in log and "no teacher forward pass" in log
    assert "leap-seed0 at step 2 of 6" in log  # the trainer went on from its checkpoint (saved every 2 steps)
    arm_dir = smoke_run["root"] / "runs" / "smoke" / "leap-seed0"
    assert json.loads((arm_dir / "train_result.json").read_text())["steps"] == 6


def test_flow_reports_every_arm(smoke_run):
    root = smoke_run["root"]
    report = json.loads((root / "reports" / "smoke" / "report.json").read_text())
    arms = {(a["arm"], a["group"]): a for a in report["arms"]}
    assert set(arms) == {("baseline", "main"), ("leap", "main"), ("final_only", "ablation"), ("beta_0.2", "sweep")}
    assert all(a["status"] == "ok" and a["metrics"]["n_pairs"] == STS_PAIRS for a in arms.values())
    assert report["failed"] == [] and report["run"]["pathspec"].startswith("LeapFlow/")
    leap_model = Path(arms[("leap", "main")]["model"]["uri"].removeprefix("file://"))
    assert leap_model == root / "runs" / "smoke" / "leap-seed0" / "model"
    # Every stage reached the report: BEIR of both best seeds, calibration, the external models, latency.
    assert set(report["analysis"]["beir"]) == {"leap", "baseline"}
    assert set(report["analysis"]["beir"]["leap"]) == {"scifact", "nfcorpus"}
    assert report["analysis"]["calibration"]["theta"] is not None
    assert set(report["analysis"]["external"]) == {"teacher", "student_init"}
    assert {row["batch_size"] for row in report["latency"]["table"]} == {1, 8}
    assert len(report["claims"]) == 12 and all(c["verdict"] for c in report["claims"])
    retrofitted = report["retrofit"]["random-bert:layers=4,hidden=64,heads=2,seed=1"]
    assert retrofitted["depth"] == 4 and retrofitted["l_min"] == 2 and 0 <= retrofitted["exit_rate"] <= 1
    assert Path(retrofitted["model_dir"]).parent.parent == root / "runs" / "smoke"
    steps = {row[0] for row in report["steps"]}
    assert {"start", "cache_teacher", "train", "evaluate", "retrieval", "latency", "retrofit"} <= steps
    markdown = (root / "reports" / "smoke" / "report.md").read_text()
    assert "## Retrofit of published models" in markdown and "| `random-bert:layers=4" in markdown
    assert "| beta_0.2 | 0 | sweep |" in markdown and "## Failures\n\nnone" in markdown
    assert sorted(p.name for p in (root / "reports" / "smoke" / "figures").glob("*.png")) == [
        "contraction.png", "exit_distribution.png", "layer_similarity.png", "nn10_by_layer.png", "theta_pareto.png"]
    cards = list(root.rglob("cards/*.html"))  # in the datastore: Metaflow keeps cards with the run
    assert len(cards) == 1 and "/report/" in str(cards[0])


def test_the_report_agrees_with_its_mlflow_runs(smoke_run):
    from leap_core.report.verify import verify_against_mlflow

    path = smoke_run["root"] / "reports" / "smoke" / "report.json"
    assert verify_against_mlflow(path, smoke_run["uri"]) == []
    report = json.loads(path.read_text())
    report["arms"][1]["metrics"]["stsb_exited"] += 0.01  # a number edited by hand is caught
    tampered = smoke_run["root"] / "tampered.json"
    tampered.write_text(json.dumps(report))
    problems = verify_against_mlflow(tampered, smoke_run["uri"])
    assert len(problems) == 1 and "stsb_exited" in problems[0]


def test_mlflow_holds_a_parent_run_and_a_nested_run_per_arm(smoke_run):
    from leap_core import tracking

    mlflow_client = tracking.client(smoke_run["uri"])
    experiment = mlflow_client.get_experiment_by_name("leap-smoke")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("leap.kind") == "flow"]
    assert len(parents) == 1
    parent = parents[0]
    # The run that finished is the resumed one; the killed run it came from is its origin.
    flow_run = parent.data.tags["metaflow.pathspec"]
    report = json.loads((smoke_run["root"] / "reports" / "smoke" / "report.json").read_text())
    assert flow_run == report["run"]["pathspec"] and parent.data.tags["metaflow.origin_run_id"] not in flow_run
    assert parent.info.status == "FINISHED" and parent.data.params["data.n_sentences"] == "96"
    assert parent.data.tags["leap.failed_arms"] == "none"
    children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    retrofits = [r for r in children if r.data.tags["leap.arm"].startswith("retrofit-")]
    children = [r for r in children if r not in retrofits]
    assert [r.data.tags["leap.arm"] for r in retrofits] == ["retrofit-random-bert_layers_4_hidden_64_heads_2_seed_1"]
    assert retrofits[0].info.status == "FINISHED" and "/retrofit/" in retrofits[0].data.tags["metaflow.pathspec"]
    assert {"original_stsb", "stsb_exited", "exit_rate", "vs_truncated_original.difference"} <= set(
        retrofits[0].data.metrics)
    # One nested run per arm: the resumed tasks reopened the runs the killed ones had started.
    assert sorted(r.data.tags["leap.arm"] for r in children) == ["baseline", "beta_0.2", "final_only", "leap"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert "/train/" in child.data.tags["metaflow.pathspec"]
        assert child.data.tags["metaflow.evaluate_pathspec"].startswith(f"{flow_run}/evaluate/")
        assert {"stsb_full", "stsb_exited", "exit_rate", "mean_exit_layer"} <= set(child.data.metrics)
    leap = next(c for c in children if c.data.tags["leap.arm"] == "leap")
    assert leap.data.tags["metaflow.pathspec"].startswith(f"{flow_run}/train/")
    steps = [m.step for m in mlflow_client.get_metric_history(leap.info.run_id, "train/total")]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step once, though training was killed at step 3
    similarity = mlflow_client.get_metric_history(leap.info.run_id, "similarity_to_final")
    assert sorted(m.step for m in similarity) == [1, 2, 3, 4]  # by layer
    assert "train/exit_teacher" in leap.data.metrics and leap.data.params["objective.beta"] == "0.4"
    reports = {f.path for f in mlflow_client.list_artifacts(parent.info.run_id, "reports")}
    assert {"reports/report.json", "reports/report.md", "reports/figures"} <= reports
    assert "latency.speedup_bs1" in parent.data.metrics
    assert any(key.startswith("beir.scifact.modes.full.ndcg_at_10") for key in leap.data.metrics)


def test_champion_loads_from_the_registry_and_embeds_with_early_exit(smoke_run):
    """In a fresh process, as a consumer would: models:/<name>@champion equals the encoder on the model folder, both
    at the policy the promote step calibrated."""
    model_dir = smoke_run["root"] / "runs" / "smoke" / "leap-seed0" / "model"
    script = f"""
import json, numpy as np, mlflow.pyfunc
from leap_core.serve.encoder import EarlyExitEncoder
texts = ["A man is playing a guitar.", "Rain.", "Two children are playing in the snow near a small house."]
out = mlflow.pyfunc.load_model("models:/{MODEL_NAME}@champion").predict(texts)
expected, layers = EarlyExitEncoder.from_pretrained({str(model_dir)!r}).encode(texts, return_exit_layers=True)
got = np.array([row.embedding for row in out])
from pathlib import Path
from sentence_transformers import SentenceTransformer
as_st = SentenceTransformer({str(model_dir)!r}, trust_remote_code=True, device="cpu").encode(texts)
card = next(Path(mlflow.artifacts.download_artifacts("models:/{MODEL_NAME}@champion")).rglob("README.md")).read_text()
print(json.dumps({{"shape": list(got.shape), "max_diff": float(np.abs(got - expected).max()),
                  "exit_layers": [row.exit_layer for row in out], "expected_layers": layers.tolist(),
                  "st_max_diff": float(np.abs(as_st - expected).max()), "card": card}}))
"""
    done = subprocess.run([sys.executable, "-c", script], env=flow_env(smoke_run["root"], smoke_run["uri"]),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [3, 32] and result["max_diff"] < 1e-5
    assert result["exit_layers"] == result["expected_layers"]
    assert all(1 <= layer <= 4 for layer in result["exit_layers"])  # the calibrated policy of a 4-layer student
    # The student folder is a SentenceTransformer that serves the same policy, and the registered model's card
    # states that policy (the calibrated one, not the exit rule) with its numbers, and no absolute path.
    assert result["st_max_diff"] < 1e-5
    from leap_core.evaluation.served_point import served_from_metrics
    from leap_core.serve.model_card import served_policy

    report = json.loads((smoke_run["root"] / "reports" / "smoke" / "report.json").read_text())
    measured = next(a["metrics"] for a in report["arms"] if (a["arm"], a["group"]) == ("leap", "main"))
    policy, card = served_policy(model_dir), result["card"]
    assert "LEAP student" in card and f"It serves the policy **{policy.name}**" in card
    served = served_from_metrics(measured, policy) if "stsb_per_layer" in measured else None
    if served is not None:
        assert f"| STS-B Spearman at the served policy ({policy.name}) | {served['stsb']:.3f} |" in card
    assert f"STS-B Spearman at the served policy ({policy.name})" in card
    assert str(smoke_run["root"]) not in card and "/tmp/" not in card
    settings = json.loads((model_dir / "leap_exit.json").read_text())
    assert settings["calibration"]["name"] and settings.get("policy", {}).get("kind") in ("full", "fixed", None,
                                                                                          "thresholds")
    from leap_core import tracking

    champion = tracking.client(smoke_run["uri"]).get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.tags["leap.decision"] == "champion"


def test_mlflow_models_serve_answers_for_the_champion(smoke_run):
    port = free_port()
    log = smoke_run["root"] / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env=flow_env(smoke_run["root"], smoke_run["uri"]), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", process, 180, log)
        def invoke(rows):
            body = json.dumps({"inputs": rows}).encode()
            return urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}),
                timeout=60)

        with invoke(["A cat sleeps.", "Rain."]) as response:
            assert response.status == 200
            predictions = json.loads(response.read())["predictions"]
        with pytest.raises(urllib.error.HTTPError) as refused:  # a null is refused, never embedded as "None"
            invoke(["A cat sleeps.", None])
        assert refused.value.code == 400 and "NoneType" in refused.value.read().decode()
    finally:
        stop(process)
    assert len(predictions) == 2
    assert all(len(p["embedding"]) == 32 and 1 <= p["exit_layer"] <= 4 for p in predictions)
    # The champion serves the policy calibration chose in the promote step, and the registry says which.
    from leap_core import tracking
    from leap_core.serve.registry import POLICY_TAG

    client = tracking.client(smoke_run["uri"])
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    shown = version.tags[POLICY_TAG]
    assert "speedup_bs1" in shown and "stsb" in shown
    if shown.startswith("fixed:"):
        assert {p["exit_layer"] for p in predictions} == {int(shown.split(",")[0].split(":")[1])}


def s3_flow_env(root: Path, tracking_uri: str, endpoint: str) -> dict:
    """flow_env with S3 everywhere: Metaflow's datastore (its metadata stays local: no metadata service here)."""
    (root / "metaflow-tmp").mkdir(exist_ok=True)
    return {**flow_env(root, tracking_uri), **{key: os.environ[key] for key in os.environ if key.startswith("AWS_")},
            "METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DATASTORE_SYSROOT_S3": "s3://leap-test/metaflow",
            "METAFLOW_S3_ENDPOINT_URL": endpoint,
            # Metaflow's S3 client stages files under ./ by default: a killed step would leave them in the repo
            "METAFLOW_TEMPDIR": str(root / "metaflow-tmp")}


def test_with_s3_for_every_file_a_killed_run_resumes_on_another_disk_to_the_same_model(tmp_path, data_dir,
                                                                                       s3_server):
    """The smoke DAG (its leap arm) with the S3 datastore, --output-dir s3://... and an MLflow server whose
    artifacts go to S3, all against a real S3 server process. Killed in training, it is resumed with an empty
    local disk (another machine): the trainer goes on from its checkpoint in S3, to the model a run never killed
    trains, hash for hash. Every file a step hands the next is an s3:// reference (sha256-checked on download into
    the reader's own cache). (A cache another machine put in S3 is fetched, not rebuilt: tests/test_storage.py.)"""
    profile = smoke_profile(tmp_path / "profile", data_dir, arms={"leap": {}}, lean=True)
    import torch

    from leap_core import storage
    from leap_core.config import load_profile
    from leap_core.pipeline import experiment
    from leap_core.pipeline.handoff import file_ref

    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    with running_mlflow_server(tmp_path / "mlflow", MLFLOW_ARTIFACTS_DESTINATION="s3://leap-test/mlflow") as uri:
        env = s3_flow_env(tmp_path, uri, endpoint)
        args = ["run", "--profile", str(profile), "--output-dir", "s3://leap-test/flow", "--reports-dir",
                str(tmp_path / "reports"), "--max-workers", "2"]
        on_disk = lambda machine: {**env, "LEAP_CACHE_DIR": str(tmp_path / machine)}  # noqa: E731
        killed = run_flow(args, {**on_disk("pod1"), KILL_ENV: "leap:3"})
        assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-6000:]
        resumed = run_flow(["resume"], on_disk("pod2"))
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
        registered = [item["Key"] for item in storage.client().list_objects_v2(
            Bucket="leap-test", Prefix="mlflow/")["Contents"]]
    assert "teacher cache shared at s3://leap-test/flow/teacher-cache/" in killed.stdout + killed.stderr
    log = resumed.stdout + resumed.stderr
    assert "checkpoint of step 2 fetched from s3://leap-test/flow/checkpoints/leap-seed0-" in log
    assert "leap-seed0 at step 2 of 6" in log and "teacher cache miss" not in log  # cloned, not rebuilt
    assert not storage.client().list_objects_v2(Bucket="leap-test", Prefix="flow/checkpoints/").get("Contents")
    assert any(key.endswith("/MLmodel") for key in registered) and any("report.json" in key for key in registered)
    script = """
import json
from metaflow import Flow, namespace
namespace(None)
run = list(Flow("LeapFlow"))[0]  # newest first: the resumed run, then the killed one
refs = [run["extract"].task.data.sentences, run["cache_teacher"].task.data.teacher_cache]
refs += [task.data.model for task in run["train"]] + [run["report"].task.data.report_ref]
print(json.dumps({"uris": [ref["uri"] for ref in refs], "successful": run.successful,
                  "leap": [task.data.model["sha256"] for task in run["train"] if task.data.spec["arm"] == "leap"]}))
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["successful"] and len(found["uris"]) == 4, found
    assert all(uri.startswith("s3://leap-test/flow/") for uri in found["uris"]), found
    # The same arm trained in this process, never killed, on a local disk, with the flow task's one torch thread.
    straight = load_profile(str(profile), {"output_dir": str(tmp_path / "straight")})
    cache = experiment.cache_teacher(straight, experiment.extract(straight), show_progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = experiment.train_arm(straight, "leap", 0, cache).model_dir
    finally:
        torch.set_num_threads(threads)
    assert found["leap"] == [file_ref(model)["sha256"]]
