"""EarlyExitEncoder: mean-pooled sentence embeddings with convergence-based early exit (Algorithm 1).

For l = 1..L the encoder runs layer l and pools p_l = MeanPool(h_l); a row exits at layer l when
l >= l_min, l > k and cos(p_l, p_{l-k}) >= theta, with embedding p_l (normalised if asked).
A row that never passes the test runs to the last layer L and returns p_L.

The transformer's own modules do the work (embeddings, the model's attention-mask builder, each
`encoder.layer[i]`, MPNet's relative position bias); this module only decides which rows keep going.
Texts become batches in leap_core.serve.batching; a folder's files (leap_exit.json, max length) are read by
leap_core.model_folder, which also decides the default exit rule (config.ExitConfig's).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask

from leap_core.serve.batching import check_batch_size, check_sentences, length_sorted_batches
from leap_core.config import ExitConfig
from leap_core.model_folder import (EXIT_SETTINGS_FILE, RULE_KEYS, exit_rule, is_mean_pooling, max_seq_length,
                                    pooling_file, read_exit_settings, read_pooling, write_exit_settings)
from leap_core.models import check_max_length, load_weights, resolve_model
from leap_core.policy import ALWAYS, ExitPolicy, check_rule

logger = logging.getLogger(__name__)

MODES = ("full", "monitored", "batch", "compact")  # plus "fixed:N"


def parse_mode(mode: str, n_layers: int) -> tuple[str, int]:
    """Split a mode name into (kind, last layer to run); "fixed:N" -> ("fixed", N)."""
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, got {type(mode).__name__}")
    if mode in MODES:
        return mode, n_layers
    if mode.startswith("fixed:"):
        try:
            depth = int(mode.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"mode {mode!r}: expected fixed:N with an integer N") from None
        if not 1 <= depth <= n_layers:
            raise ValueError(f"mode {mode!r}: N must lie in 1..{n_layers} (the model's layers)")
        return "fixed", depth
    raise ValueError(f"unknown mode {mode!r}; expected one of {list(MODES)} or 'fixed:N'")


def _store(out: torch.Tensor, pooled: torch.Tensor, source: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """out[target] = pooled[source], in place; indices come from the host (no sync to build them)."""
    to_device = lambda rows: torch.from_numpy(rows).to(out.device, non_blocking=True)  # noqa: E731
    if len(source) != pooled.shape[0]:
        pooled = pooled.index_select(0, to_device(source))
    return out.index_copy_(0, to_device(target), pooled)


def _warn_unless_mean_pooling(folder: Path) -> None:
    """A warning when the folder's own Pooling module is not mean pooling: this encoder always mean-pools."""
    config = read_pooling(folder)
    if config is not None and not is_mean_pooling(config):
        logger.warning("%s: the folder's own pooling is not mean pooling; this encoder always mean-pools",
                       pooling_file(folder))


@dataclass
class _Batch:
    """One right-padded batch in the layer loop: what shrinks together as rows leave ("compact")."""

    hidden: torch.Tensor  # (B, T, d): the states of the rows still running, after the last layer run
    weights: torch.Tensor  # (B, 1, T): the mean pool's weights, 1/length on real tokens, 0 on padding
    mask2d: torch.Tensor | None  # (B, T) attention mask; None when no row is padded
    attention: Any  # the same mask in the form the configured attention takes
    extras: dict[str, Any]  # what every layer takes besides: MPNet's relative position bias
    lengths: np.ndarray  # (B0,) token counts of the batch's rows as it came, on the host (trimming needs no sync)
    rows: np.ndarray  # batch positions of the rows still running
    exact: Any  # a context: under fp16/bf16 autocast, pools and cosines stay float32

    def pool(self) -> torch.Tensor:
        """(B, 1, d) float32 mean pools of the current states: one batched matmul, (B, 1, T) @ (B, T, d)."""
        with self.exact:
            states = self.hidden if self.hidden.dtype == self.weights.dtype else self.hidden.to(self.weights.dtype)
            pooled = torch.bmm(self.weights, states)
        return pooled if pooled.dtype == torch.float32 else pooled.float()


