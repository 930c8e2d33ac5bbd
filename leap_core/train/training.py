"""The trainer: AdamW with warm-up, seeded batches, checkpoints with exact resume, per-term logging.

A run lives in one output folder:
  checkpoint.pt      the latest checkpoint's tensors (student, projection, optimiser, schedule, torch RNG)
  checkpoint.json    its fingerprint, step, Python/NumPy RNG and the .pt's sha256 (read first)
  train_log.jsonl    per-term losses every `log_every` steps
  model/             the trained student: a sentence-transformers folder that exits (st_module) + leap_exit.json
  projection.pt      the learned width projection (training only; inference does not need it)
  train_result.json  written last: its presence means the run is complete
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from leap_core import identity
from leap_core.config import ExitConfig, TrainConfig
from leap_core.io import (atomic_path, folder_files, folder_lock, note_in_manifest, remove_stale_temps, sha256_file,
                          write_json_atomic, write_text_atomic, writer_lock)
from leap_core.model_folder import write_exit_settings
from leap_core.models import save_sentence_transformer
from leap_core.policy import ExitPolicy
from leap_core.pooling import pooled_layers
from leap_core.serve.st_module import save_exit_folder
from leap_core.train import checkpoint_store as mirror
from leap_core.train.losses import LeapObjective
from leap_core.train.teacher_cache import TeacherCache, pick_device

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"


@dataclass
class TrainResult:
    model_dir: Path
    train_seconds: float
    steps: int
    final_losses: dict[str, float]


class TrainingDiverged(ValueError):
    """The loss or the weights stopped being finite: the run stops and saves no model."""


def _logged_step(line: str) -> float:
    """The step of a train_log.jsonl line; +inf for a line a kill tore (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(texts: list[str], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Seeded batches; within windows of 50 batches rows are grouped by length (less padding)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(texts), generator=generator).tolist()
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: len(texts[i]))
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


