"""The `leap` command: each subcommand is one stage of leap_core.experiment, or a report built from them.

Every subcommand is a pair: add_<command>_args (its options, each with help) and cmd_<command> (calls the library).
Options a profile also sets default to None and fall back to the profile's value.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from leap_core.config import load_profile

log = logging.getLogger("leap")


def parse_overrides(items: list[str]) -> dict:
    """["training.lr=1e-4", "arms.leap.beta=0.8"] -> nested dict; values are parsed as YAML."""
    import yaml

    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected dotted.key=value")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return overrides


def _profile(args: argparse.Namespace):
    overrides = parse_overrides(getattr(args, "set", None) or [])
    if getattr(args, "data_dir", None):
        overrides.setdefault("data", {})["data_dir"] = args.data_dir
    return load_profile(args.profile, overrides)


def _or(value: Any, profile_value: Any) -> Any:
    """An option's value, or the profile's when the option was not given."""
    return profile_value if value is None else value


def _exit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--theta / --k / --l-min that were given (the rest come from the model's leap_exit.json or the profile)."""
    return {key: value for key, value in (("theta", args.theta), ("k", args.k), ("l_min", args.l_min))
            if value is not None}


def _write_and_print(result: dict, out: str | None, shown: dict | None = None) -> None:
    from leap_core.io import write_report_files

    if out:
        write_report_files(result, out)
    print(json.dumps(shown if shown is not None else result, indent=2))


def _json_or_table(result: dict, args: argparse.Namespace, table: Callable[[], str]) -> None:
    """The JSON to --out; to stdout a table, or the JSON with --json."""
    from leap_core.io import write_report_files

    if args.out:
        write_report_files(result, args.out)
    print(json.dumps(result, indent=2) if args.json else table().rstrip("\n"))


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE")
        pairs[name] = value
    return pairs


def _checked(text: str, kind: type, valid: Callable[[Any], bool], why: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a number' if kind is float else 'an integer'}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{value} {why}")
    return value


def theta_arg(text: str) -> float:
    """An exit threshold: a cosine, so a number in [-1, 1]."""
    return _checked(text, float, lambda v: -1 <= v <= 1, "is outside [-1, 1] (a cosine): no row would ever exit")


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 1, "must be >= 1")


def _add_exit_rule_args(parser: argparse.ArgumentParser, saved: str, theta_default: float | None = None) -> None:
    """--theta, --k, --l-min: the exit rule, defaulting to `saved` (where the model keeps its own)."""
    parser.add_argument("--theta", type=theta_arg, default=theta_default,
                        help=f"exit threshold on cos(p_l, p_l-k) (default: {saved})")
    parser.add_argument("--k", type=positive_int, help=f"exit test distance in layers (default: {saved})")
    parser.add_argument("--l-min", type=positive_int, help=f"first layer that may exit (default: {saved})")


