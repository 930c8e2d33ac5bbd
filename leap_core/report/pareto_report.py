"""reports/pareto/<name>.{json,md,png}: a `leap pareto` result as markdown and a figure, from the JSON alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leap_core.io import atomic_path
from leap_core.report.markdown import fmt_diff

FIGURE_SETS = ("stsb-dev", "stsb-test", "scifact-test", "nfcorpus-test")
KIND_STYLE = {"rule": ("tab:blue", "."), "thresholds": ("tab:green", "x"), "oracle": ("tab:gray", "+")}


def verdict(result: dict[str, Any]) -> str:
    """One plain sentence on whether adaptive exit beats the fixed-cut line, and what is recommended."""
    chosen, wins = result["chosen"], result["adaptive_wins_on"]
    best = result["best_adaptive"]
    if wins:
        return (f"Adaptive exit ({best['name']}, chosen on STS-B dev) is above the fixed-cut line at matched depth, "
                f"with a 95% CI above 0 and by at least {result['min_effect']}, on sets not used to choose it: "
                + "; ".join(f"{name} {fmt_diff(best['minus_cut'][name])} at mean depth "
                            f"{best['minus_cut'][name]['mean_depth']:.2f} of {result['n_layers']}" for name in wins)
                + ". "
                f"The calibrated policy is {chosen['name']}.")
    return (f"No adaptive policy beats the fixed-cut line at matched depth with a CI above 0 and by at least "
            f"{result['min_effect']} on any set not used to choose it"
            + (f" (the best on dev, {best['name']}, is {fmt_diff(best['minus_cut']['stsb-test'])} on STS-B test)" if best
               else "") + f". The recommendation is the calibrated {chosen['name']}.")


def _point_row(p: dict[str, Any], sets: list[str]) -> str:
    cells = [f"{p['sets'][s]['quality']:.3f} @ {p['sets'][s]['mean_depth']:.2f}" for s in sets]
    return f"| {p['name']} | " + " | ".join(cells) + " |"


def render_markdown(result: dict[str, Any]) -> str:
    """The report: chosen policy with speed, adaptive and oracle against the cut line, mixed-depth gap, points."""
    sets = list(result["sets"])
    chosen = result["chosen"]
    lines = [f"# Depth that pays: {result['model']}", "",
             f"{result['design']}, {result['n_layers']} layers, exits at {result['exits']}"
             + ("; a row reaching the last layer also runs the original" if result["separate_full"] else "") + ".",
             "Quality: Spearman (STS) or NDCG@10 (BEIR halves, queries split by id hash); depth: mean layers run.",
             *_subsampled(result.get("evaluation") or {}), "",
             "## Verdict", "", verdict(result), "",
             "## Chosen operating point (`leap calibrate`, floors on dev)", "",
             f"Floors: STS drop <= {result['floors']['max_sts_drop']}, NDCG@10 drop <= {result['floors']['max_ndcg_drop']} "
             f"(relative) on {', '.join(result['floors']['on'])}.", "",
             "| policy | STS-B test | layer reduction | speedup bs 1 | speedup bs 32 |", "|---|---|---|---|---|",
             f"| {chosen['name']} | {chosen['test_stsb']:.3f} | {chosen['layer_reduction']:.2f}x | "
             f"{_speed(chosen.get('speedup_bs1'))} | {_speed(chosen.get('speedup_bs32'))} |", ""]
    for title, key in (("Best adaptive policy on dev against the fixed-cut line", "best_adaptive"),
                       ("The profile's exit rule against the fixed-cut line", "at_profile_rule"),
                       ("Oracle bound (exit once within tau of the final) against the fixed-cut line", "oracle")):
        comparison = result.get(key)
        lines += [f"## {title}", ""]
        if not comparison:
            lines += ["No such point mixes depths below full depth on dev." if key != "at_profile_rule" else
                      "The profile's rule is not among this model's points (its l_min is not an exit layer).", ""]
            continue
        chosen_how = "the profile's `exit:`" if key == "at_profile_rule" else "chosen on STS-B dev"
        lines += [f"`{comparison['name']}`, {chosen_how}; quality minus the cut line at the same mean depth, "
                  "paired bootstrap 95% CI:", "", "| set | mean depth | cut line | difference [95% CI] |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {c['mean_depth']:.2f} | {c['line']:.3f} | {fmt_diff(c)} |"
                  for name, c in comparison["minus_cut"].items()]
        lines += ["", "Pairs whose two sentences exit at different layers (mixed) against the same layer:", "",
                  "| set | mixed pairs | loss vs full | same-layer pairs | loss vs full |", "|---|---|---|---|---|"]
        for name, gap in comparison["mixed_depth_gap"].items():
            lines.append(f"| {name} | {gap['mixed']['n_pairs']} | {_loss(gap['mixed'])} | {gap['same']['n_pairs']} | "
                         f"{_loss(gap['same'])} |")
        lines.append("")
    lines += ["## Points (quality @ mean depth)", "", "| point | " + " | ".join(sets) + " |",
              "|---|" + "---|" * len(sets)]
    lines += [_point_row(p, sets) for p in result["points"] if p["kind"] in ("full", "fixed")]
    front = [p for p in result["points"] if p["kind"] in ("rule", "thresholds") and p.get("on_dev_front")]
    lines += [_point_row(p, sets) for p in front]
    lines += ["", f"Adaptive rows: the {len(front)} rule / threshold points on the STS-B dev Pareto front "
              f"(of {sum(p['kind'] in ('rule', 'thresholds') for p in result['points'])}); every point is in the JSON.", ""]
    return "\n".join(lines)


def _subsampled(evaluation: dict[str, Any]) -> list[str]:
    if not evaluation.get("max_beir_docs"):
        return []
    return [f"BEIR subsampled (retrieval.subsample): at most {evaluation['max_beir_docs']} documents "
            f"(judged ones first) and {evaluation.get('max_beir_queries') or 'all'} queries per set."]


def _speed(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _loss(group: dict[str, Any]) -> str:
    return f"{group['loss']:+.3f}" if "loss" in group else "-"


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Quality against mean depth per set: the fixed-cut line, rule and threshold points, the oracle, the choice."""
    import matplotlib  # optional and heavy: only the figure needs it

    matplotlib.use("Agg")
    # deferred: at top, importing this module would load matplotlib
    import matplotlib.pyplot as plt

    shown = [s for s in FIGURE_SETS if s in result["sets"]]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
    for ax, name in zip(axes[0], shown):
        cuts = sorted((p for p in result["points"] if p["kind"] in ("fixed", "full")),
                      key=lambda p: p["sets"][name]["mean_depth"])
        ax.plot([p["sets"][name]["mean_depth"] for p in cuts], [p["sets"][name]["quality"] for p in cuts], "k-o",
                ms=4, label="fixed cuts")
        for kind, (color, marker) in KIND_STYLE.items():
            pts = [p for p in result["points"] if p["kind"] == kind]
            ax.scatter([p["sets"][name]["mean_depth"] for p in pts], [p["sets"][name]["quality"] for p in pts],
                       s=10, c=color, marker=marker, label=kind, alpha=0.6)
        chosen = result["chosen"]["sets"][name]
        ax.scatter([chosen["mean_depth"]], [chosen["quality"]], s=80, facecolors="none", edgecolors="red",
                   label="chosen")
        ax.set_title(name)
        ax.set_xlabel("mean layers run")
        ax.set_ylabel("NDCG@10" if result["sets"][name]["kind"] == "ndcg" else "Spearman")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(result["model"], fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def readme_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """The README's table: per report, the calibrated policy, its test quality and speed, and adaptive vs the cut."""
    rows = ["| model | chosen on dev | STS-B test (full depth) | layer reduction | speedup bs 1 / bs 32 "
            "| best adaptive minus cut line, STS-B test [95% CI] | adaptive above the line on |",
            "|---|---|---|---|---|---|---|"]
    for name, result in sorted(results.items()):
        chosen, full = result["chosen"], next(p for p in result["points"] if p["kind"] == "full")
        adaptive = result["adaptive_minus_cut"]
        rows.append(f"| {name} | {chosen['name']} | {chosen['test_stsb']:.3f} ({full['sets']['stsb-test']['quality']:.3f}) "
                    f"| {chosen['layer_reduction']:.2f}x | {_speed(chosen.get('speedup_bs1'))} / "
                    f"{_speed(chosen.get('speedup_bs32'))} | "
                    + (f"{fmt_diff(adaptive)} ({adaptive['point']})" if adaptive else "-")
                    + f" | {', '.join(result['adaptive_wins_on']) or 'no set'} |")
    return rows


def report_markdown(result: dict[str, Any], name: str) -> str:
    """reports/pareto/<name>.md exactly as write_pareto writes it."""
    return render_markdown(result) + f"\n![quality against depth]({name}.png)\n"
