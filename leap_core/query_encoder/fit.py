"""Fit a query encoder for a user's own index: unlabelled queries in, the smallest depth that keeps the original's top-10.

The original embeds the corpus once (index.build_index, cached by weights and corpus hash). The query texts are
split into training text and a dev slice; pseudo-queries from the corpus (titles, sentences) may be added to the
training text. Depths are trained shallowest first, each stopped at its best dev agreement with the original's
top-10; the first depth whose dev agreement reaches `floor` is chosen and deeper ones are not trained. No
relevance label is read anywhere.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from leap_core.data import DataError
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.evaluation.against_original import Embedder
from leap_core.model_folder import model_fingerprint
from leap_core.models import resolve_model
from leap_core.query_encoder.index import DocumentIndex, build_index
from leap_core.query_encoder.model import ShallowQueryEncoder, fit_ridge, save_query_encoder
from leap_core.query_encoder.sources import read_corpus, read_queries, training_text
from leap_core.query_encoder.train import QueryEncoderConfig, TrainingSet, train

log = logging.getLogger(__name__)
MIN_QUERIES = 30  # fewer real queries leave a dev slice of under 10, too few to choose a depth on


@dataclass
class FitPlan:
    """Which depths to try, how much pseudo-query text to add, the dev slice and the floor that picks a depth."""

    depths: list[int] = field(default_factory=lambda: [2, 3])
    n_pseudo: int = 10000  # titles and sentences of the user's documents added as training text (0: none)
    dev_size: int = 200  # real query texts held out to stop training and choose the depth (at most a third)
    floor: float = 0.75  # mean overlap@10 with the original's top-10 on the dev slice that a chosen depth keeps
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.depths or min(self.depths) < 0:
            raise ValueError(f"depths must be one or more layer counts >= 0 (0: static), got {self.depths}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor is a top-10 agreement in [0, 1], got {self.floor}")
        if self.n_pseudo < 0 or self.dev_size < 1:
            raise ValueError(f"n_pseudo must be >= 0 and dev_size >= 1, got {self.n_pseudo} and {self.dev_size}")


def original_pools(model: str, cache_dir: Path) -> Embedder:
    """An against_original.Embedder of MODEL whose pools (every layer) are cached by weights hash and texts."""
    folder = resolve_model(model)
    encoder = EarlyExitEncoder.from_pretrained(str(folder), theta=0.95, k=1, l_min=1)
    return Embedder(encoder, cache_dir=cache_dir / "pools", fingerprint=model_fingerprint(folder))


def layer_pools(model: str, depth: int, texts: list[str], pools: np.ndarray) -> np.ndarray:
    """(n, d) normalised mean pools of texts after `depth` layers: the original's cached ones, or for depth 0
    (which the cache does not hold: it starts at layer 1) the embedding output, computed here in seconds."""
    if depth > 0:
        return pools[depth - 1]
    return ShallowQueryEncoder.from_original(model, 0).encode(texts)  # identity head: the normalised pool


def train_at_depth(model: str, depth: int, texts: list[str], pools: np.ndarray, index: DocumentIndex,
                   dev: tuple[list[str], np.ndarray], config: QueryEncoderConfig
                   ) -> tuple[ShallowQueryEncoder, dict[str, Any]]:
    """A depth-d encoder trained on `texts` (their (L, n, d) pools by the original), stopped on dev's agreement."""
    targets = np.ascontiguousarray(pools[-1])
    top_docs = index.topk(targets, config.kl_top_k)[1] if config.kl else np.zeros((len(texts), 0), np.int64)
    encoder = ShallowQueryEncoder.from_original(model, depth)
    if depth == 0:  # the token embeddings are all a static encoder has to train
        config = replace(config, freeze_embeddings=False)
    if config.head_init == "ridge":
        encoder.set_head(*fit_ridge(layer_pools(model, depth, texts, pools), targets, config.ridge))
    history = train(encoder, TrainingSet(texts, targets, top_docs), index, dev[0], dev[1], config)
    return encoder, history


def fit_query_encoder(model: str, queries: str, corpus: str, plan: FitPlan, config: QueryEncoderConfig,
                      cache_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Train depths shallowest first until one reaches plan.floor on dev; save that one to `out` (if given).

    Returns {"model", "queries", "corpus", "plan", "config", "train_texts", "dev_texts", "original_dev_top10",
    "depths": {d: {"dev_agreement10", "best_step", "seconds"}}, "chosen": d or None, "folder": saved or None}.
    The test split of a BEIR folder given as `queries` is never read as text (sources.read_queries).
    """
    index = build_index(model, corpus, cache_dir)
    real = read_queries(queries)
    if len(real) < MIN_QUERIES:
        raise DataError(f"{queries}: {len(real)} distinct query texts; a query encoder needs at least {MIN_QUERIES} "
                        "(a third of them, at most dev_size, choose the depth)")
    train_real, dev, pseudo = training_text(real, read_corpus(corpus), plan.n_pseudo, plan.dev_size, plan.seed)
    texts = train_real + pseudo
    embedder = original_pools(model, cache_dir)
    pools, dev_pools = embedder.layers("fit/train", texts), embedder.layers("fit/dev", dev)
    dev_top = index.topk(dev_pools[-1], 10)[1]
    result: dict[str, Any] = {"model": model, "queries": str(queries), "corpus": str(corpus), "plan": asdict(plan),
                              "config": asdict(config), "train_texts": len(texts), "dev_texts": len(dev),
                              "depths": {}, "chosen": None, "folder": None}
    for depth in sorted(set(plan.depths)):
        encoder, history = train_at_depth(model, depth, texts, pools, index, (dev, dev_top), config)
        agreement = history["best_dev_agreement10"]
        result["depths"][str(depth)] = {"dev_agreement10": agreement, "best_step": history["best_step"],
                                        "seconds": history["seconds"]}
        log.info("depth %d: dev top-10 agreement %.3f (floor %.2f)", depth, agreement, plan.floor)
        if agreement >= plan.floor:
            result["chosen"] = depth
            if out is not None:
                training = {"train_texts": len(texts), "dev_texts": len(dev), "best_step": history["best_step"],
                            "dev_agreement10": agreement, "floor": plan.floor}
                result["folder"] = str(save_query_encoder(encoder, out, model,
                                                          {"training": training, "config": asdict(config)}))
            break
    return result