def _add_json_args(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--json", action="store_true", help="print the JSON instead of tables")
    parser.add_argument("--out", help=out_help)


class Command(NamedTuple):
    name: str
    help: str
    add_args: Callable[..., None]
    run: Callable[[argparse.Namespace], None]


COMMANDS: list[Command] = []  # in the order `leap --help` lists them


def command(name: str, help_text: str, add_args: Callable[..., None]):
    """Register cmd_<name> as `leap <name>`, with its options from add_args."""
    def register(run: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
        COMMANDS.append(Command(name, help_text, add_args, run))
        return run
    return register


# ---- stages of the experiment ----

def add_extract_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="Parquet file to write (default: <output_dir>/<profile>/sentences.parquet)")


@command("extract", "extract and filter training sentences to Parquet", add_extract_args)
def cmd_extract(args: argparse.Namespace) -> None:
    from leap_core import experiment

    print(experiment.extract(_profile(args), args.out))


def add_cache_teacher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sentences", help="sentences Parquet from `leap extract` (default: extract them now)")


@command("cache-teacher", "encode the sentences with the teacher once", add_cache_teacher_args)
def cmd_cache_teacher(args: argparse.Namespace) -> None:
    from leap_core import experiment

    profile = _profile(args)
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
    from leap_core import experiment

    profile = _profile(args)
    profile.objective_for(args.arm)  # an unknown arm fails here, before any extraction or teacher pass
    sentences = experiment.extract(profile)
    cache = experiment.cache_teacher(profile, sentences)
    result = experiment.train_arm(profile, args.arm, args.seed, cache, args.out, wait=args.wait)
    print(json.dumps({"model_dir": str(result.model_dir), "train_seconds": round(result.train_seconds, 1)}))


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, hub id or random-bert: spec")
    _add_json_args(parser, "write the JSON here too")
    _add_exit_rule_args(parser, "the model's leap_exit.json, else the profile's exit section")


@command("eval", "STS-B and exit statistics of a model", add_eval_args)
def cmd_eval(args: argparse.Namespace) -> None:
    from leap_core import experiment
    from leap_core.evaluation.tables import eval_table

    metrics = experiment.evaluate(_profile(args), args.model, exit_overrides=_exit_overrides(args) or None)
    _json_or_table(metrics, args, lambda: eval_table(metrics, args.model))


def add_foundation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reports/foundation.json", help="the JSON summary (default: %(default)s)")
    parser.add_argument("--baseline-arm", default="baseline", help="the layer-aligned arm (default: %(default)s)")
    parser.add_argument("--leap-arm", default="leap", help="the exit-aware arm (default: %(default)s)")


@command("foundation", "baseline and LEAP from one cache -> reports/foundation.json", add_foundation_args)
def cmd_foundation(args: argparse.Namespace) -> None:
    """Both arms from one teacher cache, evaluated on STS-B test, summarised in reports/foundation.json."""
    from leap_core import experiment
    from leap_core.io import write_report_files

    report = experiment.foundation(_profile(args), args.baseline_arm, args.leap_arm)
    write_report_files(report, args.out)
    print(json.dumps({role: report[role] for role in ("baseline", "leap")}
                     | {"train_seconds_per_arm": report["train_seconds_per_arm"]}, indent=2))


# ---- analyses of models and reports ----

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
    _add_exit_rule_args(parser, "the model's leap_exit.json, else theta 0.95, k 1, l_min half the depth")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: %(default)s)")


@command("eval-suite", "every analysis (STS, layers, NN@10, sweep, BEIR, diagnostics) for several models, "
         "with bootstrap CIs", add_eval_suite_args)
def cmd_eval_suite(args: argparse.Namespace) -> None:
    """Every analysis for several models -> one JSON (--out) and a markdown summary (--markdown)."""
    from leap_core.evaluation.suite import evaluate_all, render_markdown
    from leap_core.io import write_report_files

    profile = _profile(args)
    models = _pairs(args.model, "--model")
    if not models:
        raise SystemExit("--model NAME=PATH: give at least one model")
    groups = {group: names.split(",") for group, names in _pairs(args.seed_group, "--seed-group").items()}
    floor = {key: value for key, value in (("max_sts_drop", args.max_sts_drop), ("min_nn10", args.min_nn10))
             if value is not None}
    results = evaluate_all(
        models, profile.data.data_dir, reference=args.reference, seed_groups=groups, theta=args.theta, k=args.k,
        l_min=args.l_min, n_resamples=_or(args.n_resamples, profile.evaluation.bootstrap_resamples),
        calibration_floor=floor or None,
        sts_test=profile.data.sts_eval, sts_dev=profile.data.sts_dev,
        beir_sets=args.beir or ["beir/scifact", "beir/nfcorpus"],
        beir_modes=args.modes.split(","), batch_size=args.batch_size, max_docs=args.max_docs,
        max_queries=args.max_queries, measure_overhead=not args.no_overhead)
    _, markdown = write_report_files(results, args.out, args.markdown or str(Path(args.out).with_suffix(".md")),
                                     render_markdown)
    print(markdown)


def add_diagnose_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, hub id or random-bert: spec")
    parser.add_argument("--sts", default="stsb/test.tsv", help="probe STS file, relative to the data dir "
                        "(default: %(default)s)")
    parser.add_argument("--max-sentences", type=int, help="probe at most N sentences (default: all)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per mode for the overhead (default 5)")
    parser.add_argument("--no-overhead", action="store_true", help="skip timing the monitoring overhead")
    _add_json_args(parser, "write the JSON here too (e.g. reports/diagnose/<model>.json)")
    _add_exit_rule_args(parser, "theta 0.95, k 1, l_min half the depth", theta_default=0.95)
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: %(default)s)")


