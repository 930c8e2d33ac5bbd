"""EarlyExitEncoder: mean-pooled sentence embeddings with convergence-based early exit (Algorithm 1).

For l = 1..L the encoder runs layer l and pools p_l = MeanPool(h_l); a row exits at layer l when
l >= l_min, l > k and cos(p_l, p_{l-k}) >= theta, with embedding p_l (normalised if asked).
A row that never passes the test runs to the last layer L and returns p_L.

The transformer's own modules do the work (embeddings, the model's attention-mask builder, each
`encoder.layer[i]`, MPNet's relative position bias); this module only decides which rows keep going.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask

from leap_core.io import write_json_atomic
from leap_core.pooling import mean_pool

logger = logging.getLogger(__name__)

EXIT_SETTINGS_FILE = "leap_exit.json"
EXIT_SETTINGS_KEYS = ("theta", "k", "l_min")
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


def read_exit_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The {"theta", "k", "l_min"} saved in `<path>/leap_exit.json`; {} when the file is absent."""
    file = Path(path) / EXIT_SETTINGS_FILE
    if not file.is_file():
        return {}
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: line {err.lineno}: not valid JSON: {err.msg}") from err
    if not isinstance(values, dict):
        raise ValueError(f"{file}: expected a JSON object with keys {list(EXIT_SETTINGS_KEYS)}")
    unknown = sorted(set(values) - set(EXIT_SETTINGS_KEYS))
    if unknown:
        raise ValueError(f"{file}: unknown key(s) {unknown}; known: {list(EXIT_SETTINGS_KEYS)}")
    for key, value in values.items():
        wanted = (int, float) if key == "theta" else int
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise ValueError(f"{file}: {key} must be {'a number' if key == 'theta' else 'an integer'}, got {value!r}")
    return values


def _read_max_seq_length(path: str | os.PathLike) -> int | None:
    file = Path(path) / "sentence_bert_config.json"
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text(encoding="utf-8")).get("max_seq_length")
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: line {err.lineno}: not valid JSON: {err.msg}") from err
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{file}: max_seq_length must be a positive integer, got {value!r}")
    return value


