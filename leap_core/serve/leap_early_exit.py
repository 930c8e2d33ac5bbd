"""LEAP early exit as a sentence-transformers module in one file, shipped inside every model folder leap saves.

`SentenceTransformer(folder_or_hub_id, trust_remote_code=True)` imports this file from the folder (modules.json
names `leap_early_exit.LeapEarlyExit`), so a pushed model loads with sentence-transformers alone:

- with leap installed, LeapEarlyExit is leap's own module (leap_core.serve.st_module: the EarlyExitEncoder engine);
- without it, StandaloneEarlyExit below applies the same exit test: per-layer thresholds t_l from leap_exit.json's
  policy; a text leaves at the first layer l < L where t_l <= -1 (always) or cos(p_l, p_{l-k}) >= t_l, with p_l,
  the mean pool of layer l, as its embedding. It keeps the batch whole, so layers are saved once every text of a
  batch has left: the embeddings and exit layers of leap's "batch" mode (its "compact" mode, which also drops texts
  as they leave, differs from them by float noise only).

Only torch, numpy, transformers and sentence-transformers are imported here (outside the try block, which
transformers' import check skips): anything else would have to be installed before the model could load.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Sequence

import numpy as np
import torch
from sentence_transformers.base.modules.input_module import InputModule
from transformers import AutoModel, AutoTokenizer

SETTINGS_FILE = "leap_exit.json"
ALWAYS = -1.0  # a threshold at or below -1 stops every text at that layer, with no cosine computed
MODES = ("full", "monitored", "batch", "compact")  # plus "fixed:N" and None / "policy" (leap_exit.json's policy)
EXIT_KWARGS = ("exit_mode",)  # what model_kwargs may set; anything else is refused, never silently dropped


def exit_vector(settings: dict[str, Any], n_layers: int, mode: str | None) -> tuple[np.ndarray, int]:
    """(thresholds t_1..t_L, layers to run) of `mode` under the folder's settings (EarlyExitEncoder's modes)."""
    policy = settings.get("policy") or {"kind": "rule"}
    if mode in (None, "policy"):
        mode = {"full": "full", "fixed": f"fixed:{policy.get('depth')}"}.get(policy["kind"], "compact")
    t = np.full(n_layers, np.inf)
    if mode in ("full", "monitored"):
        return t, n_layers
    if isinstance(mode, str) and mode.startswith("fixed:"):
        depth = int(mode.split(":", 1)[1])
        if not 1 <= depth <= n_layers:
            raise ValueError(f"mode {mode!r}: N must lie in 1..{n_layers} (the model's layers)")
        t[depth - 1] = ALWAYS if depth < n_layers else np.inf
        return t, depth
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {list(MODES)} or 'fixed:N'")
    if policy["kind"] == "thresholds":
        t[: n_layers - 1] = [np.inf if v is None else float(v) for v in policy["thresholds"]]
        return t, n_layers
    theta, k, l_min = float(settings.get("theta", 0.95)), int(settings.get("k", 1)), int(settings.get("l_min", 6))
    if theta <= 1:  # above 1 no cosine reaches it: nothing exits
        t[max(l_min, k + 1) - 1 : n_layers - 1] = max(theta, ALWAYS)
    return t, n_layers


def run_layers(model: Any, features: dict[str, torch.Tensor], thresholds: np.ndarray, depth: int,
               k: int) -> tuple[torch.Tensor, np.ndarray]:
    """One right-padded batch through layers 1..depth: (pools (B, d) float32, exit layers (B,)), as leap's engine."""
    mask = features["attention_mask"].cpu()
    lengths = mask.sum(1).numpy()
    inputs = {"input_ids": features["input_ids"]}
    if "token_type_ids" in features:
        inputs["token_type_ids"] = features["token_type_ids"]
    hidden = model.embeddings(**inputs)
    attention = _attention(model, hidden, features["attention_mask"], bool(lengths.min() < hidden.shape[1]))
    bias = getattr(model.encoder, "compute_position_bias", None)  # MPNet's relative position bias
    extras = {"position_bias": bias(hidden[:1])} if bias is not None else {}
    weights = torch.from_numpy((mask.numpy() / np.maximum(lengths, 1)[:, None])[:, None, :])
    weights = weights.to(device=hidden.device, dtype=hidden.dtype)
    out = torch.zeros(hidden.shape[0], hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    exit_layer, done, pools = np.full(hidden.shape[0], depth, dtype=np.int64), np.zeros(hidden.shape[0], bool), []
    for index, layer in enumerate(model.encoder.layer[:depth]):
        output = layer(hidden, attention, **extras)
        hidden = output[0] if isinstance(output, tuple) else output
        if index + 1 == depth:  # reaching the last layer run is not an exit
            break
        pools.append(torch.bmm(weights, hidden).float())  # (B, 1, d) mean pools
        passes = _passes(pools, index, float(thresholds[index]), k)
        fresh = passes & ~done
        if fresh.any():
            rows = torch.from_numpy(np.flatnonzero(fresh)).to(out.device)
            out[rows] = pools[-1].squeeze(1)[rows]
            exit_layer[fresh], done = index + 1, done | fresh
            if done.all():
                return out, exit_layer
    final = torch.bmm(weights, hidden).float().squeeze(1)
    rows = torch.from_numpy(np.flatnonzero(~done)).to(out.device)
    out[rows] = final[rows]
    return out, exit_layer


def _passes(pools: list[torch.Tensor], index: int, threshold: float, k: int) -> np.ndarray:
    """Which rows pass layer index+1's test: cos(p_l, p_{l-k}) >= t_l from the 2x2 Gram matrix, as leap's engine."""
    n_rows = pools[-1].shape[0]
    if threshold <= ALWAYS:
        return np.ones(n_rows, dtype=bool)
    if not np.isfinite(threshold) or index < k:
        return np.zeros(n_rows, dtype=bool)
    pair = torch.cat([pools[-1], pools[index - k]], dim=1)  # (B, 2, d)
    gram = torch.bmm(pair, pair.transpose(1, 2)).view(-1, 4).cpu().numpy().astype(np.float64)
    return gram[:, 1] / np.sqrt(np.maximum(gram[:, 0] * gram[:, 3], 1e-16)) >= threshold


def _attention(model: Any, hidden: torch.Tensor, mask: torch.Tensor, padded: bool) -> Any:
    """The attention mask the model's own forward would build; None when no row is padded."""
    if not padded:
        return None
    try:
        from transformers.masking_utils import create_bidirectional_mask  # in the try: older transformers lack it
    except ImportError:  # transformers before 4.56 builds the extended mask itself
        return model.get_extended_attention_mask(mask, mask.shape)
    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask.to(hidden.device))


