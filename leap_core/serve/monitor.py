"""Is the served model still seeing the traffic it was calibrated for? The paper's deployment alerts, measured.

Alert when the mean exit layer of the traffic moves more than MAX_DEPTH_SHIFT layers from the reference's, or when
NN@10 of the served embeddings against full depth, re-measured on a sample of the traffic, falls more than
MAX_NN10_DROP (relative) below the reference's. PSI of the exit-layer distributions is reported beside them.
The reference is the model's depth profile on texts like those it was calibrated on (leap_reference.json in the
model folder, or measured on the texts given).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from leap_core.evaluation.neighbours import knn, overlap
from leap_core.io import note_in_manifest, write_json_atomic, writer_lock
from leap_core.model_folder import REFERENCE_FILE
from leap_core.schemas import ReferenceFile, read_schema_file
from leap_core.serve.alerts import MAX_DEPTH_SHIFT, MAX_NN10_DROP, PSI_MAJOR

NN_SAMPLE = 1000  # texts re-encoded at full depth to measure NN@10 (k = 10 needs at least 11)
ALERT_EVENT = "leap_monitor_alert"  # the Argo Event an alert publishes; RetrainFlow is triggered by it (@trigger)
ALERT_EXIT_CODE = 3  # `leap monitor`'s exit status on an alert: apart from errors (2), so cron retrains on alerts only
# Fewer logged rows than this get a warning beside the verdict: the mean exit layer's standard error is up to
# (L - 1) / (2 sqrt(n)), 0.39 layers for L = 12 at n = 200, already 40% of the MAX_DEPTH_SHIFT it is judged by.
MIN_ROWS = 200

log = logging.getLogger(__name__)


def depth_profile(exit_layers: Sequence[int], n_layers: int) -> dict[str, Any]:
    """Share of rows leaving at each layer 1..L, their mean exit layer and count."""
    layers = np.asarray(exit_layers, dtype=np.int64)
    if layers.size == 0 or layers.min() < 1 or layers.max() > n_layers:
        raise ValueError(f"exit layers: expected a non-empty list in 1..{n_layers}")
    return {"exit_distribution": (np.bincount(layers - 1, minlength=n_layers) / layers.size).tolist(),
            "mean_exit_layer": float(layers.mean()), "n": int(layers.size), "n_layers": n_layers}


def psi(reference: Sequence[float], actual: Sequence[float], floor: float = 1e-4) -> float:
    """Population stability index sum((a - r) ln(a / r)) over layers, shares floored so an empty layer is finite."""
    r = np.maximum(np.asarray(reference, dtype=np.float64), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    return float(((a - r) * np.log(a / r)).sum())


def served_nn10(encoder: Any, texts: Sequence[str], k: int = 10, served: np.ndarray | None = None) -> float | None:
    """Mean NN@k of the served embeddings (the encoder's policy; `served` when already encoded) against full depth
    on the first NN_SAMPLE `texts` (None: too few)."""
    texts = list(texts)[:NN_SAMPLE]
    if len(texts) <= k:
        return None
    full = encoder.encode(texts, mode="full")
    served = served[:NN_SAMPLE] if served is not None else encoder.encode(texts, mode="policy")
    return float(overlap(knn(served, k), knn(full, k)).mean())


def reference_profile(encoder: Any, texts: Sequence[str], source: str) -> dict[str, Any]:
    """The model's depth profile and served NN@10 on reference texts (what monitoring compares traffic with)."""
    served, layers = encoder.encode(list(texts), mode="policy", return_exit_layers=True)
    return {**depth_profile(layers, encoder.num_layers), "nn10": served_nn10(encoder, texts, served=served),
            "source": source,
            "policy": encoder.policy.to_dict()}


def compare(reference: Mapping[str, Any], exit_layers: Sequence[int], sample_texts: Sequence[str],
            encoder: Any) -> dict[str, Any]:
    """The traffic against the reference: depth shift, PSI, NN@10 on the sampled texts, which alerts fire, and
    warnings on a sample too small to judge by."""
    traffic = depth_profile(exit_layers, int(reference["n_layers"]))
    shift = traffic["mean_exit_layer"] - reference["mean_exit_layer"]
    nn10 = served_nn10(encoder, sample_texts)
    floor = (1 - MAX_NN10_DROP) * reference["nn10"] if reference.get("nn10") is not None else None
    alerts = []
    if abs(shift) > MAX_DEPTH_SHIFT:
        alerts.append(f"mean exit layer moved {shift:+.2f} layers (limit {MAX_DEPTH_SHIFT:g})")
    if nn10 is not None and floor is not None and nn10 < floor:
        alerts.append(f"NN@10 vs full depth {nn10:.3f} < {floor:.3f} ({MAX_NN10_DROP:.0%} below the reference's "
                      f"{reference['nn10']:.3f})")
    return {"reference": dict(reference), "traffic": {**traffic, "nn10": nn10, "nn10_sample": min(len(sample_texts),
                                                                                                  NN_SAMPLE)},
            "depth_shift": shift, "psi": psi(reference["exit_distribution"], traffic["exit_distribution"]),
            "rules": {"max_depth_shift": MAX_DEPTH_SHIFT, "max_nn10_drop": MAX_NN10_DROP, "psi_major": PSI_MAJOR,
                      "min_rows": MIN_ROWS},
            "alerts": alerts, "alert": bool(alerts), "warnings": sample_warnings(traffic["n"], len(sample_texts))}


def sample_warnings(rows: int, texts: int) -> list[str]:
    """What the verdict cannot see: too few rows for the depth rule, too few sampled texts for NN@10."""
    warnings = []
    if rows < MIN_ROWS:
        warnings.append(f"only {rows} logged rows (fewer than {MIN_ROWS}): the mean exit layer is too noisy to "
                        "judge a shift by; collect more traffic before trusting the verdict")
    if texts <= 10:
        warnings.append(f"only {texts} logged texts: NN@10 needs 11 or more (raise LEAP_TRAFFIC_SAMPLE); not measured")
    return warnings


def read_reference(folder: Path, n_layers: int) -> dict[str, Any]:
    """The folder's saved reference, checked (schemas.ReferenceFile) and for a model of `n_layers` layers."""

    saved = folder / REFERENCE_FILE
    if not saved.is_file():
        raise ValueError(f"{folder}: no {REFERENCE_FILE}; give --reference-texts (texts like those the model was "
                         "calibrated on) and --save-reference once")
    return read_schema_file(saved, ReferenceFile, n_layers=n_layers)


def save_reference(folder: Path, reference: Mapping[str, Any]) -> Path:
    """Write the reference into the model folder under its writer lock, listed in its manifest if leap made it."""

    with writer_lock(folder, what="writer of the model folder"):  # refused while calibrate --save etc. hold it
        write_json_atomic(folder / REFERENCE_FILE, dict(reference))
        note_in_manifest(folder, REFERENCE_FILE)
    return folder / REFERENCE_FILE


def traffic_exit_layers(table: Any, traffic: str, n_layers: int) -> list[int]:
    """The log's exit layers, for a model of `n_layers` layers; a log it cannot judge is named."""
    if table.num_rows == 0:
        raise ValueError(f"{traffic}: the traffic log holds 0 rows: nothing to compare with the reference")
    logged = set(table.column("n_layers").to_pylist())
    if logged != {n_layers}:
        raise ValueError(f"{traffic}: logged by a model of {sorted(logged)} layers; the model has {n_layers}")
    layers = table.column("exit_layer").to_pylist()
    outside = sorted({layer for layer in layers if not 1 <= layer <= n_layers})
    if outside:
        raise ValueError(f"{traffic}: exit layers {outside[:5]} outside 1..{n_layers}")
    return layers


def monitor(model: str | Path, traffic: str, reference_texts: Sequence[str] | None = None,
            reference_source: str = "", save_reference_file: bool = False) -> dict[str, Any]:
    """`leap monitor`: the traffic log at `traffic` against the model's reference (saved, or measured now)."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.models import resolve_model
    from leap_core.serve.encoder import EarlyExitEncoder
    from leap_core.serve.traffic import read_traffic

    folder = resolve_model(str(model))
    encoder = EarlyExitEncoder.from_pretrained(folder)
    if reference_texts is not None:
        reference = reference_profile(encoder, reference_texts, reference_source)
        if save_reference_file:
            save_reference(folder, reference)
    else:
        reference = read_reference(folder, encoder.num_layers)
    table = read_traffic(traffic)
    layers = traffic_exit_layers(table, traffic, encoder.num_layers)
    texts = [text for text in table.column("text").to_pylist() if text is not None]
    result = {"model": str(model), "traffic_log": traffic, **compare(reference, layers, texts, encoder)}
    for warning in result["warnings"]:
        log.warning("%s: %s", traffic, warning)
    return result


def prometheus(result: Mapping[str, Any]) -> str:
    """The metrics in Prometheus' text exposition format, for a service to export."""
    now, ref = result["traffic"], result["reference"]
    metrics = [("leap_exit_mean_layer", "gauge", "mean exit layer", {"source": "traffic"}, now["mean_exit_layer"]),
               ("leap_exit_mean_layer", None, None, {"source": "reference"}, ref["mean_exit_layer"]),
               ("leap_exit_depth_shift_layers", "gauge", "traffic minus reference mean exit layer", {},
                result["depth_shift"]),
               ("leap_exit_psi", "gauge", "PSI of the exit-layer distributions", {}, result["psi"]),
               ("leap_nn10_vs_full", "gauge", "NN@10 of served vs full-depth embeddings", {"source": "traffic"},
                now["nn10"]),
               ("leap_nn10_vs_full", None, None, {"source": "reference"}, ref.get("nn10")),
               ("leap_monitor_alert", "gauge", "1 when a deployment alert fires", {}, float(result["alert"]))]
    lines = []
    for name, kind, help_text, labels, value in metrics:
        if kind:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        shown = "NaN" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
        label_text = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        lines.append(f"{name}{label_text} {shown}")
    return "\n".join(lines) + "\n"


def publish_alert(result: Mapping[str, Any], url: str | None = None) -> str:
    """Publish ALERT_EVENT to the Argo Events webhook (Metaflow's ARGO_EVENTS_WEBHOOK_URL, or `url`); its payload's
    `traffic` becomes RetrainFlow's --traffic. Returns the event id; raises when the webhook cannot be reached."""
    # deferred: at top, importing this module would load metaflow
    from metaflow.integrations import ArgoEvent
    from metaflow.metaflow_config import ARGO_EVENTS_WEBHOOK_URL

    url = url or os.environ.get("METAFLOW_ARGO_EVENTS_WEBHOOK_URL") or ARGO_EVENTS_WEBHOOK_URL  # env: as set now
    if not url:
        raise ValueError("no Argo Events webhook: set METAFLOW_ARGO_EVENTS_WEBHOOK_URL (Metaflow's configuration)")
    payload = {"model": str(result["model"]), "traffic": str(result["traffic_log"]),
               "alerts": "; ".join(result["alerts"])}
    return ArgoEvent(ALERT_EVENT, url=url).publish(payload=payload, ignore_errors=False)
