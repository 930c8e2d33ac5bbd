"""The exit branch: a retrofit that leaves the original model untouched and adds a cheap path beside it.

The branch is a copy of the original's embeddings and first layers, trained so that the mean pool of
each exit layer l lands on the ORIGINAL's final embedding of the same text (losses.branch). The full
path is the original, bit for bit (its weights are never trained or rewritten, and its hash is kept
with the branch), so an index the original built stays valid and queries may be embedded by the
branch cut to l layers (a standalone l-layer model) against it.

Training text: the generic recipe draws corpus sentences equally over their sources plus
pseudo-documents (several sentences joined), so long inputs are trained too; `corpus=` trains on a
user's own unlabelled documents and the sentences split from them instead (reported apart).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from leap_core import identity
from leap_core.config import BranchConfig, Profile
from leap_core.identity import model_slug
from leap_core.io import (atomic_path, note_in_manifest, replace_folder, sha256_file, sha256_strings, write_json_atomic,
                          writer_lock)
from leap_core.model_folder import (BRANCH_FILE, HEADS_FILE, layer_count, load_heads, max_seq_length, model_fingerprint,
                                    read_branch, read_exit_settings)
from leap_core.pipeline import experiment

log = logging.getLogger(__name__)
CUT_KIND = "cut model"  # the kind in a cut folder's manifest (io.replace_folder)
HEAD_FIT_TEXTS = 4000  # texts whose pools fit the heads' starting map (closed form, one forward pass)


def exit_layers(branch: BranchConfig, depth: int) -> list[int]:
    """The branch's exit layers (1-indexed); the default runs from half the depth to one below the original's."""
    layers = branch.exit_layers if branch.exit_layers is not None else list(range(max(2, depth // 2), depth))
    if not layers or not all(1 <= layer < depth for layer in layers):
        raise ValueError(f"branch.exit_layers {layers} must be layers in 1..{depth - 1} (below the original's {depth})")
    return sorted(set(layers))


def generic_texts(profile: Profile) -> list[str]:
    """Corpus sentences (balanced over sources when data.balance_by is set) and pseudo-documents from others."""
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data import extract_sentences, load_corpus, read_tags, sts_sentences
    from leap_core.data.documents import pseudo_documents

    data, branch = profile.data, profile.branch
    corpus = load_corpus(data.corpus, data.data_dir)
    tags = read_tags(experiment.data_path(profile, data.balance_by), len(corpus), data.corpus) if data.balance_by else None
    pool_size = branch.n_sentences + branch.n_documents * branch.doc_sentences[1]
    pool = extract_sentences(corpus, pool_size, data.min_chars, data.seed,
                             exclude=sts_sentences(data.data_dir, data.exclude_sts), tags=tags)
    random.Random(data.seed).shuffle(pool)  # extract keeps corpus order, which groups sources
    sentences, rest = pool[:branch.n_sentences], pool[branch.n_sentences:]
    low, high = branch.doc_sentences
    return sentences + pseudo_documents(rest, branch.n_documents, low, high, data.seed)


def corpus_texts(profile: Profile, corpus: str | Path) -> list[str]:
    """A user's documents (data.documents.read_user_corpus) and up to branch.corpus_sentences of their sentences."""
    # deferred: at top, importing this module would load pyarrow
    from leap_core.data.documents import read_user_corpus, split_sentences

    documents = read_user_corpus(corpus, profile.data.min_chars)
    sentences = list(dict.fromkeys(s for doc in documents for s in split_sentences(doc, profile.data.min_chars)))
    rng = random.Random(profile.data.seed)
    sentences = rng.sample(sentences, min(len(sentences), profile.branch.corpus_sentences))
    return documents + [s for s in sentences if s not in set(documents)]


def branch_dir(profile: Profile, model: str, seed: int, texts_key: str) -> Path:
    """runs/<profile>/branch-<model>-<recipe hash>-seed<seed>: a changed recipe or text trains afresh."""
    recipe = identity.branch_recipe(profile.branch, texts_key)
    return experiment.run_dir(profile) / f"branch-{model_slug(model)}-{recipe}-seed{seed}"