class _Exits:
    """The exits of one batch in "batch" or "compact" mode: each exited row's pool in `out`, its layer noted."""

    def __init__(self, n_rows: int, dim: int, device: torch.device, exit_layer: np.ndarray) -> None:
        self.out = torch.zeros(n_rows, dim, dtype=torch.float32, device=device)
        self.exit_layer = exit_layer
        self.exited = np.zeros(n_rows, dtype=bool)  # "batch" mode: rows that left (they still run)
        self.any = False

    def batch(self, pooled: torch.Tensor, passes: np.ndarray, layer_no: int) -> bool:
        """Rows passing for the first time leave at this layer; True once every row has left."""
        fresh = passes & ~self.exited
        if not fresh.any():
            return False
        _store(self.out, pooled.squeeze(1), np.flatnonzero(fresh), np.flatnonzero(fresh))
        self.any = True
        self.exit_layer[fresh] = layer_no
        self.exited |= fresh
        return bool(self.exited.all())

    def compact(self, pooled: torch.Tensor, leaving: np.ndarray, rows: np.ndarray, layer_no: int) -> bool:
        """The rows at positions `leaving` (of the remaining `rows`) leave at this layer; True when none remain."""
        _store(self.out, pooled.squeeze(1), leaving, rows[leaving])
        self.any = True
        self.exit_layer[rows[leaving]] = layer_no
        return len(leaving) == len(rows)

    def finish(self, final: torch.Tensor, kind: str, rows: np.ndarray) -> torch.Tensor:
        """Every row's embedding: its exit pool, or for the rows still running, the final pool."""
        if not self.any:  # no row left early: the final pools are the output as they stand
            return final
        if kind == "batch":
            remaining = np.flatnonzero(~self.exited)
            return _store(self.out, final, remaining, remaining)
        return _store(self.out, final, np.arange(len(rows)), rows)


def _passes(pooled: torch.Tensor, history: deque, threshold: float, exact: Any, on_cpu: bool) -> np.ndarray:
    """Which rows pass the test cos(p_l, p_{l-k}) >= threshold (history[0] holds p_{l-k}).

    Three small kernels and one host sync: [p_l; p_{l-k}] (a concatenation) and its 2x2 Gram matrix per row (a
    batched matmul), which holds both norms and the dot; the cosine and the decision are a few numpy operations.
    """
    if threshold <= ALWAYS:  # the policy stops every row here: no cosine needed
        return np.ones(pooled.shape[0], dtype=bool)
    pair = torch.cat([pooled, history[0]], dim=1)  # (B, 2, d)
    with exact:
        gram = torch.bmm(pair, pair.transpose(1, 2)).view(-1, 4)
    gram = (gram if on_cpu else gram.cpu()).numpy().astype(np.float64)  # the one host sync
    # cos = <p_l, p_{l-k}> / (|p_l| |p_{l-k}|), clamped like F.cosine_similarity (eps 1e-8).
    return gram[:, 1] / np.sqrt(np.maximum(gram[:, 0] * gram[:, 3], 1e-16)) >= threshold



