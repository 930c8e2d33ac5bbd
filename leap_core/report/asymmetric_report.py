"""The pareto report's asymmetric section: query paths against the original's index, and the choice."""

from __future__ import annotations

from typing import Any


def _cell(row: dict[str, Any]) -> str:
    rel = "-" if row["ndcg10_rel"] is None else f"{row['ndcg10_rel']:+.1%}"
    ci = row.get("ndcg10_rel_ci")
    return f"{row['quality']:.3f} ({rel}" + (f", CI {ci[0]:+.1%}..{ci[1]:+.1%})" if ci else ")")


def asymmetric_markdown(section: dict[str, Any] | None) -> str:
    """The section as markdown: one row per query path, NDCG@10 per half (relative change, CI), and the choice."""
    if not section:
        return ""
    names = list(section["sets"])
    floor = section["floor"]["max_ndcg_drop"]
    lines = ["", "## Asymmetric points: a query encoder against the original's index", "",
             f"Documents: {section['document_model']} at full depth, never re-embedded. NDCG@10 of each BEIR set's "
             f"query halves (relative to original/original, paired CI). Chosen: the fewest query layers, then int8, "
             f"within {floor:.1%} on every dev half; test halves are reported, never used to choose.", "",
             "| query path | depth | precision | " + " | ".join(names) + " | within floor |",
             "|---|---|---|" + "---|" * len(names) + "---|"]
    for p in section["points"]:
        cells = " | ".join(_cell(p["sets"][name]) for name in names)
        lines.append(f"| {p['name']} | {p['depth']} | {p['precision']} | {cells} | "
                     f"{'yes' if p['within_floor'] else 'no'} |")
    chosen, serve = section["chosen"], section["serve"]
    lines += ["", f"**Chosen:** {chosen['name']} (depth {chosen['depth']}, {chosen['precision']}) against "
              f"{section['document_model']}'s full-depth index." if chosen else f"**Chosen:** none. {serve['note']}."]
    lines += [f"- ship: `{command}`" for command in serve.get("ship", [])]
    return "\n".join(lines) + "\n"
