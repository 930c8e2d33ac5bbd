"""The `leap` command: each subcommand is one stage of leap_core.experiment, or a report built from them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

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
    profile.objective_for(args.arm)  # an unknown arm fails here, before any extraction or teacher pass
    sentences = experiment.extract(profile)
    cache = experiment.cache_teacher(profile, sentences)
    result = experiment.train_arm(profile, args.arm, args.seed, cache, args.out, wait=args.wait)
    print(json.dumps({"model_dir": str(result.model_dir), "train_seconds": round(result.train_seconds, 1)}))


def cmd_eval(args: argparse.Namespace) -> None:
    from leap_core import experiment

    overrides = {key: value for key, value in (("theta", args.theta), ("k", args.k), ("l_min", args.l_min))
                 if value is not None}
    metrics = experiment.evaluate(_profile(args), args.model, exit_overrides=overrides or None)
    used = metrics["exit_settings"]
    print(f"exit settings: theta={used['theta']} k={used['k']} l_min={used['l_min']} ({used['source']})",
          file=sys.stderr)
    text = json.dumps(metrics, indent=2)
    if args.out:
        from leap_core.io import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    print(text)


def cmd_verify_report(args: argparse.Namespace) -> None:
    """Exit 1, naming each difference, when the report's numbers are not those of its MLflow runs."""
    from leap_core.report import verify_against_mlflow

    problems = verify_against_mlflow(args.report, args.tracking_uri)
    for problem in problems:
        print(problem)
    if problems:
        raise SystemExit(1)
    print(f"{args.report}: every arm's metrics and the latency headline agree with MLflow")


def cmd_foundation(args: argparse.Namespace) -> None:
    """Both arms from one teacher cache, evaluated on STS-B test, summarised in reports/foundation.json."""
    from leap_core import experiment
    from leap_core.io import write_json_atomic

    report = experiment.foundation(_profile(args), args.baseline_arm, args.leap_arm)
    write_json_atomic(args.out, report)
    print(json.dumps({role: report[role] for role in ("baseline", "leap")}
                     | {"train_seconds_per_arm": report["train_seconds_per_arm"]}, indent=2))


def _or(value: Any, profile_value: Any) -> Any:
    """An option's value, or the profile's when the option was not given."""
    return profile_value if value is None else value


def _write_and_print(result: dict, out: str | None, shown: dict | None = None) -> None:
    from leap_core.io import write_json_atomic

    if out:
        write_json_atomic(out, result)
    print(json.dumps(shown if shown is not None else result, indent=2))


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE")
        pairs[name] = value
    return pairs


def cmd_eval_suite(args: argparse.Namespace) -> None:
    """Every analysis for several models -> one JSON (--out) and a markdown summary (--markdown)."""
    from leap_core.evaluation.suite import evaluate_all, render_markdown
    from leap_core.io import write_json_atomic, write_text_atomic

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
    write_json_atomic(args.out, results)
    markdown = render_markdown(results)
    write_text_atomic(args.markdown or str(Path(args.out).with_suffix(".md")), markdown)
    print(markdown)


def cmd_diagnose(args: argparse.Namespace) -> None:
    """The paper's exit-compatibility diagnostics, verdict and deployment checklist for any model."""
    from leap_core.evaluation.diagnose import diagnose

    result = diagnose(args.model, _profile(args).data.data_dir, sts_file=args.sts, max_sentences=args.max_sentences,
                      theta=args.theta, k=args.k if args.k is not None else 1, l_min=args.l_min,
                      batch_size=args.batch_size, runs=args.runs,
                      measure_overhead=not args.no_overhead)
    _write_and_print(result, args.out)


def cmd_calibrate(args: argparse.Namespace) -> None:
    """The fastest deployable policy (full, fixed:N, the exit rule, per-layer thresholds) within the floors on dev."""
    from leap_core.evaluation.pareto import calibrate_policy

    profile = _profile(args)
    result = calibrate_policy(profile, args.model, _or(args.max_sts_drop, profile.registry.policy_max_sts_drop),
                              args.max_ndcg_drop, save=args.save)
    _write_and_print(result, args.out, {key: value for key, value in result.items() if key != "dev_full"})


