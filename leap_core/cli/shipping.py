"""`leap` commands that choose and ship an operating point: calibrate, pareto, retrofit, cut, export."""

from __future__ import annotations

import argparse
from pathlib import Path

from leap_core.cli.common import command, or_default, positive_int, profile_of, write_and_print
from leap_core.io import plain_name
from leap_core.query_encoder.points import calibrate_with_queries, pareto_with_queries
from leap_core.report.retrofit_report import summary_rows
from leap_core.retrofit.exit_branch import calibrated_depth, save_cut
from leap_core.retrofit.retrofit import default_report, retrofit_into_report
from leap_core.serve.export import export_onnx


def add_query_encoders_arg(parser: argparse.ArgumentParser) -> None:
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
    add_query_encoders_arg(parser)


@command("calibrate", "the fastest policy within quality floors on dev", add_calibrate_args)
def cmd_calibrate(args: argparse.Namespace) -> None:
    """The fastest deployable policy (full, fixed:N, the exit rule, per-layer thresholds) within the floors on dev."""

    profile = profile_of(args)
    result = calibrate_with_queries(profile, args.model, or_default(args.max_sts_drop, profile.registry.policy_max_sts_drop),
                                    args.max_ndcg_drop, save=args.save, query_encoders=args.query_encoders)
    write_and_print(result, args.out, {key: value for key, value in result.items() if key != "dev_full"})


def add_pareto_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, exit branch folder, hub id or random-bert: spec")
    parser.add_argument("--name", required=True, help="report name: reports/pareto/NAME.{json,md,png}")
    parser.add_argument("--out-dir", default="reports/pareto", help="where the report goes (default: %(default)s)")
    parser.add_argument("--max-sts-drop", type=float, help="calibration floor (see calibrate)")
    parser.add_argument("--max-ndcg-drop", type=float, default=0.03, help="calibration floor (see calibrate)")
    parser.add_argument("--no-timing", action="store_true", help="skip timing the chosen policy")
    add_query_encoders_arg(parser)


@command("pareto", "quality vs depth of every deployable point -> reports/pareto/NAME.*", add_pareto_args)
def cmd_pareto(args: argparse.Namespace) -> None:
    """Quality against depth for every deployable point -> reports/pareto/<name>.{json,md,png}."""

    plain_name(args.name)  # a report name, never a path out of --out-dir (ValueError: one line, exit 2)
    profile = profile_of(args)
    result = pareto_with_queries(profile, args.model, args.name, args.out_dir,
                                 or_default(args.max_sts_drop, profile.registry.policy_max_sts_drop), args.max_ndcg_drop,
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

    profile = profile_of(args)
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

    scheme = args.quantization or ("auto" if args.int8 and not args.per_channel else None)
    print(export_onnx(args.model, args.out, args.depth, args.int8, args.per_channel, scheme, args.check_texts,
                      args.threads))