def _check_sentences(sentences: Any) -> list[str]:
    """Validate before any compute: every item must be a str (empty strings are allowed)."""
    if isinstance(sentences, (bytes, bytearray)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"sentences must be a str or a sequence of str, got {type(sentences).__name__}")
    items = list(sentences)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"sentences[{index}] is {type(item).__name__}, expected str")
    return items


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
    ) -> None:
        if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
            raise TypeError(
                f"{type(model).__name__} has no .embeddings and .encoder.layer: "
                "expected a BertModel-family or MPNetModel (the bare model, not a task head)"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if isinstance(l_min, bool) or not isinstance(l_min, int) or l_min < 1:
            raise ValueError(f"l_min must be an integer >= 1, got {l_min!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.theta = float(theta)
        self.k = k
        self.l_min = l_min
        self.max_length = max_length
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        embed_params = inspect.signature(model.embeddings.forward).parameters
        self._embeddings_take_token_types = "token_type_ids" in embed_params
        # MPNet adds a relative position bias, computed once per shape by the encoder, to every layer.
        self._position_bias = getattr(model.encoder, "compute_position_bias", None)
        builder = getattr(model, "_create_attention_masks", None)
        wanted = {"attention_mask", "encoder_attention_mask", "embedding_output", "encoder_hidden_states", "cache"}
        # BertModel-family: the very mask its forward builds; others (MPNet) call the shared builder directly.
        if builder is not None and not wanted <= set(inspect.signature(builder).parameters):
            builder = None
        self._mask_builder = builder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "EarlyExitEncoder":
        """Load AutoModel + AutoTokenizer from a folder (a sentence-transformers folder keeps them at its root).

        Exit settings come from `<path>/leap_exit.json` when present, max_length from
        `sentence_bert_config.json` ("max_seq_length"); keyword overrides win over both.
        """
        path = Path(path)
        pooling = path / "1_Pooling" / "config.json"
        if pooling.is_file() and not json.loads(pooling.read_text(encoding="utf-8")).get("pooling_mode_mean_tokens"):
            logger.warning("%s: the folder's own pooling is not mean pooling; this encoder always mean-pools", pooling)
        settings: dict[str, Any] = dict(read_exit_settings(path))
        max_seq_length = _read_max_seq_length(path)
        if max_seq_length is not None:
            settings["max_length"] = max_seq_length
        settings.update(overrides)
        model = AutoModel.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(model, tokenizer, **settings)

    def save_exit_settings(self, path: str | os.PathLike) -> Path:
        """Write {"theta", "k", "l_min"} to `<path>/leap_exit.json` atomically; returns the file."""
        target = Path(path) / EXIT_SETTINGS_FILE
        write_json_atomic(target, {"theta": self.theta, "k": self.k, "l_min": self.l_min})
        return target

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
        mode: str = "compact",
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
          columns no longer needed are trimmed), "fixed:N" (every row stops at layer N).
        Returns embeddings (float32 numpy, or a torch tensor on the encoder's device when
        convert_to_numpy=False), and with return_exit_layers also the 1-indexed exit layers
        (np.int64 array; a scalar for a str input): L in "full" and "monitored", N in "fixed:N".
        """
        single = isinstance(sentences, str)
        items = [sentences] if single else _check_sentences(sentences)
        kind, depth = parse_mode(mode, self.num_layers)
        _check_batch_size(batch_size)

        if not items:
            embeddings = torch.zeros(0, self.dim, device=self.device)
            layers = torch.zeros(0, dtype=torch.long, device=self.device)
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
            embeddings = torch.cat(chunks).index_select(0, unsort)
            layers = torch.cat(layer_chunks).index_select(0, unsort)
        if normalize_embeddings:
            embeddings = F.normalize(embeddings, dim=-1)
        if convert_to_numpy:
            embeddings = embeddings.cpu().numpy()
        exit_layers = layers.cpu().numpy().astype(np.int64)
        if single:
            embeddings, exit_layers = embeddings[0], exit_layers[0]
        return (embeddings, exit_layers) if return_exit_layers else embeddings

    @torch.no_grad()
    def layer_embeddings(self, sentences: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Normalised mean pools of every layer at full depth: (L, N, d) float32, index l-1 = layer l."""
        items = _check_sentences(sentences)
        _check_batch_size(batch_size)
        if not items:
            return np.zeros((self.num_layers, 0, self.dim), dtype=np.float32)
        unsort, batches = self._length_sorted_batches(items, batch_size)
        stacked = torch.cat([self._run_batch(features, "all", self.num_layers)[0] for features in batches], dim=1)
        stacked = stacked.index_select(1, unsort)
        return F.normalize(stacked, dim=-1).cpu().numpy()

    # ---------------------------------------------------------------- batching

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # Right padding: "compact" trims trailing columns once the longest remaining rows have left.
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt", padding_side="right"
        )

    def _length_sorted_batches(self, items: list[str], batch_size: int) -> tuple[torch.Tensor, Iterator]:
        """Batches sorted by token length, longest first, so a batch holds similar lengths.

        Returns (unsort, batches): row unsort[i] of the concatenated batch outputs is input item i.
        """
        lengths = [len(ids) for ids in self.tokenizer(items, truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort(-np.asarray(lengths), kind="stable")
        batches = (
            self._tokenize([items[i] for i in order[start : start + batch_size]])
            for start in range(0, len(items), batch_size)
        )
        return torch.from_numpy(np.argsort(order)).to(self.device), batches

    # ---------------------------------------------------------------- the layer loop

    def _attention_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor | None) -> Any:
        """The model's own extended attention mask (None when no row is padded)."""
        if mask2d is None:
            return None
        if self._mask_builder is not None:
            mask, _ = self._mask_builder(
                attention_mask=mask2d,
                encoder_attention_mask=None,
                embedding_output=hidden,
                encoder_hidden_states=None,
                cache=None,
            )
            return mask
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask2d)

    def _layer_extras(self, hidden: torch.Tensor) -> dict[str, Any]:
        if self._position_bias is None:
            return {}
        # The bias depends only on sequence length; one row broadcasts over the batch.
        return {"position_bias": self._position_bias(hidden[:1])}

    def _run_batch(self, features: dict[str, torch.Tensor], kind: str, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one padded batch. Returns (pooled (B, d) float32 unnormalised, exit layers (B,)).

        kind "all" returns every layer's pool as (L, B, d) instead (exit layers all L).
        """
        lengths = features["attention_mask"].sum(dim=1).numpy()  # on the host: trimming needs no sync
        mask2d = features["attention_mask"].to(self.device)
        embed_inputs = {"input_ids": features["input_ids"].to(self.device)}
        if self._embeddings_take_token_types and "token_type_ids" in features:
            embed_inputs["token_type_ids"] = features["token_type_ids"].to(self.device)
        hidden = self.model.embeddings(**embed_inputs)
        n_rows, seq_len = mask2d.shape
        padded = bool(lengths.min() < seq_len)
        attention = self._attention_mask(hidden, mask2d if padded else None)
        extras = self._layer_extras(hidden)

        exit_layer = torch.full((n_rows,), depth, dtype=torch.long, device=self.device)
        out = torch.zeros(n_rows, hidden.shape[-1], dtype=torch.float32, device=self.device)
        checking = kind in ("monitored", "batch", "compact")
        first_check = max(self.l_min, self.k + 1)
        # Pools are kept only from layer first_check - k on: the oldest one a test compares against.
        history: deque[torch.Tensor] = deque(maxlen=self.k)
        exited = torch.zeros(n_rows, dtype=torch.bool, device=self.device)  # "batch" mode
        rows = torch.arange(n_rows, device=self.device)  # "compact": batch positions of remaining rows
        rows_host = np.arange(n_rows)
        all_layers = []

        for index, layer in enumerate(self.model.encoder.layer[:depth]):
            layer_no = index + 1
            output = layer(hidden, attention, **extras)
            hidden = output[0] if isinstance(output, tuple) else output
            if kind == "all":
                all_layers.append(mean_pool(hidden.float(), mask2d))
                continue
            if layer_no == depth:  # exiting at L and running to L give the same p_L: no test there
                break
            if not checking or layer_no < first_check - self.k:
                continue
            pooled = mean_pool(hidden.float(), mask2d)
            if layer_no >= first_check:
                passes = F.cosine_similarity(pooled, history[0], dim=-1) >= self.theta
                if kind == "monitored":
                    bool(passes.any())  # the decision's host sync, so the overhead is measured honestly
                elif kind == "batch":
                    fresh = passes & ~exited
                    out = torch.where(fresh.unsqueeze(-1), pooled, out)
                    exit_layer = torch.where(fresh, layer_no, exit_layer)
                    exited |= passes
                    if bool(exited.all()):
                        return out, exit_layer
                else:  # compact
                    out[rows] = torch.where(passes.unsqueeze(-1), pooled, out[rows])
                    exit_layer[rows] = torch.where(passes, layer_no, exit_layer[rows])
                    passes_host = passes.cpu().numpy()  # the one host sync of this layer
                    if passes_host.all():
                        return out, exit_layer
                    if passes_host.any():
                        keep_host = np.flatnonzero(~passes_host)
                        rows_host = rows_host[keep_host]
                        new_len = int(lengths[rows_host].max())  # right padding: trailing columns go
                        keep = torch.from_numpy(keep_host).to(self.device)
                        rows = rows.index_select(0, keep)
                        hidden = hidden.index_select(0, keep)[:, :new_len]
                        mask2d = mask2d.index_select(0, keep)[:, :new_len]
                        pooled = pooled.index_select(0, keep)
                        history = deque((p.index_select(0, keep) for p in history), maxlen=self.k)
                        still_padded = bool(lengths[rows_host].min() < new_len)
                        attention = self._attention_mask(hidden, mask2d if still_padded else None)
                        extras = self._layer_extras(hidden)
            history.append(pooled)

        if kind == "all":
            return torch.stack(all_layers), exit_layer
        final = mean_pool(hidden.float(), mask2d)
        if kind == "batch":
            out = torch.where(exited.unsqueeze(-1), out, final)
        elif kind == "compact":
            out[rows] = final
        else:
            out = final
        return out, exit_layer
