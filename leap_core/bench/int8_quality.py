"""reports/int8.{json,md}: how far dynamic int8 drifts from fp32, and when int8 query vectors can share an fp32 index.

Per model (the original, and each shallow query encoder on its own set), three ONNX Runtime graphs of one
`leap export`: fp32, int8 per tensor, int8 per channel (int8_check's two candidates). For each:
    cosine to fp32 (mean, min, 1st percentile) on STS-B test sentences and on the set's BEIR test queries;
    NDCG@10 of the test queries against the ORIGINAL's fp32 index (documents untouched: the shared-index case),
        as a paired-bootstrap change from original/original (query_encoder.evaluate.compare_row) and from the
        same model's fp32 queries (what int8 alone costs);
    for the original only, int8 on both sides (the corpus re-embedded with that int8 graph).
`auto` is leap export's default: what it keeps on STS-B dev is recorded per model (never chosen on test).
A scheme's int8 queries "share the fp32 index" when, on every set, the lower CI bound of that change from the same
model's fp32 queries clears the NDCG@10 floor (deploy_bench.TARGETS' max_ndcg_drop, 3%).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)
INT8 = {"int8 per-tensor": "per-tensor", "int8 per-channel": "per-channel"}  # row name -> int8_check scheme
PRECISIONS = ("fp32", *INT8)
SET_NAMES = {"scifact": "SciFact", "nfcorpus": "NFCorpus"}
COMMAND = ("OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python infra/int8_report.py --encoder nfcorpus=DIR/nfcorpus-depth0 "
           "--encoder nfcorpus=DIR/nfcorpus-depth3 --encoder scifact=DIR/scifact-depth0 "
           "--encoder scifact=DIR/scifact-depth3")
Encode = Callable[[list[str], int], np.ndarray]
BATCH = 32


def ndcg_floor() -> float:
    """The relative NDCG@10 drop a serving path may cost (deploy_bench.TARGETS["max_ndcg_drop"], 3%)."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.bench.deploy_bench import TARGETS

    return float(TARGETS["max_ndcg_drop"])


@dataclass
class Model:
    """One model of the report: its label, what it was exported from, the sets it is judged on, its exports."""

    label: str
    source: str
    sets: list[str]
    encode: dict[str, Encode]  # precision -> encode(texts, batch size)
    auto: dict[str, Any]  # the auto export's quantization record (chosen scheme and its check)


def export_model(label: str, source: str, sets: Sequence[str], depth: int | None, workdir: Path, threads: int,
                 check_texts: Path | None = None) -> Model:
    """`source` exported three times under `workdir` (per tensor, per channel, auto), each measured on check_texts
    (default: the data dir's STS-B dev, as `leap export`)."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.model_folder import EXPORT_FILE
    from leap_core.schemas import OnnxExportFile, read_schema_file
    from leap_core.serve.export import OnnxEncoder, export_onnx

    folders = {scheme: export_onnx(source, workdir / f"{label}-{scheme}", depth=depth, int8=True, scheme=scheme,
                                   check_texts=check_texts, threads=threads)
               for scheme in ("per-tensor", "per-channel", "auto")}
    encode = {"fp32": OnnxEncoder(folders["per-tensor"], precision="fp32", threads=threads).encode}
    encode.update({name: OnnxEncoder(folders[scheme], precision="int8", threads=threads).encode
                   for name, scheme in INT8.items()})
    auto = read_schema_file(folders["auto"] / EXPORT_FILE, OnnxExportFile)["quantization"]
    log.info("%s: exported; auto keeps %s", label, "per-channel" if auto["per_channel"] else "per-tensor")
    return Model(label, source, list(sets), encode, auto)


def auto_entry(record: dict[str, Any]) -> dict[str, Any]:
    """What `leap export --int8` (auto) kept on its check texts, and each candidate's cosine to fp32 there."""
    check = record["check"]
    return {"chosen": "per-channel" if record["per_channel"] else "per-tensor", "texts": check["texts"],
            "n": check["n"], "texts_sha256": check["texts_sha256"], "candidates": check["candidates"]}


def embed(model: Model, texts: list[str]) -> dict[str, np.ndarray]:
    """{precision: (N, d) embeddings of texts} for fp32 and both int8 graphs."""
    return {name: np.asarray(encode(texts, BATCH), dtype=np.float32) for name, encode in model.encode.items()}


