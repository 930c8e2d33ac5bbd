"""The `leap` command: each subcommand is one stage of leap_core.pipeline.experiment, or a report built from them.

Every subcommand is a pair: add_<command>_args (its options, each with help) and cmd_<command> (calls the library).
Options a profile also sets default to None and fall back to the profile's value.
"""

from __future__ import annotations

import argparse
import logging
import sys

from leap_core.config import load_profile
from leap_core.cli import stages, analyses, shipping, timing, search, checks  # noqa: F401 - registering, in --help order
from leap_core.cli.common import COMMANDS, parse_overrides


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
