"""Judge query encoders on one BEIR folder: raw cut, ridge head and the trained recipe at each depth.

For MODEL and a BEIR folder: the original's index (cached), the training text (the folder's non-test queries or
another source, plus pseudo-queries from the corpus), a dev slice of the real query text for stopping and for
choosing the depth (agreement with the original's top-10), and the test queries, measured once per row against
the original's documents. Relevance labels are read only to score the test queries.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from leap_core.data.beir import load_beir
from leap_core.data.corpus import sentence_key
from leap_core.query_encoder.evaluate import compare_row, retrieval_row, topk_overlap
from leap_core.query_encoder.fit import layer_pools, original_pools, train_at_depth
from leap_core.query_encoder.index import DocumentIndex, build_index
from leap_core.query_encoder.model import apply_head, fit_ridge, save_query_encoder
from leap_core.query_encoder.sources import read_corpus, read_queries, training_text
from leap_core.query_encoder.train import QueryEncoderConfig

log = logging.getLogger(__name__)


@dataclass
class SetPlan:
    """One BEIR folder's experiment: where the training text comes from, how much, and the depths to train."""

    folder: str
    train_source: str | None = None  # None: the folder's own queries, less its test queries
    n_pseudo: int = 10000  # titles and sentences of the folder's documents added as pseudo-queries (0: none)
    dev_size: int = 200  # real query texts held out to stop training and choose the depth
    depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    trained_depths: list[int] | None = None  # depths the recipe trains (None: every depth); the rest get
    # the raw cut and ridge rows only, which cost seconds where a deep model's recipe costs an hour
    steps: dict[int, int] = field(default_factory=dict)  # per-depth steps (default: config.steps)
    zero_shot_depths: list[int] = field(default_factory=list)  # also trained on pseudo-queries alone
    zero_shot_steps: int | None = None  # their steps (default: the depth's steps)
    seed: int = 0


@dataclass
class Prepared:
    """What every row of one set shares: the index, test queries and scores, train/dev texts and their pools."""

    name: str
    index: DocumentIndex
    test_ids: list[str]
    test_pools: np.ndarray
    qrels: dict
    original: dict[str, Any]
    train: dict[str, np.ndarray]  # "real", "pseudo", "dev": (L, n, d) pools
    texts: dict[str, list[str]]  # "real", "pseudo", "dev", "test"
    dev_top: np.ndarray


def prepare(model: str, plan: SetPlan, cache_dir: Path) -> Prepared:
    """Index, test queries, training and dev text and the original's pools of all of them; no training, dev or
    pseudo-query text equals (on sentence_key) a test query's."""
    name = Path(plan.folder).name
    index = build_index(model, plan.folder, cache_dir)
    _, queries, qrels = load_beir(plan.folder, "test", cache_dir=cache_dir)
    test_ids = [q for q in queries if q in qrels]
    test_texts = [queries[q] for q in test_ids]
    corpus, banned = read_corpus(plan.folder), {sentence_key(t) for t in test_texts}
    real = [t for t in read_queries(plan.train_source or plan.folder) if sentence_key(t) not in banned]
    real, dev, pseudo = training_text(real, corpus, plan.n_pseudo, plan.dev_size, plan.seed, held_out=test_texts)
    embedder = original_pools(model, cache_dir)
    texts = {"real": real, "pseudo": pseudo, "dev": dev}
    pools = {key: embedder.layers(f"{name}/{key}", value) for key, value in texts.items() if value}
    pools.update({key: np.zeros((0,)) for key, value in texts.items() if not value})
    test_pools = embedder.layers(f"{name}/test", test_texts)
    texts["test"] = test_texts
    original = retrieval_row(index, test_pools[-1], test_ids, qrels)
    log.info("%s: %d real train, %d pseudo, %d dev, %d test queries; original NDCG@10 %.4f", name, len(real),
             len(pseudo), len(dev), len(test_ids), original["ndcg@10"])
    _, dev_top = index.topk(pools["dev"][-1], 10)
    return Prepared(name, index, test_ids, test_pools, qrels, original, pools, texts, dev_top)


