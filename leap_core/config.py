"""Run profiles: dataclasses read from params/<name>.yaml (configuration is data, not code)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
DEFAULT_PROFILE = "cpu"


ENCODE_BATCH_SIZE = 64  # rows per forward pass when encoding for evaluation: fits CPU caches and small GPUs

@dataclass
class DataConfig:
    data_dir: str = "../shared/data"
    # A path relative to data_dir (a .txt/.txt.gz file or a folder holding sentences.txt.gz),
    # or "hub:<dataset id>[:<config>]" (every string column) for users with internet.
    corpus: str = "nli_sentences"
    n_sentences: int = 10000
    min_chars: int = 21  # the paper keeps sentences longer than 20 characters
    seed: int = 0
    # A file of source tags, one per non-blank corpus line (relative to data_dir); when set, n_sentences
    # is drawn equally across the tags, so that the biggest source does not set the genre of the sample.
    balance_by: str | None = None
    # STS files (relative to data_dir) whose sentences never enter training.
    exclude_sts: list[str] = field(default_factory=lambda: ["stsb/dev.tsv", "stsb/test.tsv"])
    sts_eval: str = "stsb/test.tsv"
    sts_dev: str = "stsb/dev.tsv"
    # The STS eval pairs in the raw STS-B layout, whose genre field splits a retrofit's exit rate; None skips.
    sts_eval_genres: str | None = "stsb/raw/sts-test.csv.gz"


@dataclass
class ModelConfig:
    teacher: str = "sentence-transformers/all-mpnet-base-v2"
    student_init: str = "sentence-transformers/all-MiniLM-L6-v2"
    student_layers: int = 12
    layer_init: str = "cyclic"  # how the source's layers fill the deeper student: cyclic | doubled
    max_length: int = 64
    teacher_batch_size: int = 64


@dataclass
class ObjectiveConfig:
    """L = final L_final + alpha L_inter + beta L_exit + delta L_contrast + late L_late + redund L_redund
    + adjacent L_adjacent + cross L_cross."""

    alpha: float = 0.3
    beta: float = 0.4
    delta: float = 0.3
    late: float = 0.2
    redund: float = 0.05
    student_target_factor: float = 0.7  # L_exit = L_exit^t + factor * ramp * L_exit^s
    tau: float = 0.98  # soft-margin target similarity
    sharpness: float = 10.0
    exit_weight_from: int = 6  # w_l = 1 from this layer (1-indexed) on ...
    exit_weight_low: float = 0.1  # ... and this below it
    ramp_start: float = 0.1  # student-target weight ramps in over this fraction of training ...
    ramp_end: float = 0.6
    contrast_temperature: float = 0.05
    late_layers: list[int] | None = None  # 1-indexed; None = the three layers below the last
    redund_margin: float = 0.1
    final: float = 1.0  # weight of L_final; a retrofit raises it to hold the final layer where it was
    contrast_layers: list[int] | None = None  # 1-indexed layers whose similarity matrix L_contrast matches; None = last
    adjacent: float = 0.0  # weight of L_adjacent (consecutive layers agree); 0 = the paper's objective
    adjacent_margin: float = 0.97  # hinge on cos(e^{l-1}, e^l); above theta, so passing samples keep a cushion
    adjacent_layers: list[int] | None = None  # 1-indexed l of the pairs (l-1, l); None = exit_weight_from..L-1
    cross: float = 0.0  # weight of L_cross (layers' in-batch similarities agree across depths); 0 = off
    cross_layers: list[int] | None = None  # 1-indexed exit layers it pairs; None = exit_weight_from..L


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-3  # the width projection learns from scratch: it needs a larger rate
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    log_every: int = 10
    device: str = "auto"
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on CPU
    num_threads: int = 0  # 0 = torch default
    max_steps: int = 0  # 0 = every batch of every epoch; > 0 stops early (reduced-budget arms)
    dropout: float | None = None  # None keeps the model's own dropout rates
    frozen_layers: int = 0  # embeddings and encoder layers 1..n keep their weights (no backward below); 0 = none


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
    theta: float = 0.95
    k: int = 1
    l_min: int = 6


@dataclass
class EvaluationConfig:
    """What the pipeline measures beyond each arm's STS-B analysis (done on the best LEAP and baseline seeds)."""

    beir: list[str] = field(default_factory=lambda: ["beir/scifact", "beir/nfcorpus"])  # relative to data_dir
    max_beir_docs: int = 0  # 0 = every document; > 0 subsamples (quick runs)
    max_beir_queries: int = 0
    calibration_max_sts_drop: float = 0.01  # theta calibration floor on STS-B dev
    bootstrap_resamples: int = 2000
    bench_batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    bench_warmup: int = 0  # 0 = leap_core.bench's default for the device
    bench_iterations: int = 0
    diagnose_external: bool = True  # the paper's diagnosis of the teacher and the student's source


