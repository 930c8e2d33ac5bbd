"""`leap` commands for the stages of the experiment: extract, cache-teacher, train, eval, foundation."""

from __future__ import annotations

import argparse
import json

from leap_core.cli.common import add_exit_rule_args, add_json_args, command, exit_overrides, json_or_table, profile_of
from leap_core.io import write_report_files
from leap_core.pipeline import experiment
from leap_core.report.tables import eval_table


def add_extract_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="Parquet file to write (default: <output_dir>/<profile>/sentences.parquet)")


@command("extract", "extract and filter training sentences to Parquet", add_extract_args)
def cmd_extract(args: argparse.Namespace) -> None:
    print(experiment.extract(profile_of(args), args.out))


def add_cache_teacher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sentences", help="sentences Parquet from `leap extract` (default: extract them now)")


@command("cache-teacher", "encode the sentences with the teacher once", add_cache_teacher_args)
def cmd_cache_teacher(args: argparse.Namespace) -> None:
    profile = profile_of(args)
    sentences = args.sentences or experiment.extract(profile)
    print(experiment.cache_teacher(profile, sentences))


def add_train_args(parser: argparse.ArgumentParser, arms: list[str] | None = None) -> None:
    parser.add_argument("--arm", required=True, choices=arms, metavar="ARM" if not arms else None,
                        help="which configuration of the objective to train (the profile's arms)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the student's initialisation and data order")
    parser.add_argument("--out", help="run folder (default: <output_dir>/<profile>/<arm>-seed<seed>)")
    parser.add_argument("--wait", action="store_true", help="wait for another trainer of the run folder to finish")


@command("train", "train one arm (resumes a killed run)", add_train_args)
def cmd_train(args: argparse.Namespace) -> None:
    profile = profile_of(args)
    profile.objective_for(args.arm)  # an unknown arm fails here, before any extraction or teacher pass
    sentences = experiment.extract(profile)
    cache = experiment.cache_teacher(profile, sentences)
    result = experiment.train_arm(profile, args.arm, args.seed, cache, args.out, wait=args.wait)
    print(json.dumps({"model_dir": str(result.model_dir), "train_seconds": round(result.train_seconds, 1)}))


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, hub id or random-bert: spec")
    add_json_args(parser, "write the JSON here too")
    add_exit_rule_args(parser, "the model's leap_exit.json, else the profile's exit section")


@command("eval", "STS-B and exit statistics of a model", add_eval_args)
def cmd_eval(args: argparse.Namespace) -> None:
    metrics = experiment.evaluate(profile_of(args), args.model, exit_overrides=exit_overrides(args) or None)
    json_or_table(metrics, args, lambda: eval_table(metrics, args.model))


def add_foundation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reports/foundation.json", help="the JSON summary (default: %(default)s)")
    parser.add_argument("--baseline-arm", default="baseline", help="the layer-aligned arm (default: %(default)s)")
    parser.add_argument("--leap-arm", default="leap", help="the exit-aware arm (default: %(default)s)")


@command("foundation", "baseline and LEAP from one cache -> reports/foundation.json", add_foundation_args)
def cmd_foundation(args: argparse.Namespace) -> None:
    """Both arms from one teacher cache, evaluated on STS-B test, summarised in reports/foundation.json."""

    report = experiment.foundation(profile_of(args), args.baseline_arm, args.leap_arm)
    write_report_files(report, args.out)
    print(json.dumps({role: report[role] for role in ("baseline", "leap")}
                     | {"train_seconds_per_arm": report["train_seconds_per_arm"]}, indent=2))