@command("diagnose", "is a model exit-compatible? diagnostics, verdict, checklist", add_diagnose_args)
def cmd_diagnose(args: argparse.Namespace) -> None:
    """The paper's exit-compatibility diagnostics, verdict and deployment checklist for any model."""
    from leap_core.evaluation.diagnose import diagnose
    from leap_core.evaluation.tables import diagnose_table

    result = diagnose(args.model, _profile(args).data.data_dir, sts_file=args.sts, max_sentences=args.max_sentences,
                      theta=args.theta, k=args.k if args.k is not None else 1, l_min=args.l_min,
                      batch_size=args.batch_size, runs=args.runs,
                      measure_overhead=not args.no_overhead)
    _json_or_table(result, args, lambda: diagnose_table(result))


def add_verify_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", nargs="?", default="reports/cpu/report.json",
                        help="the pipeline's report.json (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the report's)")


@command("verify-report", "check a pipeline report's numbers against its MLflow runs", add_verify_report_args)
def cmd_verify_report(args: argparse.Namespace) -> None:
    """Exit 1, naming each difference, when the report's numbers are not those of its MLflow runs."""
    from leap_core.report import verify_against_mlflow

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
    _add_json_args(parser, "write the JSON (scores and exit statistics per task) here too")
    _add_exit_rule_args(parser, "the model's leap_exit.json")


@command("mteb", "MTEB tasks on a model that exits early, with its exit statistics beside the scores", add_mteb_args)
def cmd_mteb(args: argparse.Namespace) -> None:
    from leap_core.evaluation.mteb_run import mteb_table, run_mteb

    profile = _profile(args)
    result = run_mteb(args.model, args.tasks, profile.data.data_dir, local=not args.hub, exit_mode=args.mode,
                      batch_size=args.batch_size, results_dir=args.results or Path(profile.output_dir) / "mteb",
                      **_exit_overrides(args))
    _json_or_table(result, args, lambda: mteb_table(result))


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
    _add_json_args(parser, "write the JSON here too (the markdown summary goes beside it, .md)")


@command("monitor", "the traffic log against the model's reference: depth shift, PSI, NN@10. Exit status: 0 no "
         "alert, 3 an alert, 2 an error (a bad model, reference or log: one line naming the file)", add_monitor_args)
def cmd_monitor(args: argparse.Namespace) -> None:
    from leap_core.data.documents import read_user_corpus
    from leap_core.io import write_report_files
    from leap_core.monitor import ALERT_EXIT_CODE, monitor, monitor_markdown, prometheus, publish_alert

    texts = read_user_corpus(args.reference_texts, min_chars=1) if args.reference_texts else None
    result = monitor(args.model, args.traffic, texts, args.reference_texts or "", args.save_reference)
    if args.out:
        write_report_files(result, args.out, Path(args.out).with_suffix(".md"), monitor_markdown)
    print(prometheus(result) if args.prometheus else json.dumps(result, indent=2) if args.json
          else monitor_markdown(result), end="")
    if result["alert"]:
        if args.publish_event:
            log.info("published Argo Event %s", publish_alert(result))
        raise SystemExit(ALERT_EXIT_CODE)


def add_loop_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retrain", action="append", required=True, help="a RetrainFlow run's retrain.json, in run "
                        "order (repeatable)")
    parser.add_argument("--monitor", action="append", default=[], help="a leap monitor --out JSON (repeatable)")
    parser.add_argument("--out", default="reports/loop.md", help="the report (default: %(default)s; the inputs go "
                        "beside it as loop.json)")
    parser.add_argument("--command", default="", help="the command that made the inputs, shown in the report")
    parser.add_argument("--relative-to", help="the work folder the inputs lie in: the report names paths relative "
                        "to it (default: relative to the working directory)")


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