def train_branch(profile: Profile, model: str, seed: int = 0, corpus: str | Path | None = None):
    """Train MODEL's exit branch (resumes a killed run, reuses a finished one); returns its TrainResult."""
    # deferred: at top, importing this module would load torch, transformers, sentence_transformers
    import torch

    from leap_core.data import write_sentences_parquet
    from leap_core.models import build_student, resolve_model
    from leap_core.train.losses import BranchObjective
    from leap_core.train.teacher_cache import build_teacher_cache, load_teacher_cache
    from leap_core.train.training import LeapTrainer, seed_everything

    original = resolve_model(model)
    depth = layer_count(original)
    layers = exit_layers(profile.branch, depth)
    texts = corpus_texts(profile, corpus) if corpus else generic_texts(profile)
    texts_key = sha256_strings(texts)
    out_dir = branch_dir(profile, model, seed, texts_key)
    texts_path = out_dir / "texts.parquet"
    if not texts_path.is_file():
        write_sentences_parquet(texts, texts_path)
    branch = profile.branch
    cache_path = build_teacher_cache(model, texts, [depth], experiment.cache_dir(profile), max_length=branch.max_length,
                                     batch_size=profile.models.teacher_batch_size, device=branch.training.device)
    cache = load_teacher_cache(cache_path, texts)
    cache.embeddings = cache.embeddings.expand(max(layers), -1, -1)  # the trainer wants one target row per layer
    seed_everything(seed)
    student, tokenizer = build_student(model, max(layers))
    student.embeddings.requires_grad_(False)  # shared with the original: the branch stores only its layers' change
    for module in student.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = branch.training.dropout or 0.0
    objective = BranchObjective(layers, max(layers), student.config.hidden_size, branch.contrast, branch.temperature)
    objective.set_heads(*fit_heads(student, tokenizer, texts, cache.embeddings[-1], layers, branch.max_length, seed))
    fingerprint = identity.branch_run(branch, layers, model_fingerprint(original), cache_path.name)
    exit_settings = dataclasses.replace(profile.exit, l_min=layers[0])
    trainer = LeapTrainer(student, tokenizer, objective, cache, branch.training, out_dir, seed=seed,
                          max_length=branch.max_length, exit_settings=exit_settings, run_fingerprint=fingerprint,
                          serve_max_length=max_seq_length(original),
                          save_extra=lambda folder: save_heads(objective, folder), exit_module=False)
    result = trainer.train()
    with writer_lock(result.model_dir, what="writer of leap_branch.json"):  # the trainer's lock is released now
        write_json_atomic(result.model_dir / BRANCH_FILE, {
            "original": model, "original_fingerprint": model_fingerprint(original), "original_layers": depth,
            "exit_layers": layers, "texts": "corpus" if corpus else "generic",
            "corpus_sha256": sha256_file(corpus) if corpus else None, "train_texts": len(texts),
            "train_steps": result.steps, "train_seconds": round(result.train_seconds, 1)})
        note_in_manifest(result.model_dir, BRANCH_FILE)
    return result


def fit_heads(student, tokenizer, texts: list[str], targets, layers: list[int], max_length: int, seed: int,
              ridge: float = 1e-2) -> tuple[list, list]:
    """Each exit head's starting map: ridge regression of the original's final embedding on the layer's pool.

    On HEAD_FIT_TEXTS texts drawn with `seed`; closed form, so training starts from the best linear map of
    the untrained layers (on all-MiniLM-L6-v2 that alone lifts layer 4's cosine to the final from 0.32 to 0.69).
    """
    # deferred: at top, importing this module would load torch, tqdm
    import torch

    from leap_core.pooling import pooled_layers

    rows = sorted(random.Random(seed).sample(range(len(texts)), min(HEAD_FIT_TEXTS, len(texts))))
    pools = []
    student.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            batch = tokenizer([texts[i] for i in rows[start:start + 64]], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = student(**batch, output_hidden_states=True).hidden_states
            pools.append(pooled_layers(hidden, batch["attention_mask"])[[layer - 1 for layer in layers]])
    pooled = torch.cat(pools, dim=1).double().numpy()
    target = targets[rows].double().numpy()
    weights, biases = [], []
    for x in pooled:
        design = np.hstack([x, np.ones((len(x), 1))])
        solution = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ target)
        weights.append(torch.from_numpy(solution[:-1].T.copy()).float())
        biases.append(torch.from_numpy(solution[-1].copy()).float())
    return weights, biases


