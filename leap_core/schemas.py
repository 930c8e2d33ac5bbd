"""Schemas of the JSON files leap writes into a folder and reads back: one pydantic model per file, every number
ranged, NaN and inf refused, and any fault a one-line ValueError naming the file and the field.

    leap_exit.json       ExitSettingsFile (its policy: PolicyRecord, the saved policy)
    leap_onnx.json       OnnxExportFile (its int8 graph: QuantizationRecord, with the measured QuantizationCheck)
    leap_branch.json     BranchFile
    leap_reference.json  ReferenceFile

read_schema_file(file, Schema, **context) reads and checks one file; validate(Schema, values, where, **context)
checks values already read. Context carries what the file alone cannot tell: the model's layers (n_layers) for a
reference; the folder (the file's own) whose names an export's paths must stay inside.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from leap_core.config import Cosine, Count, Flag, Fraction, Layer, Positive, Text

FILE_CHECKS = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)
_SUM_TOLERANCE = 1e-6  # shares written as bincount / n sum to 1 within float rounding, far below this


def _finite_tree(value: Any, path: str = "") -> Any:
    """A free-form JSON value (what chose a policy, say) with no NaN or inf anywhere inside."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path or 'value'}: {value} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_tree(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite_tree(item, f"{path}[{index}]")
    return value


