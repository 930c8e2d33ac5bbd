"""Quality against mean depth for every operating point a user could deploy, and the adaptive-minus-cut test.

Points (leap_core.policy): full depth, each fixed cut, the exit rule over (theta, k, l_min), per-layer thresholds
chosen greedily on STS-B dev (threshold_path), and the oracle bound (exit at the first layer whose embedding is
within tau of the model's own final one: needs the final, so it is not deployable). Every point is replayed
from one pass per text set (Embedder pools, sweep.py's rules), on every set: STS-B dev (where choices are made),
STS-B test and each of its genres, and each BEIR set's queries split by id hash into a dev and a test half.

Depth is what a row costs in layers: its exit layer; for an exit branch (leap_core.exit_branch) a row that
reaches L ran the branch up to its last tested layer and then the original, L more. The fixed-cut line at a
mean depth m interpolates the two cuts around m; an adaptive point's difference from it is a paired bootstrap
CI (pairs for STS, queries for NDCG@10).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from leap_core.config import ENCODE_BATCH_SIZE
from leap_core.policy import ALWAYS, ExitPolicy, exits_from_cosines, layer_cosines

log = logging.getLogger(__name__)

THETAS = tuple(round(0.80 + 0.01 * i, 2) for i in range(20)) + (0.995,)
TAUS = tuple(round(0.70 + 0.02 * i, 2) for i in range(15)) + (0.99,)
NOTCHES = (np.inf, *np.round(np.arange(0.995, 0.7999, -0.005), 3), 0.75, 0.7, 0.6, 0.5, 0.0, ALWAYS)
KS = (1, 2)
MIN_EFFECT = 0.001  # the smallest quality difference the reports show (3 decimals): below it, no win is claimed


@dataclass
class DepthModel:
    """What the Pareto replay needs of a model: every layer's pools of a text group, where rows may exit, costs.

    layers(group, texts) -> (L, N, d) normalised; exits: layers 1..L-1 a row may stop at (an exit branch: its
    exit layers); comparable_from: the first layer whose pool a cosine test may use; separate_full: reaching L
    runs a separate full model (an exit branch's original) after the layers already run.
    """

    layers: Callable[[str, list[str]], np.ndarray]
    n_layers: int
    exits: tuple[int, ...]
    comparable_from: int = 1
    separate_full: bool = False

    def cost(self, exits: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Layers each row ran: its exit layer, plus for a separate full model the tested layers before it."""
        cost = exits.astype(np.float64)
        if self.separate_full:
            tested = np.flatnonzero(np.isfinite(vector[:-1]))
            if len(tested):
                cost = np.where(exits == self.n_layers, self.n_layers + tested[-1] + 1, cost)
        return cost


@dataclass
class EvalSet:
    """One set: its text groups and how per-item quality (pair cosine or per-query NDCG@10) comes from them."""

    name: str
    kind: str  # "sts" (Spearman over pairs), "ndcg" (mean per-query NDCG@10) or "agreement" (mean per-text NN@10)
    groups: dict[str, list[str]]
    per_item: Callable[[dict[str, np.ndarray]], np.ndarray]
    gold: np.ndarray | None = None
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # texts that count toward depth (default: all)
    pair_rows: tuple[np.ndarray, np.ndarray] | None = None

    def quality(self, items: np.ndarray) -> float:
        if self.kind == "sts":
            from leap_core.stats import spearman_statistic

            return float(spearman_statistic(items, self.gold))
        return float(np.mean(items))


def oracle_exits(layer_embs: np.ndarray, tau: float, allowed: tuple[int, ...]) -> np.ndarray:
    """The bound: exit at the first allowed layer whose pool has cos >= tau with the final layer's, else L."""
    from leap_core.evaluation.sweep import _checked, _first_true

    embs = _checked(layer_embs)
    n_layers = embs.shape[0]
    cos = (embs * embs[-1:]).sum(-1) / np.maximum(
        np.linalg.norm(embs, axis=-1) * np.linalg.norm(embs[-1:], axis=-1), 1e-12)
    layer_no = np.arange(1, n_layers + 1)[:, None]
    return _first_true(np.isin(layer_no, allowed) & (cos >= tau), n_layers)


def query_half(query_id: str) -> str:
    """'dev' or 'test', fixed by the id's hash: BEIR ships test qrels only, so dev is half of its queries."""
    return "dev" if hashlib.sha256(query_id.encode()).digest()[0] % 2 == 0 else "test"


def sts_sets(name: str, pairs: Any, by_genre: bool = False) -> list[EvalSet]:
    """The STS set (group `name`: its unique sentences) and, with by_genre, one set per genre on the same group."""
    from leap_core.evaluation.sts import pair_rows

    unique, idx1, idx2 = pair_rows(pairs)
    gold = np.asarray(pairs.scores, dtype=np.float64)

    def subset(label: str, keep: np.ndarray) -> EvalSet:
        a, b = idx1[keep], idx2[keep]
        return EvalSet(label, "sts", {name: unique}, lambda embs, a=a, b=b: (embs[name][a] * embs[name][b]).sum(-1),
                       gold[keep], {name: np.unique(np.concatenate([a, b]))}, (a, b))

    out = [subset(name, np.ones(len(gold), dtype=bool))]
    if by_genre and pairs.genres is not None:
        genres = np.asarray(pairs.genres)
        out += [subset(f"{name}/{genre}", genres == genre) for genre in sorted(set(pairs.genres))]
    return out


def beir_sets(folder: Any, max_docs: int | None = None, max_queries: int | None = None) -> list[EvalSet]:
    """A BEIR set's dev and test query halves (query_half), over every document (max_*: retrieval.subsample)."""
    from pathlib import Path

    from leap_core.data.beir import load_beir
    from leap_core.evaluation.retrieval import Ndcg10, document_text, subsample

    corpus, queries, qrels = subsample(*load_beir(folder), max_docs, max_queries)
    name = Path(str(folder)).name
    doc_ids = list(corpus)
    docs = [document_text(corpus[d]) for d in doc_ids]
    out = []
    for half in ("dev", "test"):
        query_ids = [q for q in queries if q in qrels and query_half(q) == half]
        ndcg = Ndcg10(qrels, query_ids, doc_ids)
        per_item = lambda embs, ndcg=ndcg, key=f"{name}/{half}-queries": ndcg(embs[key], embs[f"{name}/docs"])  # noqa: E731
        out.append(EvalSet(f"{name}-{half}", "ndcg", {f"{name}/docs": docs,
                                                       f"{name}/{half}-queries": [queries[q] for q in query_ids]},
                           per_item))
    return out


class Replay:
    """Every policy on every set, from each text group's pools computed once."""

    def __init__(self, model: DepthModel, sets: list[EvalSet]):
        self.model, self.sets = model, sets
        self._pools: dict[str, np.ndarray] = {}
        self._cosines: dict[tuple[str, int], np.ndarray] = {}

    def pools(self, group: str) -> np.ndarray:
        if group not in self._pools:
            texts = next(s.groups[group] for s in self.sets if group in s.groups)
            self._pools[group] = self.model.layers(group, texts)
        return self._pools[group]

    def cosines(self, group: str, k: int) -> np.ndarray:
        if (group, k) not in self._cosines:
            self._cosines[group, k] = layer_cosines(self.pools(group), k)
        return self._cosines[group, k]

    def point(self, label: dict[str, Any], exits_of: Callable[[str], np.ndarray],
              vector: np.ndarray) -> dict[str, Any]:
        """label + per set: quality, mean depth (layers run), exit rate; per-item values kept under "_items"."""
        exits = {group: exits_of(group) for s in self.sets for group in s.groups}
        out: dict[str, Any] = {**label, "sets": {}, "_items": {}, "_exits": exits}
        for s in self.sets:
            embs = {g: self.pools(g)[exits[g] - 1, np.arange(len(exits[g]))] for g in s.groups}
            items = s.per_item(embs)
            costs = np.concatenate([self.model.cost(exits[g], vector)[s.rows.get(g, slice(None))] for g in s.groups])
            layers = np.concatenate([exits[g][s.rows.get(g, slice(None))] for g in s.groups])
            out["sets"][s.name] = {"quality": s.quality(items), "mean_depth": float(costs.mean()),
                                   "layer_reduction": self.model.n_layers / float(costs.mean()),
                                   "exit_rate": float((layers < self.model.n_layers).mean())}
            out["_items"][s.name] = items
        return out

    def policy_point(self, policy: ExitPolicy) -> dict[str, Any]:
        vector = policy.vector(self.model.n_layers)
        return self.point({"kind": policy.kind, "name": policy.name, "policy": policy.to_dict()},
                          lambda group: exits_from_cosines(vector, self.cosines(group, policy.k)), vector)

    def oracle_point(self, tau: float) -> dict[str, Any]:
        vector = np.full(self.model.n_layers, np.inf)
        vector[np.asarray(self.model.exits) - 1] = tau  # for the cost: the layers an oracle row may test
        return self.point({"kind": "oracle", "name": f"oracle(tau={tau:g})", "tau": tau},
                          lambda group: oracle_exits(self.pools(group), tau, self.model.exits), vector)


def rule_policies(model: DepthModel, thetas=THETAS, ks=KS) -> list[ExitPolicy]:
    """Algorithm 1 over theta x k x l_min, wherever every test compares two valid exit pools."""
    out = []
    for k in ks:
        for l_min in model.exits:
            if l_min - k < model.comparable_from or any(l not in model.exits for l in range(l_min, model.n_layers)):
                continue
            out += [ExitPolicy("rule", theta=float(t), k=k, l_min=l_min) for t in thetas]
    return out


def fixed_policies(model: DepthModel, k: int = 1) -> list[ExitPolicy]:
    return [ExitPolicy("fixed", depth=d, k=k, l_min=max(d, 1)) for d in model.exits] + [ExitPolicy("full", k=k)]


def threshold_path(replay: Replay, dev: EvalSet, k: int = 1, notches=NOTCHES) -> list[ExitPolicy]:
    """Per-layer thresholds, greedily on dev: from full depth, lower one layer's threshold at a time to the next
    notch that changes exits, taking the move that loses the least dev quality per layer saved."""
    model = replay.model
    group = next(iter(dev.groups))
    pools = replay.pools(group)
    cosines = layer_cosines(pools, k)
    layers = [l for l in model.exits if l <= k or l - k >= model.comparable_from]
    current = {l: 0 for l in layers}  # index into notches

    def policy(state: dict[int, int]) -> ExitPolicy:
        values = [None] * (model.n_layers - 1)
        for l, i in state.items():
            if notches[i] != np.inf:
                values[l - 1] = ALWAYS if (l <= k or notches[i] <= ALWAYS) else float(notches[i])
        return ExitPolicy("thresholds", k=k, l_min=1, thresholds=tuple(values))

    def measure(state: dict[int, int]) -> tuple[float, float, np.ndarray]:
        chosen = policy(state)
        vector = chosen.vector(model.n_layers)
        exits = exits_from_cosines(vector, cosines)
        embs = {group: pools[exits - 1, np.arange(len(exits))]}
        rows = dev.rows.get(group, slice(None))
        return dev.quality(dev.per_item(embs)), float(model.cost(exits, vector)[rows].mean()), exits

    quality, depth, exits = measure(current)
    path = []
    while True:
        best = None
        for l in layers:
            for i in range(current[l] + 1, len(notches)):
                if l <= k and notches[i] > ALWAYS:
                    continue  # no earlier pool to compare with: only "always" is possible here
                trial = {**current, l: i}
                q, d, e = measure(trial)
                if not np.array_equal(e, exits):
                    if d < depth:
                        score = (q - quality) / (depth - d)
                        if best is None or score > best[0]:
                            best = (score, trial, q, d, e)
                    break
        if best is None:
            return path
        _, current, quality, depth, exits = best
        path.append(policy(current))


def cut_line(cuts: list[dict[str, Any]], set_name: str, depth: float) -> tuple[int, int, float]:
    """(index of the cut at or below depth, index above, weight of the one above) on set_name's fixed-cut line."""
    ordered = sorted(range(len(cuts)), key=lambda i: cuts[i]["sets"][set_name]["mean_depth"])
    depths = [cuts[i]["sets"][set_name]["mean_depth"] for i in ordered]
    if depth <= depths[0]:
        return ordered[0], ordered[0], 0.0
    if depth >= depths[-1]:
        return ordered[-1], ordered[-1], 0.0
    above = int(np.searchsorted(depths, depth, side="right"))
    low, high = depths[above - 1], depths[above]
    return ordered[above - 1], ordered[above], (depth - low) / (high - low)


def minus_cut_line(point: dict[str, Any], cuts: list[dict[str, Any]], s: EvalSet, n_resamples: int = 0,
                   seed: int = 0) -> dict[str, Any]:
    """point's quality minus the fixed-cut line at its mean depth on set s; with n_resamples, a paired bootstrap CI."""
    from leap_core.stats import bootstrap_ci, paired_difference_ci, spearman_statistic

    depth = point["sets"][s.name]["mean_depth"]
    low, high, weight = cut_line(cuts, s.name, depth)
    a, b = cuts[low]["_items"][s.name], cuts[high]["_items"][s.name]
    line = (1 - weight) * cuts[low]["sets"][s.name]["quality"] + weight * cuts[high]["sets"][s.name]["quality"]
    out = {"mean_depth": depth, "line": line, "between": [cuts[low]["name"], cuts[high]["name"]], "weight": weight,
           "diff": point["sets"][s.name]["quality"] - line}
    if n_resamples:
        p = point["_items"][s.name]
        if s.kind == "sts":
            def statistic(p, a, b, gold, axis=-1):
                line = (1 - weight) * spearman_statistic(a, gold, axis=axis) + weight * spearman_statistic(b, gold, axis=axis)
                return spearman_statistic(p, gold, axis=axis) - line
            ci = bootstrap_ci((p, a, b, s.gold), statistic, n_resamples=n_resamples, seed=seed)
        else:
            ci = paired_difference_ci(p, (1 - weight) * a + weight * b, n_resamples=n_resamples, seed=seed)
        out.update(ci_low=ci["low"], ci_high=ci["high"])
    return out


def mixed_depth_gap(point: dict[str, Any], full: dict[str, Any], s: EvalSet) -> dict[str, Any] | None:
    """STS pairs whose two sentences exit at different layers vs the same layer: Spearman at the point and at full."""
    from leap_core.stats import spearman_statistic

    if s.kind != "sts" or s.pair_rows is None:
        return None
    group = next(iter(s.groups))
    exits = point["_exits"][group]
    a, b = s.pair_rows
    mixed = exits[a] != exits[b]
    out = {}
    for label, keep in (("mixed", mixed), ("same", ~mixed)):
        if keep.sum() < 3:
            out[label] = {"n_pairs": int(keep.sum())}
            continue
        at_point = float(spearman_statistic(point["_items"][s.name][keep], s.gold[keep]))
        at_full = float(spearman_statistic(full["_items"][s.name][keep], s.gold[keep]))
        out[label] = {"n_pairs": int(keep.sum()), "at_point": at_point, "full": at_full, "loss": at_full - at_point}
    return out


def meets_floors(point: dict[str, Any], full: dict[str, Any], sets: list[EvalSet], max_sts_drop: float,
                 max_ndcg_drop: float | None, min_agreement: float | None = None) -> bool:
    """Within max_sts_drop (absolute Spearman) of full on every STS dev set, and, if given, within max_ndcg_drop
    (relative NDCG@10) of full on every BEIR dev half and at least min_agreement on every agreement set
    (leap_core.retrain's slice of traffic: NN@10 against a fixed reference model, so an absolute floor)."""
    for s in sets:
        q, f = point["sets"][s.name]["quality"], full["sets"][s.name]["quality"]
        if s.kind == "sts" and q < f - max_sts_drop:
            return False
        if s.kind == "ndcg" and max_ndcg_drop is not None and q < f * (1 - max_ndcg_drop):
            return False
        if s.kind == "agreement" and min_agreement is not None and q < min_agreement:
            return False
    return True


SIMPLER_FIRST = {"full": 0, "fixed": 1, "rule": 2, "thresholds": 3}
DEPTH_TIE = 0.01  # mean depths within 1% of the least are a tie: the simpler policy is served


def choose(points: list[dict[str, Any]], dev_sets: list[EvalSet], max_sts_drop: float,
           max_ndcg_drop: float | None = None, min_agreement: float | None = None) -> dict[str, Any] | None:
    """The deployable point with the least mean depth over the dev sets within the floors; depths within DEPTH_TIE
    (relative) of the least count as ties, won by the simpler kind: an exit test that saves 0.1% of the layers
    costs more than it saves. None when no point, not even full depth, meets an absolute floor (min_agreement)."""
    full = next(p for p in points if p["kind"] == "full")
    fits = [p for p in points if p["kind"] in SIMPLER_FIRST and meets_floors(p, full, dev_sets, max_sts_drop,
                                                                              max_ndcg_drop, min_agreement)]
    if not fits:
        return None
    depth = lambda p: float(np.mean([p["sets"][s.name]["mean_depth"] for s in dev_sets]))  # noqa: E731
    least = min(map(depth, fits))
    tied = [p for p in fits if depth(p) <= least * (1 + DEPTH_TIE)]
    return min(tied, key=lambda p: (SIMPLER_FIRST[p["kind"]], depth(p)))


def depth_model(profile: Any, model: str, batch_size: int = ENCODE_BATCH_SIZE) -> tuple[DepthModel, dict[str, Any]]:
    """A model folder / hub id as a DepthModel (an exit branch: its exits with heads, then its original), and a
    description of it. Pools are cached on disk by weights hash, so a second run (or calibrate) re-encodes nothing."""
    from leap_core import experiment
    from leap_core.encoder import EarlyExitEncoder
    from leap_core.evaluation.against_original import Embedder
    from leap_core.exit_branch import BRANCH_FILE, load_heads, original_of, read_branch
    from leap_core.models import model_fingerprint, resolve_model

    folder = resolve_model(str(model))
    cache = experiment.cache_dir(profile) / "pools"
    embedder = lambda path, heads=None: Embedder(EarlyExitEncoder.from_pretrained(str(path)), batch_size,  # noqa: E731
                                                 heads, cache_dir=cache, fingerprint=model_fingerprint(path))
    if not (folder / BRANCH_FILE).is_file():
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
    from leap_core import experiment
    from leap_core.data import read_sts

    data = profile.data
    sets = sts_sets("stsb-dev", read_sts(experiment.data_path(profile, data.sts_dev)))
    if not dev_only:
        test = data.sts_eval_genres or data.sts_eval
        sets += sts_sets("stsb-test", read_sts(experiment.data_path(profile, test)), by_genre=True)
    if beir:
        for folder in profile.evaluation.beir:
            halves = beir_sets(experiment.data_path(profile, folder), profile.evaluation.max_beir_docs or None,
                               profile.evaluation.max_beir_queries or None)
            sets += halves[:1] if dev_only else halves
    return sets


def candidate_policies(replay: Replay, dev: EvalSet) -> list[ExitPolicy]:
    """Fixed cuts, full, the rule grid and the threshold path chosen on dev: what calibration chooses among."""
    model = replay.model
    return fixed_policies(model) + rule_policies(model) + threshold_path(replay, dev)


def replay_points(replay: Replay, dev: EvalSet) -> list[dict[str, Any]]:
    """Every candidate policy's point and the oracle grid's."""
    points = [replay.policy_point(p) for p in candidate_policies(replay, dev)]
    points += [replay.oracle_point(tau) for tau in TAUS]
    log.info("pareto: %d points on %d sets", len(points), len(replay.sets))
    return points


def _public(point: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in point.items() if not key.startswith("_")}


def deployable(point: dict[str, Any], described: dict[str, Any]) -> bool:
    """What `leap` can serve today: any policy of a plain model; full and fixed cuts of an exit branch (its
    adaptive points need exit heads inside EarlyExitEncoder, which it does not have yet)."""
    if point["kind"] not in SIMPLER_FIRST:
        return False
    return described["design"] != "exit_branch" or point["kind"] in ("full", "fixed")


def best_adaptive(points: list[dict[str, Any]], cuts: list[dict[str, Any]], dev: EvalSet, kinds: tuple[str, ...],
                  n_layers: int) -> dict[str, Any] | None:
    """The point of `kinds` furthest above the cut line on dev, among those that mix depths (not one layer for all)
    and cost less than full depth there (beyond it the line has no cut to match)."""
    mixing = [p for p in points if p["kind"] in kinds and len(np.unique(p["_exits"][next(iter(dev.groups))])) > 1
              and p["sets"][dev.name]["mean_depth"] < n_layers]
    if not mixing:
        return None
    return max(mixing, key=lambda p: minus_cut_line(p, cuts, dev)["diff"])


def compare_with_cuts(point: dict[str, Any] | None, cuts: list[dict[str, Any]], full: dict[str, Any],
                      sets: list[EvalSet], n_resamples: int) -> dict[str, Any] | None:
    if point is None:
        return None
    return {"name": point["name"], "kind": point["kind"], "policy": point.get("policy"), "tau": point.get("tau"),
            "minus_cut": {s.name: minus_cut_line(point, cuts, s, n_resamples) for s in sets},
            "mixed_depth_gap": {s.name: mixed_depth_gap(point, full, s) for s in sets
                                if s.kind == "sts" and "/" not in s.name}}


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
                     wait: bool = False, query_encoders: list[str] | None = None) -> dict[str, Any]:
    """The fastest deployable policy within the floors on dev (STS-B dev; BEIR dev halves with max_ndcg_drop).

    save: write it to the model folder's leap_exit.json (with what chose it), so the encoder serves it by default;
    the folder's writer lock (io.writer_lock) is held from the first measurement to the write, so a second
    calibrate --save (or cut, export) on the folder is refused at once (wait=True: waits) instead of the last
    writer silently winning. loaded: depth_model(profile, model) when the caller already has it.
    query_encoders: also their asymmetric points (query_encoder.points), chosen under max_ndcg_drop apart from the
    policy; save records that choice as leap_exit.json's calibration.query_route and never lets it move the policy.
    """
    if query_encoders:
        from leap_core.query_encoder.points import preflight

        preflight(model, query_encoders, max_ndcg_drop)  # a wrong pairing fails before the replay, not after
    if not save:
        return _calibrate(profile, model, max_sts_drop, max_ndcg_drop, False, loaded, query_encoders)
    from leap_core.io import writer_lock
    from leap_core.models import resolve_model

    folder = loaded[1]["model_path"] if loaded else resolve_model(str(model))
    with writer_lock(folder, wait=wait, what="calibrate --save"):
        return _calibrate(profile, model, max_sts_drop, max_ndcg_drop, True, loaded, query_encoders)


