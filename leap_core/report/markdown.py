"""Numbers and tables as markdown: the one formatting module of every report (pipeline, eval suite, bench)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

# Data sets as their authors print them (reports name them so), by the lower-case names of folders and results.
DATASET_NAMES = {"stsb": "STS-B", "scifact": "SciFact", "nfcorpus": "NFCorpus", "fiqa": "FiQA", "arguana": "ArguAna",
                 "scidocs": "SCIDOCS"}


def fmt(value: Any, spec: int | str = 3) -> str:
    """A cell: "-" when missing or not finite; a bool as yes/no; with `spec` digits an integer as is and a float
    rounded; with a format spec (".2f", "+.1%") the value formatted by it."""
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(spec, str):
        return format(value, spec)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{spec}f}"
    return str(value)


def fmt_interval(summary: Mapping[str, Any] | None, digits: int = 3) -> str:
    """"est [low, high]" of a seed_summary / bootstrap dict; just the estimate when no interval is known."""
    if not summary:
        return "-"
    if summary.get("low") is None:
        return fmt(summary["estimate"], digits)
    return f"{fmt(summary['estimate'], digits)} [{fmt(summary['low'], digits)}, {fmt(summary['high'], digits)}]"


def fmt_relative_ci(value: float, ci: Sequence[float]) -> str:
    """"-1.2% [-2.3, -0.1]": a relative change and its CI, in percent."""
    return f"{100 * value:+.1f}% [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def fmt_diff(diff: Mapping[str, Any]) -> str:
    """"+0.012 [+0.004, +0.020]": a paired difference {diff, ci_low, ci_high} with its CI."""
    return f"{diff['diff']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """A markdown table and the blank line after it (align: one "---" / "---:" per column)."""
    rule = "|" + "".join(f"{a}|" for a in align) if align else "|" + "---|" * len(header)
    return (["| " + " | ".join(header) + " |", rule]
            + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""])
