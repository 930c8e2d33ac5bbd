"""What the Metaflow flow's steps need besides the experiment stages: the arm plan, file references
passed between steps instead of data, the outcome of each arm, and the CPU threads a task may use.

Kept here (not in flows/) so the flow stays a list of thin steps and all of this is tested in process.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from leap_core import storage
from leap_core.io import cache_root, sha256_file, temp_dir_beside
from leap_core.model_folder import model_fingerprint
from leap_core.storage import is_s3

LEAP_ARM = "leap"  # the arm whose best seed is registered, benchmarked and retrieval-tested
BASELINE_ARM = "baseline"


def plan_arms(profile: Any) -> list[dict[str, Any]]:
    """Every (arm, seed) to train: main arms with every seed; ablation and sweep arms once, with the first seed."""
    reduced = set(profile.ablation_arms) | set(profile.sweep_arms)
    plan = [{"arm": arm, "seed": seed, "group": "main"}
            for seed in profile.seeds for arm in profile.arms if arm not in reduced]
    plan += [{"arm": arm, "seed": profile.seeds[0], "group": "ablation"} for arm in profile.ablation_arms]
    plan += [{"arm": arm, "seed": profile.seeds[0], "group": "sweep"} for arm in profile.sweep_arms]
    return plan


def _digest(path: Path) -> str:
    """A file's sha256; a folder's model_folder.model_fingerprint over every file but its serving settings (leap
    calibrate --save writes leap_exit.json in the promote step, the card comes once its numbers are measured)."""

    return model_fingerprint(path, scope="files") if path.is_dir() else sha256_file(path)


def output_location(output_dir: str) -> tuple[str, str | None]:
    """(local run folder, store) of an --output-dir: s3://bucket/prefix is the store every step hands its files
    through, and runs train in a scratch folder of the task's own machine; a path is a disk every step sees."""

    if is_s3(output_dir):
        return str(cache_root() / "runs"), output_dir.rstrip("/")
    return output_dir, None


def task_profile(profile: Any, store: str | None) -> Any:
    """The profile as one task uses it: with a store, runs go to the scratch folder of the task's own machine
    (a step retried or resumed elsewhere fetches what it needs from the store, never from another's disk)."""
    if not store:
        return profile

    return dataclasses.replace(profile, output_dir=output_location(store)[0])


def file_ref(path: str | Path, store: str | None = None) -> dict[str, Any]:
    """{"uri", "sha256"} of a file or folder: what an artifact holds instead of the data.

    store (s3://bucket/prefix): the content is put there, under its own sha256, and the URI points there, so the
    next step needs no disk in common with this one; else a file:// URI (a volume every step sees).
    """
    path = Path(path).resolve()
    digest = _digest(path)
    if not store:
        return {"uri": path.as_uri(), "sha256": digest}

    uri = f"{store.rstrip('/')}/{digest[:16]}/{path.name}"
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    hashes = {}
    for file in files:
        hashes[file.relative_to(path).as_posix()] = storage.upload(
            file, uri if file == path else f"{uri}/{file.relative_to(path).as_posix()}")
    # Each file's sha256 travels in the reference: the reader checks the bytes against it, never against the
    # object's own metadata (whoever can replace an object can replace its metadata with it).
    return {"uri": uri, "sha256": digest, "files": list(hashes) if path.is_dir() else [],
            "file_sha256": hashes if path.is_dir() else {}}