def _calibrate(profile: Any, model: str, max_sts_drop: float, max_ndcg_drop: float | None, save: bool,
               loaded: tuple[DepthModel, dict[str, Any]] | None,
               query_encoders: list[str] | None = None) -> dict[str, Any]:
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
    if query_encoders:  # chosen after, and apart from, the policy: only calibration.query_route records it
        from leap_core.query_encoder.points import profile_section

        result["asymmetric"] = profile_section(profile, model, query_encoders, max_ndcg_drop)
        calibration["query_route"] = result["asymmetric"]["serve"]
    if save:
        save_policy(described["model_path"], ExitPolicy.from_dict(chosen["policy"]), calibration)
    return result


def save_policy(folder: Any, policy: ExitPolicy, calibration: dict[str, Any] | None = None,
                wait: bool = False) -> Any:
    """Write policy and what chose it to `<folder>/leap_exit.json` atomically (encoder.write_exit_settings), under
    the folder's writer lock (refused while another writer holds it; re-entrant for calibrate_policy), and
    record it in the folder's manifest if leap made the folder (so a later cut/export may still replace it)."""
    from leap_core.encoder import EXIT_SETTINGS_FILE, write_exit_settings
    from leap_core.io import note_in_manifest, writer_lock

    with writer_lock(folder, wait=wait, what="writer of leap_exit.json"):
        written = write_exit_settings(folder, policy, calibration)
        note_in_manifest(folder, EXIT_SETTINGS_FILE)
    return written