def drift(embedded: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{int8 precision: cos(int8_i, fp32_i) mean, min, p01} on the same texts (int8_check.cosine_summary)."""
    # deferred: at top, importing this module would load torch, safetensors, tqdm
    from leap_core.serve.int8_check import cosine_summary

    return {name: cosine_summary(embedded[name], embedded["fp32"]) for name in INT8}


def shared_index(embedded: dict[str, np.ndarray], judged: Any, n_resamples: int) -> dict[str, dict[str, Any]]:
    """Each precision's test queries on the original's fp32 index: NDCG@10 change from original/original and (int8)
    from the same model's fp32 queries, each with a paired-bootstrap CI, and top-10 agreement with both."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.query_encoder.evaluate import compare_row, retrieval_row

    rows = {name: retrieval_row(judged.index, vectors, judged.query_ids, judged.qrels)
            for name, vectors in embedded.items()}
    out = {}
    for name, row in rows.items():
        out[name] = compare_row(row, judged.original, n_resamples)
        if name != "fp32":
            out[name]["vs_fp32"] = _change(compare_row(row, rows["fp32"], n_resamples))
    return out


def _change(row: dict[str, Any]) -> dict[str, Any]:
    """compare_row's change keys only (its NDCG@10 and recall are the row's own, already shown)."""
    return {key: row[key] for key in ("ndcg10_diff", "ndcg10_diff_ci", "ndcg10_rel", "ndcg10_rel_ci", "agreement10")}


def int8_index(encode: Encode, judged: Any, folder: str) -> Any:
    """The set's corpus re-embedded by `encode` (an int8 graph) in the original index's document order."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.evaluation.retrieval import document_text
    from leap_core.query_encoder.index import DocumentIndex
    from leap_core.query_encoder.sources import read_corpus

    documents = read_corpus(folder)
    if list(documents) != judged.index.doc_ids:
        raise ValueError(f"{folder}: its corpus is not the one the cached index was built from")
    vectors = np.asarray(encode([document_text(doc) for doc in documents.values()], BATCH), dtype=np.float32)
    index = judged.index
    return DocumentIndex(index.doc_ids, vectors, "int8", index.corpus_sha256, index.max_length)


def both_sides(model: Model, embedded: dict[str, np.ndarray], judged: Any, folder: str,
               n_resamples: int) -> dict[str, dict[str, Any]]:
    """{int8 precision: NDCG@10 of int8 queries on an index that graph re-embedded, vs original/original}."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.query_encoder.evaluate import compare_row, retrieval_row

    out = {}
    for name in INT8:
        index = int8_index(model.encode[name], judged, folder)
        log.info("%s: %s index of %d documents", judged.name, name, len(index.doc_ids))
        row = retrieval_row(index, embedded[name], judged.query_ids, judged.qrels)
        out[name] = compare_row(row, judged.original, n_resamples)
    return out


def model_entry(model: Model, sts_texts: list[str], judged: dict[str, Any], folders: dict[str, str],
                n_resamples: int, original: bool) -> dict[str, Any]:
    """One model's JSON: auto's choice, drift on STS-B test and each set's queries, NDCG@10 on each set."""
    entry: dict[str, Any] = {"source": model.source, "sets": model.sets, "auto": auto_entry(model.auto),
                             "cosine": {"stsb-test": drift(embed(model, sts_texts))}, "retrieval": {}}
    for name in model.sets:
        embedded = embed(model, judged[name].texts)
        entry["cosine"][name] = drift(embedded)
        entry["retrieval"][name] = {"shared_index": shared_index(embedded, judged[name], n_resamples)}
        if original:
            entry["retrieval"][name]["int8_index"] = both_sides(model, embedded, judged[name], folders[name],
                                                                n_resamples)
        log.info("%s on %s: done", model.label, name)
    return entry


def verdicts(models: dict[str, dict[str, Any]], floor: float) -> dict[str, dict[str, Any]]:
    """{model: {int8 precision: {"shares_fp32_index", "worst_rel_ci_low", per set change}}}: shares when every
    set's CI lower bound of the change from the same model's fp32 queries is >= -floor."""
    out: dict[str, dict[str, Any]] = {}
    for label, entry in models.items():
        for name in INT8:
            changes = {s: entry["retrieval"][s]["shared_index"][name]["vs_fp32"] for s in entry["sets"]}
            worst = min(change["ndcg10_rel_ci"][0] for change in changes.values())
            out.setdefault(label, {})[name] = {
                "shares_fp32_index": bool(worst >= -floor), "worst_rel_ci_low": worst,
                "ndcg10_rel": {s: c["ndcg10_rel"] for s, c in changes.items()},
                "ndcg10_rel_ci": {s: c["ndcg10_rel_ci"] for s, c in changes.items()}}
    return out


def run_int8_report(original: str, encoders: dict[str, list[Path]], beir: dict[str, str], sts_texts: list[str],
                    workdir: Path, cache_dir: Path, threads: int = 1, n_resamples: int = 2000,
                    check_texts: Path | None = None) -> dict[str, Any]:
    """The whole report: the original on every set, each query encoder on its own set, then the verdicts."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from leap_core.query_encoder.bench import judged_set
    from leap_core.query_encoder.model import read_record

    judged = {name: judged_set(original, folder, cache_dir) for name, folder in beir.items()}
    exported = export_model("original", original, list(beir), _full_depth(original), workdir, threads, check_texts)
    models = {"original": model_entry(exported, sts_texts, judged, beir, n_resamples, True)}
    for name, folders in encoders.items():
        for folder in folders:
            label = Path(folder).name
            model = export_model(label, str(folder), [name], None, workdir, threads, check_texts)
            models[label] = model_entry(model, sts_texts, judged, beir, n_resamples, False)
            models[label]["source"] = label  # a scratch folder of this machine: its name only
            models[label]["depth"] = int(read_record(folder)["depth"])
    floor = ndcg_floor()
    return {"original": original, "threads": threads, "n_resamples": n_resamples, "floor": floor,
            "sts_test_sentences": len(sts_texts), "test_queries": {n: len(j.texts) for n, j in judged.items()},
            "models": models, "verdicts": verdicts(models, floor)}


def _full_depth(model: str) -> int:
    """The original's layer count: it is exported whole, whatever leap_exit.json it may carry."""
    # deferred: at top, importing this module would load torch, transformers, scipy
    from transformers import AutoConfig

    from leap_core.models import resolve_model

    return int(AutoConfig.from_pretrained(str(resolve_model(model))).num_hidden_layers)
