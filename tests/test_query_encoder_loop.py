"""The query-encoder retrain loop (leap_core.query_encoder.loop): split by hash, train, gate, promote or not."""

import gzip
import json
from pathlib import Path

import pytest

from leap_core.data import DataError
from leap_core.pipeline.retrain import held_out
from leap_core.query_encoder import QueryEncoderConfig, ShallowQueryEncoder, save_query_encoder
from leap_core.query_encoder.loop import LoopPlan, gate_candidate, judge, retrain_query_encoder, split_queries
from leap_core.report.query_loop_report import decision_markdown

DOC_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=0"
OTHER_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=1"
TOPICS = ["vitamin D and bone health", "statins and breast cancer", "sugar and heart disease", "fish oil for the brain",
          "red meat and colon cancer", "green tea and weight", "soy and hormone levels", "fiber and gut bacteria"]
CONFIG = QueryEncoderConfig(steps=4, batch_size=8, eval_every=2, kl_top_k=10)
# Tiny random models time within noise of each other: these tests check the gate's logic, not real speed-ups
# (min_speedup 0 and a wide latency tolerance); infra/query_loop_demo.py times real models.
EASY = dict(holdout_fraction=0.25, min_slice=11, dev_size=10, n_pseudo=20, floor=0.0, min_speedup=0.0,
            latency_tolerance=10.0, warmup=1, iterations=5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny BEIR corpus: 24 documents, title + two sentences each."""
    folder = tmp_path_factory.mktemp("tiny_corpus")
    docs = [json.dumps({"_id": f"d{i}", "title": f"A study of {TOPICS[i % 8]} number {i}",
                        "text": f"We measured {TOPICS[i % 8]} in {10 * i + 5} adults. The effect was small but real."})
            for i in range(24)]
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in docs))
    return folder


def queries(n: int = 80) -> list[str]:
    return [f"what about {TOPICS[i % 8]} in group {i}" for i in range(n)]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> str:
    """A traffic log whose rows all kept their text (LEAP_TRAFFIC_SAMPLE=1), each query served twice."""
    from leap_core.serve.traffic import TrafficLog

    location = str(tmp_path_factory.mktemp("traffic") / "log")
    log = TrafficLog(location, flush_rows=50, sample_text=1.0, seed=0)
    log.record(queries() + queries(), [2] * 160, 2)
    log.flush()
    return location


@pytest.fixture(scope="module")
def first_run(corpus, traffic, tmp_path_factory, one_thread):
    """The first retrain: no champion yet, floors any candidate meets."""
    root = tmp_path_factory.mktemp("loop1")
    return retrain_query_encoder(DOC_MODEL, None, traffic, corpus, root, CONFIG, 1, LoopPlan(**EASY), root / "cache")


def test_the_slice_is_fixed_by_the_text_and_never_trained_on():
    plan = LoopPlan(holdout_fraction=0.25, min_slice=11)
    train, slice_texts = split_queries(queries(), plan)
    assert not set(train) & set(slice_texts) and len(train) + len(slice_texts) == 80
    assert all(held_out(t, 0.25) for t in slice_texts) and (train, slice_texts) == split_queries(queries(), plan)
    with pytest.raises(DataError, match="the query loop needs 30 and 11"):
        split_queries(queries(20), plan)


def test_first_run_promotes_a_candidate_that_clears_the_floor_and_pairs(first_run):
    decision = first_run["decision"]
    assert decision["promoted"] and decision["reasons"] == [] and first_run["champion"] is None
    candidate = first_run["candidate"]
    assert candidate["depth"] == 1 and 0 <= candidate["agreement10"] <= 1 and candidate["latency_ms"] > 0
    assert first_run["split"]["n_train"] + first_run["split"]["n_holdout"] == 80 == first_run["split"]["logged"]
    # Neither the slice nor the dev texts are trained on: 80 - slice - dev real texts, then the pseudo-queries.
    training = first_run["training"]
    assert training["real_texts"] == first_run["split"]["n_train"] - training["dev_texts"]
    assert training["train_texts"] == training["real_texts"] + 20
    assert decision["latency_ratio"] == pytest.approx(1 / candidate["speedup_vs_original"])
    json.dumps(first_run)  # JSON-ready
    assert "candidate promoted" in decision_markdown(first_run, "Run 1")


def test_a_candidate_below_the_floor_is_rejected_against_the_champion(first_run, corpus, traffic, tmp_path,
                                                                      one_thread):
    plan = LoopPlan(**{**EASY, "floor": 1.01})
    second = retrain_query_encoder(DOC_MODEL, first_run["candidate"]["folder"], traffic, corpus, tmp_path, CONFIG, 1,
                                   plan, tmp_path / "cache")
    decision = second["decision"]
    assert not decision["promoted"] and second["champion"]["folder"] == first_run["candidate"]["folder"]
    assert decision["reasons"][0].endswith("(floor 1.01): below the floor")
    assert second["champion"]["agreement10"] == pytest.approx(first_run["candidate"]["agreement10"])  # same slice
    assert "candidate not promoted" in decision_markdown(second, "Run 2")


def test_a_query_encoder_for_another_document_model_is_refused(first_run, corpus, traffic, tmp_path, one_thread):
    foreign = save_query_encoder(ShallowQueryEncoder.from_original(OTHER_MODEL, 1), tmp_path / "foreign", OTHER_MODEL)
    slice_texts = split_queries(queries(), LoopPlan(**EASY))[1]
    with pytest.raises(ValueError, match="trained for the document model"):  # as candidate: never judged
        gate_candidate(DOC_MODEL, None, foreign, slice_texts, corpus, tmp_path / "cache", LoopPlan(**EASY))
    with pytest.raises(ValueError, match="trained for the document model"):  # as champion: refused before training
        retrain_query_encoder(DOC_MODEL, foreign, traffic, corpus, tmp_path, CONFIG, 1, LoopPlan(**EASY),
                              tmp_path / "cache")
    assert not (tmp_path / "candidate").exists()


def measured(agreement: float, ms: float, speedup: float = 2.0) -> dict:
    return {"agreement10": agreement, "latency_ms": ms, "speedup_vs_original": speedup}


def test_the_gate_needs_the_floor_the_champions_agreement_and_its_speed():
    plan = LoopPlan(floor=0.6, agreement_tolerance=0.01, latency_tolerance=0.1)
    champion = measured(0.70, 3.0)
    assert judge(measured(0.695, 3.2), champion, plan)["promoted"]  # within both tolerances
    worse = judge(measured(0.68, 3.0), champion, plan)
    assert worse["reasons"] == ["slice top-10 agreement 0.6800 vs the champion's 0.7000 (tolerance 0.01): "
                                "more than the tolerance below"]
    slower = judge(measured(0.75, 3.5), champion, plan)
    assert not slower["promoted"] and slower["reasons"][0].startswith("batch-1 latency 3.50 ms vs the champion's 3.00")
    assert slower["latency_ratio"] == pytest.approx(3.5 / 3.0)
    assert judge(measured(0.59, 1.0), champion, plan)["reasons"][0].endswith("below the floor")
    assert judge(measured(0.65, 3.0, speedup=1.5), None, plan)["promoted"]  # first run: floor and faster
    not_faster = judge(measured(0.65, 3.0, speedup=0.95), None, plan)
    assert not not_faster["promoted"] and "0.95x the original's speed" in not_faster["reasons"][0]


# ---------------------------------------------------------------- QueryRetrainFlow end to end, tiny models


def run_flow(root: Path, traffic: str, corpus: Path, plan: dict) -> dict:
    """One `python flows/query_retrain_flow.py run` in its own Metaflow and MLflow stores; its report."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("METAFLOW_", "LEAP_"))}
    env.update(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root / "metaflow"), MLFLOW_TRACKING_URI=f"sqlite:///{root}/m.db",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, str(repo / "flows" / "query_retrain_flow.py"), "--no-pylint", "run",
                           "--traffic", traffic, "--model", DOC_MODEL, "--corpus", str(corpus), "--depth", "1",
                           "--plan", json.dumps(plan), "--recipe", json.dumps({"steps": 4, "batch_size": 8,
                                                                               "eval_every": 2, "kl_top_k": 10}),
                           "--output-dir", str(root / "runs"), "--cache-dir", str(root / "cache"),
                           "--reports-dir", str(root / "reports")],
                          cwd=repo, env=env, text=True, capture_output=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    reports = sorted((root / "reports" / "query-retrain").iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((reports[-1] / "query_retrain.json").read_text())


def test_the_flow_registers_a_winner_as_champion_and_a_loser_as_challenger(corpus, traffic, tmp_path):
    from leap_core import tracking
    from leap_core.query_encoder.package import is_router_package
    from leap_core.serve import registry

    first = run_flow(tmp_path, traffic, corpus, EASY)
    assert first["promoted"] and first["promotion"]["alias"] == "champion" and first["champion"] is None
    second = run_flow(tmp_path, traffic, corpus, {**EASY, "floor": 1.01})
    assert second["champion_label"] == "leap-query-encoder version 1"  # fetched from the registry, checked
    assert is_router_package(second["champion"]["folder"])  # judged as registered: the Router package's query route
    assert not second["promoted"] and second["promotion"]["alias"] == "challenger"
    assert "below the floor" in second["promotion"]["reasons"][0]
    mlflow_client = tracking.client(f"sqlite:///{tmp_path}/m.db")
    model = mlflow_client.get_registered_model("leap-query-encoder")
    assert {alias: str(v) for alias, v in model.aliases.items()} == {"champion": "1", "challenger": "2"}
    run = mlflow_client.get_run(second["run"]["mlflow_run_id"])
    assert run.data.tags[registry.DECISION_TAG] == "challenger" and "below the floor" in run.data.tags[
        registry.REASONS_TAG]
