"""`leap` commands that analyse models and reports: eval-suite, diagnose, verify-report, mteb, monitor,
loop-report, replay, sample-texts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from leap_core.cli.common import (add_exit_rule_args, add_json_args, command, exit_overrides, json_or_table, log,
                                  or_default, pairs, positive_int, profile_of)
from leap_core.data.corpus import load_corpus, read_tags, sentences_of_sources
from leap_core.data.documents import read_user_corpus
from leap_core.evaluation.diagnose import diagnose
from leap_core.evaluation.mteb_run import run_mteb
from leap_core.evaluation.suite import evaluate_all
from leap_core.io import write_report_files, write_text_atomic
from leap_core.report import eval_report
from leap_core.report.monitor_report import monitor_markdown
from leap_core.report.retrain_report import loop_markdown
from leap_core.report.tables import diagnose_table, mteb_table
from leap_core.report.verify import verify_against_mlflow
from leap_core.serve import monitor as monitoring  # called by attribute: probes and tests replace monitoring.monitor
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.serve.traffic import TrafficLog, replay


def add_eval_suite_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", metavar="NAME=PATH", help="a model to evaluate (repeatable)")
    parser.add_argument("--reference", help="model NAME the others are compared with (default: the first)")
    parser.add_argument("--seed-group", action="append", metavar="GROUP=NAME,NAME",
                        help="models that differ only by seed, summarised with t-intervals (repeatable)")
    parser.add_argument("--beir", action="append", metavar="FOLDER",
                        help="BEIR folder, relative to the data dir (repeatable; default beir/scifact, beir/nfcorpus)")
    parser.add_argument("--modes", default="full,compact", help="encoder modes for BEIR (default: %(default)s)")
    parser.add_argument("--max-docs", type=int, help="quick runs: keep at most N documents per BEIR set")
    parser.add_argument("--max-queries", type=int, help="quick runs: keep at most N queries per BEIR set")
    parser.add_argument("--n-resamples", type=int,
                        help="bootstrap resamples (default: the profile's evaluation.bootstrap_resamples)")
    parser.add_argument("--no-overhead", action="store_true", help="skip timing the monitoring overhead")
    parser.add_argument("--max-sts-drop", type=float, help="calibration floor on STS-B dev (default 0.01)")
    parser.add_argument("--min-nn10", type=float, help="calibration floor: smallest NN@10 vs full depth")
    parser.add_argument("--out", default="reports/eval_cpu.json", help="the JSON (default: %(default)s)")
    parser.add_argument("--markdown", help="markdown summary (default: --out with .md)")
    add_exit_rule_args(parser, "the model's leap_exit.json, else theta 0.95, k 1, l_min half the depth")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: %(default)s)")


@command("eval-suite", "every analysis (STS, layers, NN@10, sweep, BEIR, diagnostics) for several models, "
         "with bootstrap CIs", add_eval_suite_args)
def cmd_eval_suite(args: argparse.Namespace) -> None:
    """Every analysis for several models -> one JSON (--out) and a markdown summary (--markdown)."""

    profile = profile_of(args)
    models = pairs(args.model, "--model")
    if not models:
        raise SystemExit("--model NAME=PATH: give at least one model")
    groups = {group: names.split(",") for group, names in pairs(args.seed_group, "--seed-group").items()}
    floor = {key: value for key, value in (("max_sts_drop", args.max_sts_drop), ("min_nn10", args.min_nn10))
             if value is not None}
    results = evaluate_all(
        models, profile.data.data_dir, reference=args.reference, seed_groups=groups, theta=args.theta, k=args.k,
        l_min=args.l_min, n_resamples=or_default(args.n_resamples, profile.evaluation.bootstrap_resamples),
        calibration_floor=floor or None,
        sts_test=profile.data.sts_eval, sts_dev=profile.data.sts_dev,
        beir_sets=args.beir or ["beir/scifact", "beir/nfcorpus"],
        beir_modes=args.modes.split(","), batch_size=args.batch_size, max_docs=args.max_docs,
        max_queries=args.max_queries, measure_overhead=not args.no_overhead)
    _, markdown = write_report_files(results, args.out, args.markdown or str(Path(args.out).with_suffix(".md")),
                                     eval_report.render_markdown)
    print(markdown)


def add_diagnose_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, hub id or random-bert: spec")
    parser.add_argument("--sts", default="stsb/test.tsv", help="probe STS file, relative to the data dir "
                        "(default: %(default)s)")
    parser.add_argument("--max-sentences", type=int, help="probe at most N sentences (default: all)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per mode for the overhead (default 5)")
    parser.add_argument("--no-overhead", action="store_true", help="skip timing the monitoring overhead")
    add_json_args(parser, "write the JSON here too (e.g. reports/diagnose/<model>.json)")
    add_exit_rule_args(parser, "theta 0.95, k 1, l_min half the depth", theta_default=0.95)
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: %(default)s)")


@command("diagnose", "is a model exit-compatible? diagnostics, verdict, checklist", add_diagnose_args)
def cmd_diagnose(args: argparse.Namespace) -> None:
    """The paper's exit-compatibility diagnostics, verdict and deployment checklist for any model."""

    result = diagnose(args.model, profile_of(args).data.data_dir, sts_file=args.sts, max_sentences=args.max_sentences,
                      theta=args.theta, k=args.k if args.k is not None else 1, l_min=args.l_min,
                      batch_size=args.batch_size, runs=args.runs,
                      measure_overhead=not args.no_overhead)
    json_or_table(result, args, lambda: diagnose_table(result))