def _train_pools(prep: Prepared, keys: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """Texts and (L, n, d) pools of the chosen training parts ("real", "pseudo"), concatenated."""
    texts = [t for key in keys for t in prep.texts[key]]
    pools = np.concatenate([prep.train[key] for key in keys if prep.texts[key]], axis=1)
    return texts, pools


def _row(prep: Prepared, test_embs: np.ndarray, dev_embs: np.ndarray, n_resamples: int) -> dict[str, Any]:
    """compare_row of the test queries plus the dev slice's agreement with the original's top-10."""
    row = compare_row(retrieval_row(prep.index, test_embs, prep.test_ids, prep.qrels), prep.original, n_resamples)
    _, dev_rows = prep.index.topk(dev_embs, 10)
    row["dev_agreement10"] = float(topk_overlap(dev_rows, prep.dev_top).mean())
    return row


def untrained_rows(model: str, prep: Prepared, depth: int, n_resamples: int = 2000) -> dict[str, Any]:
    """The raw cut (layer-d pool as it is; depth 0: the embedding output) and the ridge head alone (fitted on
    every training text's pool)."""
    texts, pools = _train_pools(prep, ("real", "pseudo"))
    weight, bias = fit_ridge(layer_pools(model, depth, texts, pools), pools[-1])
    test = layer_pools(model, depth, prep.texts["test"], prep.test_pools)
    dev = layer_pools(model, depth, prep.texts["dev"], prep.train["dev"])
    raw = _row(prep, test, dev, n_resamples)
    ridge = _row(prep, apply_head(test, weight, bias), apply_head(dev, weight, bias), n_resamples)
    return {"raw_cut": raw, "ridge_head": ridge, "ridge_fit_texts": len(texts)}


def trained_row(model: str, prep: Prepared, depth: int, config: QueryEncoderConfig, keys: tuple[str, ...],
                dev: tuple[list[str], np.ndarray], out: Path | None, n_resamples: int = 2000) -> dict[str, Any]:
    """Train a depth-d encoder on the `keys` parts of the training text, stopped on `dev`; save it to `out`."""
    texts, pools = _train_pools(prep, keys)
    encoder, history = train_at_depth(model, depth, texts, pools, prep.index, dev, config)
    row = _row(prep, encoder.encode(prep.texts["test"]), encoder.encode(prep.texts["dev"]), n_resamples)
    row.update(config=asdict(config), train_texts=len(texts), steps=config.steps, best_step=history["best_step"],
               stop_dev_agreement10=history["best_dev_agreement10"], train_seconds=history["seconds"],
               evals=history["evals"], losses=history["losses"])
    if out is not None:
        save_query_encoder(encoder, out, model, {"training": {k: row[k] for k in (
            "train_texts", "steps", "best_step", "stop_dev_agreement10", "train_seconds")}, "config": asdict(config)})
        row["folder"] = str(out)
    return row


def judge_set(model: str, plan: SetPlan, config: QueryEncoderConfig, cache_dir: Path, out_dir: Path | None = None,
              on_update: Callable[[dict[str, Any]], None] | None = None, n_resamples: int = 2000) -> dict[str, Any]:
    """Every depth's raw cut, ridge head and recipe (and zero-shot rows) on one BEIR folder; on_update(result)
    after each row, so a long run's partial result can be written as it goes."""
    prep = prepare(model, plan, cache_dir)
    result: dict[str, Any] = {
        "set": prep.name, "n_docs": len(prep.index.doc_ids), "n_test_queries": len(prep.test_ids),
        "train_queries": len(prep.texts["real"]), "pseudo_queries": len(prep.texts["pseudo"]),
        "dev_queries": len(prep.texts["dev"]), "train_source": plan.train_source or f"{plan.folder} (non-test)",
        "original": {"ndcg10": prep.original["ndcg@10"], "recall100": prep.original["recall@100"]},
        "plan": asdict(plan), "config": asdict(config), "depths": {}, "zero_shot": {}}
    for depth in plan.depths:
        result["depths"][str(depth)] = untrained_rows(model, prep, depth, n_resamples)
        _notify(on_update, result)
    for depth in plan.depths if plan.trained_depths is None else plan.trained_depths:
        depth_config = replace(config, steps=plan.steps.get(depth, config.steps))
        out = out_dir / f"{prep.name}-depth{depth}" if out_dir else None
        row = trained_row(model, prep, depth, depth_config, ("real", "pseudo"), (prep.texts["dev"], prep.dev_top),
                          out, n_resamples)
        result["depths"][str(depth)]["recipe"] = row
        _notify(on_update, result)
    for depth in plan.zero_shot_depths:
        result["zero_shot"][str(depth)] = zero_shot_row(model, prep, depth, config, plan, n_resamples)
        _notify(on_update, result)
    return result


def zero_shot_row(model: str, prep: Prepared, depth: int, config: QueryEncoderConfig, plan: SetPlan,
                  n_resamples: int) -> dict[str, Any]:
    """Trained on the corpus's pseudo-queries alone (no query of the set), stopped on a held-out pseudo slice."""
    texts, pools = prep.texts["pseudo"], prep.train["pseudo"]
    size = min(plan.dev_size, len(texts) // 3)
    held = Prepared(**{**prep.__dict__, "texts": {**prep.texts, "pseudo": texts[size:]},
                       "train": {**prep.train, "pseudo": pools[:, size:]}})
    dev_top = prep.index.topk(pools[-1][:size], 10)[1]
    steps = plan.zero_shot_steps or plan.steps.get(depth, config.steps)
    return trained_row(model, held, depth, replace(config, steps=steps), ("pseudo",), (texts[:size], dev_top),
                       None, n_resamples)


def _notify(on_update: Callable[[dict[str, Any]], None] | None, result: dict[str, Any]) -> None:
    if on_update is not None:
        on_update(result)
