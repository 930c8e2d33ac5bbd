"""The `leap` command: each subcommand is one stage of leap_core.experiment, or a report built from them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from leap_core.config import load_profile

log = logging.getLogger("leap")


def _profile(args: argparse.Namespace):
    overrides = {"data": {"data_dir": args.data_dir}} if getattr(args, "data_dir", None) else {}
    return load_profile(args.profile, overrides)


def cmd_extract(args: argparse.Namespace) -> None:
    from leap_core import experiment

    print(experiment.extract(_profile(args), args.out))


def cmd_cache_teacher(args: argparse.Namespace) -> None:
    from leap_core import experiment

    profile = _profile(args)
    sentences = args.sentences or experiment.extract(profile)
    print(experiment.cache_teacher(profile, sentences))


def cmd_train(args: argparse.Namespace) -> None:
    from leap_core import experiment

    profile = _profile(args)
    sentences = experiment.extract(profile)
    cache = experiment.cache_teacher(profile, sentences)
    result = experiment.train_arm(profile, args.arm, args.seed, cache, args.out)
    print(json.dumps({"model_dir": str(result.model_dir), "train_seconds": round(result.train_seconds, 1)}))


def cmd_eval(args: argparse.Namespace) -> None:
    from leap_core import experiment

    metrics = experiment.evaluate_model(_profile(args), args.model)
    text = json.dumps(metrics, indent=2)
    if args.out:
        from leap_core.io import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    print(text)


def cmd_foundation(args: argparse.Namespace) -> None:
    """Both arms from one teacher cache, evaluated on STS-B test, summarised in reports/foundation.json."""
    from leap_core import experiment
    from leap_core.io import write_json_atomic

    profile = _profile(args)
    seed = profile.seeds[0]
    sentences = experiment.extract(profile)
    cache = experiment.cache_teacher(profile, sentences)
    results, seconds = {}, {}
    for arm in ("baseline", "leap"):
        trained = experiment.train_arm(profile, arm, seed, cache)
        seconds[arm] = round(trained.train_seconds, 1)
        started = time.perf_counter()
        results[arm] = experiment.evaluate_model(profile, trained.model_dir)
        log.info("%s: evaluated in %.0f s: %s", arm, time.perf_counter() - started,
                 {k: v for k, v in results[arm].items() if isinstance(v, float)})
    keys = {"baseline": ["stsb_full", "stsb_exited", "exit_rate", "exit_by_layer_7", "mean_exit_layer", "layer_reduction"]}
    keys["leap"] = keys["baseline"]
    report = {
        "profile": profile.name,
        "data_dir": str(profile.data.data_dir),
        "sts_eval": profile.data.sts_eval,
        "exit": {"theta": profile.exit.theta, "k": profile.exit.k, "l_min": profile.exit.l_min},
        "n_train_sentences": profile.data.n_sentences,
        "teacher": profile.models.teacher,
        "teacher_cache": str(cache),
        **{arm: {key: results[arm][key] for key in keys[arm]} for arm in results},
        "train_seconds_per_arm": seconds,
        "details": results,
    }
    write_json_atomic(args.out, report)
    print(json.dumps({arm: report[arm] for arm in results} | {"train_seconds_per_arm": seconds}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--profile", default=None, help="params/<name>.yaml or a path (default: cpu)")
        command.add_argument("--data-dir", default=None, help="data directory (default: the profile's)")
        command.set_defaults(func=func)
        return command

    add("extract", cmd_extract, "extract and filter training sentences to Parquet").add_argument("--out")
    add("cache-teacher", cmd_cache_teacher, "encode the sentences with the teacher once").add_argument("--sentences")
    train = add("train", cmd_train, "train one arm")
    train.add_argument("--arm", required=True)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out")
    evaluate = add("eval", cmd_eval, "STS and exit statistics of a model")
    evaluate.add_argument("model")
    evaluate.add_argument("--out")
    add("foundation", cmd_foundation, "baseline and LEAP from one cache -> reports/foundation.json").add_argument(
        "--out", default="reports/foundation.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