class EarlyExitEncoder:
    """Encode sentences with a BERT-family or MPNet model, exiting each row early once it converges.

    model: a transformers BertModel-like module (`.embeddings`, `.encoder.layer`, RoBERTa, ELECTRA, ...)
    or an MPNetModel; tokenizer: its tokenizer. theta, k, l_min: the exit rule (see module docstring).
    max_length: tokens per text; longer texts are truncated. device: None picks CUDA when available,
    else CPU; the model is moved there and put in eval mode.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        theta: float = ExitConfig.theta,
        k: int = ExitConfig.k,
        l_min: int = ExitConfig.l_min,
        max_length: int = 128,
        device: str | torch.device | None = None,
        policy: ExitPolicy | dict[str, Any] | str | None = None,
        calibration: dict[str, Any] | None = None,
    ) -> None:
        if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
            raise TypeError(
                f"{type(model).__name__} has no .embeddings and .encoder.layer: "
                "expected a BertModel-family or MPNetModel (the bare model, not a task head)"
            )
        if getattr(model.config, "is_decoder", False):
            raise ValueError(f"{type(model).__name__} is configured as a decoder (causal attention): a sentence "
                             "encoder attends both ways")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if isinstance(l_min, bool) or not isinstance(l_min, int) or l_min < 1:
            raise ValueError(f"l_min must be an integer >= 1, got {l_min!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        check_max_length(max_length, model)
        self.theta = float(theta)
        self.k = k
        self.l_min = l_min
        self.calibration = calibration
        self.max_length = max_length
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.policy = self._policy(policy)
        embed_params = inspect.signature(model.embeddings.forward).parameters
        self.takes_token_types = "token_type_ids" in embed_params
        # MPNet adds a relative position bias, computed once per shape by the encoder, to every layer.
        self._position_bias = getattr(model.encoder, "compute_position_bias", None)

    def _policy(self, policy: ExitPolicy | dict[str, Any] | str | None) -> ExitPolicy:
        """The served policy; its rule part is this encoder's theta, k and l_min."""
        # theta outside [-1, 1] (tests' "never" / "always") is kept on self.theta for exit_thresholds.
        rule = {"theta": min(max(self.theta, ALWAYS), 1.0), "k": self.k, "l_min": self.l_min}
        if policy is None:
            return ExitPolicy("rule", **rule)
        if isinstance(policy, str):
            return ExitPolicy.parse(policy, **rule)
        values = policy.to_dict() if isinstance(policy, ExitPolicy) else dict(policy)
        chosen = ExitPolicy.from_dict({**values, **rule})
        chosen.vector(self.num_layers)  # checks depth / thresholds against this model's layers
        return chosen

    def exit_thresholds(self) -> np.ndarray:
        """(L,) per-layer thresholds of the exit test that "compact"/"batch"/"monitored" apply.

        The policy's own when it is "thresholds", else Algorithm 1 with this encoder's (current) theta, k, l_min.
        """
        if self.policy.kind == "thresholds":
            return self.policy.vector(self.num_layers)
        if self.theta > 1:  # no cosine reaches it: nothing exits
            return np.full(self.num_layers, np.inf)
        return ExitPolicy("rule", theta=max(self.theta, ALWAYS), k=self.k, l_min=self.l_min).vector(self.num_layers)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "EarlyExitEncoder":
        """Load AutoModel + AutoTokenizer from a folder (a sentence-transformers folder keeps them at its root).

        The one loader of a model folder (st_module, served and experiment load through it). Exit settings come
        from `<path>/leap_exit.json` when present, max_length from the folder (model_folder.max_seq_length);
        keyword overrides win over both; a rule key neither gives is config.ExitConfig's (model_folder.exit_rule).
        """
        path = Path(path) if Path(path).is_dir() else resolve_model(str(path))  # a hub id: its cached or fetched folder
        _warn_unless_mean_pooling(path)
        settings: dict[str, Any] = dict(read_exit_settings(path))
        saved_length = max_seq_length(path)
        if saved_length is not None:
            settings["max_length"] = saved_length
        if not set(RULE_KEYS) & (set(settings) | set(overrides)):
            logger.warning("%s: no %s: the exit rule is the default theta=%g, k=%d, l_min=%d (calibrate it with "
                           "`leap calibrate`, or pass theta, k, l_min)", path, EXIT_SETTINGS_FILE,
                           *exit_rule().values())
        settings.update(overrides)
        model = load_weights(path)
        if saved_length is not None and "max_length" not in overrides:  # refused naming the folder, at load
            check_max_length(saved_length, model, f"{path}: max_seq_length")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if set(RULE_KEYS) & set(settings):
            where = (f"{path / EXIT_SETTINGS_FILE}" if not overrides
                     else f"{path}: exit settings (with {sorted(overrides)})")
            check_rule(**exit_rule(settings), n_layers=len(model.encoder.layer), where=where)
        return cls(model, tokenizer, **{**settings, **exit_rule(settings)})

    def save_exit_settings(self, path: str | os.PathLike) -> Path:
        """Write theta, k, l_min, the policy (and the calibration, if any) to `<path>/leap_exit.json` atomically."""
        return write_exit_settings(path, self.policy, self.calibration, theta=self.theta)

    @property
    def rule(self) -> dict[str, Any]:
        """{"theta", "k", "l_min"}: the convergence rule this encoder tests."""
        return {"theta": self.theta, "k": self.k, "l_min": self.l_min}

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layer)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    # ---------------------------------------------------------------- public encoding API

    @torch.no_grad()
    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        mode: str | None = None,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
        return_exit_layers: bool = False,
        show_progress_bar: bool = False,
    ) -> Any:
        """Embed sentences; shaped like SentenceTransformer.encode.

        sentences: a str (returns one (d,) vector) or a sequence of str (returns (N, d)). Every item
        must be a str, else TypeError naming its index, raised before any compute. "" and whitespace
        encode like sentence-transformers does ([CLS][SEP] only); texts longer than max_length tokens
        are truncated. An empty list gives a (0, d) result.
        mode: "full" (all layers, no monitoring: the model's forward + mean pool),
          "monitored" (computes the exit test where it could fire but never exits: measures overhead),
          "batch" (the paper's batched exit: the batch runs until every row has exited, each row keeps
          its own exit-layer embedding), "compact" (exited rows leave the batch at once and padding
          columns no longer needed are trimmed), "fixed:N" (every row stops at layer N); None (default): the
          mode of the folder's policy (leap_exit.json: "full", "fixed:N", or "compact" for the rule and
          per-layer thresholds); "policy" says the same. The exit test of the exiting modes is exit_thresholds().
        Returns embeddings (float32 numpy, or a torch tensor on the encoder's device when
        convert_to_numpy=False), and with return_exit_layers also the 1-indexed exit layers
        (np.int64 array; a scalar for a str input): L in "full" and "monitored", N in "fixed:N".
        """
        single = isinstance(sentences, str)
        items = check_sentences([sentences] if single else sentences)
        kind, depth = parse_mode(self.policy.mode() if mode in (None, "policy") else mode, self.num_layers)
        check_batch_size(batch_size)

        if not items:
            embeddings = torch.zeros(0, self.dim, device=self.device)
            exit_layers = np.zeros(0, dtype=np.int64)
        else:
            chunks, layer_chunks = [], []
            unsort, batches = self._batches(items, batch_size)
            if show_progress_bar:
                from tqdm.auto import tqdm  # optional: only a progress bar needs it

                batches = tqdm(batches, total=-(-len(items) // batch_size), desc="Batches")
            for features in batches:
                pooled, exit_layer = self._run_batch(features, kind, depth)
                chunks.append(pooled)
                layer_chunks.append(exit_layer)
            embeddings = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            if len(items) > 1:
                embeddings = embeddings.index_select(0, torch.from_numpy(unsort).to(self.device, non_blocking=True))
            exit_layers = np.concatenate(layer_chunks)[unsort]
        if normalize_embeddings:
            embeddings = F.normalize(embeddings, dim=-1)
        if convert_to_numpy:
            embeddings = embeddings.cpu().numpy()
        if single:
            embeddings, exit_layers = embeddings[0], exit_layers[0]
        return (embeddings, exit_layers) if return_exit_layers else embeddings

    @torch.no_grad()
    def encode_features(self, features: dict[str, torch.Tensor],
                        mode: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """One tokenized, right-padded batch {input_ids, attention_mask[, token_type_ids]} through the layer loop at
        `mode` (as encode): (pooled (B, d) float32 unnormalised on the device, exit layers (B,)). The engine of
        st_module.LeapEarlyExit; inference only (an exit decision has no gradient)."""
        kind, depth = parse_mode(self.policy.mode() if mode in (None, "policy") else mode, self.num_layers)
        mask = features["attention_mask"].cpu()
        batch = {"input_ids": features["input_ids"], "attention_mask": mask, "lengths": mask.sum(1).numpy()}
        if self.takes_token_types and "token_type_ids" in features:
            batch["token_type_ids"] = features["token_type_ids"]
        return self._run_batch(batch, kind, depth)

    @torch.no_grad()
    def layer_embeddings(self, sentences: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Normalised mean pools of every layer at full depth: (L, N, d) float32, index l-1 = layer l."""
        items = check_sentences(sentences)
        check_batch_size(batch_size)
        if not items:
            return np.zeros((self.num_layers, 0, self.dim), dtype=np.float32)
        unsort, batches = self._batches(items, batch_size)
        stacked = torch.cat([self._run_batch(features, "all", self.num_layers)[0] for features in batches], dim=1)
        stacked = stacked.index_select(1, torch.from_numpy(unsort).to(self.device))
        return F.normalize(stacked, dim=-1).cpu().numpy()

    def _batches(self, items: list[str], batch_size: int) -> tuple[np.ndarray, Any]:
        """(unsort, right-padded batches sorted by token length): batching.length_sorted_batches at this encoder's
        max_length, with token type ids when the model's embeddings take them."""
        return length_sorted_batches(self.tokenizer, items, batch_size, self.max_length, self.takes_token_types)

    # ---------------------------------------------------------------- the layer loop

    def _attention_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor | None) -> Any:
        """The extended attention mask the model's own forward builds (None when no row is padded).

        transformers' public `create_bidirectional_mask` is what BertModel (not a decoder) and MPNetModel call in
        their forward; it returns the form the configured attention (eager, sdpa, flash, flex) expects.
        """
        if mask2d is None:
            return None
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask2d)

    def _layer_extras(self, hidden: torch.Tensor) -> dict[str, Any]:
        if self._position_bias is None:
            return {}
        # The bias depends only on sequence length; one row broadcasts over the batch.
        return {"position_bias": self._position_bias(hidden[:1])}

    def _start(self, features: dict[str, Any]) -> _Batch:
        """The batch's embedding output, masks and mean-pool weights, on the device."""
        device = self.device
        lengths = features["lengths"]  # on the host: trimming needs no sync
        embed_inputs = {"input_ids": features["input_ids"].to(device, non_blocking=True)}
        if "token_type_ids" in features:
            embed_inputs["token_type_ids"] = features["token_type_ids"].to(device, non_blocking=True)
        hidden = self.model.embeddings(**embed_inputs)
        padded = bool(lengths.min() < hidden.shape[1])
        mask2d = features["attention_mask"].to(device, non_blocking=True) if padded else None
        weights = torch.from_numpy((features["attention_mask"].numpy() / np.maximum(lengths, 1)[:, None])[:, None, :])
        weights = weights.to(device=device, dtype=hidden.dtype, non_blocking=True)
        # Under fp16/bf16 autocast the layers run in half precision, but pools and cosines stay fp32:
        # a half-precision Gram matrix would move cosines by ~1e-3 and flip exits near theta.
        exact = (torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type)
                 else contextlib.nullcontext())
        return _Batch(hidden, weights, mask2d, self._attention_mask(hidden, mask2d), self._layer_extras(hidden),
                      lengths, np.arange(hidden.shape[0]), exact)

    def _layers(self, batch: _Batch, depth: int) -> Iterator[int]:
        """Run layers 1..depth over the batch's remaining rows; yields each layer's number once batch.hidden holds
        its states (the caller may drop rows in between: the next layer runs on what the batch holds then)."""
        for index, layer in enumerate(self.model.encoder.layer[:depth]):
            output = layer(batch.hidden, batch.attention, **batch.extras)
            batch.hidden = output[0] if isinstance(output, tuple) else output
            yield index + 1

    def _drop_rows(self, batch: _Batch, keep_host: np.ndarray) -> torch.Tensor:
        """Keep only the rows at positions `keep_host` ("compact"), and trim the padding columns none of them needs
        (right padding: trailing columns go); returns those positions on the device."""
        batch.rows = batch.rows[keep_host]
        new_len = int(batch.lengths[batch.rows].max())
        keep = torch.from_numpy(keep_host).to(self.device, non_blocking=True)
        if new_len < batch.hidden.shape[1] and self._position_bias is not None:
            batch.extras = self._layer_extras(batch.hidden[:, :new_len])
        batch.hidden = batch.hidden[:, :new_len].index_select(0, keep)
        batch.weights = batch.weights[:, :, :new_len].index_select(0, keep)
        still_padded = bool(batch.lengths[batch.rows].min() < new_len)
        batch.mask2d = batch.mask2d[:, :new_len].index_select(0, keep) if still_padded else None
        batch.attention = self._attention_mask(batch.hidden, batch.mask2d)
        return keep

    def _run_batch(self, features: dict[str, Any], kind: str, depth: int) -> tuple[torch.Tensor, np.ndarray]:
        """Run one right-padded batch. Returns (pooled (B, d) float32 unnormalised, exit layers (B,) on the host).

        kind "all" returns every layer's pool as (L, B, d) instead (exit layers all L); "full" and "fixed" run
        `depth` layers with no test; "monitored", "batch" and "compact" test where a row could exit (_exit_loop).
        """
        batch = self._start(features)
        exit_layer = np.full(len(batch.rows), depth, dtype=np.int64)
        if kind == "all":
            return torch.stack([batch.pool().squeeze(1) for _ in self._layers(batch, depth)]), exit_layer
        if kind in ("monitored", "batch", "compact"):
            return self._exit_loop(batch, kind, depth, exit_layer)
        for _ in self._layers(batch, depth):
            pass
        return batch.pool().squeeze(1), exit_layer

    def _exit_loop(self, batch: _Batch, kind: str, depth: int,
                   exit_layer: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The layers with the exit test where it can fire: "monitored" computes it and never exits (its cost),
        "batch" keeps leaving rows in the batch until every row has left, "compact" drops them at once.

        Per tested layer: the mean pool p_l (a batched matmul) and _passes (one host sync). Rows, padding, masks
        and the MPNet position bias change only on layers where rows leave ("compact": _drop_rows).
        """
        thresholds = self.exit_thresholds()
        tested = np.flatnonzero(np.isfinite(thresholds))
        first_check = int(tested[0]) + 1 if len(tested) else depth + 1
        exits = (None if kind == "monitored"
                 else _Exits(len(batch.rows), batch.hidden.shape[-1], self.device, exit_layer))
        on_cpu = self.device.type == "cpu"
        # Pools, as (B, 1, d), kept only from layer first_check - k on: the oldest one a test compares against.
        history: deque[torch.Tensor] = deque(maxlen=self.k)
        for layer_no in self._layers(batch, depth):
            if layer_no == depth:  # exiting at L and running to L give the same p_L: no test there
                break
            if layer_no < first_check - self.k:
                continue
            pooled = batch.pool()
            threshold = thresholds[layer_no - 1]
            if np.isfinite(threshold):
                passes = _passes(pooled, history, threshold, batch.exact, on_cpu)
                if kind == "batch" and exits.batch(pooled, passes, layer_no):
                    return exits.out, exit_layer
                if kind == "compact" and passes.any():
                    if exits.compact(pooled, np.flatnonzero(passes), batch.rows, layer_no):
                        return exits.out, exit_layer
                    keep = self._drop_rows(batch, np.flatnonzero(~passes))
                    pooled = pooled.index_select(0, keep)
                    history = deque((p.index_select(0, keep) for p in history), maxlen=self.k)
            history.append(pooled)
        final = batch.pool().squeeze(1)
        return (final if exits is None else exits.finish(final, kind, batch.rows)), exit_layer
