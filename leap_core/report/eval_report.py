"""`leap eval-suite`'s markdown, from evaluation.suite.evaluate_all's dict: every number is read from it."""

from __future__ import annotations

from typing import Any, Mapping

from leap_core.report.markdown import fmt, fmt_interval, table


def _rule(point: Mapping[str, Any]) -> tuple[str, str]:
    """(method, setting) naming a sweep point."""
    setting = {"threshold": f"theta={point.get('theta')}", "fixed": f"depth={point.get('depth')}",
               "patience": f"patience={point.get('patience')}, theta={point.get('theta')}"}[point["method"]]
    return point["method"], setting


def render_markdown(results: Mapping[str, Any]) -> str:
    """A markdown summary of evaluate_all's dict: every number is read from it."""
    models = results["models"]
    confidence = int(round(100 * results["settings"]["bootstrap"]["confidence"]))
    lines = ["# Evaluation summary", "",
             f"Data: `{results['settings']['data_dir']}`. Intervals: {confidence}% bootstrap "
             f"({results['settings']['bootstrap']['n_resamples']} resamples) over STS pairs or queries.", "",
             "## STS-B test", ""]
    lines += table(
        ["model", "theta / k / l_min", "STS full", "STS exited", "exit rate", "exit by L7", "mean exit layer",
         "reduction", "verdict", "checklist"],
        [[name, f"{m['theta']} / {m['k']} / {m['l_min']}", fmt_interval(m["sts"]["stsb_full_ci"]),
          fmt_interval(m["sts"]["stsb_exited_ci"]), fmt(m["sts"]["exit_rate"]), fmt(m["sts"]["exit_by_layer_7"]),
          fmt(m["sts"]["mean_exit_layer"], 2), fmt(m["sts"]["layer_reduction"], 2) + "x",
          m["diagnosis"]["verdict"], "pass" if m["diagnosis"]["checklist"]["passes"] else "fail"]
         for name, m in models.items()])

    for name, m in models.items():
        lines += _model_sections(name, m)
    lines += _beir_section(models) + _comparison_sections(results, confidence)
    return "\n".join(lines).rstrip() + "\n"


def _model_sections(name: str, m: Mapping[str, Any]) -> list[str]:
    """One model's layer dynamics, its early exit vs truncation sweep and its calibration."""
    lines: list[str] = []
    sts = m["sts"]
    lines += [f"## {name}: layer dynamics", "",
              f"Median contraction ratio gamma: {fmt(sts['contraction']['median'])}; monitoring overhead: "
              f"{fmt((m['diagnosis']['monitoring'] or {}).get('overhead'))}.", ""]
    lines += table(
        ["layer", "sim. to final", "stability", "NN@10", "NN@10 < 0.5", "NN@10 < 0.5 (exited here)",
         "exits here", "cumulative exit", "STS"],
        [[str(l + 1), fmt(sts["similarity_to_final"][l]), fmt(sts["inter_layer_stability"][l]),
          fmt(sts["nn10_per_layer"][l]), fmt(sts["nn10_low_share_per_layer"][l]),
          fmt(sts["nn10_low_share_by_exit_layer"][l]), fmt(sts["exit_distribution"][l]),
          fmt(sts["cumulative_exit_rate"][l]), fmt(sts["stsb_per_layer"][l])]
         for l in range(m["n_layers"])])
    sweep = m["sweep"]
    front = {_rule(p) for p in sweep["pareto"]}
    rows = [[p["method"], _rule(p)[1], fmt(p["exit_rate"]), fmt(p["mean_exit_layer"], 2),
             fmt(p["layer_reduction"], 2) + "x", fmt(p[sweep["quality_key"]]), "yes" if _rule(p) in front else ""]
            for p in sweep["threshold"] + sweep["fixed"] + sweep["patience"]]
    lines += [f"## {name}: early exit vs truncation (STS-B test)", "",
              f"Early exit beats truncation: {fmt(sweep['early_exit_beats_truncation'])}.", ""]
    lines += table(["rule", "setting", "exit rate", "mean exit layer", "reduction", "STS", "Pareto"], rows)
    calibration = m.get("calibration")
    if calibration:
        lines += [f"Calibrated on `{calibration['data']}` for {calibration['floor']}: theta "
                  f"{fmt(calibration['theta'], 2)}, expected layer reduction "
                  f"{fmt(calibration['expected_layer_reduction'], 2)}.", ""]

    return lines


def _beir_section(models: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    rows = []
    for name, m in models.items():
        for dataset, scored in m["beir"].items():
            for mode, s in scored["modes"].items():
                rows.append([name, dataset, mode, fmt(s["ndcg@1"]), fmt(s["ndcg@3"]), fmt(s["ndcg@5"]),
                             fmt_interval(s["ndcg@10_ci"]) if s.get("ndcg@10_ci") else fmt(s["ndcg@10"]),
                             fmt(s["recall@100"]), fmt(s.get("query_exit", {}).get("exit_rate")),
                             fmt(s.get("corpus_exit", {}).get("exit_rate"))])
    if rows:
        lines += ["## BEIR", ""]
        lines += table(["model", "dataset", "mode", "NDCG@1", "NDCG@3", "NDCG@5", "NDCG@10", "R@100",
                         "query exit", "corpus exit"], rows)

    return lines


def _comparison_sections(results: Mapping[str, Any], confidence: int) -> list[str]:
    """Paired differences against the reference model, and the seed groups' t-intervals."""
    lines: list[str] = []
    if results["comparisons"]:
        rows = []
        for name, c in results["comparisons"].items():
            rows.append([f"{name} - {c['reference']}", "STS-B full", fmt_interval(c["stsb_full_diff_ci"], 4)])
            rows.append([f"{name} - {c['reference']}", "STS-B exited", fmt_interval(c["stsb_exited_diff_ci"], 4)])
            for dataset, modes in c["beir"].items():
                for mode, interval in modes.items():
                    rows.append([f"{name} - {c['reference']}", f"{dataset} NDCG@10 ({mode})", fmt_interval(interval, 4)])
        lines += ["## Paired differences", ""] + table(["models", "metric", "difference"], rows)

    for group, summary in results["seed_groups"].items():
        rows = [[key, fmt_interval(value, 4), fmt(value.get("std"), 4)]
                for key, value in summary.items() if key != "models"]
        lines += [f"## Seeds: {group} ({', '.join(summary['models'])})", "",
                  f"Mean and {confidence}% t-interval across seeds.", ""]
        lines += table(["metric", "mean [CI]", "std"], rows)
    return lines
