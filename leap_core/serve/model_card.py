"""A model folder's README.md: what the model is, the numbers of the policy it serves, hub metadata, how to use it.

Rendered from the folder itself (the policy in its leap_exit.json, its depth, whether it exits) and the numbers
measured at that policy (evaluation.served_point); numbers measured at another policy are refused, never shown.
The front matter carries what the hub reads: license (the base model's, from its own card), language, base model,
training datasets, tags and a model-index with the measured results. Nothing in it is an absolute path: the card
travels with the folder. README.md is documentation, not content: it is left out of the folder's hashes
(model_folder.SERVING_SETTINGS), so writing it after a step hands the folder on changes no reference.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from leap_core.io import note_in_manifest, write_text_atomic, writer_lock
from leap_core.model_folder import CARD_FILE, REMOTE_CODE_FILE, layer_count, read_modules, saved_policy
from leap_core.models import PACKAGED, RANDOM_PREFIX, canonical_name
from leap_core.policy import ExitPolicy
from leap_core.report.markdown import fmt, table

# The training corpora this repository's data holds, by the hub datasets their sentences come from
# (../shared/data/SOURCES.md); a corpus not listed here is the user's own and is named in the table only.
CORPUS_DATASETS = {"nli_sentences": ["stanfordnlp/snli", "nyu-mll/multi_nli", "nyu-mll/glue", "RobZamp/sick",
                                     "nlphuji/flickr30k", "yerevann/coco-karpathy", "esnli/esnli"]}
STSB_DATASET = {"name": "STS Benchmark", "type": "mteb/stsbenchmark-sts", "split": "test"}
CITATION = """@article{kapadia2026leap,
  title   = {LEAP: Layer-wise Exit-Aware Pretraining for Efficient Transformer Inference},
  author  = {Kapadia and others},
  journal = {arXiv preprint arXiv:2605.01058},
  year    = {2026}
}"""


def recipe_facts(profile: Any, arm: str, seed: int) -> dict[str, Any]:
    """What made a distilled student: teacher, initialisation, objective, training budget and data."""
    objective = {key: value for key, value in dataclasses.asdict(profile.objective_for(arm)).items()
                 if value not in (None, 0, 0.0, False, [], {})}
    training = profile.training_for(arm)
    return {"kind": "LEAP student (exit-aware distillation)", "arm": arm, "seed": seed, "profile": profile.name,
            "teacher": profile.models.teacher, "initialised from": profile.models.student_init,
            "layers": profile.models.student_layers, "objective": objective,
            "training": f"{training.epochs} epoch(s), batch {training.batch_size}, lr {training.lr}",
            "data": f"{profile.data.n_sentences} sentences of {profile.data.corpus}", "corpus": profile.data.corpus}


def portable(value: Any) -> Any:
    """`value` with any absolute path replaced by its last part: a card names no folder of the machine it ran on."""
    if isinstance(value, str) and os.path.isabs(value):
        return f"{Path(value).name} (a local folder)"
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    return value


def served_sentence(policy: Any, n_layers: int) -> str:
    """One sentence saying which layer each text leaves at, under `policy` (leap_core.policy.ExitPolicy)."""
    if policy.kind == "full":
        return f"every text runs all {n_layers} layers (no early exit)"
    if policy.kind == "fixed":
        return f"every text stops at layer {policy.depth} of {n_layers}"
    if policy.kind == "rule":
        return (f"each text stops at the first layer l >= l_min = {policy.l_min} where cos(p_l, p_l-{policy.k}) >= "
                f"theta = {policy.theta:g} (else at layer {n_layers})")
    return f"each text stops at the first layer whose cos(p_l, p_l-{policy.k}) reaches that layer's threshold"


def base_card_metadata(base_model: str | None) -> dict[str, Any]:
    """The base model's own card front matter (license, language), read from a local copy only; {} when none."""
    if not base_model or base_model.startswith(RANDOM_PREFIX):
        return {}
    folder = Path(base_model)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download  # only a hub id needs the hub client

        try:  # the hub cache, never the network: a card is written offline too
            folder = Path(snapshot_download(canonical_name(base_model), local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached: the packaged copy, if any
            packaged = PACKAGED.get(canonical_name(base_model))
            folder = packaged() if packaged else None
    card = folder / CARD_FILE if folder else None
    if card is None or not card.is_file():
        return {}
    from huggingface_hub import metadata_load  # only a card found needs the hub's parser

    return metadata_load(card) or {}


def hub_metadata(name: str, served: Mapping[str, Any] | None, facts: Mapping[str, Any],
                 base_model: str | None) -> tuple[dict[str, Any], list[str]]:
    """The front matter the hub reads, and a YAML comment per field left out saying why."""
    base = base_card_metadata(base_model)
    meta: dict[str, Any] = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
                            "language": base.get("language") or ["en"]}
    missing = []
    if base.get("license"):
        meta["license"] = base["license"]
    else:
        missing.append(f"license: left out: the base model {portable(base_model) or '(none)'} states none in a card "
                       "found here; set the base model's license before you push")
    # A local folder or a random test model is no hub id: the hub would link it to nothing.
    hub_id = base_model and not base_model.startswith(RANDOM_PREFIX) and not Path(base_model).expanduser().exists()
    if hub_id:
        meta["base_model"] = canonical_name(base_model)
    else:
        missing.append(f"base_model: left out: {portable(base_model) or 'none'} is not a hub id")
    if facts.get("corpus") in CORPUS_DATASETS:
        meta["datasets"] = CORPUS_DATASETS[facts["corpus"]]
    meta["tags"] = ["sentence-transformers", "sentence-similarity", "feature-extraction", "early-exit", "leap"]
    if served is not None:
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "semantic-similarity", "name": "Semantic Similarity"},
            "dataset": STSB_DATASET,
            "metrics": [{"type": "spearman_cosine", "value": round(float(served["stsb"]), 4),
                         "name": f"Spearman (cosine) at the served policy {served['policy']}"}]}]}]
    return meta, missing


