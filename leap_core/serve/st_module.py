"""LEAP early exit as a sentence-transformers module: SentenceTransformer.encode and everything built on it exits.

LeapEarlyExit replaces Transformer + Pooling as the first module of a model; its engine is the EarlyExitEncoder
(one implementation: the same layer loop, exit test and mean pool). Its settings are the folder's leap_exit.json
(theta, k, l_min, the calibrated policy) and its exit_mode (sentence_bert_config.json), so save and push_to_hub
carry them. Every folder also ships leap_early_exit.py, which modules.json names: with trust_remote_code=True,
sentence-transformers loads the folder from that file alone, leap installed or not. Use it as:

    model = SentenceTransformer(folder, trust_remote_code=True)   # sentence-transformers >= 6 asks for the flag
    model = load_sentence_transformer(folder)                     # the same, also for folders saved before
    model.encode(texts, exit_mode="full")                          # one call at another mode; model[0].exit_mode
    model.encode(texts, output_value=None)[i]["exit_layer"]        # the layer each sentence left at
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.input_module import InputModule
from sentence_transformers.sentence_transformer import modules as st_modules
from sentence_transformers.util import import_from_string

from leap_core.serve.encoder import EarlyExitEncoder, parse_mode
from leap_core.io import write_text_atomic
from leap_core.serve.model_card import folder_card
from leap_core.model_folder import (CARD_FILE, REMOTE_CODE_FILE, ST_CONFIG_FILE, is_mean_pooling, max_seq_length,
                                    read_card, read_modules, read_pooling, read_prompts, saved_exit_mode,
                                    write_modules)
from leap_core.models import resolve_model, save_sentence_transformer

# The code a trust_remote_code load runs, copied into every folder whose first module is LeapEarlyExit. It imports
# this module when leap is installed (its LeapEarlyExit is then ours); this module never imports it back.
REMOTE_CODE = Path(__file__).with_name(REMOTE_CODE_FILE)
MODULE_TYPE = "leap_early_exit.LeapEarlyExit"  # modules.json's name: the file shipped in the folder
LEGACY_TYPE = "leap_core.st_module.LeapEarlyExit"  # folders saved before the file shipped (they need leap)
CLASS_TYPE = f"{__name__}.LeapEarlyExit"  # what sentence-transformers' save writes, before ship_remote_code renames it
EXIT_TYPES = (MODULE_TYPE, LEGACY_TYPE, CLASS_TYPE)
_PLAIN_INPUT = ("sentence_transformers.base.modules.transformer.Transformer",
                "sentence_transformers.sentence_transformer.modules.Transformer",
                "sentence_transformers.models.Transformer")
EXIT_KWARGS = ("exit_mode",)  # what model_kwargs may set; anything else is refused, never silently dropped


class LeapEarlyExit(InputModule):
    """Tokenize, run the transformer with per-row convergence exit, mean-pool: {"sentence_embedding", "exit_layer"}.

    exit_mode: None serves the folder's policy (leap_exit.json); "full", "compact", "batch", "monitored" or
    "fixed:N" as EarlyExitEncoder.encode. encode(..., exit_mode=...) overrides it for one call.
    """

    config_file_name = ST_CONFIG_FILE
    config_keys = ["max_seq_length", "exit_mode"]  # exit_mode survives save and load
    forward_kwargs = {"exit_mode"}
    save_in_root = True

    def __init__(self, encoder: EarlyExitEncoder, exit_mode: str | None = None) -> None:
        super().__init__()
        self.engine = encoder
        self.auto_model = encoder.model  # a child module, so .to(device) and .half() reach the weights
        self.tokenizer = encoder.tokenizer
        self.exit_mode = exit_mode
        self.exit_log: list[np.ndarray] | None = None  # a list collects every batch's exit layers (leap mteb)
        parse_mode(self._mode(exit_mode), encoder.num_layers)  # a bad mode fails here, not at the first encode

    def _mode(self, exit_mode: str | None) -> str:
        mode = exit_mode if exit_mode is not None else self.exit_mode
        return self.engine.policy.mode() if mode in (None, "policy") else mode

    @property
    def max_seq_length(self) -> int:
        return self.engine.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.engine.max_length = int(value)

    def get_embedding_dimension(self) -> int:
        return self.engine.dim

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Right-padded ids and mask, truncated to max_seq_length (the engine's layer loop trims right padding)."""
        texts = [prompt + text for text in inputs] if prompt else list(inputs)
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.engine.max_length,
                                 padding_side="right", return_tensors="pt")
        wanted = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.engine.takes_token_types else [])
        return {key: encoded[key] for key in wanted if key in encoded}

    def forward(self, features: dict[str, Any], exit_mode: str | None = None, **kwargs: Any) -> dict[str, Any]:
        self.engine.device = self.auto_model.device  # sentence-transformers moves the module, not the engine
        pooled, exit_layers = self.engine.encode_features(features, self._mode(exit_mode))
        features["sentence_embedding"] = pooled
        features["exit_layer"] = torch.from_numpy(exit_layers).to(pooled.device)
        if self.exit_log is not None:
            self.exit_log.append(exit_layers)
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Weights, tokenizer, max length and exit mode as a Transformer module writes them, leap_exit.json, and
        leap_early_exit.py (the code a trust_remote_code load runs)."""
        self.auto_model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.save_tokenizer(output_path)
        self.save_config(output_path)
        self.engine.save_exit_settings(output_path)
        ship_code(Path(output_path))

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", exit_mode: str | None = None,
             model_kwargs: dict[str, Any] | None = None, backend: str | None = None,
             **kwargs: Any) -> "LeapEarlyExit":
        """From a folder or hub id (its leap_exit.json gives the rule and policy); keyword overrides win.

        exit_mode: the keyword, else model_kwargs["exit_mode"], else the one saved with the folder. Any other
        model_kwargs key, and any backend but torch (ONNX: `leap export`), is a ValueError, not silently ignored.
        """
        exit_mode = check_load_options(model_kwargs, backend, exit_mode)
        overrides = {key: kwargs[key] for key in ("theta", "k", "l_min", "policy", "device") if key in kwargs}
        return cls.from_folder(local_folder(model_name_or_path, subfolder, kwargs), exit_mode, **overrides)

    @classmethod
    def from_folder(cls, folder: Path, exit_mode: str | None = None, **overrides: Any) -> "LeapEarlyExit":
        """The module of a local folder: its encoder as EarlyExitEncoder.from_pretrained loads it (leap_exit.json,
        overrides win), at exit_mode, else the one saved with the folder."""
        return cls(EarlyExitEncoder.from_pretrained(folder, **overrides),
                   exit_mode=exit_mode if exit_mode is not None else saved_exit_mode(folder))


def check_load_options(model_kwargs: dict[str, Any] | None, backend: str | None,
                       exit_mode: str | None = None) -> str | None:
    """The exit_mode a load asks for (model_kwargs["exit_mode"] or the keyword); a ValueError for a backend other
    than torch or a model_kwargs key this module cannot honour, so no option is silently ignored. (The shipped
    leap_early_exit.py restates it for loads without leap; tests/test_st_module.py checks that both agree.)"""
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


def ship_code(folder: Path) -> Path:
    """Copy leap_early_exit.py into `folder`, the code its modules.json names for trust_remote_code loads."""
    target = folder / REMOTE_CODE_FILE
    if target.resolve() != REMOTE_CODE.resolve():
        shutil.copyfile(REMOTE_CODE, target)
    return target


def ship_remote_code(folder: str | Path) -> None:
    """Make a saved folder load without leap: leap_early_exit.py beside modules.json, which names it. A folder whose
    first module is not LeapEarlyExit is left as it is."""
    entries = read_modules(folder)
    if not entries or entries[0]["type"] not in EXIT_TYPES:
        return
    ship_code(Path(folder))
    if entries[0]["type"] != MODULE_TYPE:
        entries[0]["type"] = MODULE_TYPE
        write_modules(folder, entries)


def save_exit_folder(model: Any, tokenizer: Any, folder: str | Path, max_seq_length: int,
                     rule: dict[str, Any]) -> Path:
    """A sentence-transformers folder whose first module is LeapEarlyExit with this exit rule (theta, k, l_min):
    SentenceTransformer(folder, trust_remote_code=True).encode exits. Written atomically."""
    engine = EarlyExitEncoder(model, tokenizer, max_length=max_seq_length, device="cpu", **rule)
    return save_sentence_transformer(model, tokenizer, folder, max_seq_length, input_modules=[LeapEarlyExit(engine)],
                                     finish=finish_exit_folder)


def finish_exit_folder(folder: Path) -> None:
    """What a saved LeapEarlyExit folder needs beyond sentence-transformers' files: the code a trust_remote_code
    load runs (ship_remote_code) and leap's card, stating the policy it serves (numbers come once measured)."""
    ship_remote_code(folder)
    write_text_atomic(folder / CARD_FILE, folder_card(folder))


