"""Issue 30's experiment: shallow query encoders for all-MiniLM-L6-v2's index of NFCorpus and SciFact.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python infra/query_encoder_experiment.py \
        --data-dir ../shared/data/beir --out reports/query_encoder.json

Per set: the original's document index (cached under $LEAP_CACHE_DIR/query_encoder), training text (NFCorpus:
its non-test queries; SciFact: queries_train.jsonl.gz) plus pseudo-queries from the corpus, a dev slice of the
real queries for stopping and choosing, and rows per depth: raw cut, ridge head, the recipe. The JSON and the
markdown are rewritten after every row (paths made portable), so a long run's partial result is always on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from leap_core.io import cache_root, write_report_files
from leap_core.query_encoder.command import recipe_config
from leap_core.query_encoder.experiment import SetPlan, judge_set
from leap_core.query_encoder.results import attach_other_cuts, chosen_entry, merge_set
from leap_core.report.query_encoder_report import render_markdown

TRAIN_SOURCES = {"scifact": "queries_train.jsonl.gz"}  # sets whose training queries are not their own non-test ones


def parse_steps(text: str) -> dict[int, int]:
    """'1:200,2:400' -> {1: 200, 2: 400}."""
    return {int(d): int(s) for d, s in (item.split(":") for item in text.split(",") if item)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--data-dir", default="../shared/data/beir")
    parser.add_argument("--sets", default="nfcorpus,scifact")
    parser.add_argument("--depths", default="1,2,3,4,5")
    parser.add_argument("--trained-depths", default=None, help="depths the recipe trains (default: --depths)")
    parser.add_argument("--steps", default="", help="per-depth steps, e.g. 1:300,2:600 (default: --set steps)")
    parser.add_argument("--n-pseudo", type=int, default=10000)
    parser.add_argument("--dev-size", type=int, default=200)
    parser.add_argument("--zero-shot-depths", default="")
    parser.add_argument("--zero-shot-steps", type=int, default=None)
    parser.add_argument("--floor", type=float, default=0.75, help="dev top-10 agreement the chosen depth keeps")
    parser.add_argument("--out", default="reports/query_encoder.json")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="run nothing: fold these runs' rows (their "
                        "--out files) into --out, newer rows replacing the same depth's, and rewrite the markdown")
    parser.add_argument("--retrofit", default="reports/retrofit.json",
                        help="leap retrofit --peer's report: its cuts are shown as query encoders too (if there)")
    parser.add_argument("--models-out", default=None, help="folder to save each trained encoder in")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a QueryEncoderConfig field, e.g. --set kl=1.0 --set steps=600")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("beir").setLevel(logging.WARNING)  # one line per metric per evaluation otherwise
    args = parse_args(argv)
    config = recipe_config(args.set)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    entry = report.setdefault(args.model, {"sets": {}})
    cache = Path(args.cache_dir) if args.cache_dir else cache_root() / "query_encoder"
    depths = [int(d) for d in args.depths.split(",")]

    before = dict(entry["sets"])  # rows of earlier runs (other depths) are kept

    def write(result: dict) -> None:
        for rows in result["depths"].values():  # saved encoders by name: --models-out is this machine's folder
            if "folder" in rows.get("recipe", {}):
                rows["recipe"]["folder"] = Path(rows["recipe"]["folder"]).name
        entry["sets"][result["set"]] = merge_set(before.get(result["set"]), result)
        entry["chosen"] = chosen_entry(entry["sets"], args.floor, entry.get("speed"))
        attach_other_cuts(entry, args.model, Path(args.retrofit))
        write_report_files(report, out, out.with_suffix(".md"), render_markdown)  # no folder of this machine

    if args.merge:
        for other in args.merge:
            for result in json.loads(Path(other).read_text())[args.model]["sets"].values():
                before = dict(entry["sets"])
                write(result)
        return
    for name in args.sets.split(","):
        folder = Path(args.data_dir) / name
        source = str(folder / TRAIN_SOURCES[name]) if name in TRAIN_SOURCES else None
        trained = [int(d) for d in args.trained_depths.split(",")] if args.trained_depths else None
        plan = SetPlan(str(folder), source, args.n_pseudo, args.dev_size, depths, trained, parse_steps(args.steps),
                       [int(d) for d in args.zero_shot_depths.split(",") if d], args.zero_shot_steps)
        models_out = Path(args.models_out) if args.models_out else None
        judge_set(args.model, plan, config, cache, models_out, on_update=write)


if __name__ == "__main__":
    main()