class StandaloneEarlyExit(InputModule):
    """Tokenize, run the layers with the folder's exit test, mean-pool: {"sentence_embedding", "exit_layer"}.

    exit_mode: None serves leap_exit.json's policy; "full", "compact", "batch", "monitored" or "fixed:N";
    encode(..., exit_mode=...) overrides it for one call; it is saved with the folder (sentence_bert_config.json).
    """

    config_file_name = "sentence_bert_config.json"
    config_keys = ["max_seq_length", "exit_mode"]
    forward_kwargs = {"exit_mode"}
    save_in_root = True

    def __init__(self, model: Any, tokenizer: Any, settings: dict[str, Any], max_seq_length: int = 128,
                 exit_mode: str | None = None) -> None:
        super().__init__()
        self.auto_model, self.tokenizer, self.settings = model.eval(), tokenizer, dict(settings)
        self.max_seq_length, self.exit_mode = int(max_seq_length), exit_mode
        self.exit_log: list[np.ndarray] | None = None
        exit_vector(self.settings, self.num_layers, exit_mode)  # a bad mode fails here, not at the first encode

    @property
    def num_layers(self) -> int:
        return len(self.auto_model.encoder.layer)

    def get_embedding_dimension(self) -> int:
        return int(self.auto_model.config.hidden_size)

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        texts = [prompt + text for text in inputs] if prompt else list(inputs)
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                 padding_side="right", return_tensors="pt")
        return {key: value for key, value in encoded.items() if key in ("input_ids", "attention_mask",
                                                                        "token_type_ids")}

    @torch.no_grad()
    def forward(self, features: dict[str, Any], exit_mode: str | None = None, **kwargs: Any) -> dict[str, Any]:
        thresholds, depth = exit_vector(self.settings, self.num_layers, exit_mode or self.exit_mode)
        pooled, exit_layers = run_layers(self.auto_model, features, thresholds, depth, int(self.settings.get("k", 1)))
        features["sentence_embedding"] = pooled
        features["exit_layer"] = torch.from_numpy(exit_layers).to(pooled.device)
        if self.exit_log is not None:
            self.exit_log.append(exit_layers)
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Weights, tokenizer, max length and exit mode, leap_exit.json, and this file (the folder's remote code)."""
        self.auto_model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.save_tokenizer(output_path)
        self.save_config(output_path)
        with open(os.path.join(output_path, SETTINGS_FILE), "w", encoding="utf-8") as file:
            json.dump(self.settings, file, indent=2)
        ship_code(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             model_kwargs: dict[str, Any] | None = None, backend: str = "torch",
             **kwargs: Any) -> "StandaloneEarlyExit":
        """From a folder or hub id; model_kwargs may set exit_mode (anything else is refused)."""
        exit_mode = check_load_options(model_kwargs, backend, kwargs.get("exit_mode"))
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                   revision=revision, local_files_only=local_files_only)
        config = cls.load_config(folder)
        settings_file = os.path.join(folder, SETTINGS_FILE)
        settings = {}
        if os.path.isfile(settings_file):
            with open(settings_file, encoding="utf-8") as file:
                settings = json.load(file)
        model = AutoModel.from_pretrained(folder, use_safetensors=True)
        return cls(model, AutoTokenizer.from_pretrained(folder), settings, config.get("max_seq_length") or 128,
                   exit_mode if exit_mode is not None else config.get("exit_mode"))


