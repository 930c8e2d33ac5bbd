"""Issue 30's speed and int8 quality: the original (shipped, ORT fp32, ORT int8 = the peer) against each depth's
query encoder in ORT fp32 and int8, at batch 1 and 8 on the sets' real test queries, in one process.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python infra/query_encoder_bench.py --encoders DIR \
        --data-dir ../shared/data/beir --out reports/query_encoder.json

DIR holds the experiment's saved encoders (infra/query_encoder_experiment.py --models-out DIR): <set>-depth<N>.
The result goes under the model's "speed" key of --out (the markdown beside it is rewritten), and the chosen
depth's speedup over the peer at batch 1 fills chosen.speedup_vs_peer_int8_bs1.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from leap_core.io import cache_root, write_report_files
from leap_core.query_encoder.bench import run_query_bench
from leap_core.query_encoder.results import attach_other_cuts
from leap_core.report.query_encoder_report import render_markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--encoders", required=True, help="folder of <set>-depth<N> query encoders")
    parser.add_argument("--data-dir", default="../shared/data/beir")
    parser.add_argument("--sets", default="nfcorpus,scifact")
    parser.add_argument("--depths", default="0,1,2,3,4,5")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every path (one core: serving)")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-per-channel", action="store_true", help="skip the per-channel int8 rows")
    parser.add_argument("--out", default="reports/query_encoder.json")
    parser.add_argument("--retrofit", default="reports/retrofit.json",
                        help="leap retrofit --peer's report: its cuts are shown as query encoders too (if there)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("beir").setLevel(logging.WARNING)
    args = parse_args(argv)
    sets = args.sets.split(",")
    depths = [int(d) for d in args.depths.split(",")]
    encoders = {name: {d: Path(args.encoders) / f"{name}-depth{d}" for d in depths
                       if (Path(args.encoders) / f"{name}-depth{d}").is_dir()} for name in sets}
    folders = {name: str(Path(args.data_dir) / name) for name in sets}
    with tempfile.TemporaryDirectory(prefix="leap-qe-bench-") as work:
        speed = run_query_bench(args.model, encoders, folders, Path(work), cache_root() / "query_encoder",
                                args.threads, (1, 8), args.warmup, args.iterations, not args.no_per_channel)
    # names only: --encoders is a scratch folder of this machine, not a path a reader of the report can open
    speed["encoders"] = {name: {str(d): Path(folder).name for d, folder in found.items()}
                         for name, found in encoders.items()}
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    entry = report.setdefault(args.model, {"sets": {}})
    entry["speed"] = speed
    chosen = entry.setdefault("chosen", {"depth": None})
    if chosen.get("depth") is not None:
        chosen["speedup_vs_peer_int8_bs1"] = speed["speedup_vs_peer_int8"].get(str(chosen["depth"]), {}).get("bs1")
    attach_other_cuts(entry, args.model, Path(args.retrofit))
    write_report_files(report, out, out.with_suffix(".md"), render_markdown)


if __name__ == "__main__":
    main()
