"""Training a shallow query encoder on unlabelled query text, stopped at its best dev agreement.

Targets come from the original alone: its final embedding of each training text and its top-k documents in
the cached index. Every eval_every steps the encoder embeds a dev slice of the query texts; the kept state is
the one whose top-10 agrees best with the original's top-10 on that slice (mean overlap@10), never a labelled score.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from leap_core.query_encoder.evaluate import TOP, topk_overlap
from leap_core.query_encoder.index import DocumentIndex
from leap_core.query_encoder.losses import query_loss
from leap_core.query_encoder.model import ShallowQueryEncoder

log = logging.getLogger(__name__)


@dataclass
class QueryEncoderConfig:
    """L = cosine (1 - cos) + kl KL_listwise(top-k of the original's index) + in_batch L_contrast; AdamW, warm-up."""

    cosine: float = 1.0
    kl: float = 1.0
    kl_top_k: int = 100  # the original's top-k documents per training query that the KL ranks
    kl_temperature: float = 0.05
    in_batch: float = 0.0
    in_batch_temperature: float = 0.05
    head_init: str = "ridge"  # ridge (closed form on the training texts' pools) | identity
    ridge: float = 1e-2
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-4  # the transformer layers
    freeze_embeddings: bool = True  # the original's embedding table stays as it is (and AdamW skips its 11M rows)
    head_lr: float = 1e-3
    warmup: float = 0.05  # fraction of steps
    weight_decay: float = 0.01
    train_max_length: int = 64  # tokens per training text (queries are short)
    eval_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head_init not in ("ridge", "identity"):
            raise ValueError(f"head_init must be 'ridge' or 'identity', got {self.head_init!r}")
        for name in ("steps", "batch_size", "eval_every", "kl_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainingSet:
    """texts (N), the original's final embeddings of them (N, d) and its top-k document indices (N, k)."""

    texts: list[str]
    targets: np.ndarray
    top_docs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))


def dev_agreement(encoder: ShallowQueryEncoder, index: DocumentIndex, texts: list[str],
                  original_top: np.ndarray) -> float:
    """Mean overlap@10 of the encoder's top-10 with the original's (original_top: (n, >=10) indices)."""
    _, rows = index.topk(encoder.encode(texts), TOP)
    return float(topk_overlap(rows, original_top).mean())


def _optimizer(encoder: ShallowQueryEncoder, config: QueryEncoderConfig):
    if config.freeze_embeddings:
        encoder.model.embeddings.requires_grad_(False)
    head = list(encoder.head.parameters())
    body = [p for p in encoder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": body, "lr": config.lr}, {"params": head, "lr": config.head_lr}],
                                  weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup * config.steps), config.steps)
    return optimizer, schedule


def _batches(n: int, batch_size: int, seed: int):
    """Endless seeded shuffles of range(n), batch_size rows at a time (a short last batch is dropped when n allows)."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        usable = len(order) - len(order) % batch_size if len(order) >= batch_size else len(order)
        for start in range(0, usable, batch_size):
            yield order[start:start + batch_size]


def _step(encoder: ShallowQueryEncoder, data: TrainingSet, rows: list[int], index: DocumentIndex,
          config: QueryEncoderConfig) -> tuple[torch.Tensor, dict[str, float]]:
    query = encoder(encoder.tokenize([data.texts[i] for i in rows], config.train_max_length))
    teacher = torch.from_numpy(data.targets[rows])
    docs = None
    if config.kl:
        top = data.top_docs[rows][:, :config.kl_top_k]
        docs = torch.from_numpy(index.embeddings[top])
    return query_loss(query, teacher, docs, config.cosine, config.kl, config.kl_temperature, config.in_batch,
                      config.in_batch_temperature)


def train(encoder: ShallowQueryEncoder, data: TrainingSet, index: DocumentIndex, dev_texts: list[str],
          dev_top: np.ndarray, config: QueryEncoderConfig) -> dict[str, Any]:
    """Train in place for config.steps; load the state of best dev agreement; return the history.

    History: {"config", "evals": [{"step", "dev_agreement10"}], "losses": [{"step", terms...}], "best_step",
    "best_dev_agreement10", "seconds"}.
    """
    torch.manual_seed(config.seed)
    optimizer, schedule = _optimizer(encoder, config)
    history: dict[str, Any] = {"config": asdict(config), "evals": [], "losses": []}
    best = (dev_agreement(encoder, index, dev_texts, dev_top), 0, copy.deepcopy(encoder.state_dict()))
    history["evals"].append({"step": 0, "dev_agreement10": best[0]})
    started, running = time.perf_counter(), []
    encoder.train()
    for step, rows in zip(range(1, config.steps + 1), _batches(len(data.texts), config.batch_size, config.seed)):
        loss, terms = _step(encoder, data, rows, index, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append(terms)
        if step % config.eval_every == 0 or step == config.steps:
            mean_terms = {k: float(np.mean([t[k] for t in running])) for k in running[0]}
            history["losses"].append({"step": step, **mean_terms})
            running = []
            score = dev_agreement(encoder, index, dev_texts, dev_top)
            history["evals"].append({"step": step, "dev_agreement10": score})
            log.info("depth %d step %d loss %.4f dev agreement@10 %.4f (%.0f s)", encoder.depth, step,
                     mean_terms["total"], score, time.perf_counter() - started)
            if score > best[0]:
                best = (score, step, copy.deepcopy(encoder.state_dict()))
    encoder.load_state_dict(best[2])
    encoder.eval()
    history.update(best_step=best[1], best_dev_agreement10=best[0], seconds=round(time.perf_counter() - started, 1))
    return history