def _fetch(ref: dict[str, Any]) -> Path:
    """An s3:// reference's content in this machine's artifact cache, every byte checked against the reference
    (each file's sha256 in it; a folder's digest too) before it is put in place: a mismatch leaves nothing."""

    uri = ref["uri"]
    target = cache_root() / "artifacts" / ref["sha256"][:16] / uri.rstrip("/").rsplit("/", 1)[-1]
    if target.exists() and _digest(target) == ref["sha256"]:
        return target
    if not ref.get("files"):
        storage.download(uri, target, sha256=ref["sha256"])  # a file's digest is its sha256
        return target
    staging = temp_dir_beside(target)
    try:
        for name in ref["files"]:
            # A reference made before file_sha256 existed: the folder digest below is still the reference's.
            storage.download(f"{uri}/{name}", staging / name, sha256=ref.get("file_sha256", {}).get(name))
        if _digest(staging) != ref["sha256"]:
            raise ValueError(f"{uri}: folder content is not the reference's sha256 {ref['sha256'][:12]}: not using it")
        _replace_cached(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _replace_cached(staging: Path, target: Path) -> None:
    """Put a verified download in place of a stale copy in the artifact cache (leap's own cache, keyed by sha256)."""
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(staging, target)


def local_path(ref: dict[str, Any]) -> Path:
    """The local path of a file reference, after checking that its content still has the recorded hash.

    An s3:// reference is downloaded first (into the leap cache, keyed by its sha256).
    """

    if is_s3(ref["uri"]):
        path = _fetch(ref)
    else:
        parsed = urlparse(ref["uri"])
        if parsed.scheme != "file":
            raise ValueError(f"{ref['uri']}: expected a file:// or s3:// URI")
        path = Path(url2pathname(parsed.path))
    if not path.exists():
        raise FileNotFoundError(f"{path} (from an earlier step) does not exist on this machine")
    digest = _digest(path)
    if digest != ref["sha256"]:
        raise ValueError(f"{path} changed since it was written: sha256 {digest[:12]}, expected {ref['sha256'][:12]}")
    return path


def failure_text(failure: Any) -> str | None:
    return None if failure is None else f"{failure.type}: {failure.exception}"


def arm_result(task: Any) -> dict[str, Any]:
    """One arm's outcome from its evaluate task: identity, metrics or the step that failed and why."""
    spec = getattr(task, "spec", None) or task.input
    train_failure = failure_text(getattr(task, "train_failure", None))
    eval_failure = failure_text(getattr(task, "eval_failure", None))
    failed_step = "train" if train_failure else "evaluate" if eval_failure else None
    return {**spec, "status": "failed" if failed_step else "ok", "failed_step": failed_step,
            "error": train_failure or eval_failure, "metrics": getattr(task, "metrics", None),
            "model": getattr(task, "model", None), "mlflow_run_id": getattr(task, "arm_run_id", None),
            "train_seconds": getattr(task, "train_seconds", None)}


def best_result(results: list[dict[str, Any]], arm: str = LEAP_ARM,
                key: str = "stsb_exited") -> dict[str, Any] | None:
    """The successful seed of `arm` with the highest `key` (None if there is none)."""
    scored = [r for r in results if r["arm"] == arm and r["status"] == "ok"
              and math.isfinite(float((r["metrics"] or {}).get(key, math.nan)))]
    return max(scored, key=lambda r: r["metrics"][key], default=None)


def task_threads() -> int:
    """torch CPU threads for one task: $LEAP_TORCH_THREADS, else the cores shared among parallel workers.

    Metaflow runs up to $METAFLOW_RUN_MAX_WORKERS tasks at once (the flow defaults it to the core
    count), and torch's default of one thread per core in every task oversubscribes the machine.
    """
    explicit = os.environ.get("LEAP_TORCH_THREADS")
    if explicit:
        return max(1, int(explicit))
    workers = int(os.environ.get("METAFLOW_RUN_MAX_WORKERS") or 1)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def step_usage(flow_name: str, run_id: str, origin_run_id: str | None = None) -> list[dict[str, Any]]:
    """Wall time and peak memory of every task of this run that has finished so far (Metaflow's metadata).

    After `resume`, steps cloned from the origin run are timed from the origin run's tasks.
    """
    # deferred: at top, importing this module would load metaflow
    from metaflow import Run, namespace

    namespace(None)

    def finished_tasks(pathspec: str) -> dict:
        found = {}
        for step_ in Run(pathspec):
            tasks = [task for task in step_ if task.finished and task.successful]
            if tasks:
                found[step_.id] = tasks
        return found

    tasks = finished_tasks(f"{flow_name}/{run_id}")
    if origin_run_id:
        origin = finished_tasks(f"{flow_name}/{origin_run_id}")
        tasks = {**tasks, **{name: found for name, found in origin.items() if name not in ("report", "promote", "end")}}
    rows = []
    for name, found in tasks.items():
        for task in found:
            created, finished = task.created_at, task.finished_at
            rows.append({"step": name, "task": task.id, "created_at": created.isoformat() if created else "",
                         "seconds": (finished - created).total_seconds() if created and finished else None,
                         "peak_rss_mb": task.data.peak_rss_mb if "peak_rss_mb" in task else None})
    return sorted(rows, key=lambda row: row["created_at"])