def add_verify_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", nargs="?", default="reports/cpu/report.json",
                        help="the pipeline's report.json (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the report's)")


@command("verify-report", "check a pipeline report's numbers against its MLflow runs", add_verify_report_args)
def cmd_verify_report(args: argparse.Namespace) -> None:
    """Exit 1, naming each difference, when the report's numbers are not those of its MLflow runs."""

    problems = verify_against_mlflow(args.report, args.tracking_uri)
    for problem in problems:
        print(problem)
    if problems:
        raise SystemExit(1)
    print(f"{args.report}: every arm's metrics and the latency headline agree with MLflow")


def add_mteb_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder or hub id: run as a SentenceTransformer that exits early")
    parser.add_argument("--tasks", nargs="+", default=["STSBenchmark"], help="MTEB task names (default: %(default)s)")
    parser.add_argument("--hub", action="store_true", help="load every task's data from the hub as MTEB does "
                        "(default: the tasks the data dir holds, STSBenchmark, SciFact and NFCorpus, read from there; "
                        "works offline)")
    parser.add_argument("--results", help="MTEB's own results folder, written by MTEB with the model's metadata and "
                        "read back by mteb.ResultCache(FOLDER).load_results (default: <output_dir>/mteb)")
    parser.add_argument("--mode", help="exit mode (default: the model's calibrated policy; full, compact, fixed:N)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: %(default)s)")
    add_json_args(parser, "write the JSON (scores and exit statistics per task) here too")
    add_exit_rule_args(parser, "the model's leap_exit.json")


@command("mteb", "MTEB tasks on a model that exits early, with its exit statistics beside the scores", add_mteb_args)
def cmd_mteb(args: argparse.Namespace) -> None:
    profile = profile_of(args)
    result = run_mteb(args.model, args.tasks, profile.data.data_dir, local=not args.hub, exit_mode=args.mode,
                      batch_size=args.batch_size, results_dir=args.results or Path(profile.output_dir) / "mteb",
                      **exit_overrides(args))
    json_or_table(result, args, lambda: mteb_table(result))


def add_monitor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the served model's folder (its leap_reference.json is the reference)")
    parser.add_argument("--traffic", required=True, help="the traffic log: a folder or s3://bucket/prefix "
                        "(LEAP_TRAFFIC_LOG of the served model)")
    parser.add_argument("--reference-texts", help="measure the reference on these texts (.txt one per line, "
                        ".jsonl, .parquet) instead of reading leap_reference.json")
    parser.add_argument("--save-reference", action="store_true", help="keep that reference in the model folder")
    parser.add_argument("--prometheus", action="store_true", help="print the metrics in Prometheus text format")
    parser.add_argument("--publish-event", action="store_true", help="on an alert, publish the Argo Event "
                        "leap_monitor_alert (METAFLOW_ARGO_EVENTS_WEBHOOK_URL): it starts RetrainFlow on this "
                        "traffic")
    add_json_args(parser, "write the JSON here too (the markdown summary goes beside it, .md)")


@command("monitor", "the traffic log against the model's reference: depth shift, PSI, NN@10. Exit status: 0 no "
         "alert, 3 an alert, 2 an error (a bad model, reference or log: one line naming the file)", add_monitor_args)
