"""The Pareto replay's points: every operating point a user could deploy, replayed on every set from one pass.

Points (leap_core.policy): full depth, each fixed cut, the exit rule over (theta, k, l_min), per-layer thresholds
chosen greedily on STS-B dev (threshold_path), and the oracle bound (exit at the first layer whose embedding is
within tau of the model's own final one: needs the final, so it is not deployable). Every point is replayed
from one pass per text set (Embedder pools, the policy's replay helpers), on every set: STS-B dev (where choices
are made), STS-B test and each of its genres, and each BEIR set's queries split by id hash into a dev and a test half.

Depth is what a row costs in layers: its exit layer; for an exit branch (leap_core.retrofit.exit_branch) a row that
reaches L ran the branch up to its last tested layer and then the original, L more.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from leap_core.data.beir import load_beir
from leap_core.evaluation.retrieval import Ndcg10, document_text, subsample
from leap_core.evaluation.sts import pair_rows
from leap_core.policy import (ALWAYS, ExitPolicy, check_layer_embs, exits_from_cosines, first_true_layer,
                              layer_cosines)
from leap_core.stats import spearman_statistic

log = logging.getLogger(__name__)

THETAS = tuple(round(0.80 + 0.01 * i, 2) for i in range(20)) + (0.995,)
TAUS = tuple(round(0.70 + 0.02 * i, 2) for i in range(15)) + (0.99,)
NOTCHES = (np.inf, *np.round(np.arange(0.995, 0.7999, -0.005), 3), 0.75, 0.7, 0.6, 0.5, 0.0, ALWAYS)
KS = (1, 2)


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
            return float(spearman_statistic(items, self.gold))
        return float(np.mean(items))


def oracle_exits(layer_embs: np.ndarray, tau: float, allowed: tuple[int, ...]) -> np.ndarray:
    """The bound: exit at the first allowed layer whose pool has cos >= tau with the final layer's, else L."""
    embs = check_layer_embs(layer_embs)
    n_layers = embs.shape[0]
    cos = (embs * embs[-1:]).sum(-1) / np.maximum(
        np.linalg.norm(embs, axis=-1) * np.linalg.norm(embs[-1:], axis=-1), 1e-12)
    layer_no = np.arange(1, n_layers + 1)[:, None]
    return first_true_layer(np.isin(layer_no, allowed) & (cos >= tau), n_layers)


def query_half(query_id: str) -> str:
    """'dev' or 'test', fixed by the id's hash: BEIR ships test qrels only, so dev is half of its queries."""
    return "dev" if hashlib.sha256(query_id.encode()).digest()[0] % 2 == 0 else "test"


def sts_sets(name: str, pairs: Any, by_genre: bool = False) -> list[EvalSet]:
    """The STS set (group `name`: its unique sentences) and, with by_genre, one set per genre on the same group."""
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
