"""LeapFlow: the LEAP experiment as a Metaflow DAG, tracked in MLflow, its best model promoted in the registry.

    python flows/leap_flow.py run                      # the `cpu` profile on ../shared/data
    python flows/leap_flow.py run --profile smoke      # tiny random models, a minute or two (CI)
    python flows/leap_flow.py resume                   # after a failure: finished steps are reused

start -> extract -> cache_teacher -> train (foreach arm x seed) -> evaluate -> join -> latency -> report
-> promote -> end. Steps pass files by URI + sha256 (Parquet, model folders), never arrays. The
train and evaluate steps ask for a GPU (`--with kubernetes` puts them on GPU nodes; locally they run
on whatever device there is); one failed arm is caught and named in the report, the others go on.
MLflow: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db.
"""

import os

# Metaflow needs a user name and refuses "root"; MLflow must not phone home from offline machines.
if not any(os.environ.get(name) not in (None, "", "root") for name in ("METAFLOW_USER", "USERNAME", "USER")):
    os.environ["USERNAME"] = "leap"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlparse  # noqa: E402
from urllib.request import url2pathname  # noqa: E402

from metaflow import FlowSpec, Parameter, card, catch, current, resources, retry, schedule, step  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("leap.flow")

LEAP_ARM = "leap"  # the arm whose best seed is registered
SUMMARY_KEYS = ("stsb_full", "stsb_exited", "exit_rate", "exit_by_layer_7", "mean_exit_layer", "layer_reduction")
# Test hook: "<arm>:<step>" SIGKILLs the whole run (this process group) at that training step of that arm,
# as a lost machine would; `resume` must then finish the run from the checkpoint.
KILL_ENV = "LEAP_TEST_KILL_TRAINING"


# ---------------------------------------------------------------- helpers the steps call

def plan_arms(profile) -> list[dict]:
    """Every (arm, seed) to train: main arms with every seed; ablation and sweep arms once, with the first seed."""
    reduced = set(profile.ablation_arms) | set(profile.sweep_arms)
    plan = [{"arm": arm, "seed": seed, "group": "main"}
            for seed in profile.seeds for arm in profile.arms if arm not in reduced]
    plan += [{"arm": arm, "seed": profile.seeds[0], "group": "ablation"} for arm in profile.ablation_arms]
    plan += [{"arm": arm, "seed": profile.seeds[0], "group": "sweep"} for arm in profile.sweep_arms]
    return plan


def file_ref(path) -> dict:
    """{"uri", "sha256"} of a file or folder: what an artifact holds instead of the data."""
    from leap_core.io import sha256_file, sha256_folder

    path = Path(path).resolve()
    digest = sha256_folder(path) if path.is_dir() else sha256_file(path)
    return {"uri": path.as_uri(), "sha256": digest}


def local_path(ref: dict) -> Path:
    """The local path of a file reference, after checking that its content still has the recorded hash."""
    from leap_core.io import sha256_file, sha256_folder

    parsed = urlparse(ref["uri"])
    if parsed.scheme != "file":
        raise ValueError(f"{ref['uri']}: only file:// URIs are supported (mount shared storage, see infra/README.md)")
    path = Path(url2pathname(parsed.path))
    if not path.exists():
        raise FileNotFoundError(f"{path} (from an earlier step) does not exist on this machine")
    digest = sha256_folder(path) if path.is_dir() else sha256_file(path)
    if digest != ref["sha256"]:
        raise ValueError(f"{path} changed since it was written: sha256 {digest[:12]}, expected {ref['sha256'][:12]}")
    return path


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


def failure_text(failure) -> str | None:
    return None if failure is None else f"{failure.type}: {failure.exception}"


def arm_result(task) -> dict:
    """One arm's outcome from its evaluate task: identity, metrics or the step that failed and why."""
    spec = getattr(task, "spec", None) or task.input
    train_failure = failure_text(getattr(task, "train_failure", None))
    eval_failure = failure_text(getattr(task, "eval_failure", None))
    failed_step = "train" if train_failure else "evaluate" if eval_failure else None
    return {**spec, "status": "failed" if failed_step else "ok", "failed_step": failed_step,
            "error": train_failure or eval_failure, "metrics": getattr(task, "metrics", None),
            "model": getattr(task, "model", None), "mlflow_run_id": getattr(task, "arm_run_id", None),
            "train_seconds": getattr(task, "train_seconds", None)}