def local_folder(name: str, subfolder: str = "", hub: dict[str, Any] | None = None) -> Path:
    """A folder path as is; a hub id downloaded (or found in the cache) like sentence-transformers would."""
    hub = hub or {}
    local = Path(name) / subfolder
    if local.is_dir():
        return local
    if hub.get("token") or hub.get("revision") or hub.get("cache_folder"):
        from huggingface_hub import snapshot_download  # only a hub id with hub options needs the hub client

        return Path(snapshot_download(name, token=hub.get("token"), revision=hub.get("revision"),
                                      cache_dir=hub.get("cache_folder"),
                                      local_files_only=bool(hub.get("local_files_only")))) / subfolder
    return resolve_model(name) / subfolder


def tail_modules(folder: str | Path) -> list[Any]:
    """The modules after the sentence embedding is formed (Dense heads, Normalize), in order, from either layout:
    LeapEarlyExit first, or Transformer + mean Pooling first. Only sentence-transformers' own classes are imported."""
    folder = Path(folder)
    entries = read_modules(folder)
    if entries is None:
        return []  # a plain transformers folder: sentence-transformers mean-pools it, with nothing after
    first = entries[0]["type"]
    if first in EXIT_TYPES:
        rest = entries[1:]
    elif first in _PLAIN_INPUT and len(entries) > 1 and entries[1]["type"].endswith(".Pooling"):
        pooling = read_pooling(folder, entries[1]["path"])
        if not is_mean_pooling(pooling):
            raise ValueError(f"{folder}: pooling {pooling}; leap serves mean-pooled models")
        rest = entries[2:]
    else:
        raise ValueError(f"{folder}: modules.json starts with {first}; leap serves Transformer + mean Pooling "
                         "or its own LeapEarlyExit")
    modules = []
    for entry in rest:
        if not entry["type"].startswith("sentence_transformers."):
            raise ValueError(f"{folder}: module {entry['type']} is not sentence-transformers' own: not loaded")
        modules.append(import_from_string(entry["type"]).load(str(folder), subfolder=entry["path"]))
    return modules


