"""BEIR retrieval sets (corpus, queries, qrels), loaded by beir's own GenericDataLoader.

GenericDataLoader reads uncompressed corpus.jsonl / queries.jsonl, so gzipped files are checked
line by line and decompressed once into a cache folder keyed by their content hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from leap_core.data.corpus import iter_lines, jsonl_record
from leap_core.data.errors import DataError
from leap_core.io import cache_root as leap_cache_root
from leap_core.io import sha256_file

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
JSONL_STEMS = ("corpus", "queries")


def default_cache_dir() -> Path:
    return leap_cache_root()


def _check_jsonl(path: Path, out=None) -> None:
    """Check every line of a (plain or .gz) BEIR jsonl file; copy the lines to `out` if given."""
    count = 0
    for lineno, line in iter_lines(path):
        jsonl_record(path, lineno, line, required=("_id", "text"))
        count += 1
        if out is not None:
            out.write(line + "\n")
    if count == 0:
        raise DataError(f"{path}: no record in the file")


def _check_qrels(path: Path) -> None:
    """BEIR qrels tsv: a header line, then query-id, corpus-id, integer score."""
    count = 0
    for lineno, line in iter_lines(path):
        fields = line.split("\t")
        if lineno == 1:
            # GenericDataLoader drops the first row unread: make sure it is not a judgment.
            if len(fields) >= 3 and fields[2].strip().lstrip("-").isdigit():
                raise DataError(f"{path}, line 1: expected the header 'query-id\\tcorpus-id\\tscore'")
            continue
        if len(fields) < 3:
            raise DataError(f"{path}, line {lineno}: expected 3 tab-separated fields, got {len(fields)}")
        try:
            int(fields[2])
        except ValueError:
            raise DataError(
                f"{path}, line {lineno}: field 'score' is not an integer: {fields[2]!r}"
            ) from None
        count += 1
    if count == 0:
        raise DataError(f"{path}: no relevance judgment in the file")


def _gunzip_cached(folder: Path, gz_files: dict[str, Path], cache_root: Path) -> Path:
    """Decompress (and check) the gz files into cache_root/<name>-<hash>/, once; return that folder."""
    digest = hashlib.sha256()
    for stem, gz in sorted(gz_files.items()):
        digest.update(f"{stem}:{sha256_file(gz)}\n".encode())
    target = cache_root / f"{folder.name}-{digest.hexdigest()[:12]}"
    if target.is_dir():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
    try:
        for stem, gz in gz_files.items():
            with open(tmp / f"{stem}.jsonl", "w", encoding="utf-8") as out:
                _check_jsonl(gz, out)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent writer that got there first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def _download(name: str, cache_root: Path) -> Path:
    from beir import util  # lazy: slow to import, and only hub users need it

    return Path(util.download_and_unzip(BEIR_URL.format(name=name), str(cache_root / "hub")))


def load_beir(
    folder: str | Path, split: str = "test", cache_dir: str | Path | None = None
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus, queries, qrels) of a BEIR folder, exactly as beir's GenericDataLoader returns them.

    corpus: doc_id -> {"text", "title"}; queries: qid -> text (only queries judged in the split);
    qrels: qid -> {doc_id: score}. `folder` holds corpus.jsonl[.gz], queries.jsonl[.gz] and
    qrels/<split>.tsv, or is "hub:<name>" to download the standard BEIR zip (needs internet).
    cache_dir (default $LEAP_CACHE_DIR or ~/.cache/leap) receives decompressed files and downloads.
    """
    from beir.datasets.data_loader import GenericDataLoader  # beir: optional (the pipeline extra)

    cache_root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "beir"
    if isinstance(folder, str) and folder.startswith("hub:"):
        folder = _download(folder[len("hub:"):], cache_root)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: BEIR folder not found")
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        raise DataError(f"{qrels_file}: qrels file not found (split {split!r})")

    files: dict[str, Path] = {}
    sources: dict[str, Path] = {}  # what the user gave, for messages (files may be cache copies)
    gz_files: dict[str, Path] = {}
    for stem in JSONL_STEMS:
        plain, gz = folder / f"{stem}.jsonl", folder / f"{stem}.jsonl.gz"
        if plain.is_file():
            _check_jsonl(plain)
            files[stem] = sources[stem] = plain
        elif gz.is_file():
            gz_files[stem] = sources[stem] = gz
        else:
            raise DataError(f"{plain}: file not found (nor {gz.name})")
    if gz_files:
        cached = _gunzip_cached(folder, gz_files, cache_root)
        files.update({stem: cached / f"{stem}.jsonl" for stem in gz_files})
    _check_qrels(qrels_file)

    loader = GenericDataLoader(
        corpus_file=str(files["corpus"]), query_file=str(files["queries"]), qrels_file=str(qrels_file)
    )
    try:
        return loader.load_custom()
    except KeyError as exc:
        raise DataError(f"{qrels_file}: query id {exc} has no query in {sources['queries']}") from None