def cmd_pareto(args: argparse.Namespace) -> None:
    """Quality against depth for every deployable point -> reports/pareto/<name>.{json,md,png}."""
    from leap_core.evaluation.pareto import write_pareto

    profile = _profile(args)
    result = write_pareto(profile, args.model, args.name, args.out_dir,
                          _or(args.max_sts_drop, profile.registry.policy_max_sts_drop), args.max_ndcg_drop,
                          timing=not args.no_timing)
    print(f"{result['chosen']['name']}: STS-B test {result['chosen']['test_stsb']:.3f}, "
          f"{result['chosen']['layer_reduction']:.2f}x fewer layers -> {args.out_dir}/{args.name}.md")


def cmd_retrofit(args: argparse.Namespace) -> None:
    """Retrofit each MODEL against itself; its entry in --out (one per model) gains this run, so runs can be separate."""
    from leap_core.io import write_json_atomic, write_text_atomic
    from leap_core.retrofit import (corpus_name, retrofit_branch, retrofit_finetune_against_original,
                                    retrofit_peer)
    from leap_core.evaluation.pareto import calibrate_policy
    from leap_core.retrofit_report import render_markdown, summary_rows

    profile = _profile(args)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    stale = [model for model, entry in report.items() if "evaluation" not in entry]
    if stale:  # written by an earlier release, measured another way: not mixed into this table
        log.info("dropping %s from %s: measured before the against-the-original evaluation", stale, out)
    report = {model: entry for model, entry in report.items() if model not in stale}
    for model in args.models:
        entry = report.get(model, {})
        if args.design == "finetune":
            entry.setdefault("designs", {})["exit_aware_finetune"] = retrofit_finetune_against_original(
                profile, model, args.seed)
        elif args.corpus:
            entry.setdefault("in_domain", {})[corpus_name(args.corpus)] = retrofit_branch(
                profile, model, args.seed, corpus=args.corpus, max_sts_drop=args.max_drop)
        else:
            kept = {key: entry[key] for key in ("in_domain", "designs", "peer") if key in entry}
            entry = {**retrofit_branch(profile, model, args.seed, max_sts_drop=args.max_drop), **kept}
            if args.peer:
                entry["peer"] = retrofit_peer(profile, model, entry["model_dir"], args.seed, args.max_drop)
            # The branch serves what calibration chose on dev; `leap cut` and `leap pareto` read it from there.
            entry["policy"] = calibrate_policy(profile, entry["model_dir"], args.max_drop, args.max_ndcg_drop,
                                               save=True)
        report[model] = entry
        write_json_atomic(out, report)
        write_text_atomic(out.with_suffix(".md"), render_markdown(report))
        print("\n".join(summary_rows({model: entry})))


def cmd_cut(args: argparse.Namespace) -> None:
    """Write an exit branch cut to N layers as a standalone sentence-transformers folder."""
    from leap_core.encoder import read_exit_settings
    from leap_core.exit_branch import save_cut

    depth = args.depth
    if depth is None:
        policy = read_exit_settings(args.branch).get("policy", {})
        if policy.get("kind") == "full":
            raise SystemExit(f"{args.branch}: calibration chose full depth (no cut is within its floors): serve the "
                             "original model as it is, or give --depth to cut anyway")
        if policy.get("kind") != "fixed":
            raise SystemExit(f"{args.branch}: no calibrated fixed cut in leap_exit.json (policy {policy or 'none'}); "
                             "give --depth, or run `leap calibrate BRANCH --save` first")
        depth = policy["depth"]
    print(save_cut(args.branch, depth, args.out))


def cmd_export(args: argparse.Namespace) -> None:
    """The model at its calibrated depth (or --depth) as an ONNX Runtime graph folder."""
    from leap_core.export import export_onnx

    print(export_onnx(args.model, args.out, args.depth, args.int8))


