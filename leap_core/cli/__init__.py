"""The `leap` command: each subcommand is one stage of leap_core.pipeline.experiment, or a report built from them.

Every subcommand is a pair: add_<command>_args (its options, each with help) and cmd_<command> (calls the library).
Options a profile also sets default to None and fall back to the profile's value.
"""

from __future__ import annotations

from leap_core.cli import stages, analyses, shipping, timing, search, checks  # noqa: F401 - registering, in --help order
from leap_core.cli.common import COMMANDS, ERROR_EXIT_CODE, build_parser, configure_logging, error_line, main

__all__ = ["COMMANDS", "ERROR_EXIT_CODE", "build_parser", "configure_logging", "error_line", "main"]


