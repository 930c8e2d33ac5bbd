"""Teacher embeddings, computed once, stored in Parquet, verified on every read.

One row per sentence: the sentence and the teacher's normalised mean pool at each cached layer
(float16, which keeps cosines to ~1e-4 and halves the file). The file's metadata holds a key — a
hash of the teacher's weights and tokenizer, the sentences, max length, layers and pooling — so a
cache made for anything else is never used: it is rebuilt. It also holds the sha256 of the content
(sentences and every embedding value), checked on every read: a flipped bit is a warning and a
rebuild, never a hit. The build runs in chunks saved beside the target, so a killed build resumes
where it stopped, and takes the rows of sentences that earlier caches of the same teacher already hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from leap_core.config import ENCODE_BATCH_SIZE
from leap_core.io import atomic_path, load_checked_array, save_checked_array, sha256_strings
from leap_core.model_folder import model_fingerprint
from leap_core.models import load_weights, resolve_model
from leap_core.pooling import pooled_layers
from leap_core.storage import download, exists, upload

log = logging.getLogger(__name__)
POOLING = "mean-normalised"
CHUNK = 2048
SPOT_CHECK_ROWS = 8  # rows of a shared (S3) cache checked against a fresh teacher pass on every fetch
SPOT_CHECK_MIN_COSINE = 0.999  # float16 storage and bf16 autocast on GPU stay well above it


@dataclass
class TeacherCache:
    path: Path
    sentences: list[str]
    layers: list[int]  # 1-indexed teacher layers, in column order
    embeddings: torch.Tensor  # (len(layers), N, D) float32

    @property
    def dim(self) -> int:
        return self.embeddings.shape[-1]


def cache_key(teacher_folder: Path, sentences: list[str], layers: list[int], max_length: int) -> str:
    spec = {
        "teacher": model_fingerprint(teacher_folder),
        "sentences": sha256_strings(sentences),
        "layers": layers,
        "max_length": max_length,
        "pooling": POOLING,
    }
    return sha256_strings([json.dumps(spec, sort_keys=True)])


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _layer_values(table: pa.Table, layer: int) -> np.ndarray:
    """(N, D) float16 values of one cached layer's column."""
    column = table.column(f"layer_{layer}").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), -1)


def content_digest(sentences: list[str], layer_values: list[np.ndarray]) -> str:
    """sha256 of the sentences and every cached float16 value, in column order."""
    digest = hashlib.sha256(sha256_strings(sentences).encode())
    for values in layer_values:
        digest.update(np.ascontiguousarray(values, dtype=np.float16).tobytes())
    return digest.hexdigest()


def _table_digest(table: pa.Table) -> str:
    layers = json.loads((table.schema.metadata or {}).get(b"layers", b"[]"))
    return content_digest(table.column("sentence").to_pylist(), [_layer_values(table, layer) for layer in layers])


def _read_verified(path: Path, key: str, n_rows: int) -> pa.Table | None:
    """The table if the file is readable, made for exactly this key and its content is what was written;
    None (with a warning) if not."""
    try:
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        found = meta.get(b"leap_cache_key", b"").decode()
        content = meta.get(b"leap_content_sha256", b"").decode()
        intact = found != key or table.num_rows != n_rows or content == _table_digest(table)
    except Exception as err:  # a truncated or corrupt file
        log.warning("teacher cache %s is unreadable (%s): rebuilding it", path, err)
        return None
    if found != key:
        log.warning("teacher cache %s was made for other inputs (key %s, want %s): rebuilding it", path, found[:12], key[:12])
        return None
    if table.num_rows != n_rows:
        log.warning("teacher cache %s has %d rows, want %d: rebuilding it", path, table.num_rows, n_rows)
        return None
    if not intact:
        log.warning("teacher cache %s: its content does not match its sha256 (%s): rebuilding it", path,
                    "none recorded" if not content else "altered or corrupt")
        return None
    return table