class LeapTrainer:
    """Distils `teacher` (cached embeddings) into `student` under `objective`.

    teacher.embeddings[l-1] must be the teacher layer mapped to student layer l (the last is the
    teacher's final layer); teacher.sentences are the training sentences.
    """

    def __init__(self, student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, objective: LeapObjective,
                 teacher: TeacherCache, config: TrainConfig, output_dir: str | Path, seed: int = 0,
                 max_length: int = 128, exit_settings: ExitConfig | None = None,
                 run_fingerprint: str = "", on_step: Callable[[int, dict[str, float]], None] | None = None,
                 serve_max_length: int | None = None, save_extra: Callable[[Path], None] | None = None,
                 checkpoint_store: str | None = None, exit_module: bool = True):
        n_layers = student.config.num_hidden_layers
        if teacher.embeddings.shape[0] != n_layers:
            raise ValueError(f"teacher cache has {teacher.embeddings.shape[0]} mapped layers; student has {n_layers}")
        self.student, self.tokenizer, self.objective, self.teacher = student, tokenizer, objective, teacher
        self.config, self.seed, self.max_length = config, seed, max_length
        # The saved folder's max length: a retrofit keeps its original's, whatever length it trained at.
        self.serve_max_length = serve_max_length or max_length
        self.save_extra = save_extra  # writes what else the model folder needs, before the run counts as finished
        # The saved folder's first module: LeapEarlyExit (SentenceTransformer.encode exits), or Transformer + Pooling
        # where exiting needs more than the rule (an exit branch's heads).
        self.exit_module = exit_module
        self.output_dir = Path(output_dir)
        self.exit_settings = exit_settings or ExitConfig()
        self.on_step = on_step
        self.device = pick_device(config.device)
        self.fingerprint = identity.training_run(run_fingerprint, config, seed, len(teacher.sentences))
        # s3://...: checkpoints are mirrored there (per run folder and fingerprint) for a restart on another machine.
        self.checkpoint_store = (f"{checkpoint_store.rstrip('/')}/{self.output_dir.name}-{self.fingerprint[:16]}"
                                 if checkpoint_store else None)
        self._pushed_sha256: str | None = None
        self.steps_per_epoch = math.ceil(len(teacher.sentences) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)

    # -- data order -------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return length_grouped_batches(self.teacher.sentences, self.config.batch_size, self.seed, epoch)

    # -- checkpoints --------------------------------------------------------------------------
    # checkpoint.pt holds tensors and plain containers only, loaded with weights_only=True (no pickled code runs);
    # checkpoint.json, written after it, holds what is read first: the fingerprint, the step, the Python and NumPy
    # RNG states and the .pt's sha256. A .pt without its .json (a kill between the two, or a planted file) is
    # never loaded.
    def _tensors(self) -> dict:
        return {
            "student": self.student.state_dict(), "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def save_checkpoint(self, step: int) -> None:
        tensors = self.output_dir / CHECKPOINT
        with atomic_path(tensors) as tmp:
            torch.save(self._tensors(), tmp)
        numpy_state = np.random.get_state()
        version, python_state, gauss = random.getstate()
        write_json_atomic(self.output_dir / CHECKPOINT_META, {
            "fingerprint": self.fingerprint, "step": step, "sha256": sha256_file(tensors),
            "python_rng": [version, list(python_state), gauss],
            "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *(x.item() if hasattr(x, "item") else x
                                                                   for x in numpy_state[2:])]})
        if self.checkpoint_store:
            self._pushed_sha256 = mirror.push(self.output_dir, self.checkpoint_store, self._pushed_sha256)

    def _read_checkpoint_meta(self) -> dict | None:
        meta_path, tensors = self.output_dir / CHECKPOINT_META, self.output_dir / CHECKPOINT
        if not meta_path.is_file():
            if tensors.is_file():
                log.warning("%s has no %s beside it: not loading it (unverified); training from step 0",
                            tensors, CHECKPOINT_META)
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            step, fingerprint, digest = int(meta["step"]), meta["fingerprint"], meta["sha256"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{meta_path}: unreadable checkpoint record ({err}); delete {meta_path} and "
                             f"{tensors} to train from step 0") from None
        if fingerprint != self.fingerprint:
            raise ValueError(f"{tensors} belongs to a run with another configuration; remove it or use another "
                             "output dir")
        if not tensors.is_file() or sha256_file(tensors) != digest:
            raise ValueError(f"{tensors}: missing or not the file {meta_path} records (sha256); delete both to "
                             "train from step 0")
        return {**meta, "step": step}

    def load_checkpoint(self) -> int:
        meta = self._read_checkpoint_meta()
        if meta is None:
            return 0
        path = self.output_dir / CHECKPOINT
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.student.load_state_dict(state["student"])
            self.objective.load_state_dict(state["objective"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except Exception as err:  # noqa: BLE001 - torch's unpickler and load_state_dict raise many types
            first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split("\n")[0]  # torch styles it for terminals
            raise ValueError(f"{path}: not a checkpoint this run can load ({type(err).__name__}: {first_line}); "
                             f"delete it and {CHECKPOINT_META} to train from step 0") from None
        torch.set_rng_state(state["torch_rng"].cpu())
        version, python_state, gauss = meta["python_rng"]
        random.setstate((version, tuple(python_state), gauss))
        name, keys, *rest = meta["numpy_rng"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resumed %s at step %d of %d", self.output_dir, meta["step"], self.total_steps)
        return meta["step"]

    # -- training -----------------------------------------------------------------------------
    def _build_optimizer(self) -> None:
        decay, no_decay = [], []
        for name, param in self.student.named_parameters():
            if not param.requires_grad:  # frozen layers
                continue
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
        groups = [
            {"params": decay, "lr": self.config.lr, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "lr": self.config.lr, "weight_decay": 0.0},
        ]
        head = [p for p in self.objective.parameters() if p.requires_grad]
        if head:
            groups.append({"params": head, "lr": self.config.head_lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups)
        warmup = int(self.config.warmup_ratio * self.total_steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, self.total_steps)

    def train_step(self, rows: list[int], progress: float) -> dict[str, float]:
        batch = self.tokenizer([self.teacher.sentences[i] for i in rows], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        targets = self.teacher.embeddings[:, rows].to(self.device)
        use_amp = self.device.type == "cuda" and self.config.mixed_precision
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            hidden = self.student(**batch, output_hidden_states=True).hidden_states
        student_layers = pooled_layers(tuple(h.float() for h in hidden), batch["attention_mask"])
        loss, terms = self.objective(student_layers, targets, progress)
        if not torch.isfinite(loss):  # NaN/inf only spreads from here: stop before it reaches the weights
            broken = sorted(name for name, value in terms.items() if not math.isfinite(value))
            raise TrainingDiverged(f"{self.output_dir}: the loss is {loss.item()} at progress {progress:.3f} "
                                   f"(non-finite: {broken or 'the embeddings'}); nothing was saved. Lower "
                                   "training.lr or check the teacher cache")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.student.parameters()) + list(self.objective.parameters())
        torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return terms

    def train(self, wait: bool = False) -> TrainResult:
        """Train to the end (resuming a checkpoint), holding the run folder's lock (wait: for another holder)."""
        with folder_lock(self.output_dir, wait=wait, what="trainer"):
            for path in remove_stale_temps(self.output_dir):
                log.info("removed %s, left by a killed run", path)
            return self._train()

    def _train(self) -> TrainResult:
        result_path = self.output_dir / "train_result.json"
        if result_path.is_file():
            done = json.loads(result_path.read_text())
            if done.get("fingerprint") != self.fingerprint:
                raise ValueError(f"{self.output_dir} holds a run with another configuration; use another output dir")
            log.info("%s is already trained: reusing it", self.output_dir)
            return TrainResult(self.output_dir / "model", done["train_seconds"], done["steps"], done["final_losses"])
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.seed)
        self.student.to(self.device).train()
        self.objective.to(self.device).train()
        self._build_optimizer()
        if self.checkpoint_store:
            mirror.pull(self.output_dir, self.checkpoint_store)
        step = self.load_checkpoint()
        log_path = self.output_dir / "train_log.jsonl"
        if step == 0 and log_path.exists():
            log_path.unlink()
        elif step and log_path.exists():  # drop lines logged after the checkpoint, and a line torn by a kill
            kept = [line for line in log_path.read_text(encoding="utf-8").splitlines() if _logged_step(line) <= step]
            write_text_atomic(log_path, "".join(line + "\n" for line in kept))

        started = time.perf_counter()
        terms: dict[str, float] = {}
        with tqdm(total=self.total_steps, initial=step, desc=f"train {self.output_dir.name}", unit="step") as bar, \
                open(log_path, "a", encoding="utf-8") as log_file:
            for epoch in range(step // self.steps_per_epoch, self.config.epochs):
                batches = self.epoch_batches(epoch)
                for rows in batches[step - epoch * self.steps_per_epoch:]:
                    if step >= self.total_steps:
                        break
                    terms = self.train_step(rows, progress=step / self.total_steps)
                    step += 1
                    if step % self.config.log_every == 0 or step == self.total_steps:
                        log_file.write(json.dumps({"step": step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0],
                                                   **terms}) + "\n")
                        log_file.flush()
                        bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items() if k in ("total", "final", "exit_teacher")})
                    if step % self.config.checkpoint_every == 0 and step < self.total_steps:
                        self.save_checkpoint(step)
                    bar.update(1)
                    if self.on_step is not None:
                        self.on_step(step, terms)
        seconds = time.perf_counter() - started
        self._check_finite_weights()
        model_dir = self.save()
        result = TrainResult(model_dir, seconds, step, terms)
        write_json_atomic(result_path, {"model_dir": str(model_dir), "train_seconds": seconds, "steps": step,
                                        "final_losses": terms, "fingerprint": self.fingerprint})
        (self.output_dir / CHECKPOINT_META).unlink(missing_ok=True)  # first: a .pt alone is never loaded
        (self.output_dir / CHECKPOINT).unlink(missing_ok=True)
        if self.checkpoint_store:
            mirror.drop(self.checkpoint_store)
        return result

    def _check_finite_weights(self) -> None:
        """A finite last loss can still leave inf/NaN weights after its step: never save those."""
        broken = [name for name, value in self.student.named_parameters() if not torch.isfinite(value).all()]
        if broken:
            raise TrainingDiverged(f"{self.output_dir}: non-finite weights after training ({broken[:3]}); nothing "
                                   "was saved. Lower training.lr")

    def save(self) -> Path:
        """The model folder (replaced whole, io.replace_folder) with its exit rule and extras, under its writer lock."""
        model_dir = self.output_dir / "model"
        self.student.eval()
        rule = dataclasses.asdict(self.exit_settings)
        with writer_lock(model_dir, what="trainer's save"):
            if self.exit_module:
                save_exit_folder(self.student.cpu(), self.tokenizer, model_dir, self.serve_max_length, rule)
            else:
                save_sentence_transformer(self.student.cpu(), self.tokenizer, model_dir, self.serve_max_length)
            before = set(folder_files(model_dir))
            write_exit_settings(model_dir, ExitPolicy("rule", **rule))
            if self.save_extra is not None:
                self.save_extra(model_dir)
            # In the manifest, so a re-save (a run killed before train_result.json) may still replace the folder.
            note_in_manifest(model_dir, *sorted(set(folder_files(model_dir)) - before))
        with atomic_path(self.output_dir / "projection.pt") as tmp:
            torch.save(self.objective.state_dict(), tmp)
        return model_dir
