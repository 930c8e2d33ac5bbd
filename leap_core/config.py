"""Run profiles: dataclasses read from params/<name>.yaml (configuration is data, not code).

Every field's type carries its range (pydantic constraints, checked when a profile or override is built by build_config):
a profile, a `--set` or a reduced budget outside them is refused naming the file and field; NaN and inf never pass.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from leap_core.policy import check_rule

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
DEFAULT_PROFILE = "cpu"


ENCODE_BATCH_SIZE = 64  # rows per forward pass when encoding for evaluation: fits CPU caches and small GPUs

# Field types with their ranges. strict: YAML's 3 is no bool and "0.1" no number; an int is taken for a float.
Count = Annotated[int, Field(strict=True, ge=0)]
Positive = Annotated[int, Field(strict=True, ge=1)]
Layer = Annotated[int, Field(strict=True, ge=1)]  # 1-indexed
Weight = Annotated[float, Field(strict=True, ge=0)]  # a loss weight or tolerance: 0 turns it off
Scale = Annotated[float, Field(strict=True, gt=0)]  # a rate, temperature or norm: 0 would divide or stall
Fraction = Annotated[float, Field(strict=True, ge=0, le=1)]
Cosine = Annotated[float, Field(strict=True, ge=-1, le=1)]
Rate = Annotated[float, Field(strict=True, gt=0, le=1)]  # a learning rate above 1 only diverges
Text = Annotated[str, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]
CHECKED = ConfigDict(allow_inf_nan=False)


@dataclass
class DataConfig:
    __pydantic_config__ = CHECKED
    data_dir: Text = "../shared/data"
    # A path relative to data_dir (a .txt/.txt.gz file or a folder holding sentences.txt.gz),
    # or "hub:<dataset id>[:<config>]" (every string column) for users with internet.
    corpus: Text = "nli_sentences"
    n_sentences: Positive = 10000
    min_chars: Count = 21  # the paper keeps sentences longer than 20 characters
    seed: Count = 0
    # A file of source tags, one per non-blank corpus line (relative to data_dir); when set, n_sentences
    # is drawn equally across the tags, so that the biggest source does not set the genre of the sample.
    balance_by: Text | None = None
    # STS files (relative to data_dir) whose sentences never enter training.
    exclude_sts: list[Text] = field(default_factory=lambda: ["stsb/dev.tsv", "stsb/test.tsv"])
    sts_eval: Text = "stsb/test.tsv"
    sts_dev: Text = "stsb/dev.tsv"
    # The STS eval pairs in the raw STS-B layout, whose genre field splits a retrofit's exit rate; None skips.
    sts_eval_genres: Text | None = "stsb/raw/sts-test.csv.gz"


@dataclass
class ModelConfig:
    __pydantic_config__ = CHECKED
    teacher: Text = "sentence-transformers/all-mpnet-base-v2"
    student_init: Text = "sentence-transformers/all-MiniLM-L6-v2"
    student_layers: Layer = 12
    layer_init: Literal["cyclic", "doubled"] = "cyclic"  # how the source's layers fill the deeper student: cyclic | doubled
    max_length: Annotated[int, Field(strict=True, ge=2)] = 64
    teacher_batch_size: Positive = 64


@dataclass
class ObjectiveConfig:
    """L = final L_final + alpha L_inter + beta L_exit + delta L_contrast + late L_late + redund L_redund
    + adjacent L_adjacent + cross L_cross."""

    __pydantic_config__ = CHECKED
    alpha: Weight = 0.3
    beta: Weight = 0.4
    delta: Weight = 0.3
    late: Weight = 0.2
    redund: Weight = 0.05
    student_target_factor: Weight = 0.7  # L_exit = L_exit^t + factor * ramp * L_exit^s
    tau: Cosine = 0.98  # soft-margin target similarity
    sharpness: Scale = 10.0
    exit_weight_from: Layer = 6  # w_l = 1 from this layer (1-indexed) on ...
    exit_weight_low: Fraction = 0.1  # ... and this below it
    ramp_start: Fraction = 0.1  # student-target weight ramps in over this fraction of training ...
    ramp_end: Fraction = 0.6
    contrast_temperature: Scale = 0.05
    late_layers: list[Layer] | None = None  # 1-indexed; None = the three layers below the last
    redund_margin: Cosine = 0.1
    final: Weight = 1.0  # weight of L_final; a retrofit raises it to hold the final layer where it was
    contrast_layers: list[Layer] | None = None  # 1-indexed layers whose similarity matrix L_contrast matches; None = last
    adjacent: Weight = 0.0  # weight of L_adjacent (consecutive layers agree); 0 = the paper's objective
    adjacent_margin: Cosine = 0.97  # hinge on cos(e^{l-1}, e^l); above theta, so passing samples keep a cushion
    adjacent_layers: list[Layer] | None = None  # 1-indexed l of the pairs (l-1, l); None = exit_weight_from..L-1
    cross: Weight = 0.0  # weight of L_cross (layers' in-batch similarities agree across depths); 0 = off
    cross_layers: list[Layer] | None = None  # 1-indexed exit layers it pairs; None = exit_weight_from..L


@dataclass
class TrainConfig:
    __pydantic_config__ = CHECKED
    epochs: Positive = 1
    batch_size: Positive = 32
    lr: Rate = 1e-4
    head_lr: Rate = 1e-3  # the width projection learns from scratch: it needs a larger rate
    warmup_ratio: Annotated[float, Field(strict=True, ge=0, lt=1)] = 0.1
    weight_decay: Weight = 0.01
    max_grad_norm: Scale = 1.0
    checkpoint_every: Positive = 50
    log_every: Positive = 10
    device: Text = "auto"
    mixed_precision: Flag = True  # bf16 autocast on CUDA; ignored on CPU
    num_threads: Count = 0  # 0 = torch default
    max_steps: Count = 0  # 0 = every batch of every epoch; > 0 stops early (reduced-budget arms)
    dropout: Annotated[float, Field(strict=True, ge=0, lt=1)] | None = None  # None keeps the model's own dropout rates
    frozen_layers: Count = 0  # embeddings and encoder layers 1..n keep their weights (no backward below); 0 = none


# Fields added after runs were recorded, at the value that reproduces the behaviour before them: left out of a
# config's identity at that value, so runs trained before they existed keep their fingerprints and stay resumable.
_LATER_FIELDS_NEUTRAL: dict[type, dict[str, Any]] = {
    ObjectiveConfig: {"final": 1.0, "contrast_layers": None, "adjacent": 0.0, "adjacent_margin": 0.97,
                      "adjacent_layers": None, "cross": 0.0, "cross_layers": None},
    TrainConfig: {"frozen_layers": 0},
}


def config_settings(config: Any) -> dict[str, Any]:
    """A config's fields, without later-added ones left at their neutral value (what a run's identity sees)."""
    neutral = _LATER_FIELDS_NEUTRAL.get(type(config), {})
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in neutral or getattr(config, f.name) != neutral[f.name]}


def config_fingerprint(config: Any) -> str:
    """The config as its dataclass repr, without later-added fields left at their neutral value."""
    shown = [f"{name}={value!r}" for name, value in config_settings(config).items()]
    return f"{type(config).__name__}({', '.join(shown)})"


@dataclass
class ExitConfig:
    __pydantic_config__ = CHECKED
    theta: Cosine = 0.95
    k: Positive = 1
    l_min: Layer = 6


@dataclass
class EvaluationConfig:
    """What the pipeline measures beyond each arm's STS-B analysis (done on the best LEAP and baseline seeds)."""

    __pydantic_config__ = CHECKED
    beir: list[Text] = field(default_factory=lambda: ["beir/scifact", "beir/nfcorpus"])  # relative to data_dir
    max_beir_docs: Count = 0  # 0 = every document; > 0 subsamples (quick runs)
    max_beir_queries: Count = 0
    calibration_max_sts_drop: Fraction = 0.01  # theta calibration floor on STS-B dev
    bootstrap_resamples: Positive = 2000
    bench_batch_sizes: list[Positive] = field(default_factory=lambda: [1, 8, 32])
    bench_warmup: Count = 0  # 0 = leap_core.bench.latency's default for the device
    bench_iterations: Count = 0
    diagnose_external: Flag = True  # the paper's diagnosis of the teacher and the student's source