def cmd_bench(args: argparse.Namespace) -> None:
    """Latency of every encoder mode and of sentence-transformers on STS-B test -> JSON and markdown."""
    import torch

    from leap_core.bench import render_markdown, run_benchmark
    from leap_core.evaluation.diagnose import probe_sentences
    from leap_core.io import write_json_atomic, write_text_atomic

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {key: value for key, value in (("theta", args.theta), ("k", args.k), ("l_min", args.l_min))
                 if value is not None}
    profile = _profile(args)
    result = run_benchmark(
        args.model, probe_sentences(profile.data.data_dir, args.sts),
        batch_sizes=([int(size) for size in args.batch_sizes.split(",")] if args.batch_sizes
                     else list(profile.evaluation.bench_batch_sizes)), modes=args.modes.split(","),
        warmup=args.warmup, iterations=args.iterations, include_sentence_transformers=not args.no_peer,
        device=args.device, dtype=args.dtype, clock=args.clock, **overrides)
    write_json_atomic(args.out, result)
    markdown = render_markdown(result)
    write_text_atomic(Path(args.out).with_suffix(".md"), markdown)
    print(markdown)


def cmd_bench_deploy(args: argparse.Namespace) -> None:
    """Every serving path of the original and of ours at its point: quality and latency -> JSON and markdown."""
    import tempfile

    from leap_core.deploy_bench import quality_sets, run_deploy_bench
    from leap_core.deploy_report import render_markdown
    from leap_core.evaluation.diagnose import probe_sentences
    from leap_core.exit_branch import BRANCH_FILE, read_branch
    from leap_core.io import write_json_atomic, write_text_atomic
    from leap_core.models import resolve_model

    original = args.original
    if original is None:
        folder = resolve_model(args.model)
        if not (folder / BRANCH_FILE).is_file():
            raise ValueError(f"{args.model}: not an exit branch: give --original (the model users serve now)")
        original = read_branch(folder)["original"]
    profile = _profile(args)
    data_dir = Path(profile.data.data_dir)
    sets = [] if args.no_quality else quality_sets(data_dir, profile.data.sts_eval, profile.evaluation.beir,
                                                    args.max_docs)
    with tempfile.TemporaryDirectory(prefix="leap-bench-deploy-") as workdir:
        result = run_deploy_bench(args.model, original, probe_sentences(data_dir, profile.data.sts_eval), sets,
                                  Path(workdir), args.depth, [int(x) for x in args.batch_sizes.split(",")],
                                  args.threads, args.warmup, args.iterations, quality=not args.no_quality)
    result["max_docs"] = args.max_docs
    write_json_atomic(args.out, result)
    markdown = render_markdown(result)
    write_text_atomic(Path(args.out).with_suffix(".md"), markdown)
    print(markdown)


def cmd_reliability(args: argparse.Namespace) -> None:
    """Every fault and bad input of leap_core/reliability.py, tried on the smoke profile -> JSON and markdown."""
    import tempfile

    from leap_core.io import write_json_atomic, write_text_atomic
    from leap_core.reliability import render_markdown, run_probes

    with tempfile.TemporaryDirectory(prefix="leap-reliability-") as work:
        results = run_probes(_profile(args).data.data_dir, work)
    write_json_atomic(args.out, results)
    markdown = render_markdown(results)
    write_text_atomic(Path(args.out).with_suffix(".md"), markdown)
    print(markdown)
    if not all(row["held"] for row in results):
        raise SystemExit(1)