def chosen_speed(described: dict[str, Any], policy: ExitPolicy, sentences: list[str],
                 batch_sizes: tuple[int, ...] = (1, 32), warmup: int = 10, iterations: int = 100) -> dict[str, Any]:
    """Time the chosen policy against the model at full depth (an exit branch: against its original), in one process."""
    import torch

    from leap_core.bench import compare_calls
    from leap_core.encoder import EarlyExitEncoder
    from leap_core.exit_branch import load_heads

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


def mark_dev_front(points: list[dict[str, Any]], set_name: str) -> None:
    """Set "on_dev_front": on set_name's Pareto front of (layer reduction, quality) (sweep.pareto_front)."""
    from leap_core.evaluation.sweep import pareto_front

    rows = [{**p["sets"][set_name], "index": i} for i, p in enumerate(points)]
    front = {row["index"] for row in pareto_front(rows, "quality")}
    for i, p in enumerate(points):
        p["on_dev_front"] = i in front


def write_pareto(profile: Any, model: str, name: str, out_dir: Any = "reports/pareto", max_sts_drop: float = 0.01,
                 max_ndcg_drop: float | None = 0.03, timing: bool = True,
                 query_encoders: list[str] | None = None) -> dict[str, Any]:
    """pareto(), the chosen policy timed against full depth (chosen_speed), written as <out_dir>/<name>.json/.md/.png.

    query_encoders: the result gains an "asymmetric" section (query_encoder.points) and the markdown its table.
    """
    from pathlib import Path

    from leap_core.evaluation.diagnose import probe_sentences
    from leap_core.io import write_report_files
    from leap_core.pareto_report import plot, report_markdown
    from leap_core.query_encoder.points import asymmetric_markdown, preflight, profile_section

    from leap_core.io import plain_name

    plain_name(name)  # a report name, not a path: "../../x" would write outside out_dir (checked before the work)
    if query_encoders:
        preflight(model, query_encoders, max_ndcg_drop)  # a wrong pairing fails before the replay, not after
    result, _, _ = pareto(profile, model, max_sts_drop=max_sts_drop, max_ndcg_drop=max_ndcg_drop)
    if query_encoders:
        result["asymmetric"] = profile_section(profile, model, query_encoders, max_ndcg_drop)
    if timing:
        policy = ExitPolicy.from_dict(result["chosen"]["policy"])
        described = {key: result[key] for key in ("design", "model_path", "original_path") if key in result}
        speed = chosen_speed(described, policy, probe_sentences(profile.data.data_dir))
        result["chosen"].update(speedup_bs1=speed["speedup_bs1"], speedup_bs32=speed["speedup_bs32"], timing=speed)
    out = Path(out_dir)
    write_report_files(result, out / f"{name}.json", out / f"{name}.md",
                       lambda data: report_markdown(data, name) + asymmetric_markdown(data.get("asymmetric")))
    plot(result, out / f"{name}.png")
    return result


def policy_metrics(profile: Any, model: str, max_sts_drop: float, timing: bool = True) -> dict[str, Any]:
    """Calibrate on STS-B dev, save the policy to the model folder, measure it once on STS-B test, and time it.

    The registry gate compares versions by policy_stsb, each at the policy it will serve.
    """
    from leap_core import experiment
    from leap_core.data import read_sts
    from leap_core.evaluation.diagnose import probe_sentences

    model_, described = loaded = depth_model(profile, model)
    chosen = calibrate_policy(profile, model, max_sts_drop, save=True, loaded=loaded)
    test = sts_sets("stsb-test", read_sts(experiment.data_path(profile, profile.data.sts_eval)))
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
