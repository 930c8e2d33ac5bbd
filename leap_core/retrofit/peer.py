"""The peer at equal budget: sentence-transformers' own layer-elastic fine-tune of MODEL against itself.

AdaptiveLayerLoss over MSELoss to the model's own frozen final embeddings (the same texts, targets,
batch size, learning rate, epochs and training length as the exit branch), so that every layer of the
one fine-tuned model is trained to be a usable embedding: what a sentence-transformers user would do.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from leap_core import identity
from leap_core.identity import model_slug
from leap_core.io import replace_folder, sha256_strings, write_json_atomic
from leap_core.pipeline import experiment

log = logging.getLogger(__name__)
DONE_FILE = "peer_result.json"
PEER_KIND = "peer model"  # the kind in the model folder's manifest (io.replace_folder)


def peer_dir(profile, model: str, texts_key: str, seed: int) -> Path:
    key = identity.peer_recipe(profile.branch, texts_key)
    return experiment.run_dir(profile) / f"peer-adaptive-layer-{model_slug(model)}-{key}-seed{seed}"


def train_peer(profile, model: str, texts_path: str | Path, seed: int = 0) -> Path:
    """Fine-tune MODEL with AdaptiveLayerLoss(MSELoss) on the branch's texts; returns the saved model folder."""
    # deferred: at top, importing this module would load torch, transformers, sentence_transformers
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import AdaptiveLayerLoss, MSELoss

    from leap_core.data import read_sentences_parquet
    from leap_core.models import resolve_model
    from leap_core.train.teacher_cache import build_teacher_cache, load_teacher_cache

    texts = read_sentences_parquet(texts_path)
    out = peer_dir(profile, model, sha256_strings(texts), seed)
    if (out / DONE_FILE).is_file():
        log.info("%s is already trained: reusing it", out)
        return out / "model"
    branch = profile.branch
    folder = resolve_model(model)
    student = SentenceTransformer(str(folder), device="cpu")
    serve_length = student.max_seq_length
    student.max_seq_length = branch.max_length
    depth = student[0].auto_model.config.num_hidden_layers
    cache = load_teacher_cache(build_teacher_cache(model, texts, [depth], experiment.cache_dir(profile),
                                                   max_length=branch.max_length), texts)
    labels = cache.embeddings[-1].numpy().astype(np.float32)
    dataset = Dataset.from_dict({"text": texts, "label": [row for row in labels]})
    training = branch.training
    out.mkdir(parents=True, exist_ok=True)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=training.batch_size,
        num_train_epochs=training.epochs, max_steps=training.max_steps or -1, learning_rate=training.lr,
        warmup_ratio=training.warmup_ratio, weight_decay=training.weight_decay, max_grad_norm=training.max_grad_norm,
        seed=seed, save_strategy="no", report_to="none", logging_steps=50, dataloader_drop_last=False)
    args.batch_sampler = functools.partial(BranchBatches, texts=texts, seed=seed)
    loss = AdaptiveLayerLoss(student, MSELoss(student))
    started = time.perf_counter()
    SentenceTransformerTrainer(model=student, args=args, train_dataset=dataset, loss=loss).train()
    seconds = time.perf_counter() - started
    student.max_seq_length = serve_length
    # The model folder is swapped in whole; only an earlier peer model (its manifest) is ever replaced.
    replace_folder(out / "model", lambda folder: student.save(str(folder)), PEER_KIND)
    shutil.rmtree(out / "trainer", ignore_errors=True)  # the trainer's own scratch (save_strategy="no")
    steps = -(-len(texts) // training.batch_size) * training.epochs
    write_json_atomic(out / DONE_FILE, {"train_seconds": seconds, "steps": min(steps, training.max_steps or steps),
                                        "texts": len(texts)})
    return out / "model"


class BranchBatches:
    """The exit branch's own batches (training.length_grouped_batches), epoch by epoch: the peer sees the same
    rows in the same order, and batches of like lengths (random batches pad every row to the longest text)."""

    def __init__(self, dataset, batch_size: int, drop_last: bool, texts: list[str], seed: int, **_: object):
        # deferred: at top, importing this module would load torch, transformers, sentence_transformers
        from leap_core.train.training import length_grouped_batches

        self.batches_for = lambda epoch: length_grouped_batches(texts, batch_size, seed, epoch)
        self.epoch = 0
        self.n_batches = len(self.batches_for(0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.batches_for(self.epoch))

    def __len__(self) -> int:
        return self.n_batches


def peer_result(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir).parent / DONE_FILE).read_text())