def _add_depth_commands(add) -> None:
    """The commands that choose and ship a model's operating point: calibrate, pareto, retrofit, cut, export."""
    calibrate = add("calibrate", cmd_calibrate, "the fastest policy within quality floors on dev")
    calibrate.add_argument("model", help="model folder, exit branch folder, hub id or random-bert: spec")
    calibrate.add_argument("--max-sts-drop", type=float,
                           help="floor: largest STS-B dev Spearman drop vs full depth (default: the profile's "
                                "registry.policy_max_sts_drop, what the promote step calibrates with)")
    calibrate.add_argument("--max-ndcg-drop", type=float,
                           help="floor: largest relative NDCG@10 drop vs full depth on each BEIR set's dev queries")
    calibrate.add_argument("--save", action="store_true",
                           help="write the chosen policy to the model's leap_exit.json (the encoder then serves it)")
    calibrate.add_argument("--out", help="write the JSON here")
    pareto = add("pareto", cmd_pareto, "quality vs depth of every deployable point -> reports/pareto/NAME.*")
    pareto.add_argument("model", help="model folder, exit branch folder, hub id or random-bert: spec")
    pareto.add_argument("--name", required=True, help="report name: reports/pareto/NAME.{json,md,png}")
    pareto.add_argument("--out-dir", default="reports/pareto")
    pareto.add_argument("--max-sts-drop", type=float, help="calibration floor (see calibrate)")
    pareto.add_argument("--max-ndcg-drop", type=float, default=0.03, help="calibration floor (see calibrate)")
    pareto.add_argument("--no-timing", action="store_true", help="skip timing the chosen policy")
    retro = add("retrofit", cmd_retrofit, "make existing models exit-compatible -> reports/retrofit.json")
    retro.add_argument("models", nargs="+", help="hub ids or folders, e.g. sentence-transformers/all-MiniLM-L6-v2")
    retro.add_argument("--seed", type=int, default=0)
    retro.add_argument("--out", default="reports/retrofit.json")
    retro.add_argument("--max-drop", type=float, default=0.01,
                       help="the cheapest cut is the smallest depth within this of the original on STS-B dev")
    retro.add_argument("--max-ndcg-drop", type=float, default=0.03,
                       help="calibration floor: largest relative NDCG@10 drop on each BEIR set's dev queries")
    retro.add_argument("--design", choices=["branch", "finetune"], default="branch",
                       help="branch: an exit branch beside the untouched original (default); finetune: the "
                            "exit-aware fine-tune of the whole model, judged the same way")
    retro.add_argument("--corpus", help="retrofit on your own documents (.jsonl with text[/title], .parquet with a "
                                        "text column, or .txt, one per line; .gz too), reported apart")
    retro.add_argument("--peer", action="store_true",
                       help="also fine-tune with sentence-transformers' AdaptiveLayerLoss on the same texts and budget")
    cut = add("cut", cmd_cut, "an exit branch cut to N layers -> a standalone model for the original's index")
    cut.add_argument("branch", help="the branch folder `leap retrofit` trained (model_dir in reports/retrofit.json)")
    cut.add_argument("--depth", type=int, help="layers to keep (one of the branch's exit layers; default: the "
                                                "fixed cut `leap calibrate --save` chose)")
    cut.add_argument("--out", required=True, help="the new model folder")
    export = add("export", cmd_export, "the model at its calibrated fixed depth as ONNX (fp32, --int8) -> a folder")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="ONNX Runtime graphs (the one format)")
    export.add_argument("model", help="model folder or hub id (its leap_exit.json policy gives the depth)")
    export.add_argument("--out", required=True, help="the new folder (graph, tokenizer, leap_onnx.json)")
    export.add_argument("--depth", type=int, help="layers to export (default: the calibrated full or fixed:N)")
    export.add_argument("--int8", action="store_true", help="also a dynamic int8 graph (onnxruntime quantize_dynamic)")


