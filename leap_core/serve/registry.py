"""The model registry: the early-exit encoder as an MLflow pyfunc model, the deployment gate, promotion by alias.

A query/document Router package (leap_core.query_encoder.package) registers as QueryRouteModel instead: a request
picks its route with params {"role": "query" | "document"} (default "document", the original model).

A registered version carries the metrics the gate needs as a tag (`leap.gate_metrics`, JSON), so a
promotion reads only the registry. Promotion gives the alias `champion` to a version that passes the
deployment checklist (the paper's: exit rate > 0.5, similarity to final >= 0.94 at the target exit
layer, NN@10 >= 0.80 when measured) and is not worse on STS-B (exited) than the current champion
beyond a tolerance; any other version gets `challenger`. Thresholds come from the profile's
`registry:` section (leap_core.config.RegistryConfig).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version as dist_version
from pathlib import Path
from typing import Any, Mapping

import mlflow.pyfunc
import pandas as pd
import pydantic
from filelock import FileLock
from mlflow.exceptions import MlflowException

from leap_core import tracking
from leap_core.policy import check_rule

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
GATE_METRICS_TAG = "leap.gate_metrics"
DECISION_TAG, REASONS_TAG = "leap.decision", "leap.decision_reasons"
# Metric keys the gate reads from an evaluation dict. NN@10: a per-layer list (index l-1 = layer l)
# is read at the target layer; a scalar applies as is.
GATE_KEYS = ("stsb_exited", "stsb_exited_ci", "exit_rate", "mean_exit_layer", "similarity_to_final",
             "nn10_per_layer", "nn10", "policy", "policy_stsb", "policy_layer_reduction", "policy_speedup_bs1",
             "policy_speedup_bs32")
ENCODER_SHA_TAG = "leap.encoder_sha256"  # the encoder folder's content hash: a download is checked against it
POLICY_TAG = "leap.policy"  # what the version serves and its measured speed, for people browsing the registry
TEXT_COLUMN = "text"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # leap_core: the code an MLflow model ships (code_paths)
MODEL_CODE = Path(__file__).with_name("serving_model.py")  # models-from-code: what MLflow runs to build the model
ROUTER_CODE = Path(__file__).with_name("serving_router.py")  # the same for a query/document Router package
INPUT_EXAMPLE = ["A man is playing a guitar.", "Two children play in the snow."]
SERVING_DISTS = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "scipy", "pyyaml", "pydantic")
ROUTER_DISTS = ("sentence-transformers",)  # a Router package is served by sentence-transformers itself
ROLES = ("query", "document")
# A request without a role gets the original: a caller unaware of roles who embeds documents through the endpoint
# keeps the index in the original's space (a wrong default then costs only speed on queries, never quality).
DEFAULT_ROLE = "document"


# ---------------------------------------------------------------- the gate (pure)

@dataclass(frozen=True)
class Decision:
    alias: str  # CHAMPION or CHALLENGER
    reasons: list[str] = field(default_factory=list)  # why not champion; empty for a champion


def target_layer(metrics: Mapping[str, Any]) -> int:
    """The layer the model is deployed to exit at: round(mean_exit_layer), within 1..n_layers."""
    n_layers = len(metrics["similarity_to_final"])
    return min(max(int(round(float(metrics["mean_exit_layer"]))), 1), n_layers)


def ci_half_width(metrics: Mapping[str, Any]) -> float | None:
    """Half the width of `stsb_exited_ci` ([low, high] or leap_core.stats' {"low", "high", ...}); None if unknown."""
    interval = metrics.get("stsb_exited_ci")
    if isinstance(interval, Mapping):
        interval = (interval.get("low"), interval.get("high"))
    if interval is None or any(v is None for v in interval):
        return None
    low, high = (float(v) for v in interval)
    return abs(high - low) / 2 if math.isfinite(low) and math.isfinite(high) else None


def gate_failures(metrics: Mapping[str, Any], gate: Any) -> list[str]:
    """Why `metrics` fail the deployment checklist (empty list: they pass).

    exit_rate > gate.min_exit_rate; similarity_to_final[t-1] >= gate.min_similarity_at_exit and, when
    present, NN@10 at t >= gate.min_nn10, with t = target_layer(metrics). A missing or NaN value fails.
    """
    missing = [key for key in ("exit_rate", "mean_exit_layer", "similarity_to_final") if metrics.get(key) is None]
    if missing:
        return [f"missing metric(s) {missing}"]
    failures = []
    exit_rate = float(metrics["exit_rate"])
    if not exit_rate > gate.min_exit_rate:  # written so that NaN fails
        failures.append(f"exit_rate {exit_rate:.3f} is not above {gate.min_exit_rate}")
    layer = target_layer(metrics)
    similarity = float(metrics["similarity_to_final"][layer - 1])
    if not similarity >= gate.min_similarity_at_exit:
        failures.append(f"similarity to final at layer {layer} is {similarity:.3f} < {gate.min_similarity_at_exit}")
    nn10 = metrics.get("nn10_per_layer")
    nn10 = nn10[layer - 1] if isinstance(nn10, (list, tuple)) else metrics.get("nn10")
    if nn10 is not None and not float(nn10) >= gate.min_nn10:
        failures.append(f"NN@10 at layer {layer} is {float(nn10):.3f} < {gate.min_nn10}")
    return failures


def decide(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None, gate: Any) -> Decision:
    """champion if `candidate` passes the gate and its stsb_exited >= the champion's - tolerance, else challenger.

    tolerance = the candidate's CI half-width when known, else gate.stsb_tolerance; no champion: no comparison.
    """
    reasons = gate_failures(candidate, gate)
    # Each version at the policy it serves (leap calibrate) when both have one, else at the exit rule.
    key = "policy_stsb" if "policy_stsb" in candidate and champion is not None and "policy_stsb" in champion \
        else "stsb_exited"
    score = float(candidate.get(key, math.nan))
    if not math.isfinite(score):
        reasons.append(f"{key} is missing or not a number")
    elif champion is not None:
        best = float(champion[key])
        half = ci_half_width(candidate)
        tolerance = gate.stsb_tolerance if half is None else half
        if score < best - tolerance:
            reasons.append(f"{key} {score:.4f} is below the champion's {best:.4f} by more than {tolerance:.4f}")
    return Decision(CHALLENGER if reasons else CHAMPION, reasons)


# ---------------------------------------------------------------- the pyfunc model

def texts_from(model_input: Any) -> list[str]:
    """The sentences of a pyfunc input: a DataFrame's one column (`text` or unnamed), a Series, a list or a str.

    Anything else — extra columns, a null, a number — is refused, naming the row (never converted: str(None)
    would embed the text "None"). The served model's type hint (list[str]) makes MLflow refuse those first,
    with HTTP 400; this is the same rule for callers in Python.
    """
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            raise ValueError(f"input has columns {list(model_input.columns)}; expected exactly one column of "
                             f"strings (named {TEXT_COLUMN!r} or unnamed)")
        texts = model_input.iloc[:, 0].tolist()
    elif isinstance(model_input, pd.Series):
        texts = model_input.tolist()
    elif isinstance(model_input, str):
        texts = [model_input]
    elif isinstance(model_input, (list, tuple)):
        texts = list(model_input)
    else:
        raise ValueError(f"input is {type(model_input).__name__}; expected a list or column of strings")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            shown = "null" if text is None or (isinstance(text, float) and math.isnan(text)) else repr(text)
            raise ValueError(f"input row {row} is {shown} ({type(text).__name__}); every row must be a string")
    return texts


class Embedded(pydantic.BaseModel):
    """One served row: its normalised embedding and the 1-indexed layer it exited at (None when not asked for)."""

    embedding: list[float]
    exit_layer: int | None = None


def params_example(model_dir: str | Path) -> dict[str, Any]:
    """What a request may set (MLflow's params schema is inferred from it, with these values as defaults):
    mode: "policy" (the calibrated one), "full", "compact" or "fixed:N"; theta: the exit threshold of the rule
    (default: the model's); return_exit_layers: each row's exit layer in the answer."""
    # deferred: at top, importing this module would load safetensors
    from leap_core.model_folder import exit_rule, read_exit_settings

    return {"mode": "policy", "theta": float(exit_rule(read_exit_settings(model_dir))["theta"]),
            "return_exit_layers": True}


class EarlyExitModel(mlflow.pyfunc.PythonModel):
    """Serves leap_core.serve.encoder.EarlyExitEncoder at the folder's policy from the model's `encoder` artifact folder.

    Input: a list of strings (the type hint is the signature: MLflow answers anything else with HTTP 400,
    naming the bad rows). Output: one {embedding, exit_layer} per row. The policy (full, fixed:N, the exit rule
    with theta, k, l_min, or per-layer thresholds) comes from the folder's leap_exit.json, as `leap calibrate
    --save` wrote it; without one, the exit rule ("compact"). Registered as code (serving_model.py), never pickled.
    """

    def load_context(self, context) -> None:
        # deferred: at top, importing this module would load torch, transformers, scipy
        from leap_core.serve.encoder import EarlyExitEncoder
        from leap_core.serve.traffic import TrafficLog

        self.encoder = EarlyExitEncoder.from_pretrained(context.artifacts["encoder"])
        self._by_theta = {self.encoder.theta: self.encoder}
        self.traffic = TrafficLog.from_env()  # LEAP_TRAFFIC_LOG: what `leap monitor` reads

    def _encoder(self, theta: float) -> Any:
        """The encoder at another theta shares the weights; one per theta, so concurrent requests never race."""
        # deferred: at top, importing this module would load torch, transformers, scipy
        from leap_core.serve.encoder import EarlyExitEncoder

        if theta not in self._by_theta:
            base = self.encoder
            check_rule(theta, base.k, base.l_min, base.num_layers, where="params.theta")
            self._by_theta[theta] = EarlyExitEncoder(base.model, base.tokenizer, theta=theta, k=base.k,
                                                     l_min=base.l_min, max_length=base.max_length,
                                                     device=base.device, policy=base.policy)
        return self._by_theta[theta]

    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> list[Embedded]:
        asked = {"mode": "policy", "theta": self.encoder.theta, "return_exit_layers": True, **(params or {})}
        texts = texts_from(model_input)
        try:
            encoder = self._encoder(float(asked["theta"]))
            embeddings, layers = encoder.encode(texts, mode=str(asked["mode"]), return_exit_layers=True)
        except (ValueError, TypeError) as err:  # a bad mode or theta: the caller's error (HTTP 400)
            raise MlflowException.invalid_parameter_value(str(err)) from None
        if getattr(self, "traffic", None) is not None:
            self.traffic.record(texts, layers, encoder.num_layers)
        keep = bool(asked["return_exit_layers"])
        return [Embedded(embedding=row.tolist(), exit_layer=int(layer) if keep else None)
                for row, layer in zip(embeddings, layers)]


def check_role(role: Any) -> str:
    """`role` if it names a route of a Router package ("query" or "document"), else a one-line ValueError."""
    if role not in ROLES:
        raise ValueError(f"params.role {role!r} is not a route: expected one of {list(ROLES)}")
    return role


class QueryRouteModel(mlflow.pyfunc.PythonModel):
    """Serves a Router package (leap_core.query_encoder.package) from the model's `encoder` artifact folder.

    params {"role": "query" | "document"} picks the route: "query" the shallow query encoder, "document" (the
    default, DEFAULT_ROLE) the original model. Input: a list of strings, as EarlyExitModel takes. Output: one
    {embedding, exit_layer} per row, exit_layer None: a route runs all its layers. Registered as code
    (serving_router.py), never pickled.
    """

    def load_context(self, context) -> None:
        # deferred: at top, importing this module would load sentence_transformers
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(context.artifacts["encoder"], device="cpu")

    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> list[Embedded]:
        texts = texts_from(model_input)
        try:
            role = check_role((params or {}).get("role", DEFAULT_ROLE))
        except ValueError as err:  # the caller's error (HTTP 400), as a bad mode is for EarlyExitModel
            raise MlflowException.invalid_parameter_value(str(err)) from None
        encode = self.model.encode_query if role == "query" else self.model.encode_document
        embeddings = encode(texts, convert_to_numpy=True, show_progress_bar=False)
        return [Embedded(embedding=row.tolist()) for row in embeddings]


def pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """What serving needs, pinned to the versions this model was made with (local tags like +cpu dropped)."""
    pins = []
    for dist in SERVING_DISTS + extra:
        try:
            pins.append(f"{dist}=={dist_version(dist).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(dist)
    return pins


def gate_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an evaluation dict that promotion reads, as stored on a model version."""
    return {key: metrics[key] for key in GATE_KEYS if metrics.get(key) is not None}


def served_as(model_dir: str | Path) -> tuple[Path, dict[str, Any], list[str]]:
    """How `model_dir` is served: its models-from-code file, request params example and pip requirements.

    A Router package (query and document routes) takes {"role"}; any other leap folder EarlyExitModel's params.
    """
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.query_encoder.package import is_router_package

    if is_router_package(model_dir):
        return ROUTER_CODE, {"role": DEFAULT_ROLE}, pip_requirements(ROUTER_DISTS)
    return MODEL_CODE, params_example(model_dir), pip_requirements()


def register(model_dir: str | Path, metrics: Mapping[str, Any], run_id: str, model_name: str,
             uri: str | None = None) -> str:
    """Log `model_dir` as a pyfunc model in run `run_id`, register it as a version of `model_name`; returns the version.

    A Router package (leap_core.query_encoder.package) is served by QueryRouteModel (params {"role"}), any other
    folder by EarlyExitModel (served_as).

    The leap_core package travels with the model (code_paths), so serving needs only the pinned
    pip requirements; the version is tagged with gate_metrics(metrics). Re-running it for the same
    run (a resumed flow) returns the version already registered from that run.
    """

    uri = uri or tracking.tracking_uri()
    existing = tracking.client(uri).search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
        log.info("%s version %s is already registered from run %s: reusing it", model_name, version, run_id)
        return version
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    code, params, requirements = served_as(model_dir)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), artifacts={"encoder": str(model_dir)},
            code_paths=[str(PACKAGE_DIR)], pip_requirements=requirements,
            input_example=(INPUT_EXAMPLE, params), registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    # deferred: at top, importing this module would load safetensors
    from leap_core.model_folder import model_fingerprint

    tracking.client(uri).set_model_version_tag(model_name, version, GATE_METRICS_TAG, json.dumps(gate_metrics(metrics)))
    tracking.client(uri).set_model_version_tag(model_name, version, ENCODER_SHA_TAG,
                                               model_fingerprint(model_dir, scope="files"))
    if metrics.get("policy"):
        shown = [metrics["policy"]] + [f"{key.removeprefix('policy_')} {metrics[key]:.3g}" for key in GATE_KEYS
                                       if key.startswith("policy_") and metrics.get(key) is not None]
        tracking.client(uri).set_model_version_tag(model_name, version, POLICY_TAG, ", ".join(shown))
    log.info("registered %s version %s from %s (run %s)", model_name, version, model_dir, run_id)
    return version


# ---------------------------------------------------------------- promotion

def lock_path(uri: str, model_name: str) -> Path:
    """A host-wide lock file per (tracking store, model name)."""
    key = hashlib.sha256(f"{uri}\0{model_name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "leap-registry" / f"{key}.lock"


def _aliases(mlflow_client, model_name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in mlflow_client.get_registered_model(model_name).aliases.items()}


def _stored_metrics(mlflow_client, model_name: str, version: str) -> dict[str, Any]:
    tags = mlflow_client.get_model_version(model_name, version).tags
    if GATE_METRICS_TAG not in tags:
        raise ValueError(f"model {model_name} version {version} has no {GATE_METRICS_TAG} tag: register it with "
                         "leap_core.serve.registry.register")
    return json.loads(tags[GATE_METRICS_TAG])


def promote(model_name: str, version: str | int, gate: Any, uri: str | None = None, mlflow_client: Any = None,
            lock: str | Path | None = None, attempts: int = 3) -> dict[str, Any]:
    """Give version `version` the alias `champion` or `challenger` (see decide); returns what was decided.

    Idempotent: a version that already holds the alias it earns changes nothing. Safe when runs
    promote at once: the read-compare-set runs under a file lock (one host), and after setting the
    alias it is read back; if another writer moved it meanwhile, the decision is made again against
    the new champion. Returns {"version", "alias", "changed", "reasons", "previous_champion"}.
    """

    uri = uri or tracking.tracking_uri()
    mlflow_client = mlflow_client or tracking.client(uri)
    version = str(version)
    candidate = _stored_metrics(mlflow_client, model_name, version)
    path = Path(lock) if lock else lock_path(uri, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=600):
        for _ in range(attempts):
            aliases = _aliases(mlflow_client, model_name)
            current = aliases.get(CHAMPION)
            if current == version:
                return {"version": version, "alias": CHAMPION, "changed": False, "reasons": [],
                        "previous_champion": current}
            champion = _stored_metrics(mlflow_client, model_name, current) if current else None
            decision = decide(candidate, champion, gate)
            changed = aliases.get(decision.alias) != version
            if changed:
                mlflow_client.set_registered_model_alias(model_name, decision.alias, version)
            if decision.alias == CHAMPION and aliases.get(CHALLENGER) == version:
                mlflow_client.delete_registered_model_alias(model_name, CHALLENGER)  # one version, one role
            if _aliases(mlflow_client, model_name).get(CHAMPION) != (version if decision.alias == CHAMPION else current):
                log.warning("the champion of %s moved while version %s was promoted: deciding again", model_name, version)
                continue
            mlflow_client.set_model_version_tag(model_name, version, DECISION_TAG, decision.alias)
            mlflow_client.set_model_version_tag(model_name, version, REASONS_TAG, "; ".join(decision.reasons)[:5000])
            log.info("%s version %s -> %s%s", model_name, version, decision.alias,
                     f" ({'; '.join(decision.reasons)})" if decision.reasons else "")
            return {"version": version, "alias": decision.alias, "changed": changed, "reasons": decision.reasons,
                    "previous_champion": current}
    raise RuntimeError(f"could not promote {model_name} version {version}: its champion kept moving ({attempts} tries)")


def promote_if_won(model_name: str, version: str | int, won: bool, reasons: list[str], gated_against: str | None,
                   uri: str | None = None, lock: str | Path | None = None) -> dict[str, Any]:
    """A retrained version becomes `champion` only if it `won` against the champion it was judged with (version
    `gated_against`, None: there was none); otherwise `challenger`, the champion untouched. If the champion moved
    since that judgement, the win is stale: challenger, and the reason says so. Under the promotion lock."""

    uri = uri or tracking.tracking_uri()
    mlflow_client = tracking.client(uri)
    version, reasons = str(version), list(reasons)
    path = Path(lock) if lock else lock_path(uri, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=600):
        current = _aliases(mlflow_client, model_name).get(CHAMPION)
        if won and current != gated_against:
            reasons.append(f"the champion moved from version {gated_against} to {current} since the gate: judge again")
        alias = CHAMPION if won and not reasons else CHALLENGER
        mlflow_client.set_registered_model_alias(model_name, alias, version)
        mlflow_client.set_model_version_tag(model_name, version, DECISION_TAG, alias)
        mlflow_client.set_model_version_tag(model_name, version, REASONS_TAG, "; ".join(reasons)[:5000])
    log.info("%s version %s -> %s%s", model_name, version, alias, f" ({'; '.join(reasons)})" if reasons else "")
    return {"version": version, "alias": alias, "reasons": reasons, "previous_champion": current}
