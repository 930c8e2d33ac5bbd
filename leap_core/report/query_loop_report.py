"""One query-encoder retrain as markdown (QueryRetrainFlow's query_retrain.md, reports/query_loop.md)."""

from __future__ import annotations

from typing import Any

from leap_core.report.markdown import fmt, table
from leap_core.roles import CANDIDATE, CHAMPION, ORIGINAL


def decision_markdown(result: dict[str, Any], title: str) -> str:
    """One retrain as markdown: the verdict and its reasons, then original, champion and candidate side by side."""
    decision = result["decision"]
    verdict = "promoted" if decision["promoted"] else "not promoted"
    lines = [f"## {title}: candidate {verdict}", "",
             f"{result['split']['logged']} logged query texts: {result['split']['n_train']} to train on, "
             f"{result['split']['n_holdout']} held out by hash (never trained on). Candidate: depth "
             f"{result['training']['depth']}, {result['training']['train_texts']} training texts (with "
             f"pseudo-queries), stopped at step {result['training']['best_step']} on {result['training']['dev_texts']}"
             f" dev texts ({result['training']['seconds'] / 60:.1f} min).", ""]
    lines += [f"- {line}" for line in decision["reasons"] + decision["facts"]] + [""]
    rows = [[ORIGINAL, "all", "1.0000 (reference)", fmt(result[ORIGINAL]["latency_ms"], ".2f"), "1.00x"]]
    for role in (CHAMPION, CANDIDATE):
        if result.get(role):
            m = result[role]
            rows.append([role, str(m["depth"]), fmt(m["agreement10"], 4), fmt(m["latency_ms"], ".2f"),
                         f"{m['speedup_vs_original']:.2f}x"])
    lines += table(["", "layers", "slice top-10 agreement", "batch-1 median ms", "speed vs original"], rows,
                   ["---", "---:", "---:", "---:", "---:"])
    return "\n".join(lines + [""])
