"""QueryRetrainFlow: retrain the shallow query encoder on logged queries; promote the candidate only if it wins.

    python flows/query_retrain_flow.py run --traffic /var/log/leap --model all-MiniLM-L6-v2 \\
        --corpus ../shared/data/beir/nfcorpus --depth 2
    python flows/query_retrain_flow.py run ... --plan '{"floor": 0.7}' --recipe '{"steps": 300}'
    python flows/query_retrain_flow.py argo-workflows create           # weekly on the cluster (@schedule)

start -> split -> train -> gate -> promote -> end (leap_core.query_encoder.loop has the logic). The champion is
the registry's `champion` of --model-name, downloaded and checked against the sha256 recorded at registration;
with none yet, the candidate must clear the floor and be faster than the original. The candidate is packaged as a
Router (query route: the candidate; document route: the original, paired by weights hash) and registered; it gets
`champion` only if it won against the champion it was judged with, else `challenger` with the reasons on the
version and in the MLflow run. The symmetric model's loop is flows/retrain_flow.py.
MLflow: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db. --corpus must be readable by every step.
"""

import os

if not any(os.environ.get(name) not in (None, "", "root") for name in ("METAFLOW_USER", "USERNAME", "USER")):
    os.environ["USERNAME"] = "leap"  # Metaflow needs a user name and refuses "root"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from metaflow import FlowSpec, JSONType, Parameter, current, resources, retry, schedule, step  # noqa: E402

from leap_core.pipeline.handoff import file_ref, local_path, output_location  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("leap.query_retrain")