@dataclass
class BranchConfig:
    """`leap retrofit`'s exit branch: a trained copy of the original's first layers whose exits land in the
    original's final space, while the full path stays the original, bit for bit (leap_core.retrofit.exit_branch)."""

    __pydantic_config__ = CHECKED
    exit_layers: list[Layer] | None = None  # 1-indexed; None = half the depth .. L-1. The branch is max() deep
    n_sentences: Positive = 10000  # corpus sentences, drawn equally over data.balance_by's sources when set
    n_documents: Count = 4000  # pseudo-documents of doc_sentences corpus sentences each: long inputs get trained
    doc_sentences: list[Positive] = field(default_factory=lambda: [3, 12])
    corpus_sentences: Positive = 10000  # --corpus: sentences split from the user's documents (its short text)
    max_length: Annotated[int, Field(strict=True, ge=2)] = 256  # training tokens per text; the saved branch keeps the original's own max length
    contrast: Weight = 1.0  # weight of the in-batch similarity-structure term
    temperature: Scale = 0.05
    # head_lr: the heads start at their least-squares fit (exit_branch.fit_heads), so they need no large steps
    training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-4, head_lr=2e-4, dropout=0.0))


@dataclass
class RegistryConfig:
    """Deployment gate (the paper's checklist) and the registered model's name."""

    __pydantic_config__ = CHECKED
    model_name: Text = "leap-student"
    min_exit_rate: Annotated[float, Field(strict=True, ge=-1, le=1)] = 0.5  # rate > it; below 0 passes no exits
    min_similarity_at_exit: Cosine = 0.94
    min_nn10: Fraction = 0.80
    stsb_tolerance: Weight = 0.005  # used when no confidence interval is known
    policy_max_sts_drop: Fraction = 0.01  # the registered model serves the fastest policy this close to full on dev


