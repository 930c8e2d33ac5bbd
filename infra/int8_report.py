"""Issue 32 item 7: int8 by measured quality, reports/int8.{json,md} (leap_core.bench.int8_quality; rendering int8_report).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python infra/int8_report.py \
        --encoder nfcorpus=DIR/nfcorpus-depth0 --encoder nfcorpus=DIR/nfcorpus-depth3 \
        --encoder scifact=DIR/scifact-depth0 --encoder scifact=DIR/scifact-depth3

DIR holds the query encoders infra/query_encoder_experiment.py saved (--models-out DIR); each is judged on its own
set. The original's document index comes from the query-encoder cache (built once if absent); the data dir is the
profile's (LEAP_DATA_DIR overrides), and every export measures its int8 graphs on its STS-B dev sentences.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from leap_core.config import load_profile
from leap_core.evaluation.diagnose import probe_sentences
from leap_core.bench.int8_quality import run_int8_report
from leap_core.report.int8_report import render_markdown
from leap_core.io import cache_root, write_report_files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The original, the query encoders by set, threads, resamples and where the report goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="the original")
    parser.add_argument("--encoder", action="append", default=[], metavar="SET=FOLDER",
                        help="a query encoder and the BEIR set it was trained for (repeat)")
    parser.add_argument("--sets", default="scifact,nfcorpus", help="BEIR folders under <data dir>/beir")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of every graph")
    parser.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples per CI")
    parser.add_argument("--out", default="reports/int8.json", help="the JSON (the markdown goes beside it)")
    return parser.parse_args(argv)


def encoder_folders(items: list[str], sets: list[str]) -> dict[str, list[Path]]:
    """{set: [folder, ...]} from SET=FOLDER items; an unknown set or a missing folder is refused."""
    found: dict[str, list[Path]] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or name not in sets or not Path(folder).is_dir():
            raise SystemExit(f"--encoder {item!r}: expected SET=FOLDER with SET one of {sets} and FOLDER a folder")
        found.setdefault(name, []).append(Path(folder))
    return found


def main(argv: list[str] | None = None) -> None:
    """Measure every model (run_int8_report) and write reports/int8.{json,md} atomically, with portable paths."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("beir").setLevel(logging.WARNING)
    args = parse_args(argv)
    data = load_profile().data
    sets = args.sets.split(",")
    beir = {name: str(Path(data.data_dir) / "beir" / name) for name in sets}
    sts_test = probe_sentences(data.data_dir, data.sts_eval)  # drift is reported on test; auto chose on dev
    with tempfile.TemporaryDirectory(prefix="leap-int8-") as work:
        report = run_int8_report(args.model, encoder_folders(args.encoder, sets), beir, sts_test, Path(work),
                                 cache_root() / "query_encoder", args.threads, args.resamples)
    out = Path(args.out)
    write_report_files(report, out, out.with_suffix(".md"), render_markdown)


if __name__ == "__main__":
    main()