@command("loop-report", "retrain runs and drift checks -> one markdown report (reports/loop.md)", add_loop_report_args)
def cmd_loop_report(args: argparse.Namespace) -> None:
    from leap_core.io import write_report_files
    from leap_core.retrain import loop_markdown

    retrains = [_read_json(path) for path in args.retrain]
    monitors = [_read_json(path) for path in args.monitor]
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
    from leap_core.data.documents import read_user_corpus
    from leap_core.encoder import EarlyExitEncoder
    from leap_core.traffic import TrafficLog, replay

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
    from leap_core.data.corpus import load_corpus, read_tags, sentences_of_sources
    from leap_core.io import write_text_atomic

    data = _profile(args).data
    tag_file = args.tags or data.balance_by or "nli_sentences/sentence_sources.txt.gz"
    corpus = load_corpus(data.corpus, data.data_dir)
    tags = read_tags(Path(data.data_dir) / tag_file, len(corpus), data.corpus)
    texts = sentences_of_sources(corpus, tags, args.sources.split(","), args.n, args.offset, args.seed)
    write_text_atomic(args.out, "\n".join(texts) + "\n")
    print(f"{len(texts)} sentences of {args.sources} -> {args.out}")


# ---- choosing and shipping a model's operating point ----

def _add_query_encoders_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--query-encoders", nargs="+", metavar="FOLDER",
                        help="also the asymmetric points: each query encoder (leap query-encoder) x fp32/int8 against "
                             "the model's untouched full-depth index, chosen under --max-ndcg-drop on the BEIR dev "
                             "halves, apart from the policy")


def add_calibrate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, exit branch folder, hub id or random-bert: spec")
    parser.add_argument("--max-sts-drop", type=float,
                        help="floor: largest STS-B dev Spearman drop vs full depth (default: the profile's "
                             "registry.policy_max_sts_drop, what the promote step calibrates with)")
    parser.add_argument("--max-ndcg-drop", type=float,
                        help="floor: largest relative NDCG@10 drop vs full depth on each BEIR set's dev queries")
    parser.add_argument("--save", action="store_true",
                        help="write the chosen policy to the model's leap_exit.json (the encoder then serves it); "
                             "with --query-encoders, the chosen query route too (calibration.query_route)")
    parser.add_argument("--out", help="write the JSON here")
    _add_query_encoders_arg(parser)


@command("calibrate", "the fastest policy within quality floors on dev", add_calibrate_args)
def cmd_calibrate(args: argparse.Namespace) -> None:
    """The fastest deployable policy (full, fixed:N, the exit rule, per-layer thresholds) within the floors on dev."""
    from leap_core.query_encoder.points import calibrate_with_queries

    profile = _profile(args)
    result = calibrate_with_queries(profile, args.model, _or(args.max_sts_drop, profile.registry.policy_max_sts_drop),
                                    args.max_ndcg_drop, save=args.save, query_encoders=args.query_encoders)
    _write_and_print(result, args.out, {key: value for key, value in result.items() if key != "dev_full"})


def add_pareto_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, exit branch folder, hub id or random-bert: spec")
    parser.add_argument("--name", required=True, help="report name: reports/pareto/NAME.{json,md,png}")
    parser.add_argument("--out-dir", default="reports/pareto", help="where the report goes (default: %(default)s)")
    parser.add_argument("--max-sts-drop", type=float, help="calibration floor (see calibrate)")
    parser.add_argument("--max-ndcg-drop", type=float, default=0.03, help="calibration floor (see calibrate)")
    parser.add_argument("--no-timing", action="store_true", help="skip timing the chosen policy")
    _add_query_encoders_arg(parser)


@command("pareto", "quality vs depth of every deployable point -> reports/pareto/NAME.*", add_pareto_args)
def cmd_pareto(args: argparse.Namespace) -> None:
    """Quality against depth for every deployable point -> reports/pareto/<name>.{json,md,png}."""
    from leap_core.io import plain_name
    from leap_core.query_encoder.points import pareto_with_queries

    plain_name(args.name)  # a report name, never a path out of --out-dir (ValueError: one line, exit 2)
    profile = _profile(args)
    result = pareto_with_queries(profile, args.model, args.name, args.out_dir,
                                 _or(args.max_sts_drop, profile.registry.policy_max_sts_drop), args.max_ndcg_drop,
                                 timing=not args.no_timing, query_encoders=args.query_encoders)
    print(f"{result['chosen']['name']}: STS-B test {result['chosen']['test_stsb']:.3f}, "
          f"{result['chosen']['layer_reduction']:.2f}x fewer layers -> {args.out_dir}/{args.name}.md")
    if "asymmetric" in result:
        chosen = result["asymmetric"]["chosen"]
        print(f"queries: {chosen['name'] if chosen else 'the original (no query path met the floor)'} against "
              f"{result['asymmetric']['document_model']}'s full-depth index")


