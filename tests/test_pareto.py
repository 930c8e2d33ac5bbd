"""Exit policies, the Pareto replay, calibration and the cross-depth term."""

import json
import shutil

import numpy as np
import pytest
import torch

from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.model_folder import read_exit_settings
from leap_core.evaluation.pareto import save_policy
from leap_core.evaluation.pareto_choice import choose
from leap_core.evaluation.pareto_compare import cut_line, minus_cut_line
from leap_core.evaluation.pareto_points import DepthModel, EvalSet, Replay, oracle_exits, threshold_path
from leap_core.evaluation.sweep import convergence_exits
from leap_core.train.losses import cross_depth_loss
from leap_core.models import resolve_model
from leap_core.policy import ALWAYS, ExitPolicy, exit_layers

MODEL = "random-bert:layers=4,hidden=64,heads=2,seed=1"
TEXTS = ["a cat sits on the mat", "stocks fell sharply on monday", "short", "a longer sentence about the weather",
         "the committee approved the budget for next year", "dogs bark", "she plays the violin every evening"]


def _layers(n_layers=5, n_rows=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n_layers, n_rows, dim)).astype(np.float32)
    embs = np.cumsum(steps * np.linspace(1.0, 0.2, n_layers)[:, None, None], axis=0)  # later layers move less
    return embs / np.linalg.norm(embs, axis=-1, keepdims=True)


def test_the_threshold_family_reproduces_every_fixed_cut_and_the_rule():
    embs = _layers()
    for depth in range(1, 5):
        thresholds = [None] * 4
        thresholds[depth - 1] = ALWAYS
        policy = ExitPolicy("thresholds", k=1, l_min=1, thresholds=tuple(thresholds))
        fixed = ExitPolicy("fixed", depth=depth)
        np.testing.assert_array_equal(policy.vector(5), fixed.vector(5))
        assert (exit_layers(policy.vector(5), embs, 1) == depth).all()
    for theta in (0.5, 0.8, 0.95):
        rule = ExitPolicy("rule", theta=theta, k=1, l_min=2)
        as_thresholds = ExitPolicy("thresholds", k=1, l_min=1, thresholds=(None, theta, theta, theta))
        np.testing.assert_array_equal(exit_layers(as_thresholds.vector(5), embs, 1), convergence_exits(embs, theta, 1, 2))
        np.testing.assert_array_equal(exit_layers(rule.vector(5), embs, 1), convergence_exits(embs, theta, 1, 2))


def test_the_encoder_serves_each_policy_as_the_replay_says(one_thread):
    encoder = EarlyExitEncoder.from_pretrained(resolve_model(MODEL), l_min=2)
    layer_embs = encoder.layer_embeddings(TEXTS)
    cos = (layer_embs[1:] * layer_embs[:-1]).sum(-1)
    theta = float(np.median(cos[1:3]))  # some rows exit at 3, some later
    fixed = EarlyExitEncoder.from_pretrained(resolve_model(MODEL), policy="fixed:2")
    as_thresholds = EarlyExitEncoder.from_pretrained(
        resolve_model(MODEL), policy={"kind": "thresholds", "thresholds": [None, ALWAYS, None]})
    np.testing.assert_allclose(fixed.encode(TEXTS), as_thresholds.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(fixed.encode(TEXTS), layer_embs[1], atol=1e-5)
    policy = ExitPolicy("thresholds", k=1, l_min=1, thresholds=(None, 0.999999, theta))
    served = EarlyExitEncoder.from_pretrained(resolve_model(MODEL), policy=policy)
    embeddings, layers = served.encode(TEXTS, return_exit_layers=True)
    expected = exit_layers(policy.vector(4), layer_embs, 1)
    np.testing.assert_array_equal(layers, expected)
    assert len(set(expected)) > 1
    np.testing.assert_allclose(embeddings, layer_embs[expected - 1, np.arange(len(TEXTS))], atol=1e-5)


def test_the_oracle_is_fixed_l_min_below_minus_one_and_full_above_one():
    embs = _layers()
    assert (oracle_exits(embs, -1.0, (2, 3, 4)) == 2).all()
    assert (oracle_exits(embs, 1.01, (2, 3, 4)) == 5).all()
    middle = oracle_exits(embs, 0.9, (2, 3, 4))
    final_cos = (embs[middle - 1, np.arange(40)] * embs[-1]).sum(-1)
    assert (final_cos[middle < 5] >= 0.9).all()


def test_the_cross_depth_term_is_zero_only_when_layers_agree():
    same = torch.randn(1, 8, 16).repeat(5, 1, 1)
    assert cross_depth_loss(same, [2, 3, 4, 5]).item() == 0.0
    different = torch.randn(5, 8, 16, requires_grad=True)
    loss = cross_depth_loss(different, [2, 3, 4, 5])
    loss.backward()
    assert loss.item() > 0 and different.grad.abs().sum() > 0
    assert cross_depth_loss(different, [3]).item() == 0.0
    with pytest.raises(ValueError, match="outside"):
        cross_depth_loss(different, [0, 6])


@pytest.mark.parametrize("policy", [
    ExitPolicy("full", k=1, l_min=2), ExitPolicy("fixed", depth=2, k=1, l_min=2),
    ExitPolicy("rule", theta=0.9, k=2, l_min=3), ExitPolicy("thresholds", k=1, l_min=1, thresholds=(ALWAYS, 0.97, None))])
def test_leap_exit_json_round_trips_every_policy_kind(tmp_path, policy):
    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    save_policy(folder, policy, {"name": policy.name})
    encoder = EarlyExitEncoder.from_pretrained(folder)
    assert encoder.policy == policy and read_exit_settings(folder)["calibration"] == {"name": policy.name}
    assert encoder.encode(TEXTS, return_exit_layers=True)[1].max() <= 4
    again = tmp_path / "again"
    shutil.copytree(resolve_model(MODEL), again)
    encoder.save_exit_settings(again)  # the encoder writes what it read
    assert EarlyExitEncoder.from_pretrained(again).policy == policy == ExitPolicy.from_dict(policy.to_dict())


def test_a_bad_policy_in_leap_exit_json_names_the_file_and_field(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    (folder / "leap_exit.json").write_text(json.dumps({"theta": 0.9, "k": 1, "l_min": 2, "policy": {"kind": "magic"}}))
    with pytest.raises(ValueError, match=r"leap_exit.json: policy.kind: input should be 'full', 'fixed', 'rule' or "
                                         r"'thresholds', got 'magic'"):
        read_exit_settings(folder)
    (folder / "leap_exit.json").write_text(json.dumps({"policy": {"kind": "fixed", "depth": 9}}))
    with pytest.raises(ValueError, match="fixed:9: the model has 4 layers"):
        EarlyExitEncoder.from_pretrained(folder)
    with pytest.raises(ValueError, match="layer 1 has no layer"):
        ExitPolicy("thresholds", k=1, thresholds=(0.9, 0.9, None))


def _point(kind, name, dev_quality, dev_depth, **extra):
    sets = {"dev": {"quality": dev_quality, "mean_depth": dev_depth}}
    return {"kind": kind, "name": name, "sets": sets, **extra}


def test_calibrate_returns_a_fixed_cut_when_it_is_the_fastest_within_the_floor():
    dev = [EvalSet("dev", "sts", {}, None)]
    points = [_point("full", "full", 0.80, 6), _point("fixed", "fixed:4", 0.795, 4), _point("fixed", "fixed:3", 0.70, 3),
              _point("rule", "rule", 0.792, 4.5), _point("thresholds", "t", 0.79, 4.0)]
    assert choose(points, dev, 0.01)["name"] == "fixed:4"  # the threshold point ties on depth: the simpler wins
    assert choose(points, dev, 0.0)["name"] == "full"
    assert choose(points, dev, 0.2)["name"] == "fixed:3"
    points.append(_point("rule", "deep-rule", 0.80, 3.5))
    assert choose(points, dev, 0.01)["name"] == "deep-rule"  # adaptive is chosen when it is the faster one
    beir = [EvalSet("dev", "ndcg", {}, None)]
    assert choose(points, beir, 0.0, max_ndcg_drop=0.01)["name"] == "deep-rule"


def test_the_cut_line_interpolates_and_a_point_on_it_differs_by_zero():
    gold = np.arange(30, dtype=np.float64)
    s = EvalSet("dev", "ndcg", {}, None)
    cuts = [{"name": f"fixed:{d}", "sets": {"dev": {"quality": q, "mean_depth": d}}, "_items": {"dev": np.full(30, q)}}
            for d, q in ((2, 0.5), (4, 0.7), (6, 0.8))]
    assert cut_line(cuts, "dev", 3.0) == (0, 1, 0.5)
    point = {"sets": {"dev": {"quality": 0.6, "mean_depth": 3.0}}, "_items": {"dev": np.full(30, 0.6) + 0 * gold}}
    result = minus_cut_line(point, cuts, s, n_resamples=100)
    assert result["diff"] == pytest.approx(0.0) and result["ci_low"] == pytest.approx(0.0, abs=1e-12)
    point["_items"]["dev"] = np.full(30, 0.65)
    point["sets"]["dev"]["quality"] = 0.65
    assert minus_cut_line(point, cuts, s, n_resamples=100)["ci_low"] == pytest.approx(0.05)


def test_the_dev_threshold_path_only_gets_shallower_and_ends_at_a_cut():
    embs = _layers(n_rows=30)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 30, 60), rng.integers(0, 30, 60)
    dev = EvalSet("dev", "sts", {"g": [str(i) for i in range(30)]},
                  lambda e: (e["g"][a] * e["g"][b]).sum(-1), rng.normal(size=60))
    replay = Replay(DepthModel(lambda group, texts: embs, 5, (1, 2, 3, 4)), [dev])
    path = threshold_path(replay, dev)
    depths = [replay.policy_point(p)["sets"]["dev"]["mean_depth"] for p in path]
    assert path and all(p.kind == "thresholds" for p in path)
    assert all(x > y for x, y in zip(depths, depths[1:])) and depths[-1] == 1.0


def test_an_addition_rides_beside_the_calibrated_policy_and_never_moves_it(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from leap_core.evaluation import pareto
    from leap_core.evaluation.pareto import Addition, calibrate_policy

    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    embs, rng = _layers(n_layers=4, n_rows=30), np.random.default_rng(2)
    a, b = rng.integers(0, 30, 60), rng.integers(0, 30, 60)
    dev = EvalSet("stsb-dev", "sts", {"g": [str(i) for i in range(30)]},
                  lambda e: (e["g"][a] * e["g"][b]).sum(-1), rng.normal(size=60))
    monkeypatch.setattr(pareto, "evaluation_sets", lambda *args, **kwargs: [dev])
    loaded = (DepthModel(lambda group, texts: embs, 4, (1, 2, 3)), {"design": "model", "model_path": str(folder)})
    computed = []
    addition = Addition("extra", lambda: computed.append(1) or {"serve": {"route": "r"}}, lambda section: "",
                        lambda section: {"route": section["serve"]})
    profile = SimpleNamespace()
    plain = calibrate_policy(profile, str(folder), 0.05, loaded=loaded)
    result = calibrate_policy(profile, str(folder), 0.05, save=True, loaded=loaded, addition=addition)
    assert computed == [1] and result["extra"] == {"serve": {"route": "r"}} and "extra" not in plain
    assert result["policy"] == plain["policy"]  # the addition never moves the policy
    saved = read_exit_settings(folder)["calibration"]
    assert list(saved) == ["name", "floors", "dev", "route"] and saved["route"] == {"route": "r"}


def test_the_floor_resolves_a_profiles_paths_as_experiment_does(tmp_path):
    from leap_core.pipeline import experiment
    from leap_core import identity
    from leap_core.config import load_profile

    profile = load_profile("smoke", {"output_dir": str(tmp_path / "runs"), "data": {"data_dir": str(tmp_path)}})
    assert identity.cache_dir(profile) == experiment.cache_dir(profile) == tmp_path / "runs" / "cache"
    for relative in ("stsb/dev.tsv", str(tmp_path / "elsewhere.tsv")):
        assert identity.data_path(profile, relative) == experiment.data_path(profile, relative)
    assert identity.model_slug("sentence-transformers/all-MiniLM-L6-v2/") == "all-MiniLM-L6-v2"
    assert identity.model_slug("random-bert:layers=4,seed=1") == "random-bert_layers_4_seed_1"


def test_leap_pareto_writes_the_report_keys(tmp_path, data_dir):
    from leap_core.cli import main

    out = tmp_path / "pareto"
    assert main(["pareto", MODEL, "--profile", "smoke", "--name", "tiny", "--out-dir", str(out), "--data-dir",
                 str(data_dir), "--set", f"output_dir={tmp_path / 'runs'}"]) == 0
    result = json.loads((out / "tiny.json").read_text())
    assert set(result["chosen"]) >= {"policy", "test_stsb", "layer_reduction", "speedup_bs1", "speedup_bs32"}
    assert result["adaptive_minus_cut"] is None or set(result["adaptive_minus_cut"]) >= {"diff", "ci_low", "ci_high"}
    assert (out / "tiny.md").read_text().startswith("# Depth that pays") and (out / "tiny.png").stat().st_size > 0
    kinds = {p["kind"] for p in result["points"]}
    assert kinds == {"full", "fixed", "rule", "thresholds", "oracle"}
    assert main(["calibrate", MODEL, "--profile", "smoke", "--data-dir", str(data_dir), "--max-sts-drop", "0.01",
                 "--set", f"output_dir={tmp_path / 'runs'}", "--out", str(tmp_path / "cal.json")]) == 0
    assert json.loads((tmp_path / "cal.json").read_text())["policy"]["kind"] in ("full", "fixed", "rule", "thresholds")


def test_the_gate_compares_versions_at_the_policies_they_serve():
    from leap_core.config import RegistryConfig
    from leap_core.serve.registry import decide

    gate = RegistryConfig(min_exit_rate=-1, min_similarity_at_exit=-1, min_nn10=0)
    base = {"exit_rate": 1.0, "mean_exit_layer": 2.0, "similarity_to_final": [1.0] * 4}
    champion = {**base, "stsb_exited": 0.70, "policy": "fixed:3", "policy_stsb": 0.80}
    better_at_rule = {**base, "stsb_exited": 0.75, "policy": "full", "policy_stsb": 0.78}
    assert decide(better_at_rule, champion, gate).reasons == [
        "policy_stsb 0.7800 is below the champion's 0.8000 by more than 0.0050"]
    assert decide({**base, "stsb_exited": 0.75}, champion, gate).alias == "champion"  # no policy: the rule decides


def test_the_objective_adds_l_cross_only_when_weighted():
    from leap_core.config import ObjectiveConfig
    from leap_core.train.losses import LeapObjective

    student, teacher = torch.randn(4, 6, 8), torch.nn.functional.normalize(torch.randn(4, 6, 8), dim=-1)
    _, off = LeapObjective(ObjectiveConfig(exit_weight_from=2, late_layers=[3]), 4, 8, 8)(student, teacher, 0.5)
    total, on = LeapObjective(ObjectiveConfig(exit_weight_from=2, late_layers=[3], cross=2.0), 4, 8, 8)(
        student, teacher, 0.5)
    assert "cross" not in off and on["cross"] == pytest.approx(cross_depth_loss(student, [2, 3, 4]).item(), rel=1e-5)
    assert on["total"] == pytest.approx(off["total"] + 2.0 * on["cross"], rel=1e-5)


def test_ndcg10_matches_beirs_per_query_scores_and_drops_identical_ids():
    from leap_core.evaluation.against_original import rank_ndcg10
    from leap_core.evaluation.retrieval import Ndcg10

    rng = np.random.default_rng(0)
    doc_ids = [str(i) for i in range(60)]  # query "3" has a document "3": beir ignores it
    query_ids = ["3", "7", "q2"]
    qrels = {"3": {"3": 1, "10": 1}, "7": {"11": 2, "40": 1}, "q2": {"5": 1}}
    docs = rng.normal(size=(60, 8))
    queries = np.stack([docs[3] + docs[10] * 0.3, docs[11] + docs[2], docs[5] * 0.2 + rng.normal(size=8)])
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    beir = rank_ndcg10(queries, docs, query_ids, doc_ids, qrels)
    ours = Ndcg10(qrels, query_ids, doc_ids)(queries, docs)
    np.testing.assert_allclose(ours, [beir[q] for q in query_ids], atol=1e-12)


def test_bench_times_the_saved_policy_and_compare_calls_reports_ratios(tmp_path, one_thread):
    from leap_core.bench.latency import compare_calls, run_benchmark

    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    save_policy(folder, ExitPolicy("fixed", depth=2, k=1, l_min=2))
    result = run_benchmark(folder, TEXTS, batch_sizes=(1, 4), modes=("full", "policy"), warmup=0, iterations=2,
                           include_sentence_transformers=False, device="cpu")
    assert result["settings"]["modes"] == ["full", "policy"]
    timed = compare_calls({"slow": lambda batch, size: sum(range(20000)), "fast": lambda batch, size: None}, "slow",
                          TEXTS, batch_sizes=(1, 2), warmup=1, iterations=5)
    assert timed["batch_sizes"]["2"]["slow"]["speedup"] == 1.0 and timed["batch_sizes"]["2"]["fast"]["speedup"] > 1.0
