"""`leap reliability`: every fault and bad input tried on the smoke profile."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from leap_core.cli.common import command, main, profile_of
from leap_core.io import write_report_files
from leap_core.report import reliability_report


def add_reliability_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reports/reliability.json",
                        help="JSON (default: %(default)s); the markdown goes beside it")


@command("reliability", "try every fault and bad input on the smoke profile", add_reliability_args)
def cmd_reliability(args: argparse.Namespace) -> None:
    """Every fault and bad input of leap_core/reliability/, tried on the smoke profile -> JSON and markdown.
    The probes that run a command get the CLI's `main` from here: the reliability package never imports the CLI."""

    from leap_core.reliability import run_probes  # loads torch and every probed module: on use only

    with tempfile.TemporaryDirectory(prefix="leap-reliability-") as work:
        results = run_probes(profile_of(args).data.data_dir, work, main=main)
    _, markdown = write_report_files(results, args.out, Path(args.out).with_suffix(".md"), reliability_report.render_markdown)
    print(markdown)
    if not all(row["held"] for row in results):
        raise SystemExit(1)