def add_retrofit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", help="hub ids or folders, e.g. sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--seed", type=int, default=0, help="seed of the branch's initialisation and data order")
    parser.add_argument("--out", help="the report, one entry per model, merged only with runs of the same profile "
                        "(default: reports/retrofit.json for the committed cpu_long, else "
                        "reports/<profile>/retrofit.json; the markdown goes beside it)")
    parser.add_argument("--max-drop", type=float, default=0.01,
                        help="the cheapest cut is the smallest depth within this of the original on STS-B dev")
    parser.add_argument("--max-ndcg-drop", type=float, default=0.03,
                        help="calibration floor: largest relative NDCG@10 drop on each BEIR set's dev queries")
    parser.add_argument("--design", choices=["branch", "finetune"], default="branch",
                        help="branch: an exit branch beside the untouched original (default); finetune: the "
                             "exit-aware fine-tune of the whole model, judged the same way")
    parser.add_argument("--corpus", help="retrofit on your own documents (.jsonl with text[/title], .parquet with "
                                         "a text column, or .txt, one per line; .gz too), reported apart")
    parser.add_argument("--peer", action="store_true", help="also fine-tune with sentence-transformers' "
                        "AdaptiveLayerLoss on the same texts and budget")


@command("retrofit", "make existing models exit-compatible -> reports/[<profile>/]retrofit.json", add_retrofit_args)
def cmd_retrofit(args: argparse.Namespace) -> None:
    """Retrofit each MODEL against itself; its entry in --out gains this run (runs can be separate)."""
    from leap_core.retrofit import default_report, retrofit_into_report
    from leap_core.retrofit_report import summary_rows

    profile = _profile(args)
    out = Path(args.out) if args.out else default_report(profile.name)
    for model, entry in retrofit_into_report(profile, args.models, out, args.seed, args.design,
                                             args.corpus, args.peer, args.max_drop, args.max_ndcg_drop):
        print("\n".join(summary_rows({model: entry})))


def add_cut_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("branch", help="the branch folder `leap retrofit` trained (model_dir in reports/retrofit.json)")
    parser.add_argument("--depth", type=int, help="layers to keep (one of the branch's exit layers; default: the "
                                                  "fixed cut `leap calibrate --save` chose)")
    parser.add_argument("--out", required=True, help="the new model folder")


@command("cut", "an exit branch cut to N layers -> a standalone model for the original's index", add_cut_args)
def cmd_cut(args: argparse.Namespace) -> None:
    """Write an exit branch cut to N layers as a standalone sentence-transformers folder."""
    from leap_core.exit_branch import calibrated_depth, save_cut

    depth = args.depth if args.depth is not None else calibrated_depth(args.branch)
    print(save_cut(args.branch, depth, args.out))


def add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="ONNX Runtime graphs (the one format)")
    parser.add_argument("model", help="model folder or hub id (its leap_exit.json policy gives the depth)")
    parser.add_argument("--out", required=True, help="the new folder (graph, tokenizer, leap_onnx.json)")
    parser.add_argument("--depth", type=int, help="layers to export (default: the calibrated full or fixed:N)")
    parser.add_argument("--int8", action="store_true", help="also a dynamic int8 graph (onnxruntime quantize_dynamic)")
    parser.add_argument("--quantization", choices=["auto", "per-tensor", "per-channel"],
                        help="the int8 graph's weight scales: auto (default with --int8) measures both on "
                             "--check-texts and keeps the one closer to fp32; per-tensor or per-channel is measured "
                             "too; leap_onnx.json records each cosine to fp32")
    parser.add_argument("--per-channel", action="store_true", help="the same as --quantization per-channel")
    parser.add_argument("--check-texts", metavar="FILE",
                        help="texts to measure int8 against fp32 on (.txt one a line, or .jsonl with \"text\"; .gz "
                             "ok; the first 1000; default: STS-B dev in the data dir, LEAP_DATA_DIR)")
    parser.add_argument("--threads", type=positive_int, help="ONNX Runtime threads for that measurement "
                                                             "(default: its own)")