def _plain(name: str) -> str:
    """A file name inside the folder: an absolute path or one through '..' would load a file from elsewhere."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name)):
        raise ValueError(f"{name!r} must be a plain file name inside the folder (no path separators, not '..')")
    return name


FreeJson = Annotated[dict[str, Any], AfterValidator(_finite_tree)]
FileName = Annotated[str, Field(strict=True), AfterValidator(_plain)]
Sha256 = Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$")]


class PolicyRecord(BaseModel):
    """The saved policy (leap_core.policy.ExitPolicy.to_dict): its kind and what that kind needs."""

    model_config = FILE_CHECKS
    kind: Literal["full", "fixed", "rule", "thresholds"]
    depth: Layer = None
    theta: Cosine = None
    k: Positive = None
    l_min: Layer = None
    thresholds: Annotated[list[Cosine | None], Field(min_length=1)] = None

    @model_validator(mode="after")
    def _kind_has_its_fields(self) -> "PolicyRecord":
        if self.kind == "fixed" and self.depth is None:
            raise ValueError("depth: a fixed policy needs its depth")
        if self.kind == "thresholds" and self.thresholds is None:
            raise ValueError("thresholds: a thresholds policy needs one per layer 1..L-1")
        return self


class ExitSettingsFile(BaseModel):
    """leap_exit.json: the rule's theta, k, l_min, the policy served by default, and what chose it. Every key is
    optional (an absent one takes the encoder's default); a present one is checked."""

    model_config = FILE_CHECKS
    theta: Cosine = None
    k: Positive = None
    l_min: Layer = None
    policy: PolicyRecord = None
    calibration: FreeJson = None


class BranchFile(BaseModel):
    """leap_branch.json: the exit branch's original (by name and weights hash), its exits, and a cut's depth."""

    model_config = FILE_CHECKS
    original: Text
    original_fingerprint: Sha256
    original_layers: Layer
    exit_layers: Annotated[list[Layer], Field(min_length=1)]
    texts: Literal["generic", "corpus"] = None
    corpus_sha256: Sha256 | None = None
    train_texts: Count = None
    train_steps: Count = None
    train_seconds: Annotated[float, Field(strict=True, ge=0)] = None
    cut_depth: Layer = None

    @model_validator(mode="after")
    def _layers_fit(self) -> "BranchFile":
        outside = [layer for layer in self.exit_layers if layer >= self.original_layers]
        if outside:
            raise ValueError(f"exit_layers: {outside} are not below original_layers {self.original_layers}")
        if self.cut_depth is not None and self.cut_depth not in self.exit_layers:
            raise ValueError(f"cut_depth: {self.cut_depth} is not one of exit_layers {self.exit_layers}")
        return self


class ReferenceFile(BaseModel):
    """leap_reference.json: the depth profile monitoring compares traffic with (monitor.reference_profile)."""

    model_config = FILE_CHECKS
    exit_distribution: Annotated[list[Fraction], Field(min_length=1)]
    mean_exit_layer: Annotated[float, Field(strict=True, ge=1)]
    n: Positive
    n_layers: Layer
    nn10: Fraction | None
    source: Text = None
    policy: PolicyRecord = None

    @model_validator(mode="after")
    def _profile_is_consistent(self, info: ValidationInfo) -> "ReferenceFile":
        model_layers = (info.context or {}).get("n_layers")
        if model_layers is not None and self.n_layers != model_layers:
            raise ValueError(f"n_layers: the reference is for {self.n_layers} layers, the model has {model_layers}")
        if len(self.exit_distribution) != self.n_layers:
            raise ValueError(f"exit_distribution: {len(self.exit_distribution)} shares for n_layers {self.n_layers}")
        if abs(sum(self.exit_distribution) - 1) > _SUM_TOLERANCE:
            raise ValueError(f"exit_distribution: shares sum to {sum(self.exit_distribution):.6g}, not 1")
        implied = sum(layer * share for layer, share in enumerate(self.exit_distribution, start=1))
        if abs(implied - self.mean_exit_layer) > _SUM_TOLERANCE * self.n_layers:
            raise ValueError(f"mean_exit_layer: {self.mean_exit_layer:g} is not the mean of exit_distribution "
                             f"({implied:.6g})")
        return self


class CosineSummary(BaseModel):
    """One int8 candidate's row-wise cosine to the fp32 graph on the check texts (int8_check.cosine_summary)."""

    model_config = FILE_CHECKS
    mean: Cosine
    min: Cosine
    p01: Cosine

    @model_validator(mode="after")
    def _min_is_lowest(self) -> "CosineSummary":
        if self.min > min(self.mean, self.p01):
            raise ValueError(f"min: {self.min:g} exceeds the mean {self.mean:g} or p01 {self.p01:g}")
        return self


Scheme = Literal["per-tensor", "per-channel"]


class QuantizationCheck(BaseModel):
    """quantization.check: the texts the int8 graph was measured on (source, sha256, n), each candidate's cosine to
    fp32, and what chose the graph: "auto" (both candidates, the higher mean kept) or "flag" (the one named)."""

    model_config = FILE_CHECKS
    texts: Text
    texts_sha256: Sha256
    n: Positive
    candidates: Annotated[dict[Scheme, CosineSummary], Field(min_length=1)]
    chosen_by: Literal["auto", "flag"]

    @model_validator(mode="after")
    def _candidates_fit_the_chooser(self) -> "QuantizationCheck":
        expected = 2 if self.chosen_by == "auto" else 1
        if len(self.candidates) != expected:
            raise ValueError(f"candidates: chosen_by {self.chosen_by} measures {expected}, got "
                             f"{sorted(self.candidates)}")
        return self


class QuantizationRecord(BaseModel):
    """leap_onnx.json's "quantization": how its int8 graph was made (export.quantization) and, from exports that
    measured it (int8_check.add_int8), "check": its drift from fp32. Exports written before the check have none."""

    model_config = FILE_CHECKS
    method: Text
    weight_type: Literal["QInt8", "QUInt8"]
    per_channel: Flag
    check: QuantizationCheck = None

    @model_validator(mode="after")
    def _kept_the_measured_best(self) -> "QuantizationRecord":
        if self.check is None:
            return self
        kept = "per-channel" if self.per_channel else "per-tensor"
        measured = self.check.candidates
        if kept not in measured:
            raise ValueError(f"check: the kept {kept} graph was not measured (candidates {sorted(measured)})")
        best = max(summary.mean for summary in measured.values())
        if measured[kept].mean < best:
            raise ValueError(f"per_channel: the kept {kept} graph's mean cosine {measured[kept].mean:g} is below "
                             f"the best candidate's {best:g}")
        return self


class OnnxExportFile(BaseModel):
    """leap_onnx.json: the exported point, its tokenisation, and the sha256 of every graph and tokenizer file.

    max_positions: the tokens one text may take through the source's position table (None: no such table);
    max_length must lie in 1..max_positions. Every name is a plain file name inside the export's folder.
    A query route (role "query", query_encoder.onnx_route) serves policy query:N and names its document model.
    """

    model_config = FILE_CHECKS
    role: Literal["query"] = None
    source: Text
    source_fingerprint: Sha256
    served_folder_fingerprint: Sha256 = None
    document_model: Text = None
    document_fingerprint: Sha256 = None
    policy: Annotated[str, Field(strict=True, pattern=r"^(full|fixed:[1-9][0-9]*|query:(0|[1-9][0-9]*))$")]
    head: Literal["dense"] = None
    quantization: QuantizationRecord | None = None
    depth: Count  # 0 only for a query route: the static query encoder (token table, no layer)
    n_layers: Count
    max_length: Positive
    max_positions: Positive | None
    pooling: Literal["mean"]
    normalized: Flag
    inputs: Annotated[list[Literal["input_ids", "attention_mask", "token_type_ids"]], Field(min_length=2)]
    graph: FileName
    graphs: Annotated[dict[Literal["fp32", "int8"], FileName], Field(min_length=1)]
    sha256: Annotated[dict[FileName, Sha256], Field(min_length=1)]
    tokenizer_sha256: Annotated[dict[FileName, Sha256], Field(min_length=1)]

    @model_validator(mode="after")
    def _point_and_files_agree(self, info: ValidationInfo) -> "OnnxExportFile":
        if self.max_positions is not None and self.max_length > self.max_positions:
            raise ValueError(f"max_length: {self.max_length} exceeds the model's {self.max_positions} positions "
                             "(max_positions)")
        if self.depth > self.n_layers:
            raise ValueError(f"depth: {self.depth} is deeper than n_layers {self.n_layers}")
        if self.depth == 0 and self.role != "query":
            raise ValueError("depth: 0 layers serves only a query route (role query), not a model's own point")
        point = "full" if self.depth == self.n_layers else f"fixed:{self.depth}"
        if self.policy != (f"query:{self.depth}" if self.role == "query" else point):
            raise ValueError(f"policy: {self.policy!r} does not serve depth {self.depth} of {self.n_layers}")
        if self.role == "query" and (self.document_model is None or self.document_fingerprint is None):
            raise ValueError("document_model: a query route names its document model and its weights hash")
        if self.role is None and self.served_folder_fingerprint is None:
            raise ValueError("served_folder_fingerprint: missing (a required key)")
        if (self.quantization is None) == ("int8" in self.graphs):
            raise ValueError("quantization: recorded exactly when there is an int8 graph")
        unlisted = sorted({self.graph, *self.graphs.values()} - set(self.sha256))
        if unlisted:
            raise ValueError(f"sha256: no hash for the graph(s) {unlisted}")
        folder = (info.context or {}).get("folder")
        if folder is not None:
            root = Path(folder).resolve()
            for name in [*self.sha256, *self.tokenizer_sha256]:
                if not (root / name).resolve().is_relative_to(root):  # a symlink out of the folder
                    raise ValueError(f"{name!r} leads outside the folder {folder}")
        return self


def _loc(parts: tuple[Any, ...]) -> str:
    """("exit_distribution", 3) -> "exit_distribution[3]"; ("policy", "kind") -> "policy.kind"."""
    shown = ""
    for part in parts:
        shown += f"[{part}]" if isinstance(part, int) else (f".{part}" if shown else str(part))
    return shown


def _one_line(error: dict[str, Any], schema: type[BaseModel]) -> str:
    """One pydantic error as "field: what is wrong, got value"."""
    field = _loc(tuple(part for part in error["loc"] if part not in ("function-after",)))
    message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
    if error["type"] == "missing":
        return f"{field}: missing (a required key)"
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown key; known: {sorted(schema.model_fields)}" if "." not in field else \
            f"{field}: unknown key"
    if error["type"] == "value_error":
        return f"{field}: {message}" if field else message
    return f"{field}: {message[0].lower()}{message[1:]}, got {error['input']!r}"


def validate(schema: type[BaseModel], values: Any, where: str | os.PathLike, **context: Any) -> dict[str, Any]:
    """`values` checked against `schema`: the keys given (ints of float fields as floats); else one ValueError
    starting with `where`."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a JSON object with keys {sorted(schema.model_fields)}, got "
                         f"{type(values).__name__}")
    try:
        return schema.model_validate(values, context=context).model_dump(exclude_unset=True)
    except ValidationError as err:
        raise ValueError(f"{where}: {_one_line(err.errors()[0], schema)}") from None


def read_json(file: str | os.PathLike) -> Any:
    """A JSON file's content; a file that is not JSON is named with its line."""
    file = Path(file)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: line {err.lineno}: not valid JSON: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 text ({err.reason})") from None


def read_schema_file(file: str | os.PathLike, schema: type[BaseModel], **context: Any) -> dict[str, Any]:
    """`file` read and checked against `schema` (the folder it lies in is context["folder"])."""
    file = Path(file)
    return validate(schema, read_json(file), file, **{"folder": file.parent, **context})
