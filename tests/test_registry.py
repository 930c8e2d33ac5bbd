"""Registry: the deployment gate (pure), promotion by alias against a real MLflow registry, the pyfunc model."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leap_core.serve import registry

from leap_core import tracking
from leap_core.config import RegistryConfig

GATE = RegistryConfig()  # the paper's checklist: exit rate > 0.5, similarity >= 0.94, NN@10 >= 0.80, tol 0.005
# Similarity to final by layer 1..8 (index l-1); layer 6 = 0.93, layer 7 = 0.95.
SIMILARITY = [0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.95, 1.0]


def metrics(**changes):
    base = {"stsb_exited": 0.76, "exit_rate": 0.9, "mean_exit_layer": 6.6, "similarity_to_final": SIMILARITY}
    return {**base, **changes}


# ---------------------------------------------------------------- the gate


def test_target_layer_is_the_rounded_mean_exit_layer():
    assert registry.target_layer(metrics(mean_exit_layer=6.6)) == 7
    assert registry.target_layer(metrics(mean_exit_layer=6.4)) == 6
    assert registry.target_layer(metrics(mean_exit_layer=11.7)) == 8  # never past the last layer


def test_a_model_meeting_the_checklist_passes():
    assert registry.gate_failures(metrics(), GATE) == []


def test_exit_rate_must_be_above_half():
    failures = registry.gate_failures(metrics(exit_rate=0.5), GATE)
    assert failures == ["exit_rate 0.500 is not above 0.5"]
    assert registry.gate_failures(metrics(exit_rate=float("nan")), GATE)  # NaN never passes


def test_similarity_is_read_at_the_target_layer():
    # mean exit layer 6.4 -> layer 6, whose similarity 0.93 is below 0.94
    assert registry.gate_failures(metrics(mean_exit_layer=6.4), GATE) == [
        "similarity to final at layer 6 is 0.930 < 0.94"]


def test_nn10_counts_only_when_measured():
    per_layer = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.79, 0.9]
    assert registry.gate_failures(metrics(nn10_per_layer=per_layer), GATE) == ["NN@10 at layer 7 is 0.790 < 0.8"]
    assert registry.gate_failures(metrics(nn10=0.85), GATE) == []
    assert registry.gate_failures(metrics(nn10=0.5), GATE) == ["NN@10 at layer 7 is 0.500 < 0.8"]


def test_missing_metrics_are_named():
    assert registry.gate_failures({"exit_rate": 0.9}, GATE) == [
        "missing metric(s) ['mean_exit_layer', 'similarity_to_final']"]


def test_decide_against_the_champion_with_the_default_tolerance():
    champion = {"stsb_exited": 0.760}
    assert registry.decide(metrics(), None, GATE).alias == "champion"  # no champion yet
    assert registry.decide(metrics(stsb_exited=0.756), champion, GATE).alias == "champion"  # 0.004 worse: within
    worse = registry.decide(metrics(stsb_exited=0.754), champion, GATE)  # 0.006 worse: beyond 0.005
    assert worse.alias == "challenger" and "below the champion's 0.7600 by more than 0.0050" in worse.reasons[0]


def test_decide_uses_the_ci_half_width_when_known():
    champion = {"stsb_exited": 0.760}
    # CI [0.742, 0.762]: half-width 0.010, so 0.752 (0.008 worse) is within it ...
    assert registry.ci_half_width(metrics(stsb_exited_ci=[0.742, 0.762])) == pytest.approx(0.010)
    assert registry.decide(metrics(stsb_exited=0.752, stsb_exited_ci=[0.742, 0.762]), champion, GATE).alias == "champion"
    assert registry.ci_half_width(metrics(stsb_exited_ci={"estimate": 0.75, "low": None, "high": None})) is None
    # ... and a narrow CI [0.7515, 0.7525] (half-width 0.0005) makes it a challenger.
    assert registry.decide(metrics(stsb_exited=0.752, stsb_exited_ci={"low": 0.7515, "high": 0.7525}),
                           champion, GATE).alias == "challenger"


def test_a_gate_failure_is_a_challenger_even_without_champion():
    decision = registry.decide(metrics(exit_rate=0.1), None, GATE)
    assert decision.alias == "challenger" and decision.reasons == ["exit_rate 0.100 is not above 0.5"]
    assert registry.decide(metrics(stsb_exited=float("nan")), None, GATE).alias == "challenger"


# ---------------------------------------------------------------- promotion in a real registry


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite-backed MLflow tracking store and registry (MLflow's own, no mocks)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow_client = tracking.client(uri)
    run_id = mlflow_client.create_run(tracking.experiment_id("registry-test", uri)).info.run_id
    return uri, mlflow_client, run_id, folder


def new_model(store, name: str, *scores_and_metrics) -> list[str]:
    """Register versions of `name`, one per metrics dict, tagged as registry.register tags them."""
    uri, mlflow_client, run_id, folder = store
    mlflow_client.create_registered_model(name)
    versions = []
    for values in scores_and_metrics:
        version = mlflow_client.create_model_version(
            name, source=str(folder), run_id=run_id,
            tags={registry.GATE_METRICS_TAG: json.dumps(registry.gate_metrics(values))})
        versions.append(str(version.version))
    return versions


def aliases(store, name):
    return {alias: str(v) for alias, v in store[1].get_registered_model(name).aliases.items()}


def test_a_model_failing_the_gate_leaves_the_champion_untouched(store, tmp_path):
    uri = store[0]
    good, failing = new_model(store, "gate", metrics(), metrics(exit_rate=0.2, stsb_exited=0.9))
    assert registry.promote("gate", good, GATE, uri, lock=tmp_path / "lock")["alias"] == "champion"
    outcome = registry.promote("gate", failing, GATE, uri, lock=tmp_path / "lock")
    assert outcome["alias"] == "challenger" and outcome["reasons"] == ["exit_rate 0.200 is not above 0.5"]
    assert aliases(store, "gate") == {"champion": good, "challenger": failing}
    tags = store[1].get_model_version("gate", failing).tags
    assert tags[registry.DECISION_TAG] == "challenger" and "exit_rate" in tags[registry.REASONS_TAG]


def test_promotion_is_idempotent(store, tmp_path):
    uri = store[0]
    first, worse = new_model(store, "idem", metrics(stsb_exited=0.80), metrics(stsb_exited=0.70))
    assert registry.promote("idem", first, GATE, uri, lock=tmp_path / "lock")["changed"] is True
    again = registry.promote("idem", first, GATE, uri, lock=tmp_path / "lock")
    assert again == {"version": first, "alias": "champion", "changed": False, "reasons": [], "previous_champion": first}
    assert registry.promote("idem", worse, GATE, uri, lock=tmp_path / "lock")["changed"] is True
    assert registry.promote("idem", worse, GATE, uri, lock=tmp_path / "lock")["changed"] is False
    assert aliases(store, "idem") == {"champion": first, "challenger": worse}


def test_a_better_model_takes_over_and_drops_its_challenger_alias(store, tmp_path):
    uri = store[0]
    old, new = new_model(store, "takeover", metrics(stsb_exited=0.70), metrics(stsb_exited=0.75, exit_rate=0.3))
    registry.promote("takeover", old, GATE, uri, lock=tmp_path / "lock")
    registry.promote("takeover", new, GATE, uri, lock=tmp_path / "lock")  # fails the gate: challenger
    store[1].set_model_version_tag("takeover", new, registry.GATE_METRICS_TAG,
                                   json.dumps(registry.gate_metrics(metrics(stsb_exited=0.75))))  # re-evaluated
    outcome = registry.promote("takeover", new, GATE, uri, lock=tmp_path / "lock")
    assert outcome["alias"] == "champion" and outcome["previous_champion"] == old
    assert aliases(store, "takeover") == {"champion": new}


class SlowReads:
    """An MlflowClient whose alias reads take a while, so two promotions overlap in the read-compare-set."""

    def __init__(self, inner):
        self.inner = inner

    def get_registered_model(self, name):
        found = self.inner.get_registered_model(name)
        time.sleep(0.4)
        return found

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_two_concurrent_promotions_leave_one_consistent_champion(store, tmp_path):
    uri, mlflow_client = store[0], store[1]
    better, worse = new_model(store, "race", metrics(stsb_exited=0.80), metrics(stsb_exited=0.70))
    outcomes = {}

    def promote(version, delay):
        time.sleep(delay)
        outcomes[version] = registry.promote("race", version, GATE, uri, mlflow_client=SlowReads(mlflow_client),
                                             lock=tmp_path / "race.lock")

    # The worse version starts second: without the lock it would read "no champion" too and write last.
    threads = [threading.Thread(target=promote, args=(better, 0.0)), threading.Thread(target=promote, args=(worse, 0.1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert aliases(store, "race") == {"champion": better, "challenger": worse}
    assert outcomes[better]["alias"] == "champion" and outcomes[worse]["alias"] == "challenger"
    assert outcomes[worse]["previous_champion"] == better  # it compared against the finished first promotion


def test_a_version_without_gate_metrics_is_refused(store, tmp_path):
    uri, mlflow_client, run_id, folder = store
    mlflow_client.create_registered_model("untagged")
    version = mlflow_client.create_model_version("untagged", source=str(folder), run_id=run_id).version
    with pytest.raises(ValueError, match="version 1 has no leap.gate_metrics tag"):
        registry.promote("untagged", version, GATE, uri, lock=tmp_path / "lock")


# ---------------------------------------------------------------- the pyfunc model


def test_the_registered_model_is_code_not_a_pickle_and_a_null_row_is_a_400(store, tmp_path):
    import mlflow.pyfunc
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    from leap_core.models import resolve_model

    uri, mlflow_client, _, _ = store
    run_id = mlflow_client.create_run(tracking.experiment_id("registry-test", uri)).info.run_id
    folder = tmp_path / "encoder"
    shutil.copytree(resolve_model("random-bert:layers=4,hidden=64,heads=2,seed=1"), folder)
    (folder / "leap_exit.json").write_text(json.dumps({"theta": -1.0, "k": 1, "l_min": 2}))  # every row exits at 2
    version = registry.register(folder, metrics(), run_id, "coded", uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/coded/{version}", dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=uri))
    assert not list(local.rglob("*.pkl")) and "serving_model.py" in (local / "MLmodel").read_text()
    client = TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(local))))
    ok = client.post("/invocations", json={"inputs": ["A man is playing a guitar."]})
    assert ok.status_code == 200, ok.text
    # Request params (MLflow's params schema): the mode, theta and whether exit layers come back.
    assert all(name in (local / "MLmodel").read_text() for name in ("params", "mode", "theta", "return_exit_layers"))
    texts = ["A man is playing a guitar.", "Two children play in the snow."]
    answers = {mode: client.post("/invocations", json={"inputs": texts, "params": {"mode": mode}}).json()["predictions"]
               for mode in ("full", "compact")}
    assert [row["exit_layer"] for row in answers["full"]] == [4, 4]
    assert [row["exit_layer"] for row in answers["compact"]] == [2, 2]
    assert not np.allclose(answers["full"][0]["embedding"], answers["compact"][0]["embedding"], atol=1e-4)
    quiet = client.post("/invocations", json={"inputs": texts, "params": {"return_exit_layers": False}}).json()
    assert [row["exit_layer"] for row in quiet["predictions"]] == [None, None]
    for params, said in (({"mode": "sometimes"}, "unknown mode 'sometimes'"), ({"theta": 3.0}, "params.theta")):
        refused = client.post("/invocations", json={"inputs": texts, "params": params})
        assert refused.status_code == 400 and said in refused.text, refused.text
    for bad, said in (([None, "a"], "Expected type str, but got NoneType"), (["a", 1], "Expected type str, but got int"),
                      ({"dataframe_split": {"columns": ["text", "extra"], "data": [["a", "b"]]}}, "'inputs' key")):
        body = bad if isinstance(bad, dict) else {"inputs": bad}
        answer = client.post("/invocations", json=body)
        assert answer.status_code == 400 and said in answer.text, (bad, answer.status_code, answer.text)


def test_texts_from_accepts_the_usual_inputs():
    assert registry.texts_from(pd.DataFrame({"text": ["a", "b"]})) == ["a", "b"]
    assert registry.texts_from(pd.DataFrame({0: ["c"]})) == ["c"]
    assert registry.texts_from(pd.Series(["d"])) == ["d"]
    assert registry.texts_from("e") == ["e"]
    assert registry.texts_from(["f", "g"]) == ["f", "g"]
    with pytest.raises(ValueError, match="expected exactly one column of strings"):
        registry.texts_from(pd.DataFrame({"text": ["a"], "y": ["b"]}))  # never silently dropped
    with pytest.raises(ValueError, match="input row 1 is null"):
        registry.texts_from(pd.Series(["a", None]))
    with pytest.raises(ValueError, match="input row 0 is 1"):
        registry.texts_from([1])


def test_pyfunc_serves_the_encoder_with_its_saved_exit_settings(tmp_path):
    import mlflow.pyfunc

    from leap_core.models import resolve_model

    folder = tmp_path / "encoder"
    shutil.copytree(resolve_model("random-bert:layers=4,hidden=64,heads=2,seed=1"), folder)
    # theta -1 passes every test: every row exits at the first layer the rule may fire, max(l_min, k + 1) = 2.
    (folder / "leap_exit.json").write_text(json.dumps({"theta": -1.0, "k": 1, "l_min": 2}))
    mlflow.pyfunc.save_model(str(tmp_path / "pyfunc"), python_model=str(registry.MODEL_CODE),
                             artifacts={"encoder": str(folder)}, input_example=registry.INPUT_EXAMPLE,
                             pip_requirements=registry.pip_requirements())
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    out = model.predict(["A man is playing a guitar.", "Rain.", "Two children play in the snow."])
    assert [row.exit_layer for row in out] == [2, 2, 2]
    embeddings = np.array([row.embedding for row in out])
    assert embeddings.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    requirements = (tmp_path / "pyfunc" / "requirements.txt").read_text()
    assert "torch==" in requirements and "transformers==" in requirements


def test_register_logs_a_pyfunc_version_once_per_run(store, tmp_path):
    from leap_core.models import resolve_model

    uri, mlflow_client, _, _ = store
    run_id = mlflow_client.create_run(tracking.experiment_id("registry-test", uri)).info.run_id
    folder = resolve_model("random-bert:layers=4,hidden=64,heads=2,seed=1")
    version = registry.register(folder, metrics(), run_id, "registered", uri)
    assert registry.register(folder, metrics(), run_id, "registered", uri) == version  # a resumed promote step
    assert [v.version for v in mlflow_client.search_model_versions("name = 'registered'")] == [int(version)]
    tags = mlflow_client.get_model_version("registered", version).tags
    assert json.loads(tags[registry.GATE_METRICS_TAG]) == {
        "stsb_exited": 0.76, "exit_rate": 0.9, "mean_exit_layer": 6.6, "similarity_to_final": SIMILARITY}


def test_a_retrained_version_takes_over_only_when_it_won_against_the_current_champion(store, tmp_path):
    uri, lock = store[0], tmp_path / "lock"
    first, lost, stale, won = new_model(store, "retrained", *[metrics()] * 4)
    assert registry.promote_if_won("retrained", first, True, [], None, uri, lock)["alias"] == "champion"
    outcome = registry.promote_if_won("retrained", lost, False, ["mean depth: 5.00 vs 5.00"], first, uri, lock)
    assert outcome["alias"] == "challenger" and aliases(store, "retrained") == {"champion": first, "challenger": lost}
    assert store[1].get_model_version("retrained", lost).tags[registry.REASONS_TAG] == "mean depth: 5.00 vs 5.00"
    # A win judged against a champion that has moved since is stale: it is judged again, not promoted.
    outcome = registry.promote_if_won("retrained", stale, True, [], "0", uri, lock)
    assert outcome["alias"] == "challenger" and "moved from version 0 to " + first in outcome["reasons"][0]
    assert registry.promote_if_won("retrained", won, True, [], first, uri, lock)["previous_champion"] == first
    assert aliases(store, "retrained")["champion"] == won