def theta_arg(text: str) -> float:
    """An exit threshold: a cosine, so a number in [-1, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside [-1, 1] (a cosine): no row would ever exit")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _add_bench_commands(add) -> None:
    """The commands that time and stress what we ship: bench, bench-deploy, reliability."""
    bench = add("bench", cmd_bench, "latency of every encoder mode vs sentence-transformers -> JSON + markdown")
    bench.add_argument("model", help="model folder or hub id (its leap_exit.json gives theta, k, l_min)")
    bench.add_argument("--sts", default="stsb/test.tsv", help="sentences to time, relative to the data dir")
    bench.add_argument("--batch-sizes", help="comma-separated (default: the profile's evaluation.bench_batch_sizes)")
    bench.add_argument("--modes", default="full,monitored,batch,compact", help="encoder modes (also fixed:N, and policy: the model's calibrated policy)")
    bench.add_argument("--warmup", type=int, help="untimed iterations (default: 10 on CPU, 50 on CUDA)")
    bench.add_argument("--iterations", type=int, help="timed iterations (default: 60 on CPU, 200 on CUDA)")
    bench.add_argument("--no-peer", action="store_true", help="skip SentenceTransformer.encode")
    bench.add_argument("--theta", type=theta_arg, help="override the model's exit threshold")
    bench.add_argument("--k", type=positive_int, help="override the model's exit test distance")
    bench.add_argument("--l-min", type=positive_int, help="override the model's first exit layer")
    bench.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                       help="autocast dtype (auto: fp16 on CUDA, fp32 on CPU)")
    bench.add_argument("--clock", default="wall", choices=["wall", "process"],
                       help="CPU timer: wall, or process CPU time (needs --threads 1; for a shared machine)")
    bench.add_argument("--out", default="reports/bench_exit_cpu.json", help="JSON; the markdown goes beside it (.md)")
    reliability = add("reliability", cmd_reliability, "try every fault and bad input on the smoke profile")
    reliability.add_argument("--out", default="reports/reliability.json", help="JSON; the markdown goes beside it")
    deploy = add("bench-deploy", cmd_bench_deploy, "the original as shipped, in ONNX Runtime fp32/int8 and ours at "
                 "its calibrated point, PyTorch and ONNX Runtime: quality and speed side by side")
    deploy.add_argument("model", help="ours: a calibrated model folder or exit branch (leap_exit.json gives the point)")
    deploy.add_argument("--original", help="the model users run now (default: an exit branch's original)")
    deploy.add_argument("--depth", type=int, action="append", default=[], help="also ours at this depth (repeatable)")
    deploy.add_argument("--batch-sizes", default="1,8,32")
    deploy.add_argument("--threads", type=int, help="intra-op threads, torch and ONNX Runtime (default: every core)")
    deploy.add_argument("--warmup", type=int, default=10)
    deploy.add_argument("--iterations", type=int, default=100)
    deploy.add_argument("--max-docs", type=int, help="subsample each BEIR corpus (default: every document)")
    deploy.add_argument("--no-quality", action="store_true", help="time only")
    deploy.add_argument("--out", default="reports/bench_cpu.json", help="JSON; the markdown goes beside it (.md)")


def _add_stage_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The experiment's stages one by one: extract, cache-teacher, train, eval, foundation."""
    add("extract", cmd_extract, "extract and filter training sentences to Parquet").add_argument("--out")
    add("cache-teacher", cmd_cache_teacher, "encode the sentences with the teacher once").add_argument("--sentences")
    train = add("train", cmd_train, "train one arm")
    train.add_argument("--arm", required=True)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out")
    train.add_argument("--wait", action="store_true", help="wait for another trainer of the run folder to finish")
    evaluate = add("eval", cmd_eval, "STS and exit statistics of a model")
    evaluate.add_argument("model")
    evaluate.add_argument("--out")
    evaluate.add_argument("--theta", type=theta_arg, help="exit threshold (default: the model's leap_exit.json, "
                          "else the profile's)")
    evaluate.add_argument("--k", type=positive_int, help="exit test distance (default: as --theta)")
    evaluate.add_argument("--l-min", type=positive_int, help="first layer that may exit (default: as --theta)")
    foundation = add("foundation", cmd_foundation, "baseline and LEAP from one cache -> reports/foundation.json")
    foundation.add_argument("--out", default="reports/foundation.json")
    foundation.add_argument("--baseline-arm", default="baseline")
    foundation.add_argument("--leap-arm", default="leap")