@command("export", "the model at its calibrated fixed depth as ONNX (fp32, --int8) -> a folder", add_export_args)
def cmd_export(args: argparse.Namespace) -> None:
    """The model at its calibrated depth (or --depth) as an ONNX Runtime graph folder; with --int8, the int8 graph
    chosen by measured cosine to fp32 unless --quantization / --per-channel names one."""
    from leap_core.export import export_onnx

    scheme = args.quantization or ("auto" if args.int8 and not args.per_channel else None)
    print(export_onnx(args.model, args.out, args.depth, args.int8, args.per_channel, scheme, args.check_texts,
                      args.threads))


# ---- timing and stressing what we ship ----

def add_bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder or hub id (its leap_exit.json gives theta, k, l_min)")
    parser.add_argument("--sts", default="stsb/test.tsv", help="sentences to time, relative to the data dir")
    parser.add_argument("--batch-sizes", help="comma-separated (default: the profile's evaluation.bench_batch_sizes)")
    parser.add_argument("--modes", default="full,monitored,batch,compact",
                        help="encoder modes (also fixed:N, and policy: the model's calibrated policy)")
    parser.add_argument("--warmup", type=int, help="untimed iterations (default: 10 on CPU, 50 on CUDA)")
    parser.add_argument("--iterations", type=int, help="timed iterations (default: 60 on CPU, 200 on CUDA)")
    parser.add_argument("--no-peer", action="store_true", help="skip SentenceTransformer.encode")
    _add_exit_rule_args(parser, "the model's leap_exit.json")
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
    import torch

    from leap_core.bench import run_benchmark
    from leap_core.bench_report import render_markdown
    from leap_core.evaluation.diagnose import probe_sentences
    from leap_core.io import write_report_files

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = _profile(args)
    result = run_benchmark(
        args.model, probe_sentences(profile.data.data_dir, args.sts),
        batch_sizes=([int(size) for size in args.batch_sizes.split(",")] if args.batch_sizes
                     else list(profile.evaluation.bench_batch_sizes)), modes=args.modes.split(","),
        warmup=args.warmup, iterations=args.iterations, include_sentence_transformers=not args.no_peer,
        device=args.device, dtype=args.dtype, clock=args.clock, **_exit_overrides(args))
    _, markdown = write_report_files(result, args.out, Path(args.out).with_suffix(".md"), render_markdown)
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
    import tempfile

    from leap_core.deploy_bench import branch_original, quality_sets, run_deploy_bench
    from leap_core.deploy_report import render_markdown
    from leap_core.evaluation.diagnose import probe_sentences
    from leap_core.io import write_report_files

    original = args.original or branch_original(args.model)
    profile = _profile(args)
    data_dir = Path(profile.data.data_dir)
    sets = [] if args.no_quality else quality_sets(data_dir, profile.data.sts_eval, profile.evaluation.beir,
                                                    args.max_docs)
    with tempfile.TemporaryDirectory(prefix="leap-bench-deploy-") as workdir:
        result = run_deploy_bench(args.model, original, probe_sentences(data_dir, profile.data.sts_eval), sets,
                                  Path(workdir), args.depth, [int(x) for x in args.batch_sizes.split(",")],
                                  args.threads, args.warmup, args.iterations, quality=not args.no_quality)
    result["max_docs"] = args.max_docs
    _, markdown = write_report_files(result, args.out, Path(args.out).with_suffix(".md"), render_markdown)
    print(markdown)


from leap_core.query_encoder.command import add_query_encoder_args, run_query_encoder  # noqa: E402

command("query-encoder", "a shallow query encoder for the original's index: fit on unlabelled queries "
        "(--corpus) or judge on a BEIR folder (--beir)", add_query_encoder_args)(run_query_encoder)


def add_package_query_encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query_encoder", help="a query encoder folder (leap query-encoder --out)")
    parser.add_argument("--out", required=True, help="the new package folder (absent, empty or an earlier package)")
    parser.add_argument("--document-model", help="where to load the document model from (default: the one its "
                        "leap_query_encoder.json names; either way its weights hash must match)")