@dataclass
class RetrainConfig:
    """RetrainFlow: retrofit the champion on its own traffic, promote the candidate only if it wins (leap_core.pipeline.retrain)."""

    __pydantic_config__ = CHECKED
    model: Text = ""  # the original the champion descends from; "" = the first of retrofit_models
    model_name: Text = "leap-retrofit"  # the registry name whose champion is retrained and replaced
    max_sentences: Positive = 5000  # logged texts trained on per run (and held out, at most)
    holdout_fraction: Annotated[float, Field(strict=True, gt=0, lt=1)] = 0.1  # share of distinct texts held out, by a hash of the text: never trained on
    # fewer held-out texts than this measure too little: the run stops and says so (NN@10 needs 11 at least)
    min_slice: Annotated[int, Field(strict=True, ge=11)] = 100
    min_agreement: Fraction = 0.80  # served NN@10 vs the original on the slice: the paper's mark of a viable exit
    quality_tolerance: Weight = 0.005  # the candidate may trail the champion this much on STS-B dev ...
    # ... and must serve this share fewer layers on the slice to win (below 0: may serve more; tests, smoke runs)
    min_depth_gain: Annotated[float, Field(strict=True, ge=-1, le=1)] = 0.02


@dataclass
class Profile:
    __pydantic_config__ = CHECKED
    name: Text = DEFAULT_PROFILE
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    exit: ExitConfig = field(default_factory=ExitConfig)
    seeds: list[Count] = field(default_factory=lambda: [0])
    # Each arm is a set of objective overrides: an arm of the experiment is a configuration.
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Arms trained once (first seed) on a reduced budget, as the paper did for its ablation and sweep.
    ablation_arms: list[Text] = field(default_factory=list)
    sweep_arms: list[Text] = field(default_factory=list)
    reduced_budget: dict[str, Any] = field(default_factory=dict)  # training overrides for those arms
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    # Profile overrides applied by `leap retrofit` on top of MODEL-as-teacher-and-student.
    retrofit: dict[str, Any] = field(default_factory=dict)
    branch: BranchConfig = field(default_factory=BranchConfig)
    # Models the pipeline's retrofit step makes exit-compatible (first seed), each beside its original.
    retrofit_models: list[Text] = field(default_factory=list)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    output_dir: Text = "runs"
    cache_uri: Text = ""  # s3://bucket/prefix: teacher caches shared across runs and machines (boto3, sha256-checked)

    def training_for(self, arm: str) -> TrainConfig:
        if arm in self.ablation_arms or arm in self.sweep_arms:
            return build_config(TrainConfig, {**dataclasses.asdict(self.training), **self.reduced_budget}, "reduced_budget")
        return self.training

    def objective_for(self, arm: str) -> ObjectiveConfig:
        if arm not in self.arms:
            raise ValueError(f"profile {self.name!r} has no arm {arm!r}; arms: {sorted(self.arms)}")
        return build_config(ObjectiveConfig, {**dataclasses.asdict(self.objective), **self.arms[arm]}, f"arms.{arm}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def build_config(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where.rstrip(':')}: unknown field(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{_at(where, name)}: expected a mapping, got {value!r}")
            value = build_config(type(default), {**dataclasses.asdict(default), **value}, _at(where, name))
        elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif default is not None and not isinstance(value, type(default)) and value is not None:
            raise ConfigError(f"{_at(where, name)}: expected {type(default).__name__}, got {value!r}")
        kwargs[name] = value
    try:
        return _adapter(cls).validate_python(kwargs)
    except ValidationError as err:
        first = err.errors()[0]
        field_name = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{_at(where, field_name)}: {first['msg'][0].lower()}{first['msg'][1:]}, "
                          f"got {first['input']!r}") from None


