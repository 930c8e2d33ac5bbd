"""`leap query-encoder`: fit a shallow query encoder for an index the original built, or judge one on a BEIR folder.

    leap query-encoder MODEL --queries SOURCE --corpus CORPUS --out FOLDER   # fit: unlabelled queries in
    leap query-encoder MODEL --beir FOLDER --report FILE.json                # judge: every depth, with CIs

Fit trains depths shallowest first and saves the first whose dev top-10 agreement with the original reaches
--floor (fit.fit_query_encoder). Judge runs the experiment of reports/query_encoder.md on any BEIR folder
(experiment.judge_set): raw cut, ridge head and recipe per depth, test queries measured once against the
original's index, training text from the folder's non-test queries (or --queries) plus its documents.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from leap_core.io import cache_root, write_json_atomic, write_report_files
from leap_core.model_folder import layer_count
from leap_core.models import resolve_model
from leap_core.query_encoder.experiment import SetPlan, judge_set
from leap_core.query_encoder.fit import FitPlan, fit_query_encoder
from leap_core.query_encoder.results import chosen_entry
from leap_core.query_encoder.train import QueryEncoderConfig
from leap_core.report.query_encoder_report import render_markdown


def recipe_config(pairs: list[str]) -> QueryEncoderConfig:
    """QueryEncoderConfig with KEY=VALUE overrides, each value cast to the type of the field's default."""
    defaults = QueryEncoderConfig()
    known = {f.name for f in fields(QueryEncoderConfig)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--recipe {pair}: expected KEY=VALUE with KEY one of {sorted(known)}")
        kind = type(getattr(defaults, key))
        try:
            values[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise ValueError(f"--recipe {pair}: {key} takes a {kind.__name__}, got {value!r}") from None
    return QueryEncoderConfig(**values)


def add_query_encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the original (document) model: a name in MODELS.md, a folder or a hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="fit: the index's documents (BEIR corpus.jsonl[.gz] or its folder)")
    source.add_argument("--beir", help="judge: a BEIR folder (corpus, queries, qrels/test.tsv)")
    parser.add_argument("--queries", help="query text: .txt/.jsonl/.parquet file, BEIR folder (its test queries "
                        "left out) or traffic-log folder (fit: required; judge: default the folder's non-test queries)")
    parser.add_argument("--depth", type=int, action="append", help="layers to try, repeatable; 0 is a static encoder (default: 1..L-1)")
    parser.add_argument("--out", help="fit: folder to save the chosen encoder in; judge: folder for every trained one")
    parser.add_argument("--report", help="where the JSON goes (judge: also FILE.md; default: printed)")
    parser.add_argument("--pseudo", type=int, default=10000, help="pseudo-queries from the documents (0: none)")
    parser.add_argument("--dev-size", type=int, default=200, help="query texts held out to choose the depth")
    parser.add_argument("--floor", type=float, default=0.75, help="dev top-10 agreement a chosen depth keeps")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting, e.g. --recipe steps=600 --recipe kl=1.0 (QueryEncoderConfig)")
    parser.add_argument("--cache-dir", help="index and pool cache (default: $LEAP_CACHE_DIR/query_encoder)")


def _depths(model: str, given: list[int] | None) -> list[int]:
    layers = layer_count(resolve_model(model))
    depths = given or list(range(1, layers))
    wrong = [d for d in depths if not 0 <= d < layers]
    if wrong:
        raise ValueError(f"--depth {wrong[0]}: a query encoder has 0..{layers - 1} of {model}'s {layers} layers "
                         "(0: static, token embeddings only)")
    return depths


def _judge(args: argparse.Namespace, config: QueryEncoderConfig, cache: Path, depths: list[int]) -> dict:
    """experiment.judge_set on args.beir; the report (JSON + markdown) rewritten after every row when --report."""
    plan = SetPlan(args.beir, args.queries, args.pseudo, args.dev_size, depths)
    report: dict[str, Any] = {args.model: {"sets": {}}}
    entry = report[args.model]

    def write(result: dict[str, Any]) -> None:
        entry["sets"][result["set"]] = result
        entry["chosen"] = chosen_entry(entry["sets"], args.floor)
        if args.report:
            write_report_files(report, Path(args.report), Path(args.report).with_suffix(".md"), render_markdown)

    judge_set(args.model, plan, config, cache, Path(args.out) if args.out else None, on_update=write)
    return report


def run_query_encoder(args: argparse.Namespace) -> None:
    """Fit (--corpus) or judge (--beir); print the result's JSON unless --report took it."""
    config = recipe_config(args.recipe)
    cache = Path(args.cache_dir) if args.cache_dir else cache_root() / "query_encoder"
    depths = _depths(args.model, args.depth)
    if args.beir:
        result = _judge(args, config, cache, depths)
    else:
        if not args.queries:
            raise ValueError("--queries is required with --corpus: the query text the encoder is fitted on")
        plan = FitPlan(depths, args.pseudo, args.dev_size, args.floor)
        result = fit_query_encoder(args.model, args.queries, args.corpus, plan, config, cache,
                                   Path(args.out) if args.out else None)
        if args.report:
            write_json_atomic(Path(args.report), result)
    if not args.report:
        print(json.dumps(result, indent=2, default=str))
    if not args.beir and result["chosen"] is None:
        best = max(result["depths"].items(), key=lambda item: item[1]["dev_agreement10"])
        raise ValueError(f"no depth reached dev top-10 agreement {args.floor} (best: depth {best[0]} at "
                         f"{best[1]['dev_agreement10']:.3f}); nothing saved. Lower --floor to accept it, or add "
                         "query text")