def cmd_monitor(args: argparse.Namespace) -> None:
    texts = read_user_corpus(args.reference_texts, min_chars=1) if args.reference_texts else None
    result = monitoring.monitor(args.model, args.traffic, texts, args.reference_texts or "", args.save_reference)
    if args.out:
        write_report_files(result, args.out, Path(args.out).with_suffix(".md"), monitor_markdown)
    print(monitoring.prometheus(result) if args.prometheus else json.dumps(result, indent=2) if args.json
          else monitor_markdown(result), end="")
    if result["alert"]:
        if args.publish_event:
            log.info("published Argo Event %s", monitoring.publish_alert(result))
        raise SystemExit(monitoring.ALERT_EXIT_CODE)


def add_loop_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retrain", action="append", required=True, help="a RetrainFlow run's retrain.json, in run "
                        "order (repeatable)")
    parser.add_argument("--monitor", action="append", default=[], help="a leap monitor --out JSON (repeatable)")
    parser.add_argument("--out", default="reports/loop.md", help="the report (default: %(default)s; the inputs go "
                        "beside it as loop.json)")
    parser.add_argument("--command", default="", help="the command that made the inputs, shown in the report")
    parser.add_argument("--relative-to", help="the work folder the inputs lie in: the report names paths relative "
                        "to it (default: relative to the working directory)")


def read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


@command("loop-report", "retrain runs and drift checks -> one markdown report (reports/loop.md)", add_loop_report_args)
def cmd_loop_report(args: argparse.Namespace) -> None:
    retrains = [read_json(path) for path in args.retrain]
    monitors = [read_json(path) for path in args.monitor]
    inputs = {"retrains": retrains, "monitors": monitors, "sources": args.retrain + args.monitor}
    write_report_files(inputs, Path(args.out).with_suffix(".json"), args.out,
                       lambda data: loop_markdown(data["retrains"], data["monitors"], data["sources"], args.command,
                                                  relative=args.relative_to is not None),
                       base=args.relative_to)
    print(f"{len(retrains)} retrain runs, {len(monitors)} drift checks -> {args.out}")


def add_replay_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder or hub id, served at its policy")
    parser.add_argument("--texts", required=True, help="texts to serve (.txt one per line, .jsonl, .parquet)")
    parser.add_argument("--traffic", required=True, help="the traffic log to append to: a folder or s3://...")
    parser.add_argument("--sample-text", type=float, default=1.0,
                        help="share of rows whose text is logged (default: %(default)s)")


@command("replay", "serve texts at the model's policy and log them as the served model would (LEAP_TRAFFIC_LOG)",
         add_replay_args)
def cmd_replay(args: argparse.Namespace) -> None:
    texts = read_user_corpus(args.texts, min_chars=1)
    replay(EarlyExitEncoder.from_pretrained(args.model), texts, TrafficLog(args.traffic, sample_text=args.sample_text))
    print(f"{len(texts)} rows logged to {args.traffic}")


def add_sample_texts_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", required=True, help="comma-separated source tags of the profile's corpus, "
                        "e.g. coco_val2017_captions,mrpc")
    parser.add_argument("--tags", help="the tag file, one per corpus line, relative to the data dir (default: the "
                        "profile's data.balance_by, else nli_sentences/sentence_sources.txt.gz)")
    parser.add_argument("--n", type=positive_int, required=True, help="how many distinct sentences")
    parser.add_argument("--offset", type=int, default=0, help="skip this many of the seeded order first, so "
                        "samples at different offsets are disjoint (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the order's seed (default: %(default)s)")
    parser.add_argument("--out", required=True, help="text file, one sentence per line")


@command("sample-texts", "sentences of chosen sources of the corpus -> a text file (reference or traffic texts)",
         add_sample_texts_args)
def cmd_sample_texts(args: argparse.Namespace) -> None:
    data = profile_of(args).data
    tag_file = args.tags or data.balance_by or "nli_sentences/sentence_sources.txt.gz"
    corpus = load_corpus(data.corpus, data.data_dir)
    tags = read_tags(Path(data.data_dir) / tag_file, len(corpus), data.corpus)
    texts = sentences_of_sources(corpus, tags, args.sources.split(","), args.n, args.offset, args.seed)
    write_text_atomic(args.out, "\n".join(texts) + "\n")
    print(f"{len(texts)} sentences of {args.sources} -> {args.out}")
