"""`leap monitor`'s markdown: the verdict, then reference and traffic side by side."""

from __future__ import annotations

from typing import Any, Mapping

from leap_core.report.markdown import fmt, table
from leap_core.serve.alerts import MAX_DEPTH_SHIFT, MAX_NN10_DROP, PSI_MAJOR


def monitor_markdown(result: Mapping[str, Any]) -> str:
    """A short summary: the verdict, then reference and traffic side by side."""
    ref, now = result["reference"], result["traffic"]
    verdict = "ALERT: " + "; ".join(result["alerts"]) if result["alert"] else "no alert"
    lines = [f"# Monitoring {result['model']}", "", f"Traffic `{result['traffic_log']}`: **{verdict}**.", ""]
    warnings = result.get("warnings", [])  # reports written before warnings existed have none
    lines += [f"Warning: {warning}." for warning in warnings] + ([""] if warnings else [])
    rows = [["rows", ref["n"], now["n"]], ["mean exit layer", fmt(ref["mean_exit_layer"], ".2f"),
                                             fmt(now["mean_exit_layer"], ".2f")],
            ["NN@10 vs full depth", fmt(ref.get("nn10")), fmt(now["nn10"])]]
    lines += table(["", f"reference ({ref.get('source') or 'saved'})", "traffic"], rows, ["---", "---:", "---:"])
    lines += [f"Depth shift {result['depth_shift']:+.2f} layers (alert beyond {MAX_DEPTH_SHIFT:g}); PSI "
              f"{result['psi']:.3f} ({'above' if result['psi'] > PSI_MAJOR else 'below'} the {PSI_MAJOR} mark of a "
              f"major shift); NN@10 on {now['nn10_sample']} sampled texts (alert beyond a {MAX_NN10_DROP:.0%} drop).",
              ""]
    return "\n".join(lines)
