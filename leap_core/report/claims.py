"""The paper's claims, each checked against our numbers: one small function per claim, listed in CLAIMS.

A verdict ("replicates", "partly", "does not", "not measured") follows the rule stated in its row, with the
cut-offs in THRESHOLDS; the paper's numbers are read from paper_reference.yaml, never typed here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from leap_core.pipeline.handoff import BASELINE_ARM, LEAP_ARM
from leap_core.report.aggregate import (beir_relative, best_leap, estimate, layer_value, mean_curve, ok_arms,
                                        seed_summaries)
from leap_core.report.markdown import DATASET_NAMES, fmt, fmt_interval

REPLICATES, PARTLY, DOES_NOT, NOT_MEASURED = "replicates", "partly", "does not", "not measured"

# Every cut-off a verdict uses, by claim (rates are fractions).
THRESHOLDS: dict[str, dict[str, float]] = {
    "exit_incompatible": {"exit_rate": 0.10, "similarity": 0.7, "partly_exit_rate": 0.5},
    "leap_exits": {"share_of_paper": 0.9, "partly_exit_rate": 0.85},
    "stsb_cost": {"slack": 0.01, "partly_gap": -0.05},
    "monitoring": {"replicates": 0.15, "partly": 0.08},
    "speedup_bs1": {"replicates": 0.75, "partly": 0.5},
    "speedup_bs32": {"replicates": 0.75, "partly": 0.9},
    "ablation": {"without": 0.10, "with": 0.5},
    "beta_sweep": {"partly": 0.5},
    "beir_flat": {"flat": 0.03, "partly": -0.10},
    "external": {"exit_rate": 0.10},
}


@dataclass(frozen=True)
class Claim:
    claim: str
    ours: str
    paper: str
    verdict: str
    why: str
    rule: str


@dataclass(frozen=True)
class Evidence:
    """What the claims are checked on: every arm's result, the analysis and latency steps, the paper's numbers."""

    results: Sequence[Mapping[str, Any]]
    analysis: Mapping[str, Any]
    latency: Mapping[str, Any]
    ref: Mapping[str, Any]
    l_min: int

    @cached_property
    def leap(self) -> dict[str, Any]:
        return seed_summaries(self.results, LEAP_ARM)

    @cached_property
    def base(self) -> dict[str, Any]:
        return seed_summaries(self.results, BASELINE_ARM)


def by_thresholds(value: float | None, rules: Sequence[tuple[Callable[[float], bool], str]]) -> str:
    """The verdict of the first rule `value` passes; DOES_NOT when none does; NOT_MEASURED without a value."""
    if value is None or not math.isfinite(value):
        return NOT_MEASURED
    for test, verdict in rules:
        if test(value):
            return verdict
    return DOES_NOT


def _percent(value: float | None) -> str:
    return fmt(value * 100 if value is not None else None, 1)


def exit_incompatible_baseline(e: Evidence) -> Claim:
    t = THRESHOLDS["exit_incompatible"]
    rate = estimate(e.base, "exit_rate")
    similarity = layer_value(mean_curve(e.results, BASELINE_ARM, "similarity_to_final"), e.l_min)
    return Claim(
        "Layer-aligned distillation gives 0% exit (flat similarity to final)",
        f"baseline exit rate {fmt_interval(e.base.get('exit_rate'))}; cos(e_{e.l_min}, e_L) {fmt(similarity)}",
        f"{e.ref['exits']['baseline_exit_rate']:.0%} exit; cos(e_6, e_12) {e.ref['similarity_to_final']['baseline'][6]}",
        by_thresholds(rate, [(lambda v: v < t["exit_rate"] and (similarity or 1) < t["similarity"], REPLICATES),
                             (lambda v: v < t["partly_exit_rate"], PARTLY)]),
        f"exit rate < {t['exit_rate']:.0%} with similarity < {t['similarity']} at l_min replicates; "
        f"< {t['partly_exit_rate']:.0%} partly.",
        "baseline (final + inter + contrast, no exit terms), mean over seeds")


def leap_exits_early(e: Evidence) -> Claim:
    t, exits = THRESHOLDS["leap_exits"], e.ref["exits"]
    by7, reduction = estimate(e.leap, "exit_by_layer_7"), estimate(e.leap, "layer_reduction")
    verdict = NOT_MEASURED if by7 is None else (
        REPLICATES if by7 >= t["share_of_paper"] * exits["leap_exit_by_layer_7"]
        and reduction >= t["share_of_paper"] * exits["leap_layer_reduction"]
        else PARTLY if estimate(e.leap, "exit_rate") >= t["partly_exit_rate"] else DOES_NOT)
    return Claim(
        f"LEAP makes layers exit early: {exits['leap_exit_by_layer_7']:.1%} by layer 7, "
        f"{exits['leap_layer_reduction']:.2f}x layer reduction",
        f"exit by L7 {fmt_interval(e.leap.get('exit_by_layer_7'))}, any exit {fmt_interval(e.leap.get('exit_rate'))}, "
        f"reduction {fmt_interval(e.leap.get('layer_reduction'), 2)}x",
        f"{exits['leap_exit_by_layer_7']:.1%} by L7, {exits['leap_layer_reduction']}x",
        verdict, f"both within {t['share_of_paper']:.0%} of the paper replicates; >= {t['partly_exit_rate']:.0%} of "
                 "rows exiting (at any layer) partly.",
        "LEAP arm, mean and 95% t-interval over seeds")


def early_exit_costs_little(e: Evidence) -> Claim:
    t, sts = THRESHOLDS["stsb_cost"], e.ref["stsb"]
    gap = estimate(e.leap, "stsb_exited") - estimate(e.base, "stsb_full") if e.leap and e.base else None
    paper_gap = sts["leap_exited"] - sts["baseline_full"]
    return Claim(
        f"Early exit costs little STS-B: {sts['leap_exited']:.3f} exited vs {sts['baseline_full']:.3f} baseline",
        f"LEAP exited {fmt_interval(e.leap.get('stsb_exited'))} vs baseline full "
        f"{fmt_interval(e.base.get('stsb_full'))} (gap {fmt(gap)})",
        f"{sts['leap_exited']} +- {sts['leap_exited_ci_half_width']} vs {sts['baseline_full']} (gap {paper_gap:.3f})",
        by_thresholds(gap, [(lambda v: v >= paper_gap - t["slack"], REPLICATES),
                            (lambda v: v >= t["partly_gap"], PARTLY)]),
        f"a gap no worse than the paper's by more than {t['slack']} replicates; within {-t['partly_gap']} partly.",
        "mean over seeds")


def monitoring_overhead(e: Evidence) -> Claim:
    t, paper = THRESHOLDS["monitoring"], e.ref["latency"]["monitoring_overhead"]
    overhead = e.latency.get("overhead_monitored")
    return Claim(
        f"Per-layer monitoring costs {paper:.0%} of inference time", f"{_percent(overhead)}%", f"{paper:.1%}",
        by_thresholds(overhead, [(lambda v: v >= t["replicates"], REPLICATES), (lambda v: v >= t["partly"], PARTLY)]),
        "our encoder pools with one matmul per layer and syncs with the host once per checked layer; "
        f">= {t['replicates']:.0%} replicates, >= {t['partly']:.0%} partly.",
        "monitored vs full mode, median over timed iterations, same process")


def batch1_speedup(e: Evidence) -> Claim:
    t, paper = THRESHOLDS["speedup_bs1"], e.ref["latency"]
    efficiency = e.latency.get("speedup_bs1_vs_theoretical")
    return Claim(
        f"Batch-1 speedup {paper['speedup_bs1']}x, {paper['speedup_bs1_vs_theoretical']:.1%} of the layer reduction",
        f"{fmt(e.latency.get('speedup_bs1'), 2)}x, {_percent(efficiency)}% of {fmt(e.latency.get('layer_reduction'), 2)}x",
        f"{paper['speedup_bs1']}x, {paper['speedup_bs1_vs_theoretical']:.1%}",
        by_thresholds(efficiency, [(lambda v: v >= t["replicates"], REPLICATES), (lambda v: v >= t["partly"], PARTLY)]),
        f"the speedup tracks the layer reduction (>= {t['replicates']:.0%} of it replicates); its size follows our "
        "exit depth.", "compact mode at batch 1 vs full, this CPU")


def batched_exit_loses_its_gain(e: Evidence) -> Claim:
    t, paper = THRESHOLDS["speedup_bs32"], e.ref["latency"]["speedup_bs32"]
    efficiency = e.latency.get("speedup_bs32_batch_vs_theoretical")
    return Claim(
        f"Batched early exit loses most of its gain ({paper}x at batch 32)",
        f"paper's batch mode {fmt(e.latency.get('speedup_bs32_batch'), 2)}x ({_percent(efficiency)}% of the "
        f"reduction); compact {fmt(e.latency.get('speedup_bs32_compact'), 2)}x",
        f"{paper}x ({paper / e.ref['exits']['leap_layer_reduction']:.0%})",
        by_thresholds(efficiency, [(lambda v: v < t["replicates"], REPLICATES), (lambda v: v < t["partly"], PARTLY)]),
        "the latest-exiting row sets a batch's cost only when exit layers spread; below "
        f"{t['replicates']:.0%} of the reduction replicates the loss.", "batch mode at batch 32 vs full")


def fixed_depth_matches(e: Evidence) -> Claim:
    best = best_leap(e.results)
    sweep = best["metrics"].get("sweep") if best else None
    ours, verdict = "-", NOT_MEASURED
    if sweep:
        fixed = {p["depth"]: p for p in sweep["fixed"]}
        depth = int(round(best["metrics"]["mean_exit_layer"]))
        beats = sweep["early_exit_beats_truncation"]
        ours = (f"cut at layer {depth}: {fmt(fixed.get(depth, {}).get('stsb'))} vs early exit "
                f"{fmt(best['metrics']['stsb_exited'])} at mean layer {fmt(best['metrics']['mean_exit_layer'], 2)}; "
                f"early exit on the Pareto front: {beats}")
        verdict = DOES_NOT if beats else REPLICATES
    paper = e.ref["fixed_depth"]
    return Claim(
        "A model cut to a fixed depth matches or beats early exit", ours,
        f"fixed {paper['layers']} layers {paper['stsb']} vs LEAP exited {paper['leap_exited']}", verdict,
        "replicates when no threshold point of the sweep is on the quality/speed Pareto front.",
        "best LEAP seed, every fixed depth of the same model (the paper trained a separate 7-layer model)")


def only_l_exit_makes_layers_exit(e: Evidence) -> Claim:
    t, paper = THRESHOLDS["ablation"], e.ref["ablation_exit_rate"]
    ablation = {arm: r["metrics"]["exit_rate"] for arm in paper for r in ok_arms(e.results, arm)}
    verdict = NOT_MEASURED
    if len(ablation) == len(paper):
        without = max(v for arm, v in ablation.items() if arm != "plus_exit")
        verdict = (REPLICATES if without < t["without"] and ablation["plus_exit"] >= t["with"]
                   else PARTLY if ablation["plus_exit"] > without else DOES_NOT)
    return Claim(
        "Only adding L_exit makes layers exit (ablation)",
        ", ".join(f"{arm} {fmt(v)}" for arm, v in ablation.items()) or "-",
        ", ".join(f"{arm} {v}" for arm, v in paper.items()), verdict,
        f"< {t['without']:.0%} exit without L_exit and >= {t['with']:.0%} with it replicates; more with than "
        "without partly.", "reduced budget, first seed")


def exit_robust_to_beta(e: Evidence) -> Claim:
    t, paper = THRESHOLDS["beta_sweep"], e.ref["beta_sweep"]
    rates = {r["arm"]: r["metrics"]["exit_rate"] for r in e.results
             if r.get("group") == "sweep" and r["status"] == "ok" and r.get("metrics")}
    betas = paper["betas"]
    return Claim(
        f"Exit is robust to beta: every beta in {{{betas[0]}..{betas[-1]}}} gives > {paper['min_exit_rate']:.0%} exit",
        ", ".join(f"{arm} {fmt(v)}" for arm, v in rates.items()) or "-",
        f"all > {paper['min_exit_rate']:.0%}, {paper['layer_reduction_range'][0]}-{paper['layer_reduction_range'][1]}x",
        by_thresholds(min(rates.values()) if rates else None,
                      [(lambda v: v >= paper["min_exit_rate"], REPLICATES), (lambda v: v >= t["partly"], PARTLY)]),
        f"every arm above the paper's {paper['min_exit_rate']:.0%} replicates; above {t['partly']:.0%} partly (our "
        "LEAP objective also has L_late).", "reduced budget, first seed")


def leap_retrieves_better(e: Evidence) -> Claim:
    gain = e.ref["beir"]["leap_full_vs_baseline_ndcg10"]
    rows = beir_relative(e.analysis.get("beir") or {}, LEAP_ARM, BASELINE_ARM, "full", "full")
    verdict, ours = NOT_MEASURED, "-"
    if rows:
        mean = float(np.mean([v["relative"] for v in rows.values()]))
        every_ci_below = all(v["difference_ci"] and v["difference_ci"]["high"] < 0 for v in rows.values())
        verdict = REPLICATES if mean >= 0 else DOES_NOT if every_ci_below else PARTLY
        ours = "; ".join(f"{d} {v['relative']:+.1%} (NDCG@10 diff CI [{fmt(v['difference_ci']['low'])}, "
                         f"{fmt(v['difference_ci']['high'])}])" for d, v in rows.items() if v["difference_ci"])
    return Claim(
        f"LEAP at full depth retrieves better than the baseline (BEIR NDCG@10 {gain:+.1%})", ours,
        f"{gain:+.1%} over 5 BEIR sets", verdict,
        "a mean gain replicates; a loss with every CI below zero does not; otherwise partly.",
        "best LEAP vs best baseline seed, paired bootstrap over queries")


def early_exit_keeps_retrieval_flat(e: Evidence) -> Claim:
    t, paper = THRESHOLDS["beir_flat"], e.ref["beir"]["early_exit_relative_change"]
    flat = [name for name, change in paper.items() if change == 0]
    drops = {name: change for name, change in paper.items() if change < 0}
    rows = beir_relative(e.analysis.get("beir") or {}, LEAP_ARM, None, "compact", "full")
    verdict, ours = NOT_MEASURED, "-"
    if rows:
        worst = min(v["relative"] for v in rows.values())
        ours = "; ".join(f"{d} {v['relative']:+.1%}" for d, v in rows.items())
        verdict = (REPLICATES if all(abs(v["relative"]) <= t["flat"] for d, v in rows.items() if d in paper)
                   and any(d in paper for d in rows) else PARTLY if worst >= t["partly"] else DOES_NOT)
    names = DATASET_NAMES
    drop_text = ", ".join(f"{names.get(n, n)} {c:.1%}" for n, c in drops.items())
    return Claim(
        f"Early exit leaves {names.get(flat[0], flat[0])} retrieval flat ({drop_text.replace(' -', ' drops ')})",
        ours, f"{' and '.join(names.get(n, n) for n in flat)} flat, {drop_text}", verdict,
        f"within {t['flat']:.0%} on the sets the paper calls flat replicates; no drop beyond {-t['partly']:.0%} partly.",
        "LEAP exited (compact) vs the same model at full depth")


def published_encoders_do_not_exit(e: Evidence) -> Claim:
    t = THRESHOLDS["external"]
    external = e.analysis.get("external") or {}
    verdict, ours = NOT_MEASURED, "-"
    if external:
        rates = {d["model"].split("/")[-1]: d["exit_rate"] for d in external.values()}
        verdict = (REPLICATES if max(rates.values()) < t["exit_rate"]
                   else PARTLY if min(rates.values()) < t["exit_rate"] else DOES_NOT)
        # The paper quotes layer 7 of 12: the layer just past the middle, L // 2 + 1, for any depth.
        ours = ", ".join(f"{m} {fmt(v)} (cos L{len(d['similarity_to_final']) // 2 + 1} of "
                         f"{len(d['similarity_to_final'])}: {fmt(d['similarity_to_final'][len(d['similarity_to_final']) // 2])})"
                         for (m, v), d in zip(rates.items(), external.values()))
    rates, similarity = e.ref["external_exit_rate"], e.ref["external_similarity_layer_7"]
    return Claim(
        "Published sentence encoders are exit-incompatible (0% exit)", ours,
        f"all-MiniLM-L12-v2 {rates['all-MiniLM-L12-v2']:.0%} (cos L7 {similarity['all-MiniLM-L12-v2']}), MiniLM-L6 "
        f"{rates['MiniLM-L6']:.1%}", verdict,
        f"every model below {t['exit_rate']:.0%} exit replicates.",
        "theta 0.95, k 1, l_min half the depth, STS-B test sentences")


CLAIMS: tuple[Callable[[Evidence], Claim], ...] = (
    exit_incompatible_baseline, leap_exits_early, early_exit_costs_little, monitoring_overhead, batch1_speedup,
    batched_exit_loses_its_gain, fixed_depth_matches, only_l_exit_makes_layers_exit, exit_robust_to_beta,
    leap_retrieves_better, early_exit_keeps_retrieval_flat, published_encoders_do_not_exit)


def claims(results: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any] | None,
           latency: Mapping[str, Any] | None, ref: Mapping[str, Any], l_min: int) -> list[dict[str, str]]:
    """Each claim of the paper with our number (and interval), the paper's, a verdict and why."""
    evidence = Evidence(results, analysis or {}, latency or {}, ref, l_min)
    return [dataclasses.asdict(check(evidence)) for check in CLAIMS]