def load_sentence_transformer(path: str | Path, exit_mode: str | None = None, device: str | None = None,
                              **overrides: Any):
    """A SentenceTransformer that exits early, from a folder of either layout or a hub id, with no remote code:
    LeapEarlyExit (settings from leap_exit.json, overrides win; exit_mode, else the folder's saved one) followed
    by the folder's own tail modules. Its save() ships the module's code and leap's card (LeapSentenceTransformer)."""
    folder = local_folder(str(path))
    first = LeapEarlyExit.from_folder(folder, exit_mode, **overrides)
    model = LeapSentenceTransformer(modules=[first, *tail_modules(folder)],
                                    device=device or str(first.engine.device))
    prompts = read_prompts(folder)
    if prompts is not None:  # prompts and the default prompt travel with the folder
        model.prompts = prompts.get("prompts") or {}
        model.default_prompt_name = prompts.get("default_prompt_name")
    card = read_card(folder)
    if card is not None:
        model.source_card = (first.engine.policy.name, first.exit_mode, card)
    return model


class LeapSentenceTransformer(SentenceTransformer):
    """A SentenceTransformer whose save() writes a folder that loads without leap (ship_remote_code) and leap's
    card: the loaded folder's card while the policy and exit mode are those it was loaded with, else a fresh one
    stating what the copy serves, with no numbers measured at another policy."""

    source_card: tuple[str, str | None, str] | None = None  # (policy, exit_mode, README.md) of the loaded folder

    def save(self, path: str, model_name: str | None = None, create_model_card: bool = True,
             train_datasets: list[str] | None = None, safe_serialization: bool = True) -> None:
        super().save(path, model_name, False, train_datasets, safe_serialization)
        ship_remote_code(path)
        if create_model_card:
            first = self[0]
            now = (first.engine.policy.name, first.exit_mode)
            kept = self.source_card is not None and self.source_card[:2] == now
            write_text_atomic(Path(path) / CARD_FILE, self.source_card[2] if kept else folder_card(path))


def plain_sentence_transformer(path: str | Path, device: str = "cpu"):
    """The folder as sentence-transformers serves a model that does not exit: Transformer + mean Pooling + its tail
    (what `leap bench` times as the peer of our encoder)."""
    folder = local_folder(str(path))
    entries = read_modules(folder)
    if entries is None or entries[0]["type"] not in EXIT_TYPES:
        return SentenceTransformer(str(folder), device=device)  # a plain folder: as sentence-transformers loads it
    # The length the encoder would serve, read from the folder: loading the encoder's weights for it is a waste.
    transformer = st_modules.Transformer(str(folder), max_seq_length=max_seq_length(folder) or 128)
    pooling = st_modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, *tail_modules(folder)], device=device)
