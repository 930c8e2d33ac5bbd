"""RetrainFlow: retrofit the served champion on its own traffic, and promote the candidate only if it wins.

    python flows/retrain_flow.py run --traffic /var/log/leap          # the log LEAP_TRAFFIC_LOG names
    python flows/retrain_flow.py run --traffic s3://bucket/leap-traffic --profile cpu
    python flows/retrain_flow.py argo-workflows create                # weekly on the cluster (@schedule)

start -> extract -> retrofit -> gate -> promote -> end (leap_core.pipeline.retrain has the logic). The champion is
the registry's `champion` of retrain.model_name, or the original model as shipped when there is none yet. A
candidate that loses is registered as `challenger`, with the reasons on the version and in the MLflow run; the
champion is left alone. A monitor alert starts it: `leap monitor --publish-event` with Argo Events (on_monitor_alert),
or `leap monitor ...; [ $? -eq 3 ] && python flows/retrain_flow.py run ...` from cron (3: the alert's status).
MLflow: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db. The shallow query encoder's own loop (issue 30) is
flows/query_retrain_flow.py.
"""

import os

if not any(os.environ.get(name) not in (None, "", "root") for name in ("METAFLOW_USER", "USERNAME", "USER")):
    os.environ["USERNAME"] = "leap"  # Metaflow needs a user name and refuses "root"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from metaflow import FlowSpec, Parameter, current, resources, retry, schedule, step, trigger  # noqa: E402
from metaflow.metaflow_config import ARGO_EVENTS_EVENT  # noqa: E402

from leap_core.serve.monitor import ALERT_EVENT  # noqa: E402
from leap_core.pipeline.handoff import file_ref, local_path, output_location, task_profile  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("leap.retrain")


def on_monitor_alert(flow_class):
    """Where Metaflow is configured for Argo Events (ARGO_EVENTS_EVENT), `leap monitor --publish-event` also starts a
    retrain, on the traffic that alerted; elsewhere the weekly schedule alone (a trigger would fail to deploy there)."""
    if not ARGO_EVENTS_EVENT:
        return flow_class
    return trigger(event={"name": ALERT_EVENT, "parameters": {"traffic": "traffic"}})(flow_class)


