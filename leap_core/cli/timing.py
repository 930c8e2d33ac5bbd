"""`leap` commands that time and stress what ships: bench, bench-deploy."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from leap_core.bench.deploy_bench import branch_original, quality_sets, run_deploy_bench
from leap_core.bench.latency import run_benchmark
from leap_core.cli.common import add_exit_rule_args, command, exit_overrides, profile_of
from leap_core.evaluation.diagnose import probe_sentences
from leap_core.io import write_report_files
from leap_core.report import bench_report, deploy_report


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder or hub id (its leap_exit.json gives theta, k, l_min)")
    parser.add_argument("--sts", default="stsb/test.tsv", help="sentences to time, relative to the data dir")
    parser.add_argument("--batch-sizes", help="comma-separated (default: the profile's evaluation.bench_batch_sizes)")
    parser.add_argument("--modes", default="full,monitored,batch,compact",
                        help="encoder modes (also fixed:N, and policy: the model's calibrated policy)")
    parser.add_argument("--warmup", type=int, help="untimed iterations (default: 10 on CPU, 50 on CUDA)")
    parser.add_argument("--iterations", type=int, help="timed iterations (default: 60 on CPU, 200 on CUDA)")
    parser.add_argument("--no-peer", action="store_true", help="skip SentenceTransformer.encode")
    add_exit_rule_args(parser, "the model's leap_exit.json")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="autocast dtype (auto: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--clock", default="wall", choices=["wall", "process"],
                        help="CPU timer: wall, or process CPU time (needs --threads 1; for a shared machine)")
    parser.add_argument("--out", default="reports/bench_exit_cpu.json",
                        help="JSON (default: %(default)s); the markdown goes beside it (.md)")


@command("bench", "latency of every encoder mode vs sentence-transformers -> JSON + markdown", add_bench_args)
def cmd_bench(args: argparse.Namespace) -> None:
    """Latency of every encoder mode and of sentence-transformers on STS-B test -> JSON and markdown."""

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = profile_of(args)
    result = run_benchmark(
        args.model, probe_sentences(profile.data.data_dir, args.sts),
        batch_sizes=([int(size) for size in args.batch_sizes.split(",")] if args.batch_sizes
                     else list(profile.evaluation.bench_batch_sizes)), modes=args.modes.split(","),
        warmup=args.warmup, iterations=args.iterations, include_sentence_transformers=not args.no_peer,
        device=args.device, dtype=args.dtype, clock=args.clock, **exit_overrides(args))
    _, markdown = write_report_files(result, args.out, Path(args.out).with_suffix(".md"), bench_report.render_markdown)
    print(markdown)


def add_bench_deploy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ours: a calibrated model folder or exit branch (leap_exit.json gives the point)")
    parser.add_argument("--original", help="the model users run now (default: an exit branch's original)")
    parser.add_argument("--depth", type=int, action="append", default=[], help="also ours at this depth (repeatable)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="intra-op threads, torch and ONNX Runtime (default: every core)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=100, help="timed iterations (default: %(default)s)")
    parser.add_argument("--max-docs", type=int, help="subsample each BEIR corpus (default: every document)")
    parser.add_argument("--no-quality", action="store_true", help="time only")
    parser.add_argument("--out", default="reports/bench_cpu.json",
                        help="JSON (default: %(default)s); the markdown goes beside it (.md)")


@command("bench-deploy", "the original as shipped, in ONNX Runtime fp32/int8 and ours at its calibrated "
         "point, PyTorch and ONNX Runtime: quality and speed side by side", add_bench_deploy_args)
def cmd_bench_deploy(args: argparse.Namespace) -> None:
    """Every serving path of the original and of ours at its point: quality and latency -> JSON and markdown."""

    original = args.original or branch_original(args.model)
    profile = profile_of(args)
    data_dir = Path(profile.data.data_dir)
    sets = [] if args.no_quality else quality_sets(data_dir, profile.data.sts_eval, profile.evaluation.beir,
                                                    args.max_docs)
    with tempfile.TemporaryDirectory(prefix="leap-bench-deploy-") as workdir:
        result = run_deploy_bench(args.model, original, probe_sentences(data_dir, profile.data.sts_eval), sets,
                                  Path(workdir), args.depth, [int(x) for x in args.batch_sizes.split(",")],
                                  args.threads, args.warmup, args.iterations, quality=not args.no_quality)
    result["max_docs"] = args.max_docs
    _, markdown = write_report_files(result, args.out, Path(args.out).with_suffix(".md"), deploy_report.render_markdown)
    print(markdown)
