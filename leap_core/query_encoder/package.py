"""A shallow query encoder and its document model as one sentence-transformers folder with a Router.

The Router's "query" route is the query encoder's modules as saved (Transformer of N layers, mean Pooling,
Normalize, Dense, Normalize) and its "document" route the original model's, unchanged. Plain
`SentenceTransformer(folder)` then gives `encode_query` (the shallow encoder) and `encode_document` (the
original), the calls MTEB's retrieval tasks make. The default route, for a bare `encode`, is "document": a job
that does not know about routes keeps building the index the original built, at the original's quality.

The query encoder's leap_query_encoder.json is copied in, so check_pair and read_record work on the package too.
Only sentence-transformers' own module classes are packaged: the folder loads without leap installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from leap_core.io import replace_folder
from leap_core.models import resolve_model
from leap_core.query_encoder.model import RECORD_FILE, check_pair, read_record

PACKAGE_KIND = "query route package"  # the folder's kind in its manifest (io.replace_folder)
QUERY, DOCUMENT = "query", "document"
ROLES = (QUERY, DOCUMENT)
DEFAULT_ROUTE = DOCUMENT


def is_router_package(folder: str | Path) -> bool:
    """Whether `folder` is a sentence-transformers folder whose one module is a Router."""
    modules_file = Path(folder) / "modules.json"
    if not modules_file.is_file():
        return False
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    return len(modules) == 1 and str(modules[0].get("type", "")).endswith(".Router")


def _own_modules(folder: str | Path, what: str) -> list[Any]:
    """The folder's sentence-transformers modules, refused unless every one is sentence-transformers' own class."""
    from sentence_transformers import SentenceTransformer  # heavy at import (datasets, sklearn): loaded on use

    modules = list(SentenceTransformer(str(folder), device="cpu"))
    foreign = [type(module).__name__ for module in modules
               if not type(module).__module__.startswith("sentence_transformers.")]
    if foreign:
        raise ValueError(f"{folder}: the {what} holds modules {foreign} that are not sentence-transformers' own: "
                         "a Router package must load with plain sentence-transformers")
    return modules


def route_modules(folder: str | Path, role: str = QUERY) -> list[Any]:
    """The modules of one route: a Router package's `role` route, or a query encoder folder's own (role "query")."""
    from sentence_transformers import SentenceTransformer  # heavy at import (datasets, sklearn): loaded on use

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: expected one of {list(ROLES)}")
    if is_router_package(folder):
        router = SentenceTransformer(str(folder), device="cpu")[0]
        return list(router.sub_modules[role])
    if role != QUERY:
        raise ValueError(f"{folder}: a query encoder folder has only the query route; package it (package_router) "
                         "for the document route")
    read_record(folder)  # a folder without leap_query_encoder.json is not a query encoder
    return _own_modules(folder, "query encoder")


def package_router(query_encoder_folder: str | Path, out_folder: str | Path,
                   document_model: str | None = None) -> Path:
    """Write `out_folder`: a Router whose "query" route is the query encoder and "document" route its document model.

    document_model: where to load the document model from (default: the name leap_query_encoder.json records);
    either way its weights must hash to the recorded fingerprint (check_pair), or nothing is written.
    `out_folder` may be absent, empty or an earlier package (io.replace_folder: built beside it, swapped in whole).
    """
    source = Path(query_encoder_folder)
    if is_router_package(source):
        raise ValueError(f"{source}: already a Router package; package the query encoder folder it was made from")
    document = document_model or read_record(source)["document_model"]
    check_pair(source, document)
    query = _own_modules(source, "query encoder")
    documents = _own_modules(resolve_model(document), "document model")
    return replace_folder(Path(out_folder), lambda folder: _write_package(source, query, documents, folder),
                          PACKAGE_KIND)


def _write_package(source: Path, query: list[Any], documents: list[Any], folder: Path) -> None:
    """Save the Router model into the new `folder` and copy the query encoder's record beside it."""
    from sentence_transformers import SentenceTransformer  # heavy at import (datasets, sklearn): loaded on use
    from sentence_transformers.sentence_transformer.modules import Router  # as above: loaded on use

    router = Router.for_query_document(query_modules=query, document_modules=documents, default_route=DEFAULT_ROUTE)
    SentenceTransformer(modules=[router], device="cpu").save(str(folder))
    shutil.copy2(source / RECORD_FILE, folder / RECORD_FILE)
