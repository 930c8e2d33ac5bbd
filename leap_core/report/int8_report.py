"""reports/int8.md and the README's int8 table and rule, from int8_quality's JSON (every number read, none typed)."""

from __future__ import annotations

from typing import Any

from leap_core.bench.int8_quality import COMMAND, INT8, PRECISIONS, SET_NAMES
from leap_core.report.markdown import fmt_relative_ci

HEADLINE = "### int8 by measured quality: when int8 query vectors can share an fp32 index"


def _cos(summary: dict[str, float] | None) -> str:
    """mean / p01 / min of a cosine summary, or "-" where it was not measured."""
    return "-" if summary is None else f"{summary['mean']:.3f} / {summary['p01']:.3f} / {summary['min']:.3f}"


def _sets(report: dict[str, Any]) -> list[str]:
    """The BEIR sets of the report, in its order (the original is judged on all of them)."""
    return list(report["models"]["original"]["sets"])


def drift_table(report: dict[str, Any]) -> list[str]:
    """Cosine of each int8 graph to its own fp32 graph (mean / p01 / min) on STS-B test and each set's queries."""
    sets = _sets(report)
    head = ["model", "int8", "STS-B test", *[f"{SET_NAMES.get(s, s)} test queries" for s in sets]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, entry in report["models"].items():
        for name in INT8:
            cells = [label, INT8[name], _cos(entry["cosine"]["stsb-test"][name]),
                     *[_cos(entry["cosine"].get(s, {}).get(name)) for s in sets]]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def shared_table(report: dict[str, Any]) -> list[str]:
    """NDCG@10 of each precision's queries on the original's fp32 index: change from original/original and from
    the same model's fp32 queries (paired bootstrap CIs), top-10 agreement with those fp32 queries' results."""
    head = ["set", "model", "queries", "NDCG@10", "vs original fp32/fp32", "vs its own fp32 queries",
            "top-10 agreement with its fp32", f"int8 within {report['floor']:.0%}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in _sets(report):
        for label, entry in report["models"].items():
            if s not in entry["sets"]:
                continue
            for name in PRECISIONS:
                row = entry["retrieval"][s]["shared_index"][name]
                own = row.get("vs_fp32")
                clears = "-" if own is None else ("yes" if own["ndcg10_rel_ci"][0] >= -report["floor"] else "**no**")
                lines.append("| " + " | ".join([
                    SET_NAMES.get(s, s), label, name, f"{row['ndcg10']:.3f}",
                    fmt_relative_ci(row["ndcg10_rel"], row["ndcg10_rel_ci"]),
                    "-" if own is None else fmt_relative_ci(own["ndcg10_rel"], own["ndcg10_rel_ci"]),
                    "-" if own is None else f"{own['agreement10']:.3f}", clears]) + " |")
    return lines


def both_sides_table(report: dict[str, Any]) -> list[str]:
    """The original with int8 on both sides (its corpus re-embedded by that graph) against original/original."""
    lines = ["| set | int8 | NDCG@10 | vs original fp32/fp32 | top-10 agreement |", "|---|---|---|---|---|"]
    original = report["models"]["original"]
    for s in original["sets"]:
        for name in INT8:
            row = original["retrieval"][s]["int8_index"][name]
            lines.append(f"| {SET_NAMES.get(s, s)} | {INT8[name]} | {row['ndcg10']:.3f} | "
                         f"{fmt_relative_ci(row['ndcg10_rel'], row['ndcg10_rel_ci'])} | {row['agreement10']:.3f} |")
    return lines


def auto_table(report: dict[str, Any]) -> list[str]:
    """What `leap export --int8` (auto) keeps per model on STS-B dev, from each candidate's mean cosine to fp32."""
    lines = ["| model | check texts | per-tensor mean cos | per-channel mean cos | auto keeps |",
             "|---|---|---|---|---|"]
    for label, entry in report["models"].items():
        auto = entry["auto"]
        lines.append(f"| {label} | {auto['n']} of `{auto['texts']}` | {auto['candidates']['per-tensor']['mean']:.4f} | "
                     f"{auto['candidates']['per-channel']['mean']:.4f} | {auto['chosen']} |")
    return lines


def _scheme_sentence(report: dict[str, Any], name: str) -> str:
    """One scheme's verdict over every model: which share the fp32 index, and the worst CI lower bound."""
    verdicts = {label: found[name] for label, found in report["verdicts"].items()}
    share = [label for label, v in verdicts.items() if v["shares_fp32_index"]]
    fail = [label for label, v in verdicts.items() if not v["shares_fp32_index"]]
    worst = min(verdicts, key=lambda label: verdicts[label]["worst_rel_ci_low"])
    changes = "; ".join(f"{label} " + ", ".join(f"{SET_NAMES.get(s, s)} {fmt_relative_ci(rel, v['ndcg10_rel_ci'][s])}"
                                                for s, rel in v["ndcg10_rel"].items())
                        for label, v in verdicts.items())
    said = (f"**{INT8[name]}**: " + (f"clears the floor for {', '.join(share)}" if share else "clears it for no model")
            + (f"; not for {', '.join(fail)}" if fail else "") + f" (lowest CI bound "
            f"{verdicts[worst]['worst_rel_ci_low']:+.1%}, {worst}). NDCG@10 change from the same model's fp32 "
            f"queries on the fp32 index: {changes}.")
    return said


def rule_lines(report: dict[str, Any]) -> list[str]:
    """The rule, computed: int8 queries share an fp32 index when every set's CI lower bound clears the floor."""
    floor = report["floor"]
    auto = {entry["auto"]["chosen"] for entry in report["models"].values()}
    return [f"int8 query vectors can share an fp32 document index when, on every set, the lower bound of the 95% CI "
            f"of their NDCG@10 change from the same model's fp32 queries clears -{floor:.0%} "
            f"(the NDCG@10 floor). Measured:", "",
            *[f"- {_scheme_sentence(report, name)}" for name in INT8],
            f"- `leap export --int8` (auto, on STS-B dev) keeps **{', '.join(sorted(auto))}** for "
            f"{'every model' if len(auto) == 1 else 'the models as listed below'}."]


def readme_rows(report: dict[str, Any]) -> list[str]:
    """The README's table: per model and int8 scheme, mean cosine to fp32 on STS-B test and the NDCG@10 change of
    its queries on the fp32 index from its own fp32 queries, per set, and whether that clears the floor."""
    sets = _sets(report)
    head = ["model", "int8", "cos to fp32 (STS-B test)", *[f"{SET_NAMES.get(s, s)} NDCG@10 on the fp32 index"
                                                          for s in sets], "shares the fp32 index"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, found in report["verdicts"].items():
        entry = report["models"][label]
        for name, v in found.items():
            cells = [label, INT8[name], f"{entry['cosine']['stsb-test'][name]['mean']:.3f}",
                     *[fmt_relative_ci(v["ndcg10_rel"][s], v["ndcg10_rel_ci"][s]) if s in v["ndcg10_rel"] else "-"
                       for s in sets], "yes" if v["shares_fp32_index"] else "**no**"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """reports/int8.md: the rule, then drift, NDCG@10 on the shared index, int8 on both sides, and auto's choice."""
    sizes = ", ".join(f"{SET_NAMES.get(n, n)} {q}" for n, q in report["test_queries"].items())
    parts = [
        "# int8 by measured quality (issue 32, item 7)", "",
        f"Original `{report['original']}`; ONNX Runtime graphs of `leap export` at {report['threads']} thread(s): fp32 "
        "and dynamic int8 with weights scaled per tensor or per output channel. Query encoders are judged on their "
        f"own set. Test queries: {sizes}; STS-B test: {report['sts_test_sentences']} sentences. CIs: paired "
        f"bootstrap, {report['n_resamples']} resamples, 95%. Rebuild: `{COMMAND}`.", "",
        "## When int8 query vectors can share an fp32 index", "", *rule_lines(report), "",
        *readme_rows(report), "",
        "## Drift: cosine of int8 to the same model's fp32 graph (mean / p01 / min)", "", *drift_table(report), "",
        "## NDCG@10 with the original's fp32 index (documents untouched)", "", *shared_table(report), "",
        "## The original with int8 on both sides (index re-embedded by that int8 graph)", "",
        *both_sides_table(report), "",
        "## What `leap export --int8` keeps (auto: the higher mean cosine to fp32 on STS-B dev)", "",
        *auto_table(report)]
    return "\n".join(parts) + "\n"
