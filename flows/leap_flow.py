"""LeapFlow: the LEAP experiment as a Metaflow DAG, tracked in MLflow, its best model promoted in the registry.

    python flows/leap_flow.py run                      # the `cpu` profile on ../shared/data
    python flows/leap_flow.py run --profile smoke      # tiny random models, a minute or two (CI)
    python flows/leap_flow.py resume                   # after a failure: finished steps are reused

start -> extract -> cache_teacher -> train (foreach arm x seed) -> evaluate -> join -> retrieval -> latency
-> retrofit -> report -> promote -> end. Steps pass files by URI + sha256 (Parquet, model folders), never arrays:
file:// on a disk every step sees, or s3:// with `--output-dir s3://bucket/prefix` (no shared disk at all).
The model steps ask for a GPU (`--with kubernetes` puts them on GPU nodes; locally they run on
whatever device there is); one failed arm (or BEIR / latency step) is caught and named in the report,
the others go on.
MLflow: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db.
"""

import os

# Metaflow needs a user name and refuses "root"; MLflow must not phone home from offline machines.
if not any(os.environ.get(name) not in (None, "", "root") for name in ("METAFLOW_USER", "USERNAME", "USER")):
    os.environ["USERNAME"] = "leap"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Parallel tasks on this machine: the cores, at most 4 (each task then uses cores // workers torch threads,
# see leap_core.pipeline.handoff.task_threads). `run --max-workers N` or the environment variable overrides it.
os.environ.setdefault("METAFLOW_RUN_MAX_WORKERS", str(min(os.cpu_count() or 1, 4)))

import logging  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from metaflow import (FlowSpec, Parameter, card, catch, current, resources, retry, schedule, step,  # noqa: E402
                      user_step_decorator)

from leap_core.pipeline.handoff import (arm_result, best_result, failure_text, file_ref, local_path,  # noqa: E402
                                        output_location, plan_arms, step_usage, task_profile)

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("leap.flow")

# Test hook: "<arm>:<step>" SIGKILLs the whole run (this process group) at that training step of that arm,
# as a lost machine would; `resume` must then finish the run from the checkpoint.
KILL_ENV = "LEAP_TEST_KILL_TRAINING"


# ---------------------------------------------------------------- helpers the steps call

def arm_params(profile, arm: str, seed: int) -> dict:
    """What an arm's MLflow run records as parameters."""
    import dataclasses

    return {"arm": arm, "seed": seed, "profile": profile.name,
            "objective": dataclasses.asdict(profile.objective_for(arm)),
            "training": dataclasses.asdict(profile.training_for(arm)),
            "exit": dataclasses.asdict(profile.exit), "models": dataclasses.asdict(profile.models)}


def kill_hook(arm: str):
    spec = os.environ.get(KILL_ENV, "")
    target, _, at = spec.partition(":")
    if not spec or target != arm:
        return None

    def kill(step_no: int, terms: dict) -> None:
        if step_no == int(at):
            log.warning("%s: killing the whole run at training step %d", KILL_ENV, step_no)
            os.killpg(os.getpgrp(), signal.SIGKILL)

    return kill


def peak_rss_mb() -> float:
    """This task's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@user_step_decorator
def tracked(step_name, flow, inputs=None, attributes=None):
    """Every step: MLflow at the tracking URI the start step chose for this run; the task's peak memory after."""
    if step_name != "start":
        os.environ["MLFLOW_TRACKING_URI"] = (inputs[0] if inputs else flow).tracking_uri
    yield
    flow.peak_rss_mb = peak_rss_mb()


# ---------------------------------------------------------------- the flow

@schedule(weekly=True)
class LeapFlow(FlowSpec):
    """Distil LEAP and baseline students, evaluate them, report, and promote the best LEAP model."""

    # Defaults are read where the flow is launched or deployed (argo-workflows create bakes them into
    # the schedule), so LEAP_PROFILE=paper at deploy time gives a weekly paper-profile run.
    profile = Parameter("profile", default=os.environ.get("LEAP_PROFILE", "cpu"),
                        help="params/<name>.yaml or a path to a profile ($LEAP_PROFILE, else cpu)")
    data_dir = Parameter("data-dir", default=os.environ.get("LEAP_DATA_DIR", ""),
                         help="data directory ($LEAP_DATA_DIR, else the profile's)")
    output_dir = Parameter("output-dir", default=os.environ.get("LEAP_OUTPUT_DIR", ""),
                           help="where runs and the teacher cache go ($LEAP_OUTPUT_DIR, else the profile's); "
                                "s3://bucket/prefix: steps hand each other every file through S3 (sha256-checked), "
                                "with checkpoints, teacher caches and (with no MLflow server) MLflow artifacts there")
    reports_dir = Parameter("reports-dir", default=os.environ.get("LEAP_REPORTS_DIR", "reports"),
                            help="reports are written to <this>/<profile>/ ($LEAP_REPORTS_DIR, else reports)")

    def profile_here(self):
        """The profile with this task's own scratch folder when files travel through an S3 output dir."""
        return task_profile(self.settings, self.store)

    @tracked
    @step
    def start(self):
        """Load the profile, plan the arms, open the parent MLflow run."""
        from leap_core import tracking
        from leap_core.config import load_profile

        overrides = {}
        if self.data_dir:
            overrides["data"] = {"data_dir": self.data_dir}
        self.store = None
        if self.output_dir:
            overrides["output_dir"], self.store = output_location(self.output_dir)
        if self.store:
            overrides["cache_uri"] = f"{self.store}/teacher-cache"
        self.settings = load_profile(self.profile, overrides)
        self.plan = plan_arms(self.settings)
        self.tracking_uri = tracking.tracking_uri()
        self.run_pathspec = f"{current.flow_name}/{current.run_id}"
        self.started_at = time.time()
        self.mlflow_run_id = tracking.start_flow_run(
            f"leap-{self.settings.name}", self.run_pathspec.replace("/", "-"), self.run_pathspec,
            self.settings.to_dict(), artifact_store=self.store and f"{self.store}/mlflow")
        log.info("profile %s: %d arm runs %s; MLflow %s run %s", self.settings.name, len(self.plan),
                 [f"{p['arm']}-seed{p['seed']}" for p in self.plan], self.tracking_uri, self.mlflow_run_id)
        self.next(self.extract)

    @retry(times=1)
    @tracked
    @step
    def extract(self):
        """Extract and filter the training sentences into Parquet."""
        from leap_core.pipeline import experiment

        self.sentences = file_ref(experiment.extract(self.profile_here()), self.store)
        self.next(self.cache_teacher)

    @retry(times=1)
    @tracked
    @step
    def cache_teacher(self):
        """Teacher embeddings of the sentences, computed once and reused when their content key matches."""
        from leap_core.pipeline import experiment

        self.teacher_cache = file_ref(experiment.cache_teacher(self.profile_here(), local_path(self.sentences),
                                                               show_progress=False), self.store)
        self.next(self.train, foreach="plan")

    @resources(gpu=1, cpu=4, memory=32000)
    @retry(times=1)
    @catch(var="train_failure")
    @tracked
    @step
    def train(self):
        """Train one arm with one seed from the teacher cache (resuming its checkpoint if one exists)."""
        import torch

        from leap_core import tracking
        from leap_core.pipeline import experiment
        from leap_core.pipeline.handoff import task_threads

        torch.set_num_threads(task_threads())
        self.spec = dict(self.input)
        arm, seed = self.spec["arm"], self.spec["seed"]
        self.arm_run_id = tracking.arm_run(self.mlflow_run_id, arm, seed, current.pathspec,
                                           arm_params(self.settings, arm, seed))
        result = experiment.train_arm(self.profile_here(), arm, seed, local_path(self.teacher_cache),
                                      on_step=kill_hook(arm), checkpoint_store=self.store and f"{self.store}/checkpoints")
        tracking.log_training(self.arm_run_id, Path(result.model_dir).parent / "train_log.jsonl")
        self.model = file_ref(result.model_dir, self.store)
        self.train_seconds = result.train_seconds
        self.next(self.evaluate)

    @resources(gpu=1, cpu=4, memory=16000)
    @retry(times=1)
    @catch(var="eval_failure")
    @tracked
    @step
    def evaluate(self):
        """STS-B with bootstrap CIs, exits, layer dynamics, NN@10 and the theta/depth sweep of the trained arm."""
        import torch

        from leap_core import tracking
        from leap_core.pipeline import experiment
        from leap_core.pipeline.handoff import task_threads
        from leap_core.serve.model_card import recipe_facts, write_card

        torch.set_num_threads(task_threads())
        self.spec = dict(self.input)
        self.metrics = None
        if self.train_failure is None:
            self.metrics = experiment.evaluate(self.profile_here(), local_path(self.model), analysis=True, remember=True)
            write_card(local_path(self.model), self.metrics["served"],
                       recipe_facts(self.profile_here(), self.spec["arm"], self.spec["seed"]))
            tracking.tag(self.arm_run_id, {"metaflow.evaluate_pathspec": current.pathspec})
            tracking.log_evaluation(self.arm_run_id, self.metrics)
        self.next(self.join)

    @tracked
    @step
    def join(self, inputs):
        """Gather every arm's metrics and failures; close each arm's MLflow run as finished or failed."""
        from leap_core import tracking

        self.results = [arm_result(task) for task in inputs]
        self.merge_artifacts(inputs, include=["settings", "plan", "tracking_uri", "run_pathspec", "mlflow_run_id",
                                              "sentences", "teacher_cache", "started_at", "store"])
        for result in self.results:
            if result["mlflow_run_id"]:
                if result["error"]:
                    tracking.tag(result["mlflow_run_id"], {"leap.failed_step": result["failed_step"],
                                                           "leap.error": result["error"]})
                tracking.end_run(result["mlflow_run_id"], "FAILED" if result["error"] else "FINISHED")
        failed = [f"{r['arm']}-seed{r['seed']}" for r in self.results if r["error"]]
        if failed:
            log.warning("failed arms: %s (named in the report)", failed)
        self.next(self.retrieval)

    @resources(gpu=1, cpu=4, memory=16000)
    @retry(times=1)
    @catch(var="retrieval_failure")
    @tracked
    @step
    def retrieval(self):
        """BEIR of the best LEAP and baseline seeds, theta calibration on STS-B dev, diagnosis of the source models."""
        from leap_core import tracking
        from leap_core.pipeline import experiment
        from leap_core.pipeline.handoff import BASELINE_ARM, LEAP_ARM

        settings = self.profile_here()
        best = {arm: best_result(self.results, arm) for arm in (LEAP_ARM, BASELINE_ARM)}
        models = {arm: local_path(r["model"]) for arm, r in best.items() if r is not None}
        # Early exit is what LEAP is for; the baseline is the full-depth reference.
        modes = {LEAP_ARM: ("full", "compact"), BASELINE_ARM: ("full",)}
        self.analysis = {"models": {arm: {"seed": r["seed"], "mlflow_run_id": r["mlflow_run_id"]}
                                    for arm, r in best.items() if r is not None},
                         "beir": (experiment.retrieval(settings, {arm: (path, modes[arm]) for arm, path in models.items()})
                                  if settings.evaluation.beir else {}),
                         "calibration": (experiment.calibration(settings, models[LEAP_ARM])
                                         if LEAP_ARM in models else None),
                         "external": (experiment.diagnose_external(settings)
                                      if settings.evaluation.diagnose_external else {})}
        for arm, result in best.items():
            if result is not None and arm in self.analysis["beir"]:
                tracking.log_evaluation(result["mlflow_run_id"], {"beir": self.analysis["beir"][arm]})
        self.next(self.latency)

    @resources(gpu=1, cpu=4, memory=16000)
    @retry(times=1)
    @catch(var="latency_failure")
    @tracked
    @step
    def latency(self):
        """Wall-clock latency of every encoder mode of the best LEAP seed vs sentence-transformers (leap_core.bench.latency)."""
        from leap_core import tracking
        from leap_core.pipeline import experiment
        from leap_core.pipeline.handoff import LEAP_ARM

        best = best_result(self.results, LEAP_ARM)
        self.latency_result = None
        if best is not None:
            self.latency_result = experiment.latency(self.profile_here(), local_path(best["model"]))
            self.latency_result["arm"], self.latency_result["seed"] = best["arm"], best["seed"]
            tracking.log_evaluation(self.mlflow_run_id, {"latency": {key: value for key, value in
                                                                     self.latency_result.items() if key != "table"}})
        self.next(self.retrofit)

    @resources(gpu=1, cpu=4, memory=16000)
    @retry(times=1)
    @catch(var="retrofit_failure")
    @tracked
    @step
    def retrofit(self):
        """Retrofit each of the profile's retrofit_models (a LEAP fine-tune against itself), beside its original."""
        from leap_core import tracking
        from leap_core.identity import model_slug
        from leap_core.retrofit.retrofit import RETROFIT_ARM, retrofit

        self.retrofit_results = {}
        seed = self.settings.seeds[0]
        for model in self.settings.retrofit_models:
            run_id = tracking.arm_run(self.mlflow_run_id, f"{RETROFIT_ARM}-{model_slug(model)}", seed, current.pathspec,
                                      {"model": model, "profile": self.settings.name})
            summary = retrofit(self.profile_here(), model, seed=seed, sentences_path=local_path(self.sentences))
            tracking.log_evaluation(run_id, summary)
            tracking.end_run(run_id, "FINISHED")
            self.retrofit_results[model] = summary
        self.next(self.report)

    @card(type="blank", id="report")
    @tracked
    @step
    def report(self):
        """reports/<profile>/: markdown, figures and JSON beside the paper's numbers; also a card and MLflow artifacts."""
        from metaflow.cards import Image, Markdown

        from leap_core import tracking
        from leap_core.report import pipeline_report as report

        out_dir = Path(self.reports_dir) / self.settings.name
        failures = {name: failure_text(getattr(self, f"{name}_failure", None))
                    for name in ("retrieval", "latency", "retrofit")}
        written = report.write_report(
            out_dir, self.settings, self.results,
            analysis=getattr(self, "analysis", None), latency=getattr(self, "latency_result", None),
            retrofit=getattr(self, "retrofit_results", None),
            run={"pathspec": f"{current.flow_name}/{current.run_id}", "origin_run_id": current.origin_run_id,
                 "mlflow_run_id": self.mlflow_run_id, "tracking_uri": self.tracking_uri,
                 "step_failures": {k: v for k, v in failures.items() if v},
                 "started_at": self.started_at, "report_at": time.time(),
                 "steps": step_usage(current.flow_name, current.run_id, current.origin_run_id)})
        self.report_ref = file_ref(written["json"], self.store)
        current.card["report"].append(Markdown(written["markdown"]))
        for figure in written["figures"]:
            current.card["report"].append(Image(figure.read_bytes(), label=figure.stem))
        tracking.log_folder(self.mlflow_run_id, out_dir, "reports")
        self.next(self.promote)

    @tracked
    @step
    def promote(self):
        """Register the best LEAP model as a pyfunc and give it `champion` or `challenger` (never retried)."""
        from leap_core.pipeline.handoff import LEAP_ARM
        from leap_core.serve import registry

        best = best_result(self.results, LEAP_ARM)
        self.promotion = None
        if best is None:
            log.warning("no successful %r arm: nothing to register", LEAP_ARM)
        else:
            from leap_core.evaluation.pareto import policy_metrics
            from leap_core.pipeline.experiment import served_numbers
            from leap_core.serve.model_card import recipe_facts, write_card

            name = self.settings.registry.model_name
            folder = local_path(best["model"])  # calibrated in place: the registered model serves its policy
            metrics = {**best["metrics"], **policy_metrics(self.profile_here(), str(folder),
                                                           self.settings.registry.policy_max_sts_drop)}
            # The card states the calibrated policy's numbers, read off the evaluation of every layer.
            write_card(folder, served_numbers(self.profile_here(), folder, best["metrics"]),
                       recipe_facts(self.profile_here(), best["arm"], best["seed"]))
            version = registry.register(folder, metrics, best["mlflow_run_id"], name)
            self.promotion = {"model_name": name, "arm": best["arm"], "seed": best["seed"],
                              **registry.promote(name, version, self.settings.registry)}
            log.info("promotion: %s", self.promotion)
        self.next(self.end)

    @tracked
    @step
    def end(self):
        """Close the parent MLflow run, tagged with the failed arms and the promotion."""
        from leap_core import tracking

        failed = [f"{r['arm']}-seed{r['seed']}" for r in self.results if r["error"]]
        # After `resume` the run that finished is a new one; the run that opened the MLflow run is its origin.
        tags = {"leap.failed_arms": ",".join(failed) or "none",
                "metaflow.pathspec": f"{current.flow_name}/{current.run_id}"}
        if current.origin_run_id:
            tags["metaflow.origin_run_id"] = current.origin_run_id
        if self.promotion:
            promotion = self.promotion
            tags["leap.promotion"] = f"{promotion['model_name']} v{promotion['version']} -> {promotion['alias']}"
        tracking.tag(self.mlflow_run_id, tags)
        tracking.end_run(self.mlflow_run_id, "FINISHED")
        log.info("done in %.1f min: %s; report %s", (time.time() - self.started_at) / 60, tags, self.report_ref["uri"])


if __name__ == "__main__":
    LeapFlow()