def _at(where: str, name: str) -> str:
    """Where a field sits: "params/x.yaml: training.lr" under a file, "arms.leap.beta" under a section."""
    return f"{where} {name}" if where.endswith(":") else f"{where}.{name}"


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    """pydantic's validator of a config dataclass: the ranges its field types carry."""
    return TypeAdapter(cls)


def profile_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return PARAMS_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str | None = None, overrides: dict[str, Any] | None = None) -> Profile:
    """Read a profile by name (params/<name>.yaml) or path; `overrides` is a nested dict applied on top.

    LEAP_DATA_DIR, when set, replaces data.data_dir (the data directory is a run parameter).
    """
    path = profile_path(name_or_path or os.environ.get("LEAP_PROFILE", DEFAULT_PROFILE))
    if not path.is_file():
        raise ConfigError(f"profile file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            values = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    values = merge_values(values, overrides or {})
    if os.environ.get("LEAP_DATA_DIR"):
        values = merge_values(values, {"data": {"data_dir": os.environ["LEAP_DATA_DIR"]}})
    values.setdefault("name", path.stem)
    profile = build_config(Profile, values, f"{path}:")

    check_rule(profile.exit.theta, profile.exit.k, profile.exit.l_min, profile.models.student_layers,
               where=f"{path}: exit")
    for arm in profile.arms:
        try:
            profile.objective_for(arm)  # validate every arm now, not mid-run
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    for arm in profile.ablation_arms + profile.sweep_arms:
        if arm not in profile.arms:
            raise ConfigError(f"{path}: ablation/sweep arm {arm!r} is not defined under arms")
    build_config(TrainConfig, {**dataclasses.asdict(profile.training), **profile.reduced_budget}, f"{path}: reduced_budget")
    return profile


def merge_values(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged
