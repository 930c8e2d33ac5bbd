"""Retraining on logged traffic: the split, the verdict, and RetrainFlow end to end (a win promoted, a loss not)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from leap_core.serve import registry

from leap_core.pipeline import retrain

from leap_core import tracking
from leap_core.config import RetrainConfig, load_profile
from leap_core.data import DataError
from leap_core.data.corpus import read_sentences_parquet
from leap_core.policy import ExitPolicy
from leap_core.serve.traffic import TrafficLog

REPO = Path(__file__).resolve().parents[1]
FLOW = REPO / "flows" / "retrain_flow.py"
STS_PAIRS = 150


def logged(location: Path, texts: list[str]) -> str:
    log = TrafficLog(str(location), flush_rows=100, sample_text=1.0, seed=0)
    log.record(texts, [2] * len(texts), 4)
    log.flush()
    return str(location)


def corpus_texts(data_dir: Path, n: int, offset: int = 5000) -> list[str]:
    from leap_core.data.corpus import load_corpus

    return load_corpus("nli_sentences", data_dir)[offset:offset + n]


def test_the_held_out_slice_is_fixed_by_the_text_not_by_the_run():
    texts = [f"A sentence about item number {i}." for i in range(4000)]
    share = sum(retrain.held_out(t, 0.1) for t in texts) / len(texts)
    assert 0.08 < share < 0.12
    assert all(retrain.held_out(t, 0.1) == retrain.held_out(t.upper() + "!", 0.1) for t in texts[:200])  # the key
    assert [retrain.held_out(t, 0.1) for t in texts[:50]] == [retrain.held_out(t, 0.1) for t in texts[:50]]


def test_split_traffic_cleans_dedups_holds_out_and_keeps_sts_text_out(tmp_path, data_dir):
    profile = load_profile("smoke", {"data": {"data_dir": str(data_dir)}, "output_dir": str(tmp_path / "runs")})
    sts_sentence = (data_dir / "stsb" / "dev.tsv").read_text().splitlines()[1].split("\t")[1]
    texts = corpus_texts(data_dir, 300)
    location = logged(tmp_path / "log", texts + texts[:50] + ["too short", sts_sentence, "  " + texts[0] + "  "])
    textless = TrafficLog(location, sample_text=0.0)  # rows logged without their text
    textless.record(["never kept"] * 20, [1] * 20, 4)
    textless.flush()
    split = retrain.split_traffic(profile, location, tmp_path / "split")
    train, held = read_sentences_parquet(split["train"]), read_sentences_parquet(split["holdout"])
    assert not set(train) & set(held) and len(set(train)) == len(train)
    assert sts_sentence not in train + held and "too short" not in train + held
    assert split["logged"] == 353 and split["distinct"] == len(set(texts))
    assert all(retrain.held_out(t, profile.retrain.holdout_fraction) for t in held)
    assert len(train) == min(profile.retrain.max_sentences, split["distinct"] - len(held))
    with pytest.raises(DataError, match="held out; retrain needs a slice of 20"):
        retrain.split_traffic(profile, logged(tmp_path / "small", texts[:30]), tmp_path / "split-small")


def point(nn10: float, depth: float, stsb: float, meets: bool = True) -> dict:
    return {"meets_floors": meets, "dev": {retrain.SLICE: {"quality": nn10, "mean_depth": depth},
                                           "stsb-dev": {"quality": stsb, "mean_depth": depth}}}


def test_the_verdict_needs_floors_quality_and_fewer_layers():
    settings = RetrainConfig(quality_tolerance=0.005, min_depth_gain=0.02)
    champion = point(0.90, 5.0, 0.85)
    assert retrain.judge(point(0.85, 4.0, 0.847, True), champion, settings)["win"]  # 20% fewer layers, as good
    slower = retrain.judge(point(0.95, 4.95, 0.86), champion, settings)
    assert not slower["win"] and slower["reasons"] == [
        "mean depth on the slice: 4.95 vs 5.00 layers (+1.0% saved, 2% needed)"]
    worse = retrain.judge(point(0.85, 3.0, 0.84), champion, settings)
    assert worse["reasons"] == ["STS-B dev Spearman: 0.8400 vs the champion's 0.8500 (more than 0.005 below)"]
    off_floor = retrain.judge(point(0.70, 3.0, 0.85, meets=False), champion, settings)
    assert not off_floor["win"] and "no policy of the candidate meets the floors" in off_floor["reasons"][0]


# ---------------------------------------------------------------- RetrainFlow end to end, tiny models


def retrain_profile(folder: Path, data_dir: Path, **settings) -> Path:
    """params/smoke.yaml with small STS-B dev and test files and the given retrain settings (named smoke.yaml)."""
    values = yaml.safe_load((REPO / "params" / "smoke.yaml").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dev", "test"):
        lines = (data_dir / "stsb" / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[:STS_PAIRS + 1]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    values["data"].update(data_dir=str(data_dir), sts_dev=str(folder / "dev.tsv"), sts_eval=str(folder / "test.tsv"),
                          sts_eval_genres=None)
    values["retrain"].update(settings)
    (folder / "smoke.yaml").write_text(yaml.safe_dump(values))
    return folder / "smoke.yaml"


def run_retrain(root: Path, profile: Path, traffic: str, uri: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("METAFLOW_", "LEAP_"))}
    # A registry URI left over from elsewhere: every registry call goes to the tracking store the flow names.
    env.update(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root / "metaflow"), MLFLOW_TRACKING_URI=uri,
               MLFLOW_REGISTRY_URI=f"sqlite:///{root / 'elsewhere.db'}", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, str(FLOW), "--no-pylint", "run", "--traffic", traffic, "--profile",
                           str(profile), "--output-dir", str(root / "runs"), "--reports-dir", str(root / "reports")],
                          cwd=REPO, env=env, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return done


@pytest.fixture(scope="module")
def two_retrains(tmp_path_factory, data_dir):
    """Retrain 1, in process with the library calls RetrainFlow's steps make, against the original as shipped and
    under floors any candidate meets: it wins and becomes champion. Retrain 2 is RetrainFlow itself: it fetches
    that champion from the registry and must save 99% of its layers to win: it loses and the champion stays."""
    root = tmp_path_factory.mktemp("retrain")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    traffic = logged(root / "log", corpus_texts(data_dir, 400))
    easy = load_profile(str(retrain_profile(root / "easy", data_dir, min_agreement=0.0, min_depth_gain=-1.0,
                                            quality_tolerance=1.0)), {"output_dir": str(root / "runs")})
    original = retrain.original_model(easy)
    split = retrain.split_traffic(easy, traffic, root / "split")
    candidate, seconds = retrain.retrofit_candidate(easy, original, original, split["train"])
    first = retrain.gate(easy, original, original, candidate, split["holdout"])
    run_id = tracking.start_flow_run("retrain-test", "retrain-1", "in-process", {}, uri)
    version = registry.register(candidate, {"policy": first["candidate"]["name"]}, run_id, easy.retrain.model_name, uri)
    first["promotion"] = registry.promote_if_won(easy.retrain.model_name, version, first["decision"]["win"],
                                                 first["decision"]["reasons"], None, uri, root / "lock")
    retrain.write_summary(root / "reports" / "retrain" / "0-in-process", {
        **first, "traffic": traffic, "original": original, "split": {k: v for k, v in split.items()
                                                                      if k not in ("train", "holdout")},
        "train_seconds": seconds, "champion_label": f"{original} as shipped",
        "promoted": first["promotion"]["alias"] == "champion"})
    hard = retrain_profile(root / "hard", data_dir, min_depth_gain=0.99)
    second = run_retrain(root, hard, traffic, uri)
    reports = sorted((root / "reports" / "retrain").iterdir())
    results = [json.loads((folder / "retrain.json").read_text()) for folder in reports]
    return {"root": root, "uri": uri, "runs": [second], "results": results}


def test_a_winning_candidate_becomes_champion_and_serves_what_it_was_judged_at(two_retrains):
    first = two_retrains["results"][0]
    assert first["promoted"] and first["promotion"] == {"version": "1", "alias": "champion", "reasons": [],
                                                        "previous_champion": None}
    assert first["decision"]["win"] and "as shipped" in first["champion_label"]
    candidate = Path(first["candidate"]["model"])
    served = json.loads((candidate / "leap_exit.json").read_text())
    assert ExitPolicy.from_dict(served["policy"]).name == first["candidate"]["name"]
    reference = json.loads((candidate / "leap_reference.json").read_text())  # what `leap monitor` compares with
    assert reference["source"] == "retrain held-out slice" and reference["n"] == first["split"]["n_holdout"]


def test_a_losing_candidate_leaves_the_champion_alone_with_its_reasons_in_mlflow(two_retrains):
    second = two_retrains["results"][1]
    assert second["champion_label"].endswith("version 1")  # the registry's champion, downloaded and checked
    assert not second["promoted"] and second["promotion"]["alias"] == "challenger"
    assert any(reason.startswith("mean depth on the slice") for reason in second["decision"]["reasons"])
    mlflow_client = tracking.client(two_retrains["uri"])
    model = mlflow_client.get_registered_model("leap-retrofit-smoke")
    assert {alias: str(v) for alias, v in model.aliases.items()} == {"champion": "1", "challenger": "2"}
    run = mlflow_client.get_run(second["run"]["mlflow_run_id"])
    assert run.data.tags[registry.DECISION_TAG] == "challenger"
    assert "mean depth on the slice" in run.data.tags[registry.REASONS_TAG]
    assert "teacher cache hit" in two_retrains["runs"][0].stdout + two_retrains["runs"][0].stderr  # same text


def test_loop_report_puts_the_retrains_and_the_drift_check_in_one_report(two_retrains, tmp_path, capsys):
    from leap_core.cli import main

    root = two_retrains["root"]
    runs = [str(folder / "retrain.json") for folder in sorted((root / "reports" / "retrain").iterdir())]
    candidate = two_retrains["results"][0]["candidate"]["model"]
    try:  # the traffic the candidate was retrained on, logged by the original: alert or not, a drift check
        main(["monitor", candidate, "--traffic", str(root / "log"), "--out", str(tmp_path / "drift.json")])
    except SystemExit as alerted:
        assert alerted.code == 3  # monitor's alert status (errors are 2)
    out = tmp_path / "loop.md"
    main(["loop-report", "--retrain", runs[0], "--retrain", runs[1], "--monitor", str(tmp_path / "drift.json"),
          "--out", str(out)])
    text = out.read_text()
    assert "## 1. Retrain on" in text and "## 2. Drift checks" in text and "## 3. Retrain on" in text
    assert "candidate promoted" in text and "candidate not promoted" in text and "mean exit layer" in text
    assert json.loads(out.with_suffix(".json").read_text())["retrains"][1]["promotion"]["alias"] == "challenger"
    (tmp_path / "bad.json").write_text("{")
    assert main(["loop-report", "--retrain", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.md")]) == 2
    assert "bad.json: not valid JSON" in capsys.readouterr().err and not (tmp_path / "x.md").exists()
