"""A model folder's files: their names, how leap reads and writes them, the folder's depth and its fingerprint.

A model folder is a sentence-transformers folder (config.json, weights, tokenizer, modules.json, ...) plus the
files leap adds: leap_exit.json (the exit rule and the policy it serves), leap_branch.json (an exit branch's or
cut's record), leap_reference.json (monitoring's reference), README.md (leap's card), leap_early_exit.py (the
code a trust_remote_code load runs) and .leap_manifest (the files leap wrote, io.MANIFEST_FILE). An ONNX export
is a folder of its own kind, marked by leap_onnx.json (export.OnnxEncoder reads it).

This module is the only reader of these files' names and values, and the one place the default exit rule is
decided (exit_rule: config.ExitConfig's values). It imports no other leap module that could import it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from safetensors.numpy import load_file

from leap_core.config import ExitConfig
from leap_core.io import MANIFEST_FILE, sha256_folder, write_json_atomic
from leap_core.policy import ExitPolicy, check_rule
from leap_core.schemas import BranchFile, ExitSettingsFile, read_schema_file

CONFIG_FILE = "config.json"  # transformers' config: depth, positions (resolve_model requires it)
MODULES_FILE = "modules.json"  # sentence-transformers' module list
ST_CONFIG_FILE = "sentence_bert_config.json"  # max_seq_length (sentence-transformers < 6) and leap's exit_mode
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # model_max_length (sentence-transformers >= 6)
PROMPTS_FILE = "config_sentence_transformers.json"  # prompts and the default prompt
POOLING_DIR = "1_Pooling"  # where the Pooling module keeps its config.json in the usual layout
EXIT_SETTINGS_FILE = "leap_exit.json"
BRANCH_FILE = "leap_branch.json"
HEADS_FILE = "exit_heads.safetensors"  # an exit branch's heads (exit_branch.save_heads writes them)
REFERENCE_FILE = "leap_reference.json"
CARD_FILE = "README.md"
REMOTE_CODE_FILE = "leap_early_exit.py"  # st_module ships it in every folder whose first module is LeapEarlyExit
EXPORT_FILE = "leap_onnx.json"  # marks an ONNX export folder, not a model folder (export.load_deployed checks)

# How a folder is served (leap calibrate --save writes leap_exit.json), its monitoring reference, its card and the
# manifest that records them are not its content: no fingerprint hashes them, so writing one changes no reference.
SERVING_SETTINGS = (EXIT_SETTINGS_FILE, REFERENCE_FILE, CARD_FILE, MANIFEST_FILE)
MODEL_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")  # weights, configs, tokenizer files
RULE_KEYS = ("theta", "k", "l_min")

# Tokenizers without a real limit report a huge sentinel (int(1e30)) as model_max_length.
_NO_LIMIT = 1_000_000


# ---------------------------------------------------------------- identity


def model_fingerprint(folder: str | os.PathLike, scope: Literal["model", "files"] = "model") -> str:
    """The folder's one fingerprint: sha256 over its files' relative names and contents, SERVING_SETTINGS never
    among them.

    scope "model" (the cache key's model part, and the weights hash recorded with a branch, a query encoder or an
    index): only files ending in MODEL_SUFFIXES (weights, config and tokenizer), so calibrating a model, or
    shipping code or an export beside it, does not make its cached embeddings or evaluations look like another
    model's. scope "files" (pipeline.file_ref's hand-off, the registry's check of a downloaded encoder): every
    other file too (the shipped leap_early_exit.py, .gitattributes, ...), since they travel and run with it.
    The two file sets differ and both kinds of value are recorded (reports/retrofit.json's original_fingerprint,
    reports/*/report.json's model sha256), so neither can take the other's set.
    """
    if scope == "model":
        return sha256_folder(folder, suffixes=MODEL_SUFFIXES, exclude=SERVING_SETTINGS)
    if scope == "files":
        return sha256_folder(folder, exclude=SERVING_SETTINGS)
    raise ValueError(f"model_fingerprint scope {scope!r}: expected 'model' or 'files'")


# ---------------------------------------------------------------- exit settings (leap_exit.json)


def exit_rule(settings: Mapping[str, Any] | None = None,
              fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The exit rule {theta, k, l_min}: each from `settings` (a folder's leap_exit.json, with any overrides merged
    in) when it holds it, else from `fallback` (a caller's own default, e.g. l_min at half the depth), else
    config.ExitConfig's default. The one place the default rule is decided."""
    defaults = dataclasses.asdict(ExitConfig())
    given = {**(fallback or {}), **(settings or {})}
    return {key: given.get(key, defaults[key]) for key in RULE_KEYS}


def read_exit_settings(folder: str | os.PathLike) -> dict[str, Any]:
    """The settings saved in `<folder>/leap_exit.json`; {} when the file is absent.

    theta, k, l_min: the exit rule; policy (optional): {"kind": full|fixed|rule|thresholds, "depth", "thresholds"}
    (leap_core.policy), the policy the encoder serves by default; calibration (optional): what chose it.
    Checked against schemas.ExitSettingsFile (types, ranges, no NaN), then as a rule and policy together.
    """
    file = Path(folder) / EXIT_SETTINGS_FILE
    if not file.is_file():
        return {}
    values = read_schema_file(file, ExitSettingsFile)
    if "policy" in values:
        rule = {key: values[key] for key in RULE_KEYS if key in values}
        ExitPolicy.from_dict({**rule, **values["policy"]}, where=f"{file}: policy")
    check_rule(**exit_rule(values), where=str(file))
    return values


def write_exit_settings(folder: str | os.PathLike, policy: ExitPolicy, calibration: dict[str, Any] | None = None,
                        theta: float | None = None) -> Path:
    """`<folder>/leap_exit.json`: the rule's theta, k, l_min (theta: a value outside the policy's [-1, 1] range, as
    tests set it), the policy when it is not the rule itself, and what chose it; written atomically."""
    settings: dict[str, Any] = {"theta": policy.theta if theta is None else theta, "k": policy.k, "l_min": policy.l_min}
    if policy.kind != "rule":
        settings["policy"] = {key: value for key, value in policy.to_dict().items() if key not in RULE_KEYS}
    if calibration is not None:
        settings["calibration"] = calibration
    target = Path(folder) / EXIT_SETTINGS_FILE
    write_json_atomic(target, settings)
    return target


def exit_policy(settings: Mapping[str, Any]) -> ExitPolicy:
    """The policy exit settings name (the rule itself when they name none), the rule completed by exit_rule."""
    rule = exit_rule(settings)
    return ExitPolicy.from_dict({**rule, **settings["policy"]}) if "policy" in settings else ExitPolicy("rule", **rule)


def saved_policy(folder: str | os.PathLike) -> ExitPolicy | None:
    """exit_policy of the folder's leap_exit.json; None when it has none (each caller says what that means: the
    encoder serves the default rule, a card states full depth)."""
    if not (Path(folder) / EXIT_SETTINGS_FILE).is_file():
        return None
    return exit_policy(read_exit_settings(folder))


# ---------------------------------------------------------------- the model's shape


def max_seq_length(folder: str | os.PathLike) -> int | None:
    """The folder's max sequence length as sentence-transformers reads it.

    sentence-transformers < 6 wrote it to sentence_bert_config.json ("max_seq_length"); 6 writes it
    to the tokenizer's "model_max_length" in tokenizer_config.json. None when neither sets one.
    """
    for name, key in ((ST_CONFIG_FILE, "max_seq_length"), (TOKENIZER_CONFIG_FILE, "model_max_length")):
        file = Path(folder) / name
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


def saved_exit_mode(folder: str | os.PathLike) -> str | None:
    """The exit_mode saved with a folder (sentence_bert_config.json), None when it holds none."""
    config = Path(folder) / ST_CONFIG_FILE
    return json.loads(config.read_text(encoding="utf-8")).get("exit_mode") if config.is_file() else None


def layer_count(folder: str | os.PathLike) -> int:
    """The model's transformer layers (config.json's num_hidden_layers, as transformers reads it)."""
    from transformers import AutoConfig  # heavy: only the readers of the config pay for it

    return int(AutoConfig.from_pretrained(str(folder)).num_hidden_layers)


def usable_positions(model: Any) -> int | None:
    """Tokens one text may take through the model's position table: max_position_embeddings, less the offset that
    RoBERTa-style embeddings (MPNet's too) start counting at (padding_idx + 1); None without such a table."""
    size = getattr(model.config, "max_position_embeddings", None)
    if isinstance(size, bool) or not isinstance(size, int):
        return None
    offset = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return size - (offset + 1 if isinstance(offset, int) and not isinstance(offset, bool) else 0)


def folder_positions(folder: str | os.PathLike) -> int | None:
    """usable_positions of a model folder from its config alone (built on the meta device: no weights read)."""
    import torch  # heavy: only the readers of the position table pay for it
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return usable_positions(model)


def read_modules(folder: str | os.PathLike) -> list[dict[str, Any]] | None:
    """modules.json's entries ({"type", "path", ...} per module, in order); None when the folder has none."""
    file = Path(folder) / MODULES_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def write_modules(folder: str | os.PathLike, entries: list[dict[str, Any]]) -> None:
    """modules.json, as sentence-transformers writes it (indent 2)."""
    (Path(folder) / MODULES_FILE).write_text(json.dumps(entries, indent=2), encoding="utf-8")


def read_prompts(folder: str | os.PathLike) -> dict[str, Any] | None:
    """config_sentence_transformers.json (its prompts and default prompt travel with the folder); None if absent."""
    file = Path(folder) / PROMPTS_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def read_card(folder: str | os.PathLike) -> str | None:
    """The folder's README.md as it stands; None when it has none."""
    file = Path(folder) / CARD_FILE
    return file.read_text(encoding="utf-8") if file.is_file() else None


def pooling_file(folder: str | os.PathLike, subfolder: str = POOLING_DIR) -> Path:
    return Path(folder) / subfolder / CONFIG_FILE


def read_pooling(folder: str | os.PathLike, subfolder: str = POOLING_DIR) -> dict[str, Any] | None:
    """The Pooling module's config (in `subfolder`); None when there is none."""
    file = pooling_file(folder, subfolder)
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def is_mean_pooling(config: Mapping[str, Any]) -> bool:
    """Whether a Pooling config mean-pools: sentence-transformers < 6 wrote pooling_mode_mean_tokens, 6 writes
    pooling_mode "mean"."""
    return bool(config.get("pooling_mode_mean_tokens") or config.get("pooling_mode") == "mean")


# ---------------------------------------------------------------- exit branches (leap_branch.json)


def has_branch(folder: str | os.PathLike) -> bool:
    """Whether the folder is an exit branch or a branch's cut (it holds leap_branch.json)."""
    return (Path(folder) / BRANCH_FILE).is_file()


def read_branch(folder: str | os.PathLike) -> dict[str, Any]:
    """The branch's record: its original (by name and weight hash) and exit layers (schemas.BranchFile)."""
    file = Path(folder) / BRANCH_FILE
    if not file.is_file():
        raise ValueError(f"{folder}: not an exit branch (no {BRANCH_FILE})")
    return read_schema_file(file, BranchFile)


def load_heads(folder: str | os.PathLike) -> dict[int, tuple[Any, Any]]:
    """{layer: (weight (d, d), bias (d,))} as numpy arrays; {} when the folder has no exit heads."""
    file = Path(folder) / HEADS_FILE
    if not file.is_file():
        return {}
    try:
        tensors = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{file}: not a readable safetensors file ({err})") from None
    layers = sorted({int(key.split(".")[0].split("_")[1]) for key in tensors})
    return {layer: (tensors[f"layer_{layer}.weight"], tensors[f"layer_{layer}.bias"]) for layer in layers}
