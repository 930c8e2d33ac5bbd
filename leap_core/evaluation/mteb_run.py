"""MTEB on a leap model run as a plain SentenceTransformer (st_module), with the exit statistics of that same run.

Tasks load from the hub as MTEB does; the ones this repository's data holds (LOCAL_TASKS) can be fed from the data
directory instead, so they run offline. Exit layers are recorded per task while MTEB encodes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from leap_core.evaluation.layers import exit_statistics

log = logging.getLogger(__name__)

# MTEB task -> its data in the data directory (the same pairs and scores as the task's hub dataset split).
LOCAL_TASKS = {"STSBenchmark": ("test", "stsb/test.tsv")}


def local_task(name: str, data_dir: str | Path) -> Any:
    """MTEB's task `name` with its evaluation split read from the data directory (no hub access)."""
    import mteb
    from datasets import Dataset

    from leap_core.data import read_sts

    if name not in LOCAL_TASKS:
        raise ValueError(f"MTEB task {name!r}: no local copy (local: {sorted(LOCAL_TASKS)}); drop --local to load "
                         "it from the hub")
    split, relative = LOCAL_TASKS[name]
    pairs = read_sts(Path(data_dir) / relative)
    task = mteb.get_task(name)
    rows = {"sentence1": list(pairs.sentences1), "sentence2": list(pairs.sentences2),
            "score": [float(score) for score in pairs.scores]}
    task.dataset = {"default": {split: Dataset.from_dict(rows)}}
    task.data_loaded = True
    return task


def run_mteb(model_path: str | Path, task_names: Sequence[str], data_dir: str | Path | None = None,
             local: bool = True, exit_mode: str | None = None, batch_size: int = 32,
             **exit_overrides: Any) -> dict[str, Any]:
    """Each task through mteb.evaluate with the model exiting as it serves; per task its scores (MTEB's own
    result dict) and the exit statistics of every text MTEB encoded for it."""
    import mteb

    from leap_core.st_module import load_sentence_transformer

    model = load_sentence_transformer(model_path, exit_mode=exit_mode, **exit_overrides)
    engine = model[0].engine
    tasks = ([local_task(name, data_dir) for name in task_names] if local
             else list(mteb.get_tasks(tasks=list(task_names))))
    results = {}
    for task in tasks:
        model[0].exit_log = []
        outcome = mteb.evaluate(model, [task], cache=None, show_progress_bar=False,
                                encode_kwargs={"batch_size": batch_size})
        task_result = outcome.task_results[0]
        layers = np.concatenate(model[0].exit_log)
        results[task.metadata.name] = {
            "main_score": float(task_result.get_score()), "main_metric": task.metadata.main_score,
            "scores": task_result.scores, "data": "local" if local else "hub",
            "exit": {**exit_statistics(layers, engine.num_layers), "n_texts": int(layers.size)}}
        log.info("%s: %s %.4f, exit rate %.3f", task.metadata.name, task.metadata.main_score,
                 results[task.metadata.name]["main_score"], results[task.metadata.name]["exit"]["exit_rate"])
    model[0].exit_log = None
    return {"model": str(model_path), "mode": model[0]._mode(None), **engine.rule, "mteb_version": mteb.__version__,
            "tasks": results}


def mteb_table(result: dict[str, Any]) -> str:
    """`leap mteb`: one row per task, its main score beside the exit statistics of the same run."""
    from leap_core.report.markdown import fmt, table

    lines = [f"{result['model']} through MTEB at mode {result['mode']} (theta={result['theta']} k={result['k']} "
             f"l_min={result['l_min']}), mteb {result['mteb_version']}", ""]
    rows = [[name, task["main_metric"], fmt(task["main_score"], ".4f"), fmt(task["exit"]["exit_rate"], ".1%"),
             fmt(task["exit"]["mean_exit_layer"], ".2f"), fmt(task["exit"]["layer_reduction"], ".2f") + "x",
             task["exit"]["n_texts"], task["data"]] for name, task in result["tasks"].items()]
    lines += table(["task", "metric", "score", "exit rate", "mean exit layer", "layer reduction", "texts", "data"],
                   rows, ["---", "---", "---:", "---:", "---:", "---:", "---:", "---"])
    return "\n".join(lines).rstrip() + "\n"