def check_load_options(model_kwargs: dict[str, Any] | None, backend: str | None,
                       exit_mode: str | None = None) -> str | None:
    """The exit_mode a load asks for (model_kwargs["exit_mode"] or the keyword); a ValueError for a backend other
    than torch or a model_kwargs key this module cannot honour, so no option is silently ignored."""
    if backend not in (None, "torch"):
        raise ValueError(f"backend={backend!r}: a LEAP early-exit model runs in PyTorch here; for ONNX Runtime, "
                         "export its served point with `leap export MODEL --out DIR` and load DIR with "
                         "leap_core.serve.export.load_deployed")
    given = dict(model_kwargs or {})
    unknown = sorted(set(given) - set(EXIT_KWARGS))
    if unknown:
        raise ValueError(f"model_kwargs {unknown}: not supported by LeapEarlyExit (it takes {list(EXIT_KWARGS)}); "
                         "the weights load in float32 from safetensors")
    return given.get("exit_mode", exit_mode)


def ship_code(folder: str) -> str:
    """Copy this file into `folder`, the code its modules.json names for trust_remote_code loads."""
    target = os.path.join(folder, os.path.basename(__file__))
    if os.path.abspath(target) != os.path.abspath(__file__):
        shutil.copyfile(__file__, target)
    return target


try:  # leap installed: its own module, defined again here so that a save keeps naming this file
    from leap_core.serve.st_module import LeapEarlyExit as _LeapModule

    class LeapEarlyExit(_LeapModule):
        """leap_core.serve.st_module.LeapEarlyExit, loaded through this file (see the module docstring)."""

except ImportError:

    class LeapEarlyExit(StandaloneEarlyExit):  # type: ignore[no-redef]
        """StandaloneEarlyExit under the name modules.json gives (leap is not installed)."""
