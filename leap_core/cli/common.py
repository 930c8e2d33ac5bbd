"""What every `leap` subcommand shares: profile and override parsing, option types, JSON/table output, the
command registry (COMMANDS, in the order `leap --help` lists them)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, NamedTuple

import transformers
import yaml

from leap_core import __version__
from leap_core.config import ConfigError, load_profile
from leap_core.io import write_report_files

log = logging.getLogger("leap")


def parse_overrides(items: list[str]) -> dict:
    """["training.lr=1e-4", "arms.leap.beta=0.8"] -> nested dict; values are parsed as YAML."""

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


def profile_of(args: argparse.Namespace):
    overrides = parse_overrides(getattr(args, "set", None) or [])
    if getattr(args, "data_dir", None):
        overrides.setdefault("data", {})["data_dir"] = args.data_dir
    return load_profile(args.profile, overrides)


def or_default(value: Any, profile_value: Any) -> Any:
    """An option's value, or the profile's when the option was not given."""
    return profile_value if value is None else value


def exit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--theta / --k / --l-min that were given (the rest come from the model's leap_exit.json or the profile)."""
    return {key: value for key, value in (("theta", args.theta), ("k", args.k), ("l_min", args.l_min))
            if value is not None}


def write_and_print(result: dict, out: str | None, shown: dict | None = None) -> None:
    if out:
        write_report_files(result, out)
    print(json.dumps(shown if shown is not None else result, indent=2))


def json_or_table(result: dict, args: argparse.Namespace, table: Callable[[], str]) -> None:
    """The JSON to --out; to stdout a table, or the JSON with --json."""

    if args.out:
        write_report_files(result, args.out)
    print(json.dumps(result, indent=2) if args.json else table().rstrip("\n"))


def pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE")
        pairs[name] = value
    return pairs


def checked_value(text: str, kind: type, valid: Callable[[Any], bool], why: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a number' if kind is float else 'an integer'}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{value} {why}")
    return value


def theta_arg(text: str) -> float:
    """An exit threshold: a cosine, so a number in [-1, 1]."""
    return checked_value(text, float, lambda v: -1 <= v <= 1, "is outside [-1, 1] (a cosine): no row would ever exit")


def positive_int(text: str) -> int:
    return checked_value(text, int, lambda v: v >= 1, "must be >= 1")


def add_exit_rule_args(parser: argparse.ArgumentParser, saved: str, theta_default: float | None = None) -> None:
    """--theta, --k, --l-min: the exit rule, defaulting to `saved` (where the model keeps its own)."""
    parser.add_argument("--theta", type=theta_arg, default=theta_default,
                        help=f"exit threshold on cos(p_l, p_l-k) (default: {saved})")
    parser.add_argument("--k", type=positive_int, help=f"exit test distance in layers (default: {saved})")
    parser.add_argument("--l-min", type=positive_int, help=f"first layer that may exit (default: {saved})")


def add_json_args(parser: argparse.ArgumentParser, out_help: str) -> None:
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


# The entry point lives beside the registry it reads, so that a command (reliability) can run others without
# importing the package that registers it.
DESCRIPTION = ("The `leap` command: each subcommand is one stage of leap_core.pipeline.experiment, or a report built "
               "from them.")


def _profile_arms(argv: list[str]) -> list[str] | None:
    """The arms of the profile this command line names (for `train --arm` choices); None if it does not load."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--profile")
    early.add_argument("--set", action="append", default=[])
    known, _ = early.parse_known_args(argv)
    try:
        return sorted(load_profile(known.profile, parse_overrides(known.set)).arms)
    except (ConfigError, OSError, SystemExit):
        return None  # the command itself reports the bad profile, in one line


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leap", description=DESCRIPTION)
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


def configure_logging(verbose: bool) -> None:
    """leap's own progress at INFO; the libraries' INFO logs and progress bars only with -v."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("leap", "leap_core"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("beir").setLevel(logging.INFO if verbose else logging.WARNING)  # a line per metric otherwise

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
    configure_logging(args.verbose)
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