def _encode_chunk(model, tokenizer, sentences: list[str], layers: list[int], max_length: int, batch_size: int,
                  device: torch.device) -> np.ndarray:
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # less padding per batch
    out = np.zeros((len(layers), len(sentences), model.config.hidden_size), dtype=np.float16)
    index = torch.tensor([layer - 1 for layer in layers])
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer([sentences[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                hidden = model(**batch, output_hidden_states=True).hidden_states
            pooled = pooled_layers(tuple(h.float() for h in hidden), batch["attention_mask"])
            out[:, rows] = pooled[index].cpu().numpy().astype(np.float16)
    return out


def build_teacher_cache(teacher: str, sentences: list[str], layers: list[int], cache_dir: str | Path,
                        max_length: int = 128, batch_size: int = ENCODE_BATCH_SIZE, device: str = "auto",
                        show_progress: bool = True, shared_uri: str | None = None) -> Path:
    """Make sure a verified cache of `teacher` on `sentences` at `layers` exists; return its path.

    Reuses a valid file (logging that no teacher forward pass runs); rebuilds a corrupt or stale one.
    shared_uri (s3://bucket/prefix): a cache another run built there is fetched (sha256-checked) instead of
    recomputed, and a cache built here is put there. On a miss, rows of other caches in cache_dir with the same
    teacher, layers and max length are reused (reusable_rows): only sentences none of them holds are encoded.
    """
    folder = resolve_model(teacher)
    layers = sorted(set(layers))
    key = cache_key(folder, sentences, layers, max_length)
    path = Path(cache_dir) / f"teacher-{key[:16]}.parquet"
    remote = f"{shared_uri.rstrip('/')}/{path.name}" if shared_uri else None
    if path.is_file() and _read_verified(path, key, len(sentences)) is not None:
        log.info("teacher cache hit: %s (%d sentences, layers %s): no teacher forward pass", path, len(sentences), layers)
        return path
    if remote and _fetch_verified(remote, path, key, len(sentences)):
        _spot_check(path, remote, folder, layers, max_length, device)
        log.info("teacher cache hit in %s: no teacher forward pass (%d rows spot-checked)", remote, SPOT_CHECK_ROWS)
        return path

    spec = spec_key(folder, layers, max_length)
    known = reusable_rows(Path(cache_dir), spec, set(sentences), exclude=path)
    missing = list(dict.fromkeys(s for s in sentences if s not in known))
    log.info("teacher cache miss: encoding %d of %d sentences with %s into %s (%d rows from earlier caches)",
             len(missing), len(sentences), teacher, path, len(sentences) - len(missing))
    if missing:
        known.update(zip(missing, np.moveaxis(_encode_resumable(folder, missing, layers, max_length, batch_size,
                                                                device, path, key, show_progress), 1, 0)))
    embeddings = np.stack([known[s] for s in sentences], axis=1)
    _write_table(path, key, teacher, sentences, layers, max_length, embeddings, spec)
    shutil.rmtree(path.with_suffix(".parts"), ignore_errors=True)
    if remote:
        upload(path, remote)
        log.info("teacher cache shared at %s", remote)
    return path


def _encode_resumable(folder: Path, sentences: list[str], layers: list[int], max_length: int, batch_size: int,
                      device: str, path: Path, key: str, show_progress: bool) -> np.ndarray:
    """(len(layers), N, D) float16 pools of `sentences`, CHUNK rows at a time, each chunk saved beside `path`
    (named by the cache key and these sentences) so that a killed build resumes where it stopped."""

    run_device = pick_device(device)
    model = load_weights(folder).to(run_device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if max(layers) > model.config.num_hidden_layers:
        raise ValueError(f"teacher {folder} has {model.config.num_hidden_layers} layers; asked for layer {max(layers)}")
    parts = path.with_suffix(".parts")
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "key").write_text(key)
    tag = sha256_strings([key, sha256_strings(sentences)])[:16]
    chunks = []
    with tqdm(total=len(sentences), desc="teacher cache", unit="sent", disable=not show_progress) as bar:
        for number, start in enumerate(range(0, len(sentences), CHUNK)):
            chunk_path = parts / f"chunk-{number:05d}-{tag}.npy"
            rows = sentences[start:start + CHUNK]
            shape = (len(layers), len(rows), model.config.hidden_size)
            chunk = _resumed_chunk(chunk_path, shape)  # done before a kill, and verified
            if chunk is None:
                chunk = _encode_chunk(model, tokenizer, rows, layers, max_length, batch_size, run_device)
                save_checked_array(chunk_path, chunk)
            chunks.append(chunk)
            bar.update(chunk.shape[1])
    return np.concatenate(chunks, axis=1)


def _resumed_chunk(chunk_path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A chunk an earlier (killed) build saved, verified by io.load_checked_array (checksum, float16 shape,
    finite); else None, with a warning: the chunk is encoded again."""
    if not chunk_path.is_file():
        return None
    chunk, problem = load_checked_array(chunk_path, shape, "float16")
    if problem is not None:
        log.warning("teacher cache chunk %s: %s: encoding it again", chunk_path, problem)
    return chunk


def spec_key(teacher_folder: Path, layers: list[int], max_length: int) -> str:
    """What makes two caches' rows interchangeable: the teacher's weights, layers, max length and pooling."""
    spec = {"teacher": model_fingerprint(teacher_folder), "layers": layers, "max_length": max_length,
            "pooling": POOLING}
    return sha256_strings([json.dumps(spec, sort_keys=True)])


def reusable_rows(cache_dir: Path, spec: str, wanted: set[str], exclude: Path | None = None) -> dict[str, np.ndarray]:
    """Pools of `wanted` sentences found in other caches of the same spec in cache_dir, each verified on read.

    A retrain on a growing traffic log so encodes only the text no earlier run has seen.
    """
    found: dict[str, np.ndarray] = {}
    for other in sorted(cache_dir.glob("teacher-*.parquet")):
        if other == exclude or len(found) == len(wanted):
            continue
        try:
            if (pq.read_schema(other).metadata or {}).get(b"leap_cache_spec", b"").decode() != spec:
                continue
            cache = load_teacher_cache(other)
        except (ValueError, OSError, pa.ArrowException) as err:
            log.warning("teacher cache %s not reused: %s", other, err)
            continue
        values = cache.embeddings.numpy().astype(np.float16)  # stored as float16: the round trip is exact
        for row, sentence in enumerate(cache.sentences):
            if sentence in wanted and sentence not in found:
                found[sentence] = values[:, row]
    return found


def _write_table(path: Path, key: str, teacher: str, sentences: list[str], layers: list[int], max_length: int,
                 embeddings: np.ndarray, spec: str = "") -> None:
    """The cache file, atomically: one row per sentence, one float16 column per layer, key and checksum as metadata.
    Embeddings that are not all finite are refused: a checksum over NaN would make them look verified."""
    if not np.isfinite(embeddings).all():
        raise ValueError(f"{path}: teacher embeddings hold NaN or inf: not writing the cache (check the teacher "
                         f"{teacher} and its chunks in {path.with_suffix('.parts')})")
    columns = {"sentence": pa.array(sentences, type=pa.string())}
    for position, layer in enumerate(layers):
        flat = pa.array(embeddings[position].reshape(-1), type=pa.float16())
        columns[f"layer_{layer}"] = pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[-1])
    metadata = {"leap_cache_key": key, "teacher": teacher, "layers": json.dumps(layers),
                "max_length": str(max_length), "pooling": POOLING,
                "leap_content_sha256": content_digest(sentences, list(embeddings)), "leap_cache_spec": spec}
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns).replace_schema_metadata(metadata), tmp)


def _fetch_verified(remote: str, path: Path, key: str, n_rows: int) -> bool:
    """Download a shared cache (sha256-checked) and keep it only if it verifies like a local one."""

    if not exists(remote):
        return False
    try:
        download(remote, path)
    except ValueError as err:
        log.warning("%s: rebuilding the teacher cache", err)
        return False
    if _read_verified(path, key, n_rows) is None:
        path.unlink(missing_ok=True)
        return False
    return True


def _spot_check(path: Path, remote: str, folder: Path, layers: list[int], max_length: int, device: str) -> None:
    """Return only if SPOT_CHECK_ROWS random rows of a fetched shared cache match a fresh forward pass of the
    teacher (cosine >= SPOT_CHECK_MIN_COSINE at every layer); else delete the local copy and raise a ValueError
    naming the cache. Its key and sha256 only prove it is self-consistent: whoever can write the bucket can write
    both, so the content itself is sampled (at random: a forger cannot know which rows are checked)."""

    cache = load_teacher_cache(path)
    rows = np.random.default_rng().choice(len(cache.sentences), min(SPOT_CHECK_ROWS, len(cache.sentences)),
                                          replace=False)
    run_device = pick_device(device)
    model = load_weights(folder).to(run_device).eval()
    fresh = _encode_chunk(model, AutoTokenizer.from_pretrained(folder), [cache.sentences[i] for i in rows], layers,
                          max_length, len(rows), run_device).astype(np.float32)
    stored = cache.embeddings[:, torch.as_tensor(rows)].numpy()
    cosine = (fresh * stored).sum(-1) / np.maximum(np.linalg.norm(fresh, axis=-1) * np.linalg.norm(stored, axis=-1),
                                                   1e-12)
    if not (np.isfinite(cosine) & (cosine >= SPOT_CHECK_MIN_COSINE)).all():
        worst_layer, worst_row = np.unravel_index(np.nanargmin(np.where(np.isfinite(cosine), cosine, -np.inf)),
                                                  cosine.shape)
        path.unlink(missing_ok=True)
        raise ValueError(f"{remote}: shared teacher cache row {int(rows[worst_row])} at layer "
                         f"{layers[worst_layer]} has cosine {float(cosine[worst_layer, worst_row]):.4f} to a fresh "
                         f"forward pass of the teacher (want >= {SPOT_CHECK_MIN_COSINE}): not using it; delete it "
                         "from the bucket and check who can write there")


def load_teacher_cache(path: str | Path, sentences: list[str] | None = None) -> TeacherCache:
    """Read a cache; if `sentences` is given, they must be exactly the cached ones (same order)."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's errors for a truncated or foreign file
        raise ValueError(f"{path}: not a readable Parquet teacher cache ({err}); delete it to rebuild") from None
    meta = table.schema.metadata or {}
    if b"leap_cache_key" not in meta:
        raise ValueError(f"{path}: not a leap teacher cache (no leap_cache_key in its metadata)")
    layers = json.loads(meta[b"layers"])
    cached = table.column("sentence").to_pylist()
    if sentences is not None and cached != sentences:
        raise ValueError(f"{path}: cached sentences differ from the training sentences")
    values = [_layer_values(table, layer) for layer in layers]
    if meta.get(b"leap_content_sha256", b"").decode() != content_digest(cached, values):
        raise ValueError(f"{path}: content does not match its sha256 (altered or corrupt); delete it to rebuild")
    stacked = [torch.from_numpy(layer_values.astype(np.float32)) for layer_values in values]
    return TeacherCache(path=path, sentences=cached, layers=layers, embeddings=torch.stack(stacked))
