"""The flow's report: every arm's numbers, seed intervals, the paper's claims checked one by one, figures.

write_report(out_dir, profile, results, analysis, latency, run) writes report.json, report.md and
figures/*.png into out_dir (each atomically) from what the flow computed; nothing in it is typed by
hand. The paper's numbers come from paper_reference.yaml. The rooms:

    aggregate.py  numbers from the arms (seed means, curves, BEIR against a reference)
    claims.py     the paper's claims, one function each, with THRESHOLDS for the verdicts
    figures.py    the PNG figures
    document.py   report.md, section by section
    markdown.py   number and table formatting, shared by every report
    verify.py     report.json against its MLflow runs (`leap verify-report`)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from leap_core.io import write_report_files
from leap_core.pipeline.handoff import BASELINE_ARM, LEAP_ARM
from leap_core.report.aggregate import SEED_KEYS, load_reference, seed_summaries
from leap_core.report.claims import DOES_NOT, NOT_MEASURED, PARTLY, REPLICATES, claims
from leap_core.report.document import (beir_table, beyond_lines, headline_rows, reduced_rows, render_markdown,
                                       retrofit_table, step_table)
from leap_core.report.figures import figures
from leap_core.report.markdown import fmt
from leap_core.report.verify import verify_against_mlflow

__all__ = ["DOES_NOT", "NOT_MEASURED", "PARTLY", "REPLICATES", "SEED_KEYS", "claims", "load_reference",
           "rebuild", "render_markdown", "seed_summaries", "verify_against_mlflow", "write_report"]


def write_report(out_dir: str | Path, profile: Any, results: Sequence[Mapping[str, Any]],
                 analysis: Mapping[str, Any] | None = None, latency: Mapping[str, Any] | None = None,
                 run: Mapping[str, Any] | None = None,
                 retrofit: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """report.json, report.md and figures/ in out_dir; returns {"json": path, "markdown": text, "figures": [paths]}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref, run = load_reference(), dict(run or {})
    results = [dict(r) for r in results]
    first = next((r["metrics"] for r in results if r["status"] == "ok" and r.get("metrics")), {})
    scale = {**{k: v for k, v in dataclasses.asdict(profile.models).items()},
             "n_sentences": profile.data.n_sentences, "epochs": profile.training.epochs,
             "batch_size": profile.training.batch_size, "seeds": list(profile.seeds),
             "reduced_budget": dict(profile.reduced_budget) or "same as main", "n_pairs": first.get("n_pairs"),
             **dataclasses.asdict(profile.exit)}
    failed = [{"name": f"{r['arm']}-seed{r['seed']}", "step": r["failed_step"], "error": r["error"]}
              for r in results if r["status"] != "ok"]
    failed += [{"name": step, "step": step, "error": error} for step, error in (run.get("step_failures") or {}).items()]
    steps = run.get("steps") or []
    figure_paths = figures(out_dir, results, ref)
    latency_table = [[row["mode"], row["batch_size"], fmt(row["median_ms"], 1), fmt(row["p95_ms"], 1),
                      fmt(row.get("speedup"), 2), fmt(row.get("theoretical_reduction"), 2), fmt(row.get("efficiency"), 2)]
                     for row in (latency or {}).get("table", [])]
    report = {
        "profile": profile.name, "scale": scale, "run": run, "reference": ref,
        "headline": headline_rows(results, ref),
        "seed_summaries": {arm: seed_summaries(results, arm) for arm in (BASELINE_ARM, LEAP_ARM)},
        "claims": claims(results, analysis, latency, ref, profile.exit.l_min),
        "beyond": beyond_lines(latency, analysis, results, profile.registry),
        "latency_table": latency_table,
        "latency_settings": (f"{latency['settings']['warmup']} warm-up + {latency['settings']['iterations']} timed "
                             f"iterations, {latency['settings']['dtype']}, {latency['environment'].get('torch_threads')} "
                             f"threads, {latency['environment'].get('device')}" if latency else ""),
        "ablation": reduced_rows(results, "ablation"), "sweep": reduced_rows(results, "sweep"),
        "beir_table": beir_table((analysis or {}).get("beir") or {}),
        "retrofit": dict(retrofit or {}), "retrofit_table": retrofit_table(retrofit or {}),
        "arms": results, "failed": failed, "analysis": analysis, "latency": latency,
        "figures": [str(p) for p in figure_paths], "steps": step_table(steps), "step_tasks": steps,
        "run_minutes": (run.get("report_at") - run.get("started_at")) / 60
        if run.get("report_at") is not None and run.get("started_at") is not None else None,
    }
    _, markdown = write_report_files(report, out_dir / "report.json", out_dir / "report.md", render_markdown)
    return {"json": out_dir / "report.json", "markdown": markdown, "figures": figure_paths}


def rebuild(report_path: str | Path, profile: Any, out_dir: str | Path | None = None) -> dict[str, Any]:
    """write_report again from the inputs a report.json records (arms, analysis, latency, retrofit, run), into
    out_dir (default: beside it): what `resume report` does, without the run's Metaflow datastore."""

    recorded = json.loads(Path(report_path).read_text(encoding="utf-8"))
    return write_report(out_dir or Path(report_path).parent, profile, recorded["arms"],
                        analysis=recorded["analysis"], latency=recorded["latency"], run=recorded["run"],
                        retrofit=recorded["retrofit"])