def save_heads(objective, folder: str | Path) -> None:
    """The exit heads as safetensors (no pickle): layer_<l>.weight (d, d) and layer_<l>.bias (d,)."""
    # deferred: at top, importing this module would load safetensors
    from safetensors.torch import save_file

    tensors = {}
    for layer, head in zip(objective.exit_layers, objective.heads):
        tensors[f"layer_{layer}.weight"] = head.weight.detach().cpu().contiguous()
        tensors[f"layer_{layer}.bias"] = head.bias.detach().cpu().contiguous()
    with atomic_path(Path(folder) / HEADS_FILE) as tmp:
        save_file(tensors, str(tmp))


def calibrated_depth(branch: str | Path) -> int:
    """The fixed cut `leap calibrate --save` chose for the branch; an error saying what to do when there is none."""
    policy = read_exit_settings(branch).get("policy", {})
    if policy.get("kind") == "full":
        raise ValueError(f"{branch}: calibration chose full depth (no cut is within its floors): serve the "
                         "original model as it is, or give --depth to cut anyway")
    if policy.get("kind") != "fixed":
        raise ValueError(f"{branch}: no calibrated fixed cut in leap_exit.json (policy {policy or 'none'}); "
                         "give --depth, or run `leap calibrate BRANCH --save` first")
    return int(policy["depth"])


def save_cut(branch: str | Path, depth: int, out: str | Path) -> Path:
    """The branch cut to `depth` layers as a standalone sentence-transformers folder (what serves the queries).

    Its embeddings live in the original's final space, so it searches an index the original built. The folder
    keeps the original's max length and records its provenance (leap_branch.json with "cut_depth"). `out` may be
    absent, empty or an earlier leap cut whose manifest lists every file in it (io.replace_folder): a folder
    holding anything else is refused and left untouched.
    """

    record = read_branch(branch)
    if depth not in record["exit_layers"]:
        raise ValueError(f"{branch}: depth {depth} is not one of the branch's trained exits {record['exit_layers']}")
    return replace_folder(out, lambda folder: _write_cut(branch, record, depth, folder), CUT_KIND)


def _write_cut(branch: str | Path, record: dict[str, Any], depth: int, folder: Path) -> None:
    """The cut's model, exit head and leap_branch.json, written into the new `folder`."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.models import build_student, save_sentence_transformer
    from leap_core.serve.model_card import write_card

    model, tokenizer = build_student(str(branch), depth)
    save_sentence_transformer(model, tokenizer, folder, max_seq_length=max_seq_length(branch) or 256)
    heads = load_heads(branch)
    if depth in heads:
        append_head(folder, *heads[depth])
    write_json_atomic(folder / BRANCH_FILE, {**record, "cut_depth": depth})
    write_card(folder, facts={"kind": f"exit branch cut to {depth} layers (queries for the original's index)",
                              "original": record["original"]})


def append_head(folder: str | Path, weight, bias) -> None:
    """Transformer, Pooling, Normalize -> + Dense (the exit head, no activation) + Normalize, re-saved in place."""
    # deferred: at top, importing this module would load torch, sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_modules

    model = SentenceTransformer(str(folder), device="cpu")
    dense = st_modules.Dense(weight.shape[1], weight.shape[0], activation_function=None,
                             init_weight=torch.from_numpy(weight), init_bias=torch.from_numpy(bias))
    SentenceTransformer(modules=[*model, dense, st_modules.Normalize()], device="cpu").save(
        str(folder), create_model_card=False)  # leap's card stays
