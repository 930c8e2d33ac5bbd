"""Issue 30's loop on real text: NFCorpus's non-test queries replayed as traffic, two query-encoder retrains.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python infra/query_loop_demo.py --out reports/query_loop.json

The queries (read_queries: the test queries left out) are served as traffic and logged with leap_core.serve.traffic.
Run 1: half of them logged (seeded draw), no champion yet. Run 2: the log grown to all of them, judged against
run 1's candidate if the gate promoted it, else against none, as the loop itself would be. Each run is
leap_core.query_encoder.loop.retrain_query_encoder with the gate's defaults (LoopPlan); nothing here loosens it.
The original's index of the corpus and its pools are cached under $LEAP_CACHE_DIR/query_encoder.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from leap_core.query_encoder.loop import LoopPlan, retrain_query_encoder
from leap_core.query_encoder.train import QueryEncoderConfig
from leap_core.report.query_loop_report import decision_markdown

log = logging.getLogger("leap.query_loop_demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--beir", default="../shared/data/beir/nfcorpus", help="queries (non-test) and corpus")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-pseudo", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="traffic logs and candidates (default: $LEAP_CACHE_DIR/"
                                                        "query_loop_demo)")
    parser.add_argument("--cache-dir", default=None, help="index and pools (default: $LEAP_CACHE_DIR/query_encoder)")
    parser.add_argument("--out", default="reports/query_loop.json")
    parser.add_argument("--render-only", action="store_true", help="run nothing: rewrite --out's markdown from it")
    return parser.parse_args(argv)


def replay(texts: list[str], location: Path, n_layers: int) -> str:
    """Log `texts` as served queries (every text kept, as LEAP_TRAFFIC_SAMPLE=1 would): a fresh traffic log."""
    from leap_core.serve.traffic import TrafficLog

    shutil.rmtree(location, ignore_errors=True)  # this script's own log from an earlier run: start it again
    traffic = TrafficLog(str(location), flush_rows=500, sample_text=1.0, seed=0)
    for start in range(0, len(texts), 32):  # served in batches of 32, as the endpoint receives them
        batch = texts[start:start + 32]
        traffic.record(batch, [n_layers] * len(batch), n_layers)  # the original serves every query at full depth
    traffic.flush()
    return str(location)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Both retrains; the report's data (absolute paths: write_report_files makes them portable)."""
    from transformers import AutoConfig

    from leap_core.io import cache_root
    from leap_core.models import resolve_model
    from leap_core.query_encoder.sources import read_queries

    started = time.perf_counter()
    workdir = Path(args.workdir) if args.workdir else cache_root() / "query_loop_demo"
    cache = Path(args.cache_dir) if args.cache_dir else cache_root() / "query_encoder"
    n_layers = AutoConfig.from_pretrained(resolve_model(args.model)).num_hidden_layers
    queries = read_queries(args.beir)  # the test split's queries are never read as text
    first_half = random.Random(0).sample(queries, len(queries) // 2)
    plan, config = LoopPlan(n_pseudo=args.n_pseudo), QueryEncoderConfig(steps=args.steps, eval_every=50)
    runs, champion = [], None
    for number, logged in ((1, first_half), (2, queries)):
        traffic = replay(logged, workdir / f"traffic-{number}", n_layers)
        result = retrain_query_encoder(args.model, champion, traffic, args.beir, workdir / f"run-{number}", config,
                                       args.depth, plan, cache)
        runs.append({"run": number, "logged_rows": len(logged), "result": result})
        if result["decision"]["promoted"]:
            champion = result["candidate"]["folder"]  # what the registry would hand the next run
        log.info("run %d: %s", number, "promoted" if result["decision"]["promoted"] else "not promoted")
    return {"model": args.model, "beir": args.beir, "depth": args.depth, "threads": args.threads,
            "plan": asdict(plan), "config": asdict(config), "runs": runs,
            "command": "python " + " ".join(["infra/query_loop_demo.py", *sys.argv[1:]]),
            "wall_minutes": round((time.perf_counter() - started) / 60, 1)}


def render(report: dict[str, Any]) -> str:
    """reports/query_loop.md: the setting, then each retrain's verdict, reasons and numbers."""
    plan = report["plan"]
    lines = ["# The query-encoder loop on real text: NFCorpus queries replayed as traffic", "",
             f"Generated by `{report['command']}` in {report['wall_minutes']} min at {report['threads']} thread(s). "
             f"Original: `{report['model']}`; index: its embeddings of `{report['beir']}`'s corpus (cached). "
             f"Traffic: the set's non-test queries, logged with leap_core.serve.traffic; run 1 logs a seeded half of them, "
             "run 2 all of them (the log grew). Each candidate has "
             f"{report['depth']} layers, {report['config']['steps']} steps, up to {plan['n_pseudo']} pseudo-queries.",
             "", f"Gate (LoopPlan defaults): slice top-10 agreement with the original >= {plan['floor']} (the floor "
             f"`leap query-encoder` chooses a depth by) and >= the champion's - {plan['agreement_tolerance']}; batch-1 "
             f"latency <= the champion's x{1 + plan['latency_tolerance']:.2f} (no champion: more than "
             f"{plan['min_speedup']:.2f}x the original's speed). Latency: median of {plan['iterations']} interleaved "
             "batch-1 calls per model through sentence-transformers, on the held-out slice's texts.", ""]
    lines += summary(report) + [""]
    for run in report["runs"]:
        result = run["result"]
        champion = "none yet" if result["champion"] is None else "run 1's promoted candidate"
        lines.append(decision_markdown(result, f"Run {run['run']} ({run['logged_rows']} logged queries; champion: "
                                               f"{champion})"))
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> list[str]:
    """The verdicts in short, and what the runs left unmeasured (a champion comparison needs a promoted run 1)."""
    lines = ["In short:", ""]
    for run in report["runs"]:
        decision = run["result"]["decision"]
        lines.append(f"- run {run['run']}: " + ("promoted" if decision["promoted"] else
                                                 f"not promoted ({decision['reasons'][0]})"))
    if all(run["result"]["champion"] is None for run in report["runs"]):
        lines += ["", "No run was judged against a champion: none had been promoted before it, and the loop never "
                  "judges against a candidate the gate refused. The champion comparison (agreement within the "
                  "tolerance of the champion's, latency ratio) is exercised with tiny models by "
                  "tests/test_query_encoder_loop.py, through QueryRetrainFlow and the MLflow registry included."]
    return lines


def main(argv: list[str] | None = None) -> None:
    import torch

    from leap_core.io import write_report_files

    args = parse_args(argv)
    out = Path(args.out)
    if args.render_only:  # the markdown again from the JSON a run wrote (the same data render() saw then)
        write_report_files(json.loads(out.read_text(encoding="utf-8")), None, out.with_suffix(".md"), render)
        return
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run_demo(args)
    write_report_files(report, out, out.with_suffix(".md"), render)
    log.info("wrote %s and %s (%.1f min)", out, out.with_suffix(".md"), report["wall_minutes"])


if __name__ == "__main__":
    main()