def best_result(results: list[dict], arm: str = LEAP_ARM) -> dict | None:
    """The successful seed of `arm` with the highest stsb_exited (None if there is none)."""
    scored = [r for r in results if r["arm"] == arm and r["status"] == "ok"
              and math.isfinite(float(r["metrics"].get("stsb_exited", math.nan)))]
    return max(scored, key=lambda r: r["metrics"]["stsb_exited"], default=None)


def latency_from_evaluation(results: list[dict]) -> dict:
    """The latency table as far as it is measured: the evaluation's exit depth per arm, no wall clock.

    layer_reduction = L / mean exit layer bounds the speedup; leap_core has no wall-clock benchmark yet,
    so no time is reported (this is the call site to replace with one).
    """
    rows = [{"arm": r["arm"], "seed": r["seed"], **{k: r["metrics"].get(k) for k in
                                                     ("mean_exit_layer", "layer_reduction", "exit_rate")}}
            for r in results if r["status"] == "ok"]
    return {"measured": "exit depth from evaluation (no wall-clock benchmark)", "rows": rows}


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def write_summary(out_dir, profile_name: str, run_pathspec: str, results: list[dict], latency: dict) -> tuple[dict, str]:
    """reports/<profile>/summary.json (every arm's metrics, failures, latency) and summary.md (tables)."""
    from leap_core.io import write_json_atomic, write_text_atomic

    out_dir = Path(out_dir)
    failed = [{k: r[k] for k in ("arm", "seed", "group", "failed_step", "error")} for r in results if r["status"] != "ok"]
    summary = {"profile": profile_name, "flow_run": run_pathspec, "arms": results, "failed": failed, "latency": latency}
    lines = [f"# LEAP: profile `{profile_name}`", "", f"Metaflow run `{run_pathspec}`.", "",
             "| arm | seed | group | " + " | ".join(SUMMARY_KEYS) + " |",
             "|---|---|---|" + "---|" * len(SUMMARY_KEYS)]
    for r in results:
        if r["status"] == "ok":
            cells = [_cell(r["metrics"].get(key)) for key in SUMMARY_KEYS]
        else:
            cells = [f"failed ({r['failed_step']})"] + ["-"] * (len(SUMMARY_KEYS) - 1)
        lines.append(f"| {r['arm']} | {r['seed']} | {r['group']} | " + " | ".join(cells) + " |")
    lines += ["", "## Failed arms", ""]
    lines += [f"- `{f['arm']}` seed {f['seed']}: failed in `{f['failed_step']}`: "
              f"{(f['error'] or '').splitlines()[-1] if f['error'] else ''}" for f in failed] or ["none"]
    lines += ["", f"Latency: {latency['measured']}.", ""]
    markdown = "\n".join(lines)
    write_json_atomic(out_dir / "summary.json", summary)
    write_text_atomic(out_dir / "summary.md", markdown)
    return summary, markdown


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
                           help="where runs and the teacher cache go ($LEAP_OUTPUT_DIR, else the profile's)")
    reports_dir = Parameter("reports-dir", default=os.environ.get("LEAP_REPORTS_DIR", "reports"),
                            help="reports are written to <this>/<profile>/ ($LEAP_REPORTS_DIR, else reports)")

    @step
    def start(self):
        """Load the profile, plan the arms, open the parent MLflow run."""
        from leap_core import tracking
        from leap_core.config import load_profile

        overrides = {}
        if self.data_dir:
            overrides["data"] = {"data_dir": self.data_dir}
        if self.output_dir:
            overrides["output_dir"] = self.output_dir
        self.settings = load_profile(self.profile, overrides)
        self.plan = plan_arms(self.settings)
        self.tracking_uri = tracking.tracking_uri()
        self.run_pathspec = f"{current.flow_name}/{current.run_id}"
        self.mlflow_run_id = tracking.start_flow_run(f"leap-{self.settings.name}", self.run_pathspec.replace("/", "-"),
                                                     self.run_pathspec, self.settings.to_dict(), self.tracking_uri)
        log.info("profile %s: %d arm runs %s; MLflow %s run %s", self.settings.name, len(self.plan),
                 [f"{p['arm']}-seed{p['seed']}" for p in self.plan], self.tracking_uri, self.mlflow_run_id)
        self.next(self.extract)

    @retry(times=1)
    @step
    def extract(self):
        """Extract and filter the training sentences into Parquet."""
        from leap_core import experiment

        self.sentences = file_ref(experiment.extract(self.settings))
        self.next(self.cache_teacher)

    @retry(times=1)
    @step
    def cache_teacher(self):
        """Teacher embeddings of the sentences, computed once and reused when their content key matches."""
        from leap_core import experiment

        self.teacher_cache = file_ref(experiment.cache_teacher(self.settings, local_path(self.sentences),
                                                               show_progress=False))
        self.next(self.train, foreach="plan")

    @resources(gpu=1, cpu=4, memory=32000)
    @retry(times=1)
    @catch(var="train_failure")
    @step
    def train(self):
        """Train one arm with one seed from the teacher cache (resuming its checkpoint if one exists)."""
        from leap_core import experiment, tracking

        self.spec = dict(self.input)
        arm, seed = self.spec["arm"], self.spec["seed"]
        self.arm_run_id = tracking.arm_run(self.mlflow_run_id, arm, seed, current.pathspec,
                                           arm_params(self.settings, arm, seed), self.tracking_uri)
        result = experiment.train_arm(self.settings, arm, seed, local_path(self.teacher_cache), on_step=kill_hook(arm))
        tracking.log_training(self.arm_run_id, Path(result.model_dir).parent / "train_log.jsonl", self.tracking_uri)
        self.model = file_ref(result.model_dir)
        self.train_seconds = result.train_seconds
        self.next(self.evaluate)

    @resources(gpu=1, cpu=4, memory=16000)
    @retry(times=1)
    @catch(var="eval_failure")
    @step
    def evaluate(self):
        """STS-B (full depth and exited), exit statistics and per-layer similarity of the trained arm."""
        from leap_core import experiment, tracking

        self.spec = dict(self.input)
        self.metrics = None
        if self.train_failure is None:
            self.metrics = experiment.evaluate_model(self.settings, local_path(self.model))
            tracking.tag(self.arm_run_id, {"metaflow.evaluate_pathspec": current.pathspec}, self.tracking_uri)
            tracking.log_evaluation(self.arm_run_id, self.metrics, self.tracking_uri)
        self.next(self.join)

    @step
    def join(self, inputs):
        """Gather every arm's metrics and failures; close each arm's MLflow run as finished or failed."""
        from leap_core import tracking

        self.results = [arm_result(task) for task in inputs]
        self.merge_artifacts(inputs, include=["settings", "plan", "tracking_uri", "run_pathspec", "mlflow_run_id",
                                              "sentences", "teacher_cache"])
        for result in self.results:
            if result["mlflow_run_id"]:
                if result["error"]:
                    tracking.tag(result["mlflow_run_id"], {"leap.failed_step": result["failed_step"],
                                                           "leap.error": result["error"]}, self.tracking_uri)
                tracking.end_run(result["mlflow_run_id"], "FAILED" if result["error"] else "FINISHED", self.tracking_uri)
        failed = [f"{r['arm']}-seed{r['seed']}" for r in self.results if r["error"]]
        if failed:
            log.warning("failed arms: %s (named in the report)", failed)
        self.next(self.latency)

    @step
    def latency(self):
        """Latency per arm: the exit depth the evaluation measured (no wall-clock benchmark is run yet)."""
        self.latency_table = latency_from_evaluation(self.results)
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """reports/<profile>/summary.json + summary.md from the joined metrics, as a card and MLflow artifacts."""
        from metaflow.cards import Markdown

        from leap_core import tracking

        out_dir = Path(self.reports_dir) / self.settings.name
        self.summary, markdown = write_summary(out_dir, self.settings.name, f"{current.flow_name}/{current.run_id}",
                                               self.results, self.latency_table)
        self.report_ref = file_ref(out_dir / "summary.json")
        current.card["report"].append(Markdown(markdown))
        tracking.log_folder(self.mlflow_run_id, out_dir, "reports", self.tracking_uri)
        self.next(self.promote)

    @step
    def promote(self):
        """Register the best LEAP model as a pyfunc and give it `champion` or `challenger` (never retried)."""
        from leap_core import registry

        best = best_result(self.results)
        self.promotion = None
        if best is None:
            log.warning("no successful %r arm: nothing to register", LEAP_ARM)
        else:
            name = self.settings.registry.model_name
            version = registry.register(local_path(best["model"]), best["metrics"], best["mlflow_run_id"], name,
                                        self.tracking_uri)
            self.promotion = {"model_name": name, "arm": best["arm"], "seed": best["seed"],
                              **registry.promote(name, version, self.settings.registry, self.tracking_uri)}
            log.info("promotion: %s", self.promotion)
        self.next(self.end)

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
        tracking.tag(self.mlflow_run_id, tags, self.tracking_uri)
        tracking.end_run(self.mlflow_run_id, "FINISHED", self.tracking_uri)
        log.info("done: %s; report %s", tags, self.report_ref["uri"])


if __name__ == "__main__":
    LeapFlow()