@on_monitor_alert
@schedule(weekly=True)
class RetrainFlow(FlowSpec):
    """Retrofit the champion on logged traffic, judge it against the champion, promote only a winner."""

    traffic = Parameter("traffic", default=os.environ.get("LEAP_TRAFFIC_LOG", ""),
                        help="the traffic log: a folder or s3://bucket/prefix ($LEAP_TRAFFIC_LOG)")
    profile = Parameter("profile", default=os.environ.get("LEAP_PROFILE", "cpu"),
                        help="params/<name>.yaml or a path ($LEAP_PROFILE, else cpu); its retrain: section applies")
    data_dir = Parameter("data-dir", default=os.environ.get("LEAP_DATA_DIR", ""),
                         help="data directory, for STS-B dev and test ($LEAP_DATA_DIR, else the profile's)")
    output_dir = Parameter("output-dir", default=os.environ.get("LEAP_OUTPUT_DIR", ""),
                           help="where runs and teacher caches go ($LEAP_OUTPUT_DIR, else the profile's); "
                                "s3://bucket/prefix hands files between steps through S3")
    reports_dir = Parameter("reports-dir", default=os.environ.get("LEAP_REPORTS_DIR", "reports"),
                            help="<this>/retrain/<run id>/retrain.{json,md} ($LEAP_REPORTS_DIR, else reports)")

    def profile_here(self):
        """The profile with this task's own scratch folder when files travel through an S3 output dir."""
        return task_profile(self.settings, self.store)

    @step
    def start(self):
        """Load the profile, fetch the champion (or take the original), open the MLflow run."""
        from leap_core.pipeline import retrain
        from leap_core import tracking
        from leap_core.config import load_profile
        from leap_core.models import resolve_model

        if not self.traffic:
            raise ValueError("--traffic (or LEAP_TRAFFIC_LOG): the traffic log to retrain on")
        overrides, self.store = {}, None
        if self.data_dir:
            overrides["data"] = {"data_dir": self.data_dir}
        if self.output_dir:
            overrides["output_dir"], self.store = output_location(self.output_dir)
        self.settings = load_profile(self.profile, overrides)
        self.original = retrain.original_model(self.settings)
        self.model_name = self.settings.retrain.model_name
        self.tracking_uri = tracking.tracking_uri()
        self.started_at = time.time()
        self.run_dir = Path(self.profile_here().output_dir).resolve() / "retrain" / current.run_id
        found = retrain.champion_folder(self.model_name, self.run_dir / "champion", self.tracking_uri)
        folder, self.champion_version = found if found else (self.original, None)
        self.champion_label = (f"{self.model_name} version {self.champion_version}" if found
                               else f"{self.original} as shipped (no champion registered yet)")
        self.champion = file_ref(resolve_model(str(folder)), self.store)
        self.mlflow_run_id = tracking.start_flow_run(
            f"leap-retrain-{self.model_name}", f"retrain-{current.run_id}", f"{current.flow_name}/{current.run_id}",
            {**retrain.describe(self.settings), "traffic": self.traffic, "champion": self.champion_label},
            artifact_store=self.store and f"{self.store}/mlflow")
        log.info("champion: %s; traffic %s; MLflow run %s", self.champion_label, self.traffic, self.mlflow_run_id)
        self.next(self.extract)

    @retry(times=1)
    @step
    def extract(self):
        """The log's texts, filtered and deduplicated like the corpus, split into training text and a held-out slice."""
        from leap_core.pipeline import retrain

        split = retrain.split_traffic(self.profile_here(), self.traffic, self.run_dir / "traffic")
        self.split = {key: value for key, value in split.items() if key not in ("train", "holdout")}
        self.train_texts, self.holdout = (file_ref(split[key], self.store) for key in ("train", "holdout"))
        self.next(self.retrofit)

    @resources(gpu=1, cpu=4, memory=16000)
    @retry(times=1)
    @step
    def retrofit(self):
        """The champion fine-tuned against the original's frozen outputs on the training text (teacher rows reused)."""
        from leap_core.pipeline import retrain

        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        folder, self.train_seconds = retrain.retrofit_candidate(self.profile_here(), self.original,
                                                                local_path(self.champion), local_path(self.train_texts))
        self.candidate = file_ref(folder, self.store)
        self.next(self.gate)

    @resources(gpu=1, cpu=4, memory=16000)
    @retry(times=1)
    @step
    def gate(self):
        """Champion and candidate at the policies they would serve (chosen on STS-B dev and the slice); the verdict."""
        from leap_core.pipeline import retrain
        from leap_core import tracking

        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        self.result = retrain.gate(self.profile_here(), self.original, local_path(self.champion),
                                   local_path(self.candidate), local_path(self.holdout))
        self.candidate = file_ref(local_path(self.candidate), self.store)  # same content: policy files are settings
        tracking.log_evaluation(self.mlflow_run_id, {role: self.result[role] for role in ("champion", "candidate")})
        self.next(self.promote)

    @step
    def promote(self):
        """Register the candidate; `champion` only if it won against the champion it was judged with (never retried)."""
        from leap_core.serve import registry
        from leap_core import tracking

        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        decision = self.result["decision"]
        metrics = {"policy": self.result["candidate"]["name"],
                   "policy_stsb": self.result["candidate"]["dev"]["stsb-dev"]["quality"]}
        version = registry.register(local_path(self.candidate), metrics, self.mlflow_run_id, self.model_name,
                                    self.tracking_uri)
        self.promotion = registry.promote_if_won(self.model_name, version, decision["win"], decision["reasons"],
                                                 self.champion_version, self.tracking_uri)
        alias = self.promotion["alias"]
        tracking.tag(self.mlflow_run_id, {registry.DECISION_TAG: alias,
                                          registry.REASONS_TAG: "; ".join(self.promotion["reasons"]) or "won",
                                          "leap.promotion": f"{self.model_name} v{version} -> {alias}"})
        self.next(self.end)

    @step
    def end(self):
        """Write reports/retrain/<run id>/retrain.{json,md}, log them to MLflow, close the run."""
        from leap_core.pipeline import retrain
        from leap_core import tracking

        out = retrain.write_summary(Path(self.reports_dir) / "retrain" / current.run_id, {
            **self.result, "traffic": self.traffic, "original": self.original, "split": self.split,
            "train_seconds": self.train_seconds, "champion_label": self.champion_label,
            "promotion": self.promotion, "promoted": self.promotion["alias"] == "champion",
            "run": {"pathspec": f"{current.flow_name}/{current.run_id}", "mlflow_run_id": self.mlflow_run_id},
            "wall_minutes": (time.time() - self.started_at) / 60})
        tracking.log_folder(self.mlflow_run_id, out, "retrain", uri=self.tracking_uri)
        tracking.end_run(self.mlflow_run_id, "FINISHED", uri=self.tracking_uri)
        log.info("%s v%s -> %s; report %s", self.model_name, self.promotion["version"], self.promotion["alias"], out)


if __name__ == "__main__":
    RetrainFlow()
