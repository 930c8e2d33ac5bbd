"""What `leap eval`, `leap diagnose` and `leap mteb` print: their JSON results as short markdown tables a person can read."""

from __future__ import annotations

from typing import Any, Mapping

from leap_core.policy import ExitPolicy
from leap_core.report.markdown import fmt, table


def _per_layer(result: Mapping[str, Any], columns: dict[str, str], formats: dict[str, str]) -> list[str]:
    """One row per layer: each of `columns` (key -> header) that the result holds."""
    present = {key: header for key, header in columns.items() if result.get(key) is not None}
    rows = [[layer + 1, *(fmt(result[key][layer], formats.get(key, ".3f")) for key in present)]
            for layer in range(result["n_layers"])]
    return table(["layer", *present.values()], rows, ["---:"] * (len(present) + 1))


def _exits(result: Mapping[str, Any]) -> list[list[str]]:
    return [["exit rate (rows leaving before the last layer)", fmt(result["exit_rate"], ".1%")],
            ["mean exit layer", f"{result['mean_exit_layer']:.2f} of {result['n_layers']}"],
            ["layer reduction", fmt(result["layer_reduction"], ".2f") + "x"]]


def eval_table(metrics: Mapping[str, Any], model: str) -> str:
    """`leap eval`: the policy the model serves first (its STS-B and exits), then the exit rule's STS-B, full depth
    and exit statistics, and per layer STS-B, cos to final and exits."""
    rule, served = metrics["exit_settings"], metrics["served"]
    lines = [f"{model} serves {served['policy']} ({served['source']}):", ""]
    lines += table(["", "value"], [[f"STS-B Spearman at the served policy ({served['policy']})", fmt(served["stsb"])],
                                   *_exits(served)], ["---", "---:"])
    lines += [f"The exit rule: theta={rule['theta']} k={rule['k']} l_min={rule['l_min']} ({rule['source']})", ""]
    rows = [["STS-B Spearman, full depth", fmt(metrics["stsb_full"])],
            [f"STS-B Spearman, exited at {_policy_name(metrics)} (compact mode)", fmt(metrics["stsb_exited"])],
            *_exits(metrics), ["pairs / distinct sentences", f"{metrics['n_pairs']} / {metrics['n_sentences']}"]]
    lines += table(["", "value"], rows, ["---", "---:"])
    lines += _per_layer(metrics, {"stsb_per_layer": "STS-B", "similarity_to_final": "cos to final",
                                  "exit_distribution": "exits here"}, {"exit_distribution": ".1%"})
    return "\n".join(lines).rstrip() + "\n"


def _policy_name(metrics: Mapping[str, Any]) -> str:
    """The name of the policy compact mode measured: the rule, or the folder's per-layer thresholds."""

    measured = metrics.get("measured_policy")
    return ExitPolicy.from_dict(measured).name if measured else "the rule"


def diagnose_table(result: Mapping[str, Any]) -> str:
    """`leap diagnose`: the verdict, which diagnostics fired, the deployment checklist and the layer dynamics."""
    lines = [f"{result['model']}: {result['verdict'].upper()} for early exit at theta={result['theta']} "
             f"k={result['k']} l_min={result['l_min']} ({result['n_sentences']} probe sentences from "
             f"{result['probe']})", ""]
    rows = _exits(result)
    if result.get("monitoring"):
        rows.append(["monitoring overhead (monitored / full - 1)", fmt(result["monitoring"]["overhead"], "+.1%")])
    lines += table(["", "value"], rows, ["---", "---:"])
    fired = [name.replace("_", " ") for name, check in result["diagnostics"].items() if check["fired"]]
    lines += [f"Diagnostics fired: {', '.join(fired) if fired else 'none'}.", ""]
    checks = result["checklist"]
    lines += table([f"checklist at layer {checks['target_layer']}", "value", "needs", "passes"],
                   [[name.replace("_", " "), fmt(item["value"]),
                     (f">= {item['min']}" if "min" in item else f"> {item['above']}"), fmt(item["passes"])]
                    for name, item in checks["items"].items()], ["---", "---:", "---:", "---"])
    lines += _per_layer(result, {"similarity_to_final": "cos to final", "nn10_per_layer": "NN@10 vs final",
                                 "exit_distribution": "exits here"}, {"exit_distribution": ".1%"})
    return "\n".join(lines).rstrip() + "\n"


def mteb_table(result: dict[str, Any]) -> str:
    """`leap mteb`: one row per task, its main score beside the exit statistics of the same run."""
    lines = [f"{result['model']} through MTEB at mode {result['mode']} (theta={result['theta']} k={result['k']} "
             f"l_min={result['l_min']}), mteb {result['mteb_version']}", ""]
    rows = [[name, task["main_metric"], fmt(task["main_score"], ".4f"), fmt(task["exit"]["exit_rate"], ".1%"),
             fmt(task["exit"]["mean_exit_layer"], ".2f"), fmt(task["exit"]["layer_reduction"], ".2f") + "x",
             task["exit"]["n_texts"], task["data"]] for name, task in result["tasks"].items()]
    lines += table(["task", "metric", "score", "exit rate", "mean exit layer", "layer reduction", "texts", "data"],
                   rows, ["---", "---", "---:", "---:", "---:", "---:", "---:", "---"])
    if result.get("results_dir"):
        lines += [f"MTEB results folder (mteb.ResultCache layout, as {result['mteb_name']}): {result['results_dir']}",
                  ""]
    return "\n".join(lines).rstrip() + "\n"
