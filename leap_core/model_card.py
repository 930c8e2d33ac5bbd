"""A model folder's README.md: what the model is, what it measured and how to use its early exit.

Filled from the run's own numbers (an experiment.evaluate dict) and its recipe; sentence-transformers' card
template would say "trained." and base model "Unknown". README.md is documentation, not content: it is left out of
the folder's hashes (pipeline.SERVING_SETTINGS), so writing it after a step hands the folder on changes no reference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from leap_core.io import write_text_atomic
from leap_core.report.markdown import fmt, table

CARD_FILE = "README.md"


def recipe_facts(profile: Any, arm: str, seed: int) -> dict[str, Any]:
    """What made a distilled student: teacher, initialisation, objective, training budget and data."""
    objective = {key: value for key, value in dataclasses.asdict(profile.objective_for(arm)).items()
                 if value not in (None, 0, 0.0, False, [], {})}
    training = profile.training_for(arm)
    return {"kind": "LEAP student (exit-aware distillation)", "arm": arm, "seed": seed, "profile": profile.name,
            "teacher": profile.models.teacher, "initialised from": profile.models.student_init,
            "layers": profile.models.student_layers, "objective": objective,
            "training": f"{training.epochs} epoch(s), batch {training.batch_size}, lr {training.lr}",
            "data": f"{profile.data.n_sentences} sentences of {profile.data.corpus}"}


def render_card(metrics: Mapping[str, Any], facts: Mapping[str, Any], name: str = "PATH") -> str:
    """The card: front matter sentence-transformers and the hub read, what it is, its numbers, how to use it."""
    rows = [[key, fmt(value) if not isinstance(value, dict) else ", ".join(f"{k}={v}" for k, v in value.items())]
            for key, value in facts.items()]
    measured = [["STS-B Spearman, full depth", fmt(metrics["stsb_full"])],
                ["STS-B Spearman, exited (served)", fmt(metrics["stsb_exited"])],
                ["exit rate (rows leaving before the last layer)", fmt(metrics["exit_rate"], ".1%")],
                ["mean exit layer", f"{metrics['mean_exit_layer']:.2f} of {metrics['n_layers']}"],
                ["layer reduction", fmt(metrics["layer_reduction"], ".2f") + "x"]]
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "tags: [sentence-transformers, sentence-similarity, early-exit, leap]",
             *([f"base_model: {facts['initialised from']}"] if facts.get("initialised from") else []), "---", "",
             f"# {Path(name).parent.name if Path(name).name == 'model' else Path(name).name}", "",
             "A sentence embedding model that stops each sentence at the first layer where its mean-pooled embedding "
             f"has converged: it exits at layer l >= l_min = {metrics['l_min']} when cos(p_l, p_l-{metrics['k']}) >= "
             f"theta = {metrics['theta']}.", "", "## What it is", "", *table(["", ""], rows, ["---", "---"]),
             f"## Measured on STS-B test ({metrics.get('n_pairs', '?')} pairs), at its exit rule", "",
             *table(["", "value"], measured, ["---", "---:"]),
             "Judge it on your own retrieval data too: STS-B alone can hide a loss on text unlike the training "
             "sentences.", "", "## Use it", "", "```python",
             "from sentence_transformers import SentenceTransformer", "",
             f"model = SentenceTransformer({name!r}, trust_remote_code=True)  # needs `pip install leap`",
             "embeddings = model.encode(texts)                             # each sentence exits early",
             "layers = [row['exit_layer'] for row in model.encode(texts, output_value=None)]",
             "full = model.encode(texts, exit_mode='full')                 # or 'fixed:N'; model[0].exit_mode for all",
             "```", ""]
    return "\n".join(lines)


def write_card(folder: str | Path, metrics: Mapping[str, Any], facts: Mapping[str, Any]) -> Path:
    """README.md of `folder`, written atomically from the run's numbers, under the folder's writer lock."""
    from leap_core.io import note_in_manifest, writer_lock

    target = Path(folder) / CARD_FILE
    with writer_lock(folder, what="writer of README.md"):
        write_text_atomic(target, render_card(metrics, facts, str(folder)))
        note_in_manifest(folder, CARD_FILE)
    return target