@command("package-query-encoder", "a query encoder and its document model as one sentence-transformers Router "
         "folder (encode_query / encode_document)", add_package_query_encoder_args)
def cmd_package_query_encoder(args: argparse.Namespace) -> None:
    from leap_core.query_encoder.package import package_router

    folder = package_router(args.query_encoder, args.out, args.document_model)
    print(f"{args.query_encoder} (query route) + its document model (document route) -> {folder}")


def add_reliability_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reports/reliability.json",
                        help="JSON (default: %(default)s); the markdown goes beside it")


@command("reliability", "try every fault and bad input on the smoke profile", add_reliability_args)
def cmd_reliability(args: argparse.Namespace) -> None:
    """Every fault and bad input of leap_core/reliability/, tried on the smoke profile -> JSON and markdown.
    The probes that run a command get this module's `main` from here: the reliability package never imports the CLI."""
    import tempfile

    from leap_core.io import write_report_files
    from leap_core.reliability import render_markdown, run_probes  # loads torch and every probed module: on use only

    with tempfile.TemporaryDirectory(prefix="leap-reliability-") as work:
        results = run_probes(_profile(args).data.data_dir, work, main=main)
    _, markdown = write_report_files(results, args.out, Path(args.out).with_suffix(".md"), render_markdown)
    print(markdown)
    if not all(row["held"] for row in results):
        raise SystemExit(1)


def _profile_arms(argv: list[str]) -> list[str] | None:
    """The arms of the profile this command line names (for `train --arm` choices); None if it does not load."""
    from leap_core.config import ConfigError

    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--profile")
    early.add_argument("--set", action="append", default=[])
    known, _ = early.parse_known_args(argv)
    try:
        return sorted(load_profile(known.profile, parse_overrides(known.set)).arms)
    except (ConfigError, OSError, SystemExit):
        return None  # the command itself reports the bad profile, in one line


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from leap_core import __version__

    parser = argparse.ArgumentParser(prog="leap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"leap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the logs of beir, transformers and sentence-transformers (default: leap's only)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        child.add_argument("--profile", default=None, help="params/<name>.yaml or a path (default: cpu)")
        child.add_argument("--data-dir", default=None, help="data directory (default: the profile's)")
        child.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="override a profile field, e.g. --set training.lr=1e-4 (repeatable)")
        if command.name == "train":
            command.add_args(child, _profile_arms(sys.argv[1:] if argv is None else argv))
        else:
            command.add_args(child)
        child.set_defaults(func=command.run)
    return parser


def _configure_logging(verbose: bool) -> None:
    """leap's own progress at INFO; the libraries' INFO logs and progress bars only with -v."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("leap", "leap_core"):
        logging.getLogger(name).setLevel(logging.INFO)
    import transformers

    if verbose:
        transformers.logging.set_verbosity_info()
        transformers.logging.enable_progress_bar()
    else:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


ERROR_EXIT_CODE = 2  # what argparse returns for a bad command line: every error leap reports shares it


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error is one line `leap: error: <Type>: <message>` and exit status 2 (--debug: the
    traceback). A command's own status (monitor's alert, 3) passes through as SystemExit."""
    args = build_parser(argv).parse_args(argv)
    _configure_logging(args.verbose)
    try:
        args.func(args)
    except SystemExit as stop:
        if args.debug or not isinstance(stop.code, str):
            raise  # a command's own status: monitor's alert, a check that found problems
        print(f"leap: error: {stop.code}", file=sys.stderr)  # a bad option value (--set x): Python would exit 1
        return ERROR_EXIT_CODE
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("leap: interrupted", file=sys.stderr)
        return 130  # the shell's status for SIGINT
    except Exception as err:  # noqa: BLE001 - any error, bad input or a bug, is one line unless --debug
        if args.debug:
            raise
        print(f"leap: error: {error_line(err)}", file=sys.stderr)
        return ERROR_EXIT_CODE
    return 0


def error_line(err: BaseException) -> str:
    """`<Type>: <message>` on one line: a multi-line message (a library's) has its lines joined."""
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
