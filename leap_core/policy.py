"""Exit policies: which layer each row stops at, as a per-layer threshold vector t_l (exit at the first l with c_l >= t_l).

c_l = cos(p_l, p_{l-k}). Every deployable policy is such a vector; t_l = +inf never exits at l, t_l <= -1
always exits at l (no cosine needed), and a row that passes no layer runs to L:
- "full":        t = +inf everywhere (depth L);
- "fixed:N":     t_N = -1, +inf elsewhere (every row stops at N);
- "rule":        Algorithm 1, t_l = theta for max(l_min, k+1) <= l < L;
- "thresholds":  t_l chosen per layer on dev (leap_core.evaluation.pareto_points.threshold_path): a family that
                 holds every fixed cut and every rule.
The oracle of evaluation/pareto_points.py (exit once p_l is within tau of p_L) needs p_L: a bound, not a policy.
The replay helpers at the bottom (check_layer_embs, lagged_cosines, first_true_layer) are what every exit rule is
replayed with, here and in evaluation/sweep.py.
A policy is stored in a model folder's leap_exit.json beside the rule's theta, k and l_min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = ("full", "fixed", "rule", "thresholds")
ALWAYS = -1.0  # cos >= -1 holds for every row: exit without computing a cosine


def check_rule(theta: Any, k: Any, l_min: Any, n_layers: int | None = None, where: str = "exit settings") -> None:
    """theta in [-1, 1], k >= 1, l_min >= 1 and, given the model's depth, l_min <= L and k < L; else a ValueError
    that starts with `where` and names the field."""
    try:
        ExitPolicy("rule", theta=theta, k=k, l_min=l_min)
    except ValueError as err:
        raise ValueError(f"{where}: {str(err).removeprefix('policy ')}") from None
    if n_layers is not None and l_min > n_layers:
        raise ValueError(f"{where}: l_min {l_min} is deeper than the model's {n_layers} layers: no row could exit")
    if n_layers is not None and k >= n_layers:
        raise ValueError(f"{where}: k {k} must be below the model's {n_layers} layers")


@dataclass(frozen=True)
class ExitPolicy:
    """One deployable exit policy (module docstring). thresholds: one per layer 1..L-1, None = never exit there."""

    kind: str = "rule"
    depth: int | None = None
    theta: float = 0.95
    k: int = 1
    l_min: int = 6
    thresholds: tuple[float | None, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"policy kind {self.kind!r}: expected one of {list(KINDS)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"policy k must be an integer >= 1, got {self.k!r}")
        if isinstance(self.l_min, bool) or not isinstance(self.l_min, int) or self.l_min < 1:
            raise ValueError(f"policy l_min must be an integer >= 1, got {self.l_min!r}")
        if not isinstance(self.theta, (int, float)) or isinstance(self.theta, bool) or not -1 <= self.theta <= 1:
            raise ValueError(f"policy theta must be a number in [-1, 1], got {self.theta!r}")
        if self.kind == "fixed" and (isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1):
            raise ValueError(f"policy fixed:N needs an integer N >= 1, got {self.depth!r}")
        if self.kind == "thresholds":
            if not self.thresholds:
                raise ValueError("policy 'thresholds' needs a non-empty list, one per layer 1..L-1 (null = never)")
            for layer, value in enumerate(self.thresholds, start=1):
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not -1 <= value <= 1):
                    raise ValueError(f"policy thresholds[{layer - 1}] (layer {layer}) must be null or in [-1, 1], "
                                     f"got {value!r}")
                if value is not None and layer <= self.k and value > ALWAYS:
                    raise ValueError(f"policy thresholds: layer {layer} has no layer {layer}-k={layer - self.k} to "
                                     f"compare with (k={self.k}); only null or -1 (always exit) are allowed there")

    @classmethod
    def parse(cls, spec: str, **rule: Any) -> "ExitPolicy":
        """"full", "fixed:N" or "rule" (with the rule's theta/k/l_min from `rule`); "thresholds" needs from_dict."""
        if spec == "full":
            return cls("full", **rule)
        if spec == "rule":
            return cls("rule", **rule)
        if isinstance(spec, str) and spec.startswith("fixed:"):
            try:
                return cls("fixed", depth=int(spec.split(":", 1)[1]), **rule)
            except ValueError:
                raise ValueError(f"policy {spec!r}: expected fixed:N with an integer N") from None
        raise ValueError(f"policy {spec!r}: expected 'full', 'fixed:N', 'rule' or 'thresholds'")

    @property
    def name(self) -> str:
        """Short label: full, fixed:3, rule(theta=0.95,k=1,l_min=4), thresholds(0.97,-1,...)."""
        if self.kind == "fixed":
            return f"fixed:{self.depth}"
        if self.kind == "rule":
            return f"rule(theta={self.theta:g},k={self.k},l_min={self.l_min})"
        if self.kind == "thresholds":
            return "thresholds(" + ",".join("-" if t is None else f"{t:g}" for t in self.thresholds) + ")"
        return "full"

    def vector(self, n_layers: int) -> np.ndarray:
        """(L,) float thresholds t_l for layers 1..L (t_L = +inf: reaching L is not an exit)."""
        t = np.full(n_layers, math.inf)
        if self.kind == "fixed":
            if self.depth > n_layers:
                raise ValueError(f"policy fixed:{self.depth}: the model has {n_layers} layers")
            if self.depth < n_layers:
                t[self.depth - 1] = ALWAYS
        elif self.kind == "rule":
            t[max(self.l_min, self.k + 1) - 1 : n_layers - 1] = self.theta
        elif self.kind == "thresholds":
            if len(self.thresholds) != n_layers - 1:
                raise ValueError(f"policy thresholds: {len(self.thresholds)} values for a model of {n_layers} layers "
                                 f"(expected {n_layers - 1}, one per layer 1..L-1)")
            t[: n_layers - 1] = [math.inf if v is None else float(v) for v in self.thresholds]
        return t

    def mode(self) -> str:
        """The EarlyExitEncoder mode that serves this policy."""
        return {"full": "full", "fixed": f"fixed:{self.depth}"}.get(self.kind, "compact")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; from_dict(to_dict()) == self."""
        out: dict[str, Any] = {"kind": self.kind, "theta": self.theta, "k": self.k, "l_min": self.l_min}
        if self.kind == "fixed":
            out["depth"] = self.depth
        if self.kind == "thresholds":
            out["thresholds"] = list(self.thresholds)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "policy") -> "ExitPolicy":
        known = {"kind", "depth", "theta", "k", "l_min", "thresholds"}
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a JSON object with keys {sorted(known)}")
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("thresholds"), list):
            values["thresholds"] = tuple(values["thresholds"])
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None


def exit_layers(thresholds: np.ndarray, layer_embs: np.ndarray, k: int) -> np.ndarray:
    """Exit layer (N,) of each row under per-layer thresholds (L,), replayed from layer_embs (L, N, d)."""
    return exits_from_cosines(thresholds, layer_cosines(layer_embs, k))


def check_layer_embs(layer_embs: np.ndarray) -> np.ndarray:
    """layer_embs as a float32 (L, N, d) array with at least one row; else a ValueError naming the shape."""
    embs = np.asarray(layer_embs, dtype=np.float32)
    if embs.ndim != 3 or embs.shape[1] == 0:
        raise ValueError(f"layer_embs: expected a non-empty (L, N, d) array, got shape {embs.shape}")
    return embs


def lagged_cosines(embs: np.ndarray, k: int) -> np.ndarray:
    """(L, N) array with row l-1 = cos(p_l, p_{l-k}); NaN where l <= k. Inputs need not be normalised."""
    norms = np.maximum(np.linalg.norm(embs, axis=-1), 1e-12)
    cos = np.full(embs.shape[:2], np.nan, dtype=np.float64)
    cos[k:] = (embs[k:] * embs[:-k]).sum(-1) / (norms[k:] * norms[:-k])
    return cos


def first_true_layer(passes: np.ndarray, n_layers: int) -> np.ndarray:
    """1-indexed first layer where passes (L, N) is True, else L."""
    hit = passes.any(0)
    return np.where(hit, passes.argmax(0) + 1, n_layers).astype(np.int64)


def layer_cosines(layer_embs: np.ndarray, k: int) -> np.ndarray:
    """(L, N) cos(p_l, p_{l-k}), -inf where l <= k (no test possible)."""
    embs = check_layer_embs(layer_embs)
    if k >= embs.shape[0]:
        return np.full(embs.shape[:2], -np.inf)
    return np.nan_to_num(lagged_cosines(embs, k), nan=-np.inf)


def exits_from_cosines(thresholds: np.ndarray, cosines: np.ndarray) -> np.ndarray:
    """Exit layer (N,): the first l with t_l <= -1 or cos_l >= t_l (l < L), else L."""
    t = np.asarray(thresholds, dtype=np.float64)[:, None]
    passes = (t <= ALWAYS) | (cosines >= t)
    passes[-1] = False
    return first_true_layer(passes, cosines.shape[0])