def _add_analysis_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Analyses of models and reports: eval-suite, diagnose, verify-report."""
    suite = add("eval-suite", cmd_eval_suite, "every analysis (STS, layers, NN@10, sweep, BEIR, diagnostics) "
                "for several models, with bootstrap CIs")
    suite.add_argument("--model", action="append", metavar="NAME=PATH", help="a model to evaluate (repeatable)")
    suite.add_argument("--reference", help="model NAME the others are compared with (default: the first)")
    suite.add_argument("--seed-group", action="append", metavar="GROUP=NAME,NAME",
                       help="models that differ only by seed, summarised with t-intervals (repeatable)")
    suite.add_argument("--beir", action="append", metavar="FOLDER",
                       help="BEIR folder, relative to the data dir (repeatable; default beir/scifact, beir/nfcorpus)")
    suite.add_argument("--modes", default="full,compact", help="encoder modes for BEIR (default full,compact)")
    suite.add_argument("--max-docs", type=int, help="quick runs: keep at most N documents per BEIR set")
    suite.add_argument("--max-queries", type=int, help="quick runs: keep at most N queries per BEIR set")
    suite.add_argument("--n-resamples", type=int,
                       help="bootstrap resamples (default: the profile's evaluation.bootstrap_resamples)")
    suite.add_argument("--no-overhead", action="store_true", help="skip timing the monitoring overhead")
    suite.add_argument("--max-sts-drop", type=float, help="calibration floor on STS-B dev (default 0.01)")
    suite.add_argument("--min-nn10", type=float, help="calibration floor: smallest NN@10 vs full depth")
    suite.add_argument("--out", default="reports/eval_cpu.json")
    suite.add_argument("--markdown", help="markdown summary (default: --out with .md)")
    diagnose = add("diagnose", cmd_diagnose, "is a model exit-compatible? diagnostics, verdict, checklist")
    diagnose.add_argument("model", help="model folder, hub id or random-bert: spec")
    diagnose.add_argument("--sts", default="stsb/test.tsv", help="probe STS file, relative to the data dir")
    diagnose.add_argument("--max-sentences", type=int, help="probe at most N sentences (default: all)")
    diagnose.add_argument("--runs", type=int, default=5, help="timed runs per mode for the overhead (default 5)")
    diagnose.add_argument("--no-overhead", action="store_true", help="skip timing the monitoring overhead")
    diagnose.add_argument("--out", help="write the JSON here too (e.g. reports/diagnose/<model>.json)")
    for command, theta_default in ((suite, None), (diagnose, 0.95)):
        command.add_argument("--theta", type=theta_arg, default=theta_default)
    for command in (suite, diagnose):
        saved = "" if command is diagnose else "the model's leap_exit.json, else "
        command.add_argument("--k", type=positive_int, help=f"exit test distance (default: {saved}1)")
        command.add_argument("--l-min", type=positive_int,
                             help=f"first layer that may exit (default: {saved}half the depth)")
        command.add_argument("--batch-size", type=int, default=32)
    verify = add("verify-report", cmd_verify_report, "check a pipeline report's numbers against its MLflow runs")
    verify.add_argument("report", nargs="?", default="reports/cpu/report.json")
    verify.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the report's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leap", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--profile", default=None, help="params/<name>.yaml or a path (default: cpu)")
        command.add_argument("--data-dir", default=None, help="data directory (default: the profile's)")
        command.add_argument("--set", action="append", metavar="KEY=VALUE",
                             help="override a profile field, e.g. --set training.lr=1e-4 (repeatable)")
        command.set_defaults(func=func)
        return command

    _add_stage_commands(add)
    _add_analysis_commands(add)
    _add_depth_commands(add)
    _add_bench_commands(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from leap_core.models import ModelNotFoundError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, OSError, ModelNotFoundError) as err:  # bad input: one line naming what is wrong
        if args.debug:
            raise
        print(f"leap: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