def _numbers(served: Mapping[str, Any] | None) -> list[str]:
    """The measured section, or why there is none."""
    if served is None:
        return ["## Measured", "",
                "Not measured in this folder yet: `leap eval FOLDER` scores the policy it serves.", ""]
    rows = [[f"STS-B Spearman at the served policy ({served['policy']})", fmt(served["stsb"])],
            *([["STS-B Spearman, full depth", fmt(served["stsb_full"])]] if served.get("stsb_full") is not None
              else []),
            ["exit rate (texts leaving before the last layer)", fmt(served["exit_rate"], ".1%")],
            ["mean exit layer", f"{served['mean_exit_layer']:.2f} of {served['n_layers']}"],
            ["layer reduction", fmt(served["layer_reduction"], ".2f") + "x"]]
    return [f"## Measured on STS-B test ({served.get('n_pairs') or '?'} pairs), at the policy it serves", "",
            *table(["", "value"], rows, ["---", "---:"]),
            "Judge it on your own retrieval data too: STS-B alone can hide a loss on text unlike the training "
            "sentences.", ""]


def _usage(name: str, exits: bool) -> list[str]:
    """How to load it: sentence-transformers alone (the module's code ships in the folder), or leap's loader."""
    load = (f'model = SentenceTransformer("{name}", trust_remote_code=True)' if exits
            else f'model = SentenceTransformer("{name}")')
    lines = ["## Use it", "", "```python", "from sentence_transformers import SentenceTransformer", "",
             f"# {name!r}: the hub id you pushed this folder to, or its path", load,
             "embeddings = model.encode(texts)  # at the policy it serves"]
    if exits:
        lines += ["layers = [row['exit_layer'] for row in model.encode(texts, output_value=None)]",
                  "full = model.encode(texts, exit_mode='full')  # or 'fixed:N'; model[0].exit_mode for every call"]
    lines += ["```", ""]
    if exits:
        lines += [f"`trust_remote_code=True` runs `{REMOTE_CODE_FILE}`, shipped in this folder: sentence-transformers "
                  "alone loads it, leap need not be installed. An `exit_mode` saved with the model "
                  "(`sentence_bert_config.json`) overrides the policy for every call."]
    else:
        lines += ["sentence-transformers runs it at full depth; leap's `leap_core.serve.st_module.load_sentence_transformer` "
                  "serves the policy of its `leap_exit.json`."]
    lines += ["leap itself installs from its repository or a wheel built from it (`pip install leap` from PyPI is "
              "an unrelated project).", ""]
    return lines


def render_card(name: str, policy: Any, n_layers: int, exits: bool, served: Mapping[str, Any] | None,
                facts: Mapping[str, Any], base_model: str | None) -> str:
    """The card: front matter, what it is and serves, its numbers at that policy, how to use it, citation."""
    facts = portable(dict(facts))
    meta, missing = hub_metadata(name, served, facts, base_model)
    rows = [[key, fmt(value) if not isinstance(value, dict) else ", ".join(f"{k}={v}" for k, v in value.items())]
            for key, value in facts.items() if key != "corpus"]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), *(f"# {why}" for why in missing), "---", "",
             f"# {name}", "",
             f"A sentence embedding model with early exit. It serves the policy **{policy.name}**: "
             f"{served_sentence(policy, n_layers)}. The policy is the one in its `leap_exit.json`.", ""]
    if rows:
        lines += ["## What it is", "", *table(["", ""], rows, ["---", "---"])]
    lines += [*_numbers(served), *_usage(name, exits), "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def folder_card(folder: str | Path, served: Mapping[str, Any] | None = None, facts: Mapping[str, Any] | None = None,
                base_model: str | None = None) -> str:
    """The card of `folder` as it stands; served must be the numbers of the policy it serves (else a ValueError)."""
    folder = Path(folder)
    n_layers = layer_count(folder)
    policy = served_policy(folder)
    if served is not None and served["policy"] != policy.name:
        raise ValueError(f"{folder}: serves {policy.name}, but the numbers given were measured at "
                         f"{served['policy']}: a card states the numbers of the policy the folder serves")
    facts = dict(facts or {})
    base = base_model or facts.get("initialised from") or facts.get("original")
    name = folder.parent.name if folder.name == "model" else folder.name
    return render_card(name, policy, n_layers, _exits(folder), served, facts, base)


def served_policy(folder: str | Path) -> ExitPolicy:
    """The ExitPolicy a folder serves: its leap_exit.json's policy, the rule when it names none (a key it lacks:
    config.ExitConfig's, model_folder.exit_rule), full depth without the file."""
    return saved_policy(folder) or ExitPolicy("full")


def _exits(folder: Path) -> bool:
    """Whether the folder's first module is leap's LeapEarlyExit (loading it needs trust_remote_code=True)."""
    entries = read_modules(folder)
    return entries is not None and entries[0]["type"].endswith(".LeapEarlyExit")


def write_card(folder: str | Path, served: Mapping[str, Any] | None = None, facts: Mapping[str, Any] | None = None,
               base_model: str | None = None) -> Path:
    """README.md of `folder` (folder_card), written atomically under the folder's writer lock."""
    target = Path(folder) / CARD_FILE
    with writer_lock(folder, what="writer of README.md"):
        write_text_atomic(target, folder_card(folder, served, facts, base_model))
        note_in_manifest(folder, CARD_FILE)
    return target
