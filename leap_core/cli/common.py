"""What every `leap` subcommand shares: profile and override parsing, option types, JSON/table output, the
command registry (COMMANDS, in the order `leap --help` lists them)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Callable, NamedTuple

from leap_core.config import load_profile

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
    from leap_core.io import write_report_files

    if out:
        write_report_files(result, out)
    print(json.dumps(shown if shown is not None else result, indent=2))


def json_or_table(result: dict, args: argparse.Namespace, table: Callable[[], str]) -> None:
    """The JSON to --out; to stdout a table, or the JSON with --json."""
    from leap_core.io import write_report_files

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