@schedule(weekly=True)
class QueryRetrainFlow(FlowSpec):
    """Train a query encoder on logged queries, judge it against the champion on a held-out slice, promote a winner."""

    traffic = Parameter("traffic", default=os.environ.get("LEAP_TRAFFIC_LOG", ""),
                        help="the traffic log (folder or s3://bucket/prefix), or any query source leap query-encoder "
                             "reads ($LEAP_TRAFFIC_LOG)")
    model = Parameter("model", default=os.environ.get("LEAP_QUERY_MODEL", ""),
                      help="the original (document) model whose index the query encoder searches ($LEAP_QUERY_MODEL)")
    corpus = Parameter("corpus", default=os.environ.get("LEAP_QUERY_CORPUS", ""),
                       help="the index's documents: BEIR corpus.jsonl[.gz] or its folder ($LEAP_QUERY_CORPUS)")
    depth = Parameter("depth", type=int, default=2, help="the candidate's layers")
    model_name = Parameter("model-name", default=os.environ.get("LEAP_QUERY_MODEL_NAME", "leap-query-encoder"),
                           help="the registry name whose champion is judged against and replaced")
    plan = Parameter("plan", type=JSONType, default="{}", help="LoopPlan fields, e.g. '{\"floor\": 0.7}'")
    recipe = Parameter("recipe", type=JSONType, default="{}", help="QueryEncoderConfig fields, e.g. '{\"steps\": 300}'")
    output_dir = Parameter("output-dir", default=os.environ.get("LEAP_OUTPUT_DIR", "runs"),
                           help="where candidates go ($LEAP_OUTPUT_DIR); s3://bucket/prefix hands them between steps")
    cache_dir = Parameter("cache-dir", default="", help="index and pool cache (default $LEAP_CACHE_DIR/query_encoder)")
    reports_dir = Parameter("reports-dir", default=os.environ.get("LEAP_REPORTS_DIR", "reports"),
                            help="<this>/query-retrain/<run id>/query_retrain.{json,md}")

    def settings(self):
        """(LoopPlan, QueryEncoderConfig, cache folder) from the parameters."""
        from leap_core.io import cache_root
        from leap_core.query_encoder.loop import LoopPlan
        from leap_core.query_encoder.train import QueryEncoderConfig

        cache = Path(self.cache_dir) if self.cache_dir else cache_root() / "query_encoder"
        return LoopPlan(**self.plan), QueryEncoderConfig(**self.recipe), cache

    @step
    def start(self):
        """Check the inputs, fetch the champion (none on the first run), open the MLflow run."""
        from dataclasses import asdict

        from leap_core import tracking
        from leap_core.pipeline import retrain

        missing = [name for name in ("traffic", "model", "corpus") if not getattr(self, name)]
        if missing:
            raise ValueError(f"--{' --'.join(missing)}: required (the logged queries, the original, its documents)")
        plan, config, _ = self.settings()  # bad fields fail here, before anything runs
        local, self.store = output_location(self.output_dir)
        self.run_dir = Path(local).resolve() / "query-retrain" / current.run_id
        self.tracking_uri = tracking.tracking_uri()
        self.started_at = time.time()
        found = retrain.champion_folder(self.model_name, self.run_dir / "champion", self.tracking_uri)
        self.champion = file_ref(found[0], self.store) if found else None
        self.champion_version = found[1] if found else None
        self.champion_label = f"{self.model_name} version {found[1]}" if found else "none registered yet"
        self.mlflow_run_id = tracking.start_flow_run(
            f"leap-query-retrain-{self.model_name}", f"query-retrain-{current.run_id}",
            f"{current.flow_name}/{current.run_id}",
            {"plan": asdict(plan), "config": asdict(config), "model": self.model, "corpus": self.corpus,
             "depth": self.depth, "traffic": self.traffic, "champion": self.champion_label},
            artifact_store=self.store and f"{self.store}/mlflow")
        log.info("champion: %s; traffic %s; MLflow run %s", self.champion_label, self.traffic, self.mlflow_run_id)
        self.next(self.split)

    @retry(times=1)
    @step
    def split(self):
        """The logged query texts, split by a hash of each text into training text and the held-out slice."""
        from leap_core.query_encoder.loop import read_logged_queries, split_queries

        logged = read_logged_queries(self.traffic)
        self.train_texts, self.slice_texts = split_queries(logged, self.settings()[0])
        self.split_counts = {"logged": len(logged), "n_train": len(self.train_texts),
                             "n_holdout": len(self.slice_texts)}
        self.next(self.train)

    @resources(cpu=4, memory=16000)
    @retry(times=1)
    @step
    def train(self):
        """The candidate at --depth, trained on the training text (+ pseudo-queries), saved paired with the original."""
        from leap_core.query_encoder.loop import train_candidate

        plan, config, cache = self.settings()
        self.training = train_candidate(self.model, self.train_texts, self.slice_texts, self.corpus, self.depth,
                                        config, plan, cache, self.run_dir / "candidate")
        self.candidate = file_ref(self.training["folder"], self.store)
        self.next(self.gate)

    @resources(cpu=4, memory=16000)
    @retry(times=1)
    @step
    def gate(self):
        """Champion and candidate on the slice: agreement with the original's top-10, batch-1 latency; the verdict."""
        from leap_core import tracking
        from leap_core.query_encoder.loop import gate_candidate

        plan, _, cache = self.settings()
        champion = local_path(self.champion) if self.champion else None
        self.result = gate_candidate(self.model, champion, local_path(self.candidate), self.slice_texts, self.corpus,
                                     cache, plan)
        measured = {role: self.result[role] for role in ("candidate", "champion", "original") if self.result[role]}
        tracking.log_evaluation(self.mlflow_run_id, measured, uri=self.tracking_uri)
        self.next(self.promote)

    @step
    def promote(self):
        """Package and register the candidate; `champion` only if it won against the champion it was judged with."""
        from leap_core import tracking
        from leap_core.query_encoder.package import package_router
        from leap_core.serve import registry

        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        decision, candidate = self.result["decision"], self.result["candidate"]
        package = package_router(local_path(self.candidate), self.run_dir / "package", self.model)  # check_pair again
        metrics = {"policy": f"query encoder, {candidate['depth']} layers", "policy_speedup_bs1":
                   candidate["speedup_vs_original"]}
        version = registry.register(package, metrics, self.mlflow_run_id, self.model_name, self.tracking_uri)
        self.promotion = registry.promote_if_won(self.model_name, version, decision["promoted"], decision["reasons"],
                                                 self.champion_version, self.tracking_uri)
        alias = self.promotion["alias"]
        tracking.tag(self.mlflow_run_id, {registry.DECISION_TAG: alias,
                                          registry.REASONS_TAG: "; ".join(self.promotion["reasons"]) or "won",
                                          "leap.promotion": f"{self.model_name} v{version} -> {alias}"},
                     uri=self.tracking_uri)
        self.next(self.end)

    @step
    def end(self):
        """Write reports/query-retrain/<run id>/query_retrain.{json,md}, log them to MLflow, close the run."""
        from leap_core import tracking
        from leap_core.io import write_json_atomic, write_text_atomic
        from leap_core.report.query_loop_report import decision_markdown

        out = Path(self.reports_dir) / "query-retrain" / current.run_id
        result = {**self.result, "split": self.split_counts, "training": self.training, "promotion": self.promotion,
                  "promoted": self.promotion["alias"] == "champion", "champion_label": self.champion_label,
                  "run": {"pathspec": f"{current.flow_name}/{current.run_id}", "mlflow_run_id": self.mlflow_run_id},
                  "wall_minutes": (time.time() - self.started_at) / 60}
        write_json_atomic(out / "query_retrain.json", result)
        write_text_atomic(out / "query_retrain.md", decision_markdown(result, f"Query-encoder retrain on "
                                                                              f"`{self.traffic}`"))
        tracking.log_folder(self.mlflow_run_id, out, "query-retrain", uri=self.tracking_uri)
        tracking.end_run(self.mlflow_run_id, "FINISHED", uri=self.tracking_uri)
        log.info("%s v%s -> %s; report %s", self.model_name, self.promotion["version"], self.promotion["alias"], out)


if __name__ == "__main__":
    QueryRetrainFlow()
