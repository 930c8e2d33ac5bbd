"""EarlyExitEncoder: mean-pooled sentence embeddings with convergence-based early exit (Algorithm 1).

For l = 1..L the encoder runs layer l and pools p_l = MeanPool(h_l); a row exits at layer l when
l >= l_min, l > k and cos(p_l, p_{l-k}) >= theta, with embedding p_l (normalised if asked).
A row that never passes the test runs to the last layer L and returns p_L.

The transformer's own modules do the work (embeddings, the model's attention-mask builder, each
`encoder.layer[i]`, MPNet's relative position bias); this module only decides which rows keep going.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask

from leap_core.io import write_json_atomic
from leap_core.policy import ALWAYS, ExitPolicy, check_rule

logger = logging.getLogger(__name__)

EXIT_SETTINGS_FILE = "leap_exit.json"
MODES = ("full", "monitored", "batch", "compact")  # plus "fixed:N"
TOKENIZE_CHUNK = 4096  # texts per tokenizer call: a large corpus never sits in Python lists at once


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


def read_exit_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings saved in `<path>/leap_exit.json`; {} when the file is absent.

    theta, k, l_min: the exit rule; policy (optional): {"kind": full|fixed|rule|thresholds, "depth", "thresholds"}
    (leap_core.policy), the policy the encoder serves by default; calibration (optional): what chose it.
    Checked against schemas.ExitSettingsFile (types, ranges, no NaN), then as a rule and policy together.
    """
    from leap_core.schemas import ExitSettingsFile, read_schema_file

    file = Path(path) / EXIT_SETTINGS_FILE
    if not file.is_file():
        return {}
    values = read_schema_file(file, ExitSettingsFile)
    if "policy" in values:
        rule = {key: values[key] for key in ("theta", "k", "l_min") if key in values}
        ExitPolicy.from_dict({**rule, **values["policy"]}, where=f"{file}: policy")
    defaults = {"theta": 0.95, "k": 1, "l_min": 1}
    check_rule(*(values.get(key, default) for key, default in defaults.items()), where=str(file))
    return values


def write_exit_settings(path: str | os.PathLike, policy: ExitPolicy, calibration: dict[str, Any] | None = None,
                        theta: float | None = None) -> Path:
    """`<path>/leap_exit.json`: the rule's theta, k, l_min (theta: a value outside the policy's [-1, 1] range, as
    tests set it), the policy when it is not the rule itself, and what chose it; written atomically."""
    settings: dict[str, Any] = {"theta": policy.theta if theta is None else theta, "k": policy.k, "l_min": policy.l_min}
    if policy.kind != "rule":
        settings["policy"] = {key: value for key, value in policy.to_dict().items() if key not in ("theta", "k", "l_min")}
    if calibration is not None:
        settings["calibration"] = calibration
    target = Path(path) / EXIT_SETTINGS_FILE
    write_json_atomic(target, settings)
    return target


# Tokenizers without a real limit report a huge sentinel (int(1e30)) as model_max_length.
_NO_LIMIT = 1_000_000


def _read_max_seq_length(path: str | os.PathLike) -> int | None:
    """The folder's max sequence length as sentence-transformers reads it.

    sentence-transformers < 6 wrote it to sentence_bert_config.json ("max_seq_length"); 6 writes it
    to the tokenizer's "model_max_length" in tokenizer_config.json. None when neither sets one.
    """
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        file = Path(path) / name
        if not file.is_file():
            continue
        try:
            value = json.loads(file.read_text(encoding="utf-8")).get(key)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: line {err.lineno}: not valid JSON: {err.msg}") from err
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= _NO_LIMIT):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{file}: {key} must be a positive integer, got {value!r}")
        return value
    return None


def check_sentences(sentences: Any) -> list[str]:
    """The sentences as a list, checked before any compute: every item a str (empty allowed) of valid Unicode."""
    if isinstance(sentences, (bytes, bytearray)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"sentences must be a str or a sequence of str, got {type(sentences).__name__}")
    items = list(sentences)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"sentences[{index}] is {type(item).__name__}, expected str")
    check_encodable(items)
    return items


