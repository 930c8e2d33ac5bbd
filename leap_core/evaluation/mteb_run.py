"""MTEB on a leap model run as a plain SentenceTransformer (st_module), with the exit statistics of that same run.

Tasks load from the hub as MTEB does; the ones this repository's data holds (LOCAL_TASKS: STSBenchmark, SciFact,
NFCorpus) are fed from the data directory instead, so they run offline. Exit layers are recorded per task while
MTEB encodes. With a results folder, MTEB itself writes its results there in its own layout
(results/<model>/<revision>/<Task>.json and model_meta.json), which mteb.ResultCache(folder).load_results reads
and which can be compared with, or submitted beside, other models' results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from leap_core.evaluation.layers import exit_statistics

log = logging.getLogger(__name__)

# MTEB task -> (split, its data in the data directory): the same pairs / corpus, queries and judgments as the
# task's hub dataset split (STS-B test; BEIR SciFact and NFCorpus test, ../shared/data/SOURCES.md).
LOCAL_TASKS = {"STSBenchmark": ("test", "stsb/test.tsv"), "SciFact": ("test", "beir/scifact"),
               "NFCorpus": ("test", "beir/nfcorpus")}


def local_task(name: str, data_dir: str | Path) -> Any:
    """MTEB's task `name` with its evaluation split read from the data directory (no hub access)."""
    # deferred: at top, importing this module would load mteb
    import mteb

    if name not in LOCAL_TASKS:
        raise ValueError(f"MTEB task {name!r}: no local copy (local: {sorted(LOCAL_TASKS)}); pass --hub to load it "
                         "from the hub")
    split, relative = LOCAL_TASKS[name]
    task = mteb.get_task(name)
    source = Path(data_dir) / relative
    data = _retrieval_split(source, split) if task.metadata.type == "Retrieval" else _sts_split(source)
    task.dataset = {"default": {split: data}}
    task.data_loaded = True
    return task


def _sts_split(file: Path) -> Any:
    """An STS task's split: sentence1, sentence2, score."""
    # deferred: at top, importing this module would load datasets, pyarrow
    from datasets import Dataset

    from leap_core.data import read_sts

    pairs = read_sts(file)
    return Dataset.from_dict({"sentence1": list(pairs.sentences1), "sentence2": list(pairs.sentences2),
                              "score": [float(score) for score in pairs.scores]})


def _retrieval_split(folder: Path, split: str) -> dict[str, Any]:
    """A retrieval task's split from a BEIR folder (data.beir.load_beir), as MTEB's RetrievalSplitData."""
    # deferred: at top, importing this module would load datasets, pyarrow
    from datasets import Dataset

    from leap_core.data.beir import load_beir

    corpus, queries, qrels = load_beir(folder, split=split)
    return {"corpus": Dataset.from_dict({"id": list(corpus), "title": [doc.get("title", "") for doc in corpus.values()],
                                         "text": [doc["text"] for doc in corpus.values()]}),
            "queries": Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
            "relevant_docs": {qid: {doc: int(score) for doc, score in docs.items()} for qid, docs in qrels.items()},
            "top_ranked": None}


def model_meta(model: Any, folder: Path, name: str, experiment: dict[str, Any] | None) -> Any:
    """MTEB's ModelMeta of the run: name, weights revision, base model, license and language from the folder's card,
    and the exit settings as experiment_kwargs when they are not the folder's own (so results stay apart)."""
    # deferred: at top, importing this module would load mteb, safetensors
    from mteb.models.model_meta import ModelMeta

    from leap_core.model_folder import CARD_FILE, model_fingerprint

    card = {}
    if (folder / CARD_FILE).is_file():
        # deferred: at top, importing this module would load huggingface_hub
        from huggingface_hub import metadata_load

        card = metadata_load(folder / CARD_FILE) or {}
    meta = ModelMeta.from_sentence_transformer_model(model, fill_missing=False)
    update = {"name": name, "revision": model_fingerprint(folder)[:12], "languages": ["eng-Latn"],
              "adapted_from": card.get("base_model"), "open_weights": True,
              "n_parameters": sum(p.numel() for p in model.parameters()), "experiment_kwargs": experiment or None}
    if card.get("license"):
        update["license"] = card["license"]
    return meta.model_copy(update=update)


def run_mteb(model_path: str | Path, task_names: Sequence[str], data_dir: str | Path | None = None,
             local: bool = True, exit_mode: str | None = None, batch_size: int = 32,
             results_dir: str | Path | None = None, **exit_overrides: Any) -> dict[str, Any]:
    """Each task through mteb.evaluate with the model exiting as it serves; per task its scores (MTEB's own
    result dict) and the exit statistics of every text MTEB encoded for it. results_dir: MTEB writes its results
    folder there (ResultCache layout), each task run again rather than read back."""
    # deferred: at top, importing this module would load torch, transformers, sentence_transformers
    import mteb
    from mteb.models import SentenceTransformerEncoderWrapper

    from leap_core.serve.st_module import load_sentence_transformer, local_folder

    folder = local_folder(str(model_path), "", {})
    model = load_sentence_transformer(model_path, exit_mode=exit_mode, **exit_overrides)
    engine = model[0].engine
    name = _meta_name(str(model_path), folder)
    wrapped = SentenceTransformerEncoderWrapper(model)
    experiment = {key: value for key, value in {"exit_mode": exit_mode, **exit_overrides}.items() if value is not None}
    wrapped.mteb_model_meta = model_meta(model, folder, name, experiment)
    cache = mteb.ResultCache(results_dir) if results_dir is not None else None
    tasks = ([local_task(task, data_dir) for task in task_names] if local
             else list(mteb.get_tasks(tasks=list(task_names))))
    results = {}
    for task in tasks:
        model[0].exit_log = []
        outcome = mteb.evaluate(wrapped, [task], cache=cache, overwrite_strategy="always", show_progress_bar=False,
                                encode_kwargs={"batch_size": batch_size})
        results[task.metadata.name] = _task_entry(task, outcome.task_results[0], model[0].exit_log,
                                                  engine.num_layers, local)
    model[0].exit_log = None
    return {"model": str(model_path), "mteb_name": name, "mode": model[0]._mode(None), **engine.rule,
            "mteb_version": mteb.__version__, "results_dir": None if results_dir is None else str(results_dir),
            "tasks": results}


def _meta_name(given: str, folder: Path) -> str:
    """The model's name in MTEB's results: a hub id as it is; a local folder as leap/<its name>."""
    if not Path(given).is_dir():
        return given
    return "leap/" + (folder.parent.name if folder.name == "model" else folder.name)


def _task_entry(task: Any, task_result: Any, exit_log: list[np.ndarray], n_layers: int, local: bool) -> dict:
    """One task's line of the JSON: MTEB's scores beside the exit statistics of the texts it encoded."""
    layers = np.concatenate(exit_log)
    entry = {"main_score": float(task_result.get_score()), "main_metric": task.metadata.main_score,
             "scores": task_result.scores, "data": "local" if local else "hub",
             "exit": {**exit_statistics(layers, n_layers), "n_texts": int(layers.size)}}
    log.info("%s: %s %.4f, exit rate %.3f", task.metadata.name, task.metadata.main_score, entry["main_score"],
             entry["exit"]["exit_rate"])
    return entry