@dataclass
class BranchConfig:
    """`leap retrofit`'s exit branch: a trained copy of the original's first layers whose exits land in the
    original's final space, while the full path stays the original, bit for bit (leap_core.exit_branch)."""

    exit_layers: list[int] | None = None  # 1-indexed; None = half the depth .. L-1. The branch is max() deep
    n_sentences: int = 10000  # corpus sentences, drawn equally over data.balance_by's sources when set
    n_documents: int = 4000  # pseudo-documents of doc_sentences corpus sentences each: long inputs get trained
    doc_sentences: list[int] = field(default_factory=lambda: [3, 12])
    corpus_sentences: int = 10000  # --corpus: sentences split from the user's documents (its short text)
    max_length: int = 256  # training tokens per text; the saved branch keeps the original's own max length
    contrast: float = 1.0  # weight of the in-batch similarity-structure term
    temperature: float = 0.05
    # head_lr: the heads start at their least-squares fit (exit_branch.fit_heads), so they need no large steps
    training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-4, head_lr=2e-4, dropout=0.0))


@dataclass
class RegistryConfig:
    """Deployment gate (the paper's checklist) and the registered model's name."""

    model_name: str = "leap-student"
    min_exit_rate: float = 0.5
    min_similarity_at_exit: float = 0.94
    min_nn10: float = 0.80
    stsb_tolerance: float = 0.005  # used when no confidence interval is known
    policy_max_sts_drop: float = 0.01  # the registered model serves the fastest policy this close to full on dev


@dataclass
class RetrainConfig:
    """RetrainFlow: retrofit the champion on its own traffic, promote the candidate only if it wins (leap_core.retrain)."""

    model: str = ""  # the original the champion descends from; "" = the first of retrofit_models
    model_name: str = "leap-retrofit"  # the registry name whose champion is retrained and replaced
    max_sentences: int = 5000  # logged texts trained on per run (and held out, at most)
    holdout_fraction: float = 0.1  # share of distinct texts held out, by a hash of the text: never trained on
    min_slice: int = 100  # fewer held-out texts than this measure too little: the run stops and says so
    min_agreement: float = 0.80  # served NN@10 vs the original on the slice: the paper's mark of a viable exit
    quality_tolerance: float = 0.005  # the candidate may trail the champion this much on STS-B dev ...
    min_depth_gain: float = 0.02  # ... and must serve this share fewer layers on the slice to win

    def __post_init__(self) -> None:
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"retrain.holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")
        if self.max_sentences < 1 or self.min_slice < 11:  # NN@10 needs 10 neighbours besides the text itself
            raise ConfigError(f"retrain: max_sentences must be >= 1 and min_slice >= 11, got {self.max_sentences}, "
                              f"{self.min_slice}")


@dataclass
class Profile:
    name: str = DEFAULT_PROFILE
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    exit: ExitConfig = field(default_factory=ExitConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    # Each arm is a set of objective overrides: an arm of the experiment is a configuration.
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Arms trained once (first seed) on a reduced budget, as the paper did for its ablation and sweep.
    ablation_arms: list[str] = field(default_factory=list)
    sweep_arms: list[str] = field(default_factory=list)
    reduced_budget: dict[str, Any] = field(default_factory=dict)  # training overrides for those arms
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    # Profile overrides applied by `leap retrofit` on top of MODEL-as-teacher-and-student.
    retrofit: dict[str, Any] = field(default_factory=dict)
    branch: BranchConfig = field(default_factory=BranchConfig)
    # Models the pipeline's retrofit step makes exit-compatible (first seed), each beside its original.
    retrofit_models: list[str] = field(default_factory=list)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    output_dir: str = "runs"
    cache_uri: str = ""  # s3://bucket/prefix: teacher caches shared across runs and machines (boto3, sha256-checked)

    def training_for(self, arm: str) -> TrainConfig:
        if arm in self.ablation_arms or arm in self.sweep_arms:
            return _build(TrainConfig, {**dataclasses.asdict(self.training), **self.reduced_budget}, "reduced_budget")
        return self.training

    def objective_for(self, arm: str) -> ObjectiveConfig:
        if arm not in self.arms:
            raise ValueError(f"profile {self.name!r} has no arm {arm!r}; arms: {sorted(self.arms)}")
        return _build(ObjectiveConfig, {**dataclasses.asdict(self.objective), **self.arms[arm]}, f"arms.{arm}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: expected a mapping, got {value!r}")
            value = _build(type(default), {**dataclasses.asdict(default), **value}, f"{where}.{name}")
        elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif default is not None and not isinstance(value, type(default)) and value is not None:
            raise ConfigError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


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
    values = _merge(values, overrides or {})
    if os.environ.get("LEAP_DATA_DIR"):
        values = _merge(values, {"data": {"data_dir": os.environ["LEAP_DATA_DIR"]}})
    values.setdefault("name", path.stem)
    profile = _build(Profile, values, str(path))
    from leap_core.policy import check_rule

    check_rule(profile.exit.theta, profile.exit.k, profile.exit.l_min, profile.models.student_layers,
               where=f"{path}: exit")
    for arm in profile.arms:
        profile.objective_for(arm)  # validate every arm now, not mid-run
    for arm in profile.ablation_arms + profile.sweep_arms:
        if arm not in profile.arms:
            raise ConfigError(f"{path}: ablation/sweep arm {arm!r} is not defined under arms")
    _build(TrainConfig, {**dataclasses.asdict(profile.training), **profile.reduced_budget}, f"{path}: reduced_budget")
    return profile


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