def check_encodable(items: Sequence[str]) -> None:
    """A one-line ValueError naming the row when a text holds a lone surrogate ("\\ud800", what a bad decode leaves):
    the tokenizer would fail with a TypeError naming no row. One join and encode in C: cheap beside the model."""
    try:
        "".join(items).encode("utf-8")
    except UnicodeEncodeError:
        for row, item in enumerate(items):  # the rare path: find the row
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"sentences[{row}]: not valid Unicode text ({item[err.start]!r} at character "
                                 f"{err.start}, a lone surrogate); decode its source with errors='replace' or drop "
                                 "the row") from None


def _store(out: torch.Tensor, pooled: torch.Tensor, source: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """out[target] = pooled[source], in place; indices come from the host (no sync to build them)."""
    to_device = lambda rows: torch.from_numpy(rows).to(out.device, non_blocking=True)  # noqa: E731
    if len(source) != pooled.shape[0]:
        pooled = pooled.index_select(0, to_device(source))
    return out.index_copy_(0, to_device(target), pooled)


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


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
        theta: float = 0.95,
        k: int = 1,
        l_min: int = 6,
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
        from leap_core.models import check_max_length

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

        Exit settings come from `<path>/leap_exit.json` when present, max_length from
        `sentence_bert_config.json` ("max_seq_length"); keyword overrides win over both.
        """
        from leap_core.models import check_max_length, load_weights, resolve_model

        path = Path(path) if Path(path).is_dir() else resolve_model(str(path))  # a hub id: its cached or fetched folder
        pooling = path / "1_Pooling" / "config.json"
        pooling_config = json.loads(pooling.read_text(encoding="utf-8")) if pooling.is_file() else {}
        # sentence-transformers < 6 wrote pooling_mode_mean_tokens; 6 writes pooling_mode: "mean".
        is_mean = pooling_config.get("pooling_mode_mean_tokens") or pooling_config.get("pooling_mode") == "mean"
        if pooling.is_file() and not is_mean:
            logger.warning("%s: the folder's own pooling is not mean pooling; this encoder always mean-pools", pooling)
        settings: dict[str, Any] = dict(read_exit_settings(path))
        max_seq_length = _read_max_seq_length(path)
        if max_seq_length is not None:
            settings["max_length"] = max_seq_length
        if not {"theta", "k", "l_min"} & (set(settings) | set(overrides)):
            logger.warning("%s: no %s: the exit rule is the default theta=0.95, k=1, l_min=6 (calibrate it with "
                           "`leap calibrate`, or pass theta, k, l_min)", path, EXIT_SETTINGS_FILE)
        settings.update(overrides)
        model = load_weights(path)
        if max_seq_length is not None and "max_length" not in overrides:  # refused naming the folder, at load
            check_max_length(max_seq_length, model, f"{path}: max_seq_length")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if {"theta", "k", "l_min"} & set(settings):
            where = f"{path / EXIT_SETTINGS_FILE}" if not overrides else f"{path}: exit settings (with {sorted(overrides)})"
            check_rule(settings.get("theta", 0.95), settings.get("k", 1), settings.get("l_min", 6),
                       len(model.encoder.layer), where=where)
        return cls(model, tokenizer, **settings)

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
        _check_batch_size(batch_size)

        if not items:
            embeddings = torch.zeros(0, self.dim, device=self.device)
            exit_layers = np.zeros(0, dtype=np.int64)
        else:
            chunks, layer_chunks = [], []
            unsort, batches = self._length_sorted_batches(items, batch_size)
            if show_progress_bar:
                from tqdm.auto import tqdm

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
        _check_batch_size(batch_size)
        if not items:
            return np.zeros((self.num_layers, 0, self.dim), dtype=np.float32)
        unsort, batches = self._length_sorted_batches(items, batch_size)
        stacked = torch.cat([self._run_batch(features, "all", self.num_layers)[0] for features in batches], dim=1)
        stacked = stacked.index_select(1, torch.from_numpy(unsort).to(self.device))
        return F.normalize(stacked, dim=-1).cpu().numpy()

    # ---------------------------------------------------------------- batching

    def _tokenize(self, items: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Tokenize every item once: (lengths (N,), {key: all items' ids end to end, plus one pad}).

        Truncated to max_length; in chunks, so a large corpus is held as compact int arrays.
        """
        wanted = ["input_ids"] + (["token_type_ids"] if self.takes_token_types else [])
        lengths, flat = [], {key: [] for key in wanted}
        for start in range(0, len(items), TOKENIZE_CHUNK):
            encoded = self.tokenizer(items[start : start + TOKENIZE_CHUNK], truncation=True,
                                     max_length=self.max_length, return_attention_mask=False)
            lengths.extend(map(len, encoded["input_ids"]))
            for key in [key for key in flat if key in encoded]:
                flat[key].append(np.fromiter(itertools.chain.from_iterable(encoded[key]), dtype=np.int64))
        pads = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": self.tokenizer.pad_token_type_id or 0}
        # The trailing pad lets _pad_batch gather padding positions from a valid index.
        return np.asarray(lengths, dtype=np.int64), {
            key: np.concatenate(parts + [np.array([pads[key]], dtype=np.int64)]) for key, parts in flat.items() if parts
        }

    def _pad_batch(self, lengths: np.ndarray, starts: np.ndarray, flat: dict[str, np.ndarray],
                   index: np.ndarray) -> dict[str, Any]:
        """Right-padded tensors of the items `index` ("compact" trims trailing columns as rows leave)."""
        batch_lengths = lengths[index]
        columns = np.arange(max(int(batch_lengths.max()), 1))
        real = columns < batch_lengths[:, None]
        # Padding positions read the trailing pad of each flat array.
        positions = np.where(real, starts[index][:, None] + columns, -1)
        features: dict[str, Any] = {key: torch.from_numpy(ids[positions]) for key, ids in flat.items()}
        features["attention_mask"] = torch.from_numpy(real.astype(np.int64))
        features["lengths"] = batch_lengths
        return features

    def _length_sorted_batches(self, items: list[str], batch_size: int) -> tuple[np.ndarray, Iterator]:
        """Batches sorted by token length, longest first, so a batch holds similar lengths.

        Returns (unsort, batches): row unsort[i] of the concatenated batch outputs is input item i.
        """
        lengths, flat = self._tokenize(items)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        order = np.argsort(-lengths, kind="stable")
        batches = (
            self._pad_batch(lengths, starts, flat, order[start : start + batch_size])
            for start in range(0, len(items), batch_size)
        )
        return np.argsort(order), batches

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

    def _run_batch(self, features: dict[str, Any], kind: str, depth: int) -> tuple[torch.Tensor, np.ndarray]:
        """Run one right-padded batch. Returns (pooled (B, d) float32 unnormalised, exit layers (B,) on the host).

        kind "all" returns every layer's pool as (L, B, d) instead (exit layers all L).
        Per checked layer the hot path is three small kernels and one host sync: the mean pool p_l (a
        batched matmul), [p_l; p_{l-k}] (a concatenation) and its 2x2 Gram matrix per row (a batched
        matmul), which holds both norms and the dot; the cosine and the decision are then a few numpy
        operations on B x 4 numbers. Rows, padding, masks and the MPNet position bias change only on
        layers where rows leave ("compact").

        One function on purpose (over 60 lines): the per-layer loop shrinks a dozen tensors and arrays together, and
        splitting it would pass them through a state object on every layer of the latency-critical path.
        """
        device = self.device
        lengths = features["lengths"]  # on the host: trimming needs no sync
        embed_inputs = {"input_ids": features["input_ids"].to(device, non_blocking=True)}
        if "token_type_ids" in features:
            embed_inputs["token_type_ids"] = features["token_type_ids"].to(device, non_blocking=True)
        hidden = self.model.embeddings(**embed_inputs)
        n_rows, seq_len = hidden.shape[:2]
        padded = bool(lengths.min() < seq_len)
        mask2d = features["attention_mask"].to(device, non_blocking=True) if padded else None
        # Mean pool as one batched matmul, (B, 1, T) @ (B, T, d): weight 1/length on real tokens, 0 on padding.
        weights = torch.from_numpy((features["attention_mask"].numpy() / np.maximum(lengths, 1)[:, None])[:, None, :])
        weights = weights.to(device=device, dtype=hidden.dtype, non_blocking=True)
        attention = self._attention_mask(hidden, mask2d)
        extras = self._layer_extras(hidden)
        # Under fp16/bf16 autocast the layers run in half precision, but pools and cosines stay fp32:
        # a half-precision Gram matrix would move cosines by ~1e-3 and flip exits near theta.
        exact = (torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type)
                 else contextlib.nullcontext())

        def pool(states: torch.Tensor) -> torch.Tensor:  # (B, 1, d) float32 mean pools
            with exact:
                pooled = torch.bmm(weights, states if states.dtype == weights.dtype else states.to(weights.dtype))
            return pooled if pooled.dtype == torch.float32 else pooled.float()

        exit_layer = np.full(n_rows, depth, dtype=np.int64)
        checking = kind in ("monitored", "batch", "compact")
        exiting = kind in ("batch", "compact")
        out = torch.zeros(n_rows, hidden.shape[-1], dtype=torch.float32, device=device) if exiting else None
        any_exit = False
        on_cpu = device.type == "cpu"
        thresholds = self.exit_thresholds()
        tested = np.flatnonzero(np.isfinite(thresholds))
        first_check = int(tested[0]) + 1 if len(tested) else depth + 1
        # Pools, as (B, 1, d), kept only from layer first_check - k on: the oldest one a test compares against.
        history: deque[torch.Tensor] = deque(maxlen=self.k)
        exited = np.zeros(n_rows, dtype=bool)  # "batch" mode
        rows = np.arange(n_rows)  # "compact": batch positions of the remaining rows
        all_layers = []

        for index, layer in enumerate(self.model.encoder.layer[:depth]):
            layer_no = index + 1
            output = layer(hidden, attention, **extras)
            hidden = output[0] if isinstance(output, tuple) else output
            if kind == "all":
                all_layers.append(pool(hidden).squeeze(1))
                continue
            if layer_no == depth:  # exiting at L and running to L give the same p_L: no test there
                break
            if not checking or layer_no < first_check - self.k:
                continue
            pooled = pool(hidden)
            threshold = thresholds[index]
            if threshold <= ALWAYS:  # the policy stops every row here: no cosine needed
                passes = np.ones(pooled.shape[0], dtype=bool)
            elif np.isfinite(threshold):
                pair = torch.cat([pooled, history[0]], dim=1)  # (B, 2, d)
                with exact:
                    gram = torch.bmm(pair, pair.transpose(1, 2)).view(-1, 4)
                gram = (gram if on_cpu else gram.cpu()).numpy().astype(np.float64)  # the one host sync
                # cos = <p_l, p_{l-k}> / (|p_l| |p_{l-k}|), clamped like F.cosine_similarity (eps 1e-8).
                passes = gram[:, 1] / np.sqrt(np.maximum(gram[:, 0] * gram[:, 3], 1e-16)) >= threshold
            if np.isfinite(threshold):
                if kind == "batch":
                    fresh = passes & ~exited
                    if fresh.any():
                        _store(out, pooled.squeeze(1), np.flatnonzero(fresh), np.flatnonzero(fresh))
                        any_exit = True
                        exit_layer[fresh] = layer_no
                        exited |= fresh
                        if exited.all():
                            return out, exit_layer
                elif kind == "compact" and passes.any():
                    leaving = np.flatnonzero(passes)
                    _store(out, pooled.squeeze(1), leaving, rows[leaving])
                    any_exit = True
                    exit_layer[rows[leaving]] = layer_no
                    if len(leaving) == len(rows):
                        return out, exit_layer
                    keep_host = np.flatnonzero(~passes)
                    rows = rows[keep_host]
                    new_len = int(lengths[rows].max())  # right padding: trailing columns go
                    keep = torch.from_numpy(keep_host).to(device, non_blocking=True)
                    if new_len < hidden.shape[1] and self._position_bias is not None:
                        extras = self._layer_extras(hidden[:, :new_len])
                    hidden = hidden[:, :new_len].index_select(0, keep)
                    weights = weights[:, :, :new_len].index_select(0, keep)
                    pooled = pooled.index_select(0, keep)
                    history = deque((p.index_select(0, keep) for p in history), maxlen=self.k)
                    still_padded = bool(lengths[rows].min() < new_len)
                    mask2d = mask2d[:, :new_len].index_select(0, keep) if still_padded else None
                    attention = self._attention_mask(hidden, mask2d)
            history.append(pooled)

        if kind == "all":
            return torch.stack(all_layers), exit_layer
        final = pool(hidden).squeeze(1)
        if not any_exit:  # no row left early: the final pools are the output as they stand
            return final, exit_layer
        if kind == "batch":
            remaining = np.flatnonzero(~exited)
            return _store(out, final, remaining, remaining), exit_layer
        return _store(out, final, np.arange(len(rows)), rows), exit_layer
