"""Quality against mean depth for every operating point a user could deploy, and the adaptive-minus-cut test.

The entry points that start from a profile and a model: `leap pareto` (pareto, write_pareto), `leap calibrate`
(calibrate_policy, save_policy) and the flow's promote step (policy_metrics). The work is in three modules:

    pareto_points.py   the points: a model as a DepthModel, the sets, the Replay, the policy grids, threshold_path
    pareto_choice.py   the floors on dev and the cheapest deployable point within them (choose)
    pareto_compare.py  the fixed-cut line and each adaptive point's paired-CI difference from it

A module above evaluation adds its own section through an Addition (query_encoder.points: the asymmetric points),
computed after the symmetric choice and apart from it, so it never moves the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from leap_core import identity
from leap_core.config import ENCODE_BATCH_SIZE
from leap_core.data import read_sts
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.evaluation.against_original import Embedder
from leap_core.evaluation.diagnose import probe_sentences
from leap_core.evaluation.pareto_choice import choose, deployable
from leap_core.evaluation.pareto_compare import (MIN_EFFECT, best_adaptive, compare_with_cuts, mark_dev_front,
                                                 minus_cut_line)
from leap_core.evaluation.pareto_points import (DepthModel, EvalSet, Replay, beir_sets, candidate_policies,
                                                replay_points, sts_sets)
from leap_core.io import note_in_manifest, plain_name, write_report_files, writer_lock
from leap_core.model_folder import (EXIT_SETTINGS_FILE, has_branch, load_heads, model_fingerprint, read_branch,
                                    write_exit_settings)
from leap_core.models import original_of, resolve_model
from leap_core.report.pareto_report import plot, report_markdown
from leap_core.policy import ExitPolicy
from leap_core.timing import compare_calls


@dataclass(frozen=True)
class Addition:
    """A section that a module above evaluation adds to a calibrate or pareto result, under `key`.

    compute() runs once the symmetric policy is chosen (under calibrate --save's lock), markdown(section) is its
    part of the pareto report (from the JSON), and saved(section) what calibrate --save records of it in
    leap_exit.json's calibration, beside the policy it never moves.
    """

    key: str
    compute: Callable[[], dict[str, Any]]
    markdown: Callable[[dict[str, Any] | None], str]
    saved: Callable[[dict[str, Any]], dict[str, Any]]


def depth_model(profile: Any, model: str, batch_size: int = ENCODE_BATCH_SIZE) -> tuple[DepthModel, dict[str, Any]]:
    """A model folder / hub id as a DepthModel (an exit branch: its exits with heads, then its original), and a
    description of it. Pools are cached on disk by weights hash, so a second run (or calibrate) re-encodes nothing."""
    folder = resolve_model(str(model))
    cache = identity.cache_dir(profile) / "pools"
    embedder = lambda path, heads=None: Embedder(EarlyExitEncoder.from_pretrained(str(path)), batch_size,  # noqa: E731
                                                 heads, cache_dir=cache, fingerprint=model_fingerprint(path))
    if not has_branch(folder):
        own = embedder(folder)
        n = own.encoder.num_layers
        return DepthModel(own.layers, n, tuple(range(1, n))), {"design": "model", "model_path": str(folder)}
    record, original_folder = read_branch(folder), original_of(folder)
    branch, original = embedder(folder, load_heads(folder)), embedder(original_folder)
    n, depth = original.encoder.num_layers, branch.encoder.num_layers

    def layers(group: str, texts: list[str]) -> np.ndarray:
        return np.concatenate([branch.layers(group, texts), original.layers(group, texts)[depth:]])

    exits = tuple(record["exit_layers"])
    described = {"design": "exit_branch", "model_path": str(folder), "original": record["original"],
                 "original_path": str(original_folder)}
    return DepthModel(layers, n, exits, comparable_from=min(exits), separate_full=True), described


def evaluation_sets(profile: Any, dev_only: bool = False, beir: bool = True) -> list[EvalSet]:
    """STS-B dev, then (unless dev_only) STS-B test and its genres, and each BEIR set's dev (and test) half."""
    data = profile.data
    sets = sts_sets("stsb-dev", read_sts(identity.data_path(profile, data.sts_dev)))
    if not dev_only:
        test = data.sts_eval_genres or data.sts_eval
        sets += sts_sets("stsb-test", read_sts(identity.data_path(profile, test)), by_genre=True)
    if beir:
        for folder in profile.evaluation.beir:
            halves = beir_sets(identity.data_path(profile, folder), profile.evaluation.max_beir_docs or None,
                               profile.evaluation.max_beir_queries or None)
            sets += halves[:1] if dev_only else halves
    return sets


def _public(point: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in point.items() if not key.startswith("_")}


def pareto(profile: Any, model: str, n_resamples: int | None = None, max_sts_drop: float = 0.01,
           max_ndcg_drop: float | None = 0.03) -> tuple[dict[str, Any], list[dict[str, Any]], list[EvalSet]]:
    """Every point on every set, the adaptive-minus-cut comparisons (chosen on dev) and the calibrated choice.

    Returns (JSON-ready result, points with their per-item values, sets) so that callers can time the choice.
    """
    n_resamples = n_resamples or profile.evaluation.bootstrap_resamples
    model_, described = depth_model(profile, model)
    sets = evaluation_sets(profile)
    dev = sets[0]
    points = replay_points(Replay(model_, sets), dev)
    cuts = [p for p in points if p["kind"] in ("fixed", "full")]
    full = next(p for p in points if p["kind"] == "full")
    for p in points:
        for s in sets:
            p["sets"][s.name]["minus_cut_line"] = minus_cut_line(p, cuts, s)["diff"]
        p["deployable"] = deployable(p, described)
    mark_dev_front(points, "stsb-dev")
    dev_sets = [s for s in sets if s.name == "stsb-dev" or s.name.endswith("-dev")]
    dev_names = {s.name for s in dev_sets}
    chosen = choose([p for p in points if p["deployable"]], dev_sets, max_sts_drop, max_ndcg_drop)
    adaptive = compare_with_cuts(best_adaptive(points, cuts, dev, ("rule", "thresholds"), model_.n_layers), cuts,
                                 full, sets, n_resamples)
    oracle = compare_with_cuts(best_adaptive(points, cuts, dev, ("oracle",), model_.n_layers), cuts, full, sets,
                               n_resamples)
    headline = adaptive["minus_cut"]["stsb-test"] if adaptive else None
    result = {
        "model": str(model), **described, "n_layers": model_.n_layers, "exits": list(model_.exits),
        "separate_full": model_.separate_full,
        "evaluation": {"profile": profile.name, "max_beir_docs": profile.evaluation.max_beir_docs or None,
                       "max_beir_queries": profile.evaluation.max_beir_queries or None, "n_resamples": n_resamples},
        "sets": {s.name: {"kind": s.kind, "n_items": len(full["_items"][s.name])} for s in sets},
        "floors": {"max_sts_drop": max_sts_drop, "max_ndcg_drop": max_ndcg_drop, "on": [s.name for s in dev_sets]},
        "chosen": {"policy": chosen["policy"], "name": chosen["name"], "kind": chosen["kind"],
                   "test_stsb": chosen["sets"]["stsb-test"]["quality"],
                   "layer_reduction": chosen["sets"]["stsb-test"]["layer_reduction"],
                   "sets": chosen["sets"]},
        "best_adaptive": adaptive, "oracle": oracle,
        "adaptive_minus_cut": ({"diff": headline["diff"], "ci_low": headline["ci_low"], "ci_high": headline["ci_high"],
                                "set": "stsb-test", "point": adaptive["name"], "chosen_on": "stsb-dev"}
                               if headline else None),
        # Judged on the sets nothing was chosen on (a dev set's win would be a win on the data that picked it), and
        # by at least MIN_EFFECT: a point that almost never exits sits a hair above the line near full depth.
        "adaptive_wins_on": sorted(name for name, c in (adaptive or {}).get("minus_cut", {}).items()
                                   if c["ci_low"] > 0 and c["diff"] >= MIN_EFFECT and name not in dev_names),
        "min_effect": MIN_EFFECT,
        "at_profile_rule": compare_with_cuts(next((p for p in points if p["kind"] == "rule" and p["policy"]["theta"]
                                                   == profile.exit.theta and p["policy"]["k"] == profile.exit.k
                                                   and p["policy"]["l_min"] == profile.exit.l_min), None),
                                             cuts, full, sets, n_resamples),
        "points": [_public(p) for p in points],
    }
    return result, points, sets


def calibrate_policy(profile: Any, model: str, max_sts_drop: float, max_ndcg_drop: float | None = None,
                     save: bool = False, loaded: tuple[DepthModel, dict[str, Any]] | None = None,
                     wait: bool = False, addition: Addition | None = None) -> dict[str, Any]:
    """The fastest deployable policy within the floors on dev (STS-B dev; BEIR dev halves with max_ndcg_drop).

    save: write it to the model folder's leap_exit.json (with what chose it), so the encoder serves it by default;
    the folder's writer lock (io.writer_lock) is held from the first measurement to the write, so a second
    calibrate --save (or cut, export) on the folder is refused at once (wait=True: waits) instead of the last
    writer silently winning. loaded: depth_model(profile, model) when the caller already has it.
    addition: a section chosen after, and apart from, the policy (query_encoder.points.calibrate_with_queries: the
    asymmetric points); save records addition.saved(section) in leap_exit.json's calibration, never moving the policy.
    """
    if not save:
        return _calibrate(profile, model, max_sts_drop, max_ndcg_drop, False, loaded, addition)
    folder = loaded[1]["model_path"] if loaded else resolve_model(str(model))
    with writer_lock(folder, wait=wait, what="calibrate --save"):
        return _calibrate(profile, model, max_sts_drop, max_ndcg_drop, True, loaded, addition)


def _calibrate(profile: Any, model: str, max_sts_drop: float, max_ndcg_drop: float | None, save: bool,
               loaded: tuple[DepthModel, dict[str, Any]] | None, addition: Addition | None = None) -> dict[str, Any]:
    model_, described = loaded or depth_model(profile, model)
    sets = evaluation_sets(profile, dev_only=True, beir=max_ndcg_drop is not None)
    replay = Replay(model_, sets)
    points = [p for p in map(replay.policy_point, candidate_policies(replay, sets[0])) if deployable(p, described)]
    chosen = choose(points, sets, max_sts_drop, max_ndcg_drop)
    full = next(p for p in points if p["kind"] == "full")
    result = {"model": str(model), **described, "policy": chosen["policy"], "name": chosen["name"],
              "floors": {"max_sts_drop": max_sts_drop, "max_ndcg_drop": max_ndcg_drop, "on": [s.name for s in sets]},
              "dev": chosen["sets"], "dev_full": full["sets"], "n_candidates": len(points)}
    calibration = {key: result[key] for key in ("name", "floors", "dev")}
    if addition:  # chosen after, and apart from, the policy: only the calibration record carries it
        result[addition.key] = addition.compute()
        calibration.update(addition.saved(result[addition.key]))
    if save:
        save_policy(described["model_path"], ExitPolicy.from_dict(chosen["policy"]), calibration)
    return result


def save_policy(folder: Any, policy: ExitPolicy, calibration: dict[str, Any] | None = None,
                wait: bool = False) -> Any:
    """Write policy and what chose it to `<folder>/leap_exit.json` atomically (model_folder.write_exit_settings), under
    the folder's writer lock (refused while another writer holds it; re-entrant for calibrate_policy), and
    record it in the folder's manifest if leap made the folder (so a later cut/export may still replace it)."""
    with writer_lock(folder, wait=wait, what="writer of leap_exit.json"):
        written = write_exit_settings(folder, policy, calibration)
        note_in_manifest(folder, EXIT_SETTINGS_FILE)
    return written


def chosen_speed(described: dict[str, Any], policy: ExitPolicy, sentences: list[str],
                 batch_sizes: tuple[int, ...] = (1, 32), warmup: int = 10, iterations: int = 100) -> dict[str, Any]:
    """Time the chosen policy against the model at full depth (an exit branch: against its original), in one process."""
    rule = {"theta": policy.theta, "k": policy.k, "l_min": policy.l_min}
    if described["design"] != "exit_branch":
        encoder = EarlyExitEncoder.from_pretrained(described["model_path"], policy=policy, **rule)
        calls = {"full": lambda b, s: encoder.encode(b, batch_size=s, mode="full"),
                 "policy": lambda b, s: encoder.encode(b, batch_size=s)}
    else:
        original = EarlyExitEncoder.from_pretrained(described["original_path"])
        calls = {"full": lambda b, s: original.encode(b, batch_size=s, mode="full")}
        if policy.kind == "fixed":
            branch = EarlyExitEncoder.from_pretrained(described["model_path"], policy=policy, **rule)
            weight, bias = (torch.from_numpy(x) for x in load_heads(described["model_path"])[policy.depth])

            def cut(batch: list[str], size: int) -> np.ndarray:  # the branch to depth N, then its exit head
                pooled = branch.encode(batch, batch_size=size, convert_to_numpy=False)
                return torch.nn.functional.normalize(pooled @ weight.T + bias, dim=-1).numpy()
            calls["policy"] = cut
        else:
            calls["policy"] = calls["full"]
    timed = compare_calls(calls, "full", sentences, batch_sizes, warmup, iterations)
    return {**timed, **{f"speedup_bs{size}": timed["batch_sizes"][str(size)]["policy"]["speedup"]
                        for size in batch_sizes}}


def write_pareto(profile: Any, model: str, name: str, out_dir: Any = "reports/pareto", max_sts_drop: float = 0.01,
                 max_ndcg_drop: float | None = 0.03, timing: bool = True,
                 addition: Addition | None = None) -> dict[str, Any]:
    """pareto(), the chosen policy timed against full depth (chosen_speed), written as <out_dir>/<name>.json/.md/.png.

    addition: the result gains its section (query_encoder.points.pareto_with_queries: "asymmetric") and the
    markdown its part, after the report's own.
    """
    plain_name(name)  # a report name, not a path: "../../x" would write outside out_dir (checked before the work)
    result, _, _ = pareto(profile, model, max_sts_drop=max_sts_drop, max_ndcg_drop=max_ndcg_drop)
    if addition:
        result[addition.key] = addition.compute()
    if timing:
        policy = ExitPolicy.from_dict(result["chosen"]["policy"])
        described = {key: result[key] for key in ("design", "model_path", "original_path") if key in result}
        speed = chosen_speed(described, policy, probe_sentences(profile.data.data_dir))
        result["chosen"].update(speedup_bs1=speed["speedup_bs1"], speedup_bs32=speed["speedup_bs32"], timing=speed)
    out = Path(out_dir)
    extra = (lambda data: addition.markdown(data.get(addition.key))) if addition else (lambda data: "")
    write_report_files(result, out / f"{name}.json", out / f"{name}.md",
                       lambda data: report_markdown(data, name) + extra(data))
    plot(result, out / f"{name}.png")
    return result


def policy_metrics(profile: Any, model: str, max_sts_drop: float, timing: bool = True) -> dict[str, Any]:
    """Calibrate on STS-B dev, save the policy to the model folder, measure it once on STS-B test, and time it.

    The registry gate compares versions by policy_stsb, each at the policy it will serve.
    """
    model_, described = loaded = depth_model(profile, model)
    chosen = calibrate_policy(profile, model, max_sts_drop, save=True, loaded=loaded)
    test = sts_sets("stsb-test", read_sts(identity.data_path(profile, profile.data.sts_eval)))
    policy = ExitPolicy.from_dict(chosen["policy"])
    measured = Replay(model_, test).policy_point(policy)["sets"]["stsb-test"]
    out = {"policy": chosen["name"], "policy_stsb": measured["quality"],
           "policy_layer_reduction": measured["layer_reduction"]}
    if timing:
        evaluation = profile.evaluation
        speed = chosen_speed(described, policy, probe_sentences(profile.data.data_dir), (1, 32),
                             evaluation.bench_warmup or 5, evaluation.bench_iterations or 40)
        out.update(policy_speedup_bs1=speed["speedup_bs1"], policy_speedup_bs32=speed["speedup_bs32"])
    return out
