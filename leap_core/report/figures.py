"""The report's figures (PNG), each with the paper's reference points where the paper gives them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from leap_core.io import atomic_path
from leap_core.pipeline.handoff import BASELINE_ARM, LEAP_ARM
from leap_core.report.aggregate import best_leap, mean_curve, ok_arms


def _figure(path: Path, draw: Callable[[Any], None]) -> Path:
    # deferred: at top, importing this module would load matplotlib
    import matplotlib

    matplotlib.use("Agg")
    # deferred: at top, importing this module would load matplotlib
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    draw(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _layers(curve: Sequence[Any]) -> tuple[list[int], list[float]]:
    points = [(i + 1, v) for i, v in enumerate(curve) if v is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _plot_curves(ax: Any, results: Sequence[Mapping[str, Any]], key: str, paper: Mapping[int, float] | None,
                 paper_label: str, arms: Sequence[str] = (BASELINE_ARM, LEAP_ARM)) -> None:
    for arm, style in zip(arms, ("o-", "s-")):
        curve = mean_curve(results, arm, key)
        if curve:
            ax.plot(*_layers(curve), style, label=f"{arm} (ours, mean of seeds)")
    if paper:
        ax.plot(list(paper), list(paper.values()), "k*", markersize=11, label=paper_label)
    ax.set_xlabel("layer")


def figures(out_dir: Path, results: Sequence[Mapping[str, Any]], ref: Mapping[str, Any]) -> list[Path]:
    """PNG figures, each with the paper's reference points where the paper gives them."""
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    if not (ok_arms(results, LEAP_ARM) or ok_arms(results, BASELINE_ARM)):
        return made

    def similarity(ax):
        _plot_curves(ax, results, "similarity_to_final", ref["similarity_to_final"]["leap"], "paper, LEAP")
        base6 = ref["similarity_to_final"]["baseline"][6]
        ax.plot([6], [base6], "kx", markersize=10, label="paper, baseline")
        ax.set_ylabel("cos(e_l, e_final)")
        ax.set_title("Similarity of each layer to the final layer")

    def exits(ax):
        _plot_curves(ax, results, "cumulative_exit_rate",
                     {6: ref["exits"]["leap_exit_rate_at_layer_6"], 7: ref["exits"]["leap_exit_by_layer_7"]},
                     "paper, LEAP")
        ax.set_ylabel("share of sentences exited by layer")
        ax.set_title("Cumulative exit distribution (theta 0.95, k 1)")

    def contraction(ax):
        for arm, style in ((BASELINE_ARM, "o-"), (LEAP_ARM, "s-")):
            curve = mean_curve(results, arm, "contraction.per_layer") or []
            if any(v is not None for v in curve):
                ax.plot(*_layers(curve), style, label=f"{arm} (ours)")
        ax.axhline(ref["median_contraction"], color="k", ls="--", label="paper, LEAP median")
        ax.set_ylabel("median contraction ratio gamma_l")
        ax.set_title("How fast layers close in on the final one (< 1: converging)")

    def nn10(ax):
        _plot_curves(ax, results, "nn10_per_layer", ref["nn10"]["per_layer"], "paper, LEAP")
        ax.axhline(ref["deployment_checklist"]["min_nn10"], color="grey", ls=":", label="checklist floor")
        ax.set_ylabel("NN@10 overlap with full depth")
        ax.set_title("Neighbourhood agreement with the final layer")

    def pareto(ax):
        best = best_leap(results)
        sweep = best["metrics"].get("sweep") if best else None
        if not sweep:
            return
        for method, style in (("threshold", "o"), ("fixed", "s"), ("patience", "^")):
            points = sweep.get(method, [])
            ax.plot([p["layer_reduction"] for p in points], [p["stsb"] for p in points], style,
                    label=f"{method} (ours)", alpha=0.8)
        front = sweep.get("pareto", [])
        ax.plot([p["layer_reduction"] for p in front], [p["stsb"] for p in front], "k-", lw=1, label="Pareto front")
        ax.plot([ref["exits"]["leap_layer_reduction"]], [ref["stsb"]["leap_exited"]], "r*", markersize=12,
                label="paper, LEAP theta 0.95")
        ax.plot([12 / ref["fixed_depth"]["layers"]], [ref["fixed_depth"]["stsb"]], "rs", markersize=8,
                label="paper, 7-layer model")
        ax.set_xlabel("layer reduction (x)")
        ax.set_ylabel("STS-B Spearman")
        ax.set_title("Quality vs speed: thresholds, fixed depths, patience")

    for name, draw in (("layer_similarity", similarity), ("exit_distribution", exits), ("contraction", contraction),
                       ("nn10_by_layer", nn10), ("theta_pareto", pareto)):
        made.append(_figure(folder / f"{name}.png", draw))
    return made
