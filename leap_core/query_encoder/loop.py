"""Retrain the query encoder on logged queries; promote a candidate only if it keeps the original's top-10, fast.

One run (flows/query_retrain_flow.py runs it step by step; retrain_query_encoder is all of it in one call):
1. split_queries: the logged query texts, split by a hash of each text (retrain.held_out): the held-out slice
   is never trained on, this run or any later one, so every run judges on text no candidate has seen.
2. train_candidate: a depth-d encoder (fit.train_at_depth) on the rest, plus pseudo-queries from the corpus,
   stopped on a dev part of the training text (never on the slice), saved paired with the original.
3. measure: on the slice, per model, agreement = mean_q |top10(model, q) & top10(original, q)| / 10 over the
   original's index (build_index, cached), and latency at batch 1 = the median over calls interleaved with the
   original's and each other's (timing.compare_calls), all through sentence-transformers as the registry serves
   them. Machines differ, so what is judged is a ratio: latency(candidate) / latency(champion or original).
4. judge: promoted iff agreement >= floor, agreement >= champion's - agreement_tolerance and
   latency(candidate) / latency(champion) <= 1 + latency_tolerance; with no champion, iff agreement >= floor and
   latency(original) / latency(candidate) > min_speedup. No candidate or champion is measured unless it pairs
   with the original (model.check_pair): a query encoder for another index is refused, never judged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from leap_core.data import DataError
from leap_core.io import cache_root
from leap_core.models import resolve_model
from leap_core.pipeline.retrain import held_out
from leap_core.query_encoder.evaluate import topk_overlap
from leap_core.query_encoder.fit import MIN_QUERIES, FitPlan, original_pools, train_at_depth
from leap_core.query_encoder.index import DocumentIndex, build_index
from leap_core.query_encoder.model import check_pair, read_record, save_query_encoder
from leap_core.query_encoder.package import QUERY, route_modules
from leap_core.query_encoder.sources import read_corpus, read_queries, read_traffic_queries, training_text
from leap_core.query_encoder.train import QueryEncoderConfig
from leap_core.roles import CANDIDATE, CHAMPION, ORIGINAL
from leap_core.storage import is_s3
from leap_core.timing import compare_calls

log = logging.getLogger(__name__)
TOP = 10


@dataclass
class LoopPlan:
    """The split, the candidate's training text, the gate's thresholds and how latency is timed."""

    holdout_fraction: float = 0.1  # share of distinct logged texts held out by hash (retrain.held_out)
    min_slice: int = 100  # fewer held-out texts measure agreement too coarsely: the run stops and says so
    dev_size: int = 200  # training texts set aside to stop training on (at most a third; never the slice)
    n_pseudo: int = 10000  # titles and sentences of the corpus added as training text (0: none)
    floor: float = FitPlan.floor  # absolute: the agreement `leap query-encoder` requires of a chosen depth
    agreement_tolerance: float = 0.01  # the candidate may trail the champion's agreement by this much ...
    latency_tolerance: float = 0.10  # ... and be this much slower than the champion at batch 1
    min_speedup: float = 1.0  # no champion: the candidate must be more than this much faster than the original
    warmup: int = 10  # batch-1 calls per model before timing
    iterations: int = 200  # timed batch-1 calls per model, interleaved
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.min_slice < TOP + 1:
            raise ValueError(f"min_slice must be at least {TOP + 1}, got {self.min_slice}")
        if self.agreement_tolerance < 0 or self.latency_tolerance < 0 or self.iterations < 1:
            raise ValueError("agreement_tolerance and latency_tolerance must be >= 0 and iterations >= 1")


def read_logged_queries(location: str | Path) -> list[str]:
    """The query texts of a traffic log (folder or s3://), or of any source sources.read_queries reads."""
    return read_traffic_queries(str(location)) if is_s3(str(location)) else read_queries(location)


def split_queries(texts: list[str], plan: LoopPlan) -> tuple[list[str], list[str]]:
    """(training texts, held-out slice) by retrain.held_out: a text's side is fixed by its dedup key alone.

    Raises DataError when the slice is under plan.min_slice or the training part under fit.MIN_QUERIES.
    """
    slice_texts = [t for t in texts if held_out(t, plan.holdout_fraction)]
    train = [t for t in texts if not held_out(t, plan.holdout_fraction)]
    if len(slice_texts) < plan.min_slice or len(train) < MIN_QUERIES:
        raise DataError(f"{len(texts)} logged query texts give {len(train)} to train on and {len(slice_texts)} held "
                        f"out; the query loop needs {MIN_QUERIES} and {plan.min_slice} (log more queries, or raise "
                        "LEAP_TRAFFIC_SAMPLE)")
    return train, slice_texts


def train_candidate(original: str, train: list[str], slice_texts: list[str], corpus: str | Path, depth: int,
                    config: QueryEncoderConfig, plan: LoopPlan, cache_dir: Path, out: Path) -> dict[str, Any]:
    """A depth-d encoder trained on `train` (+ pseudo-queries), stopped on its dev part; saved to `out`, paired
    with the original. Returns {"folder", "depth", "train_texts", "real_texts", "dev_texts", "best_step",
    "dev_agreement10", "seconds"}. No pseudo-query equals (on sentence_key) a slice or dev text."""
    index = build_index(original, corpus, cache_dir)
    real, dev, pseudo = training_text(train, read_corpus(corpus), plan.n_pseudo, plan.dev_size, plan.seed,
                                      held_out=slice_texts)
    texts = real + pseudo
    embedder = original_pools(original, cache_dir)
    pools, dev_pools = embedder.layers("loop/train", texts), embedder.layers("loop/dev", dev)
    dev_top = index.topk(dev_pools[-1], TOP)[1]
    encoder, history = train_at_depth(original, depth, texts, pools, index, (dev, dev_top), config)
    info = {"depth": depth, "train_texts": len(texts), "real_texts": len(train) - len(dev), "dev_texts": len(dev),
            "best_step": history["best_step"], "dev_agreement10": history["best_dev_agreement10"],
            "seconds": history["seconds"]}
    folder = save_query_encoder(encoder, out, original, {"training": {**info, "source": "query loop"},
                                                         "config": asdict(config)})
    log.info("candidate depth %d: dev agreement@10 %.4f after %s s", depth, info["dev_agreement10"], info["seconds"])
    return {"folder": str(folder), **info}


def query_route(folder: str | Path) -> Any:
    """The query route of a query encoder folder or of a Router package, as a SentenceTransformer (as served)."""
    from sentence_transformers import SentenceTransformer  # heavy at import (datasets, sklearn): only served routes

    return SentenceTransformer(modules=route_modules(folder, QUERY), device="cpu")


def _encode_call(model: Any) -> Callable[[list[str], int], np.ndarray]:
    """(texts, batch size) -> normalised embeddings, the call both agreement and latency use."""
    return lambda texts, size: model.encode(texts, batch_size=size, convert_to_numpy=True, normalize_embeddings=True,
                                            show_progress_bar=False)


def agreement(encode: Callable[[list[str], int], np.ndarray], index: DocumentIndex, texts: list[str],
              original_top: np.ndarray) -> float:
    """mean_q |top10(encode(q)) & top10(original, q)| / 10 over the original's index."""
    return float(topk_overlap(index.topk(encode(texts, 64), TOP)[1], original_top).mean())


def measure(original: str, folders: dict[str, str | Path], slice_texts: list[str], corpus: str | Path,
            cache_dir: Path, plan: LoopPlan) -> dict[str, Any]:
    """Each query encoder's slice agreement and batch-1 latency, interleaved with the original's (the baseline).

    Returns {role: {"folder", "depth", "agreement10", "latency_ms", "speedup_vs_original"}, "original":
    {"latency_ms"}, "timing": compare_calls' result}. Every folder must pair with the original (check_pair).
    """
    from leap_core.serve.st_module import plain_sentence_transformer  # imports sentence_transformers (heavy at import)

    for folder in folders.values():
        check_pair(folder, original)  # ValueError naming both weights hashes: never judged, never promoted
    index = build_index(original, corpus, cache_dir)
    original_top = index.topk(original_pools(original, cache_dir).layers("loop/slice", slice_texts)[-1], TOP)[1]
    calls = {ORIGINAL: _encode_call(plain_sentence_transformer(resolve_model(original)))}
    calls.update({role: _encode_call(query_route(folder)) for role, folder in folders.items()})
    result: dict[str, Any] = {role: {"folder": str(folder), "depth": int(read_record(folder)["depth"]),
                                     "agreement10": agreement(calls[role], index, slice_texts, original_top)}
                              for role, folder in folders.items()}
    timing = compare_calls(calls, ORIGINAL, slice_texts, batch_sizes=(1,), warmup=plan.warmup,
                           iterations=plan.iterations, seed=plan.seed)
    times = timing["batch_sizes"]["1"]
    for role in folders:
        result[role].update(latency_ms=times[role]["median"], speedup_vs_original=times[role]["speedup"])
    result[ORIGINAL] = {"latency_ms": times[ORIGINAL]["median"]}
    result["timing"] = timing
    return result


def judge(candidate: dict[str, Any], champion: dict[str, Any] | None, plan: LoopPlan) -> dict[str, Any]:
    """{"promoted", "reasons" (why not; empty when promoted), "facts" (what passed), "latency_ratio"}: see the
    module's step 4. latency_ratio: the candidate's batch-1 median over the champion's (no champion: the original's)."""
    reasons, facts = [], []
    score = candidate["agreement10"]
    passed = score >= plan.floor
    line = f"slice top-10 agreement with the original {score:.4f} (floor {plan.floor})"
    (facts if passed else reasons).append(line + ("" if passed else ": below the floor"))
    if champion is None:
        ratio = 1.0 / candidate["speedup_vs_original"]
        line = (f"batch-1 latency {candidate['latency_ms']:.2f} ms, {candidate['speedup_vs_original']:.2f}x the "
                f"original's speed (more than {plan.min_speedup:.2f}x needed, no champion yet)")
        (facts if candidate["speedup_vs_original"] > plan.min_speedup else reasons).append(line)
        return {"promoted": not reasons, "reasons": reasons, "facts": facts, "latency_ratio": ratio}
    old = champion["agreement10"]
    line = f"slice top-10 agreement {score:.4f} vs the champion's {old:.4f} (tolerance {plan.agreement_tolerance})"
    worse = score < old - plan.agreement_tolerance
    (reasons if worse else facts).append(line + (": more than the tolerance below" if worse else ""))
    ratio = candidate["latency_ms"] / champion["latency_ms"]
    line = (f"batch-1 latency {candidate['latency_ms']:.2f} ms vs the champion's {champion['latency_ms']:.2f} ms "
            f"(x{ratio:.3f}; at most x{1 + plan.latency_tolerance:.2f})")
    (reasons if ratio > 1 + plan.latency_tolerance else facts).append(line)
    return {"promoted": not reasons, "reasons": reasons, "facts": facts, "latency_ratio": ratio}


def gate_candidate(original: str, champion: str | Path | None, candidate: str | Path, slice_texts: list[str],
                   corpus: str | Path, cache_dir: Path, plan: LoopPlan) -> dict[str, Any]:
    """Measure champion (if any) and candidate on the slice against the original, and judge: the decision dict
    {"candidate", "champion" (None: none yet), "original", "decision", "timing"}."""
    folders = {CANDIDATE: candidate, **({CHAMPION: champion} if champion is not None else {})}
    measured = measure(original, folders, slice_texts, corpus, cache_dir, plan)
    decision = judge(measured[CANDIDATE], measured.get(CHAMPION), plan)
    log.info("query encoder candidate %s: %s", "promoted" if decision["promoted"] else "not promoted",
             "; ".join(decision["reasons"] or decision["facts"]))
    return {CANDIDATE: measured[CANDIDATE], CHAMPION: measured.get(CHAMPION), ORIGINAL: measured[ORIGINAL],
            "decision": decision, "timing": measured["timing"]}


def retrain_query_encoder(original: str, champion_folder: str | Path | None, traffic_location: str | Path,
                          corpus: str | Path, workdir: str | Path, config: QueryEncoderConfig, depth: int,
                          plan: LoopPlan | None = None, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """One retrain: split the logged queries, train a candidate at `depth`, gate it against the champion (None:
    the first run) on the held-out slice. Returns a JSON-ready dict: the gate's (gate_candidate), plus "split",
    "training", "plan", "config", "inputs" and "wall_seconds". The candidate is saved under workdir/candidate."""
    plan = plan or LoopPlan()
    started = time.perf_counter()
    cache = Path(cache_dir) if cache_dir else cache_root() / "query_encoder"
    if champion_folder is not None:
        check_pair(champion_folder, original)  # refused before anything is trained for it
    logged = read_logged_queries(traffic_location)
    train, slice_texts = split_queries(logged, plan)
    training = train_candidate(original, train, slice_texts, corpus, depth, config, plan, cache,
                               Path(workdir) / "candidate")
    result = gate_candidate(original, champion_folder, training["folder"], slice_texts, corpus, cache, plan)
    result.update(split={"logged": len(logged), "n_train": len(train), "n_holdout": len(slice_texts)},
                  training=training, plan=asdict(plan), config=asdict(config),
                  inputs={"original": original, "champion": None if champion_folder is None else str(champion_folder),
                          "traffic": str(traffic_location), "corpus": str(corpus)},
                  wall_seconds=round(time.perf_counter() - started, 1))
    return result
