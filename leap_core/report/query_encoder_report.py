"""reports/query_encoder.md and the README's search table, from reports/query_encoder.json."""

from __future__ import annotations

from typing import Any

from leap_core.report.markdown import fmt_relative_ci

ROWS = (("raw_cut", "raw cut (no training)"), ("ridge_head", "ridge head only"), ("recipe", "recipe"))


def render_other_cuts(cuts: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Rows of other_cuts beside the recipe's: NDCG@10 change from original/original per set and depth."""
    if not cuts:
        return []
    sets = sorted({name for by_set in cuts.values() for name in by_set})
    lines = ["### Other cuts used as the query encoder (from reports/retrofit.json)", "",
             "The same model's symmetric cuts, trained by `leap retrofit --peer` (exit branch; sentence-transformers' "
             "AdaptiveLayerLoss), embedding the test queries against the original's index; the retrofit reported "
             "depths 3 to 5.", "",
             "| query encoder | depth | " + " | ".join(f"{name} NDCG@10 vs original [95% CI]" for name in sets) + " |",
             "|---|---|" + "---|" * len(sets)]
    for label, by_set in cuts.items():
        for depth in sorted({d for rows in by_set.values() for d in rows}, key=int):
            cells = [_relative(by_set[name][depth]) if depth in by_set.get(name, {}) else "" for name in sets]
            lines.append(f"| {label} | {depth} | " + " | ".join(cells) + " |")
    return lines + [""]


def _cells(row: dict[str, Any]) -> str:
    return (f"{row['ndcg10']:.3f} | {row['recall100']:.3f} | {_relative(row)} | {row['agreement10']:.3f} | "
            f"{row['dev_agreement10']:.3f}")


def render_set(result: dict[str, Any]) -> list[str]:
    """One set's table: a line per (depth, row kind) present, under the original/original line."""
    original = result["original"]
    lines = [f"### {result['set']}", "",
             f"{result['n_test_queries']} test queries, {result['n_docs']} documents; training text: "
             f"{result['train_queries']} queries ({result['train_source']}) + {result['pseudo_queries']} "
             f"pseudo-queries; dev slice {result['dev_queries']} queries. Original/original: NDCG@10 "
             f"{original['ndcg10']:.3f}, Recall@100 {original['recall100']:.3f}.", "",
             "| depth | query encoder | NDCG@10 | Recall@100 | NDCG@10 vs original [95% CI] | top-10 agreement (test) "
             "| top-10 agreement (dev) |", "|---|---|---|---|---|---|---|"]
    for depth, rows in sorted(result["depths"].items(), key=lambda item: int(item[0])):
        for key, label in ROWS:
            if key in rows:
                lines.append(f"| {depth} | {label} | {_cells(rows[key])} |")
    for depth, row in sorted(result.get("zero_shot", {}).items(), key=lambda item: int(item[0])):
        lines.append(f"| {depth} | zero-shot (pseudo-queries only) | {_cells(row)} |")
    return lines + [""]


def render_speed(speed: dict[str, Any]) -> list[str]:
    """Latency of every path at each batch size (median and IQR, speedup over the peer) and its NDCG@10 change."""
    sizes = list(speed["timing"]["batch_sizes"])
    sets = sorted({name for rows in speed["quality"].values() for name in rows})
    lines = ["### Query latency and int8 quality", "",
             f"{speed['queries_timed']} real test queries, {speed['threads']} thread(s), paths interleaved "
             f"({speed['timing']['iterations']} rotations after {speed['timing']['warmup']} warm-up; timed with "
             f"{speed['timed_with']}); speedup = median(original, ONNX Runtime int8) / median(path). NDCG@10: "
             "each set's test queries against the original's fp32 index, with that set's own encoders.", "",
             "| path | " + " | ".join(f"bs{n} median ms [IQR] | bs{n} speedup" for n in sizes) + " | "
             + " | ".join(f"{name} NDCG@10 vs original [95% CI]" for name in sets) + " |",
             "|---|" + "---|---|" * len(sizes) + "---|" * len(sets)]
    for path in speed["paths"]:
        cells = []
        for size in sizes:
            row = speed["timing"]["batch_sizes"][size][path["name"]]
            cells.append(f"{row['median']:.2f} [{row['q25']:.2f}, {row['q75']:.2f}] | {row['speedup']:.2f}x")
        for name in sets:
            row = speed["quality"].get(path["name"], {}).get(name)
            cells.append(_relative(row) if row else "")
        lines.append(f"| {path['name']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _relative(row: dict[str, Any]) -> str:
    return fmt_relative_ci(row["ndcg10_rel"], row["ndcg10_rel_ci"])


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report: per model, the chosen depth and each set's table."""
    lines = ["# Shallow query encoders against the original's index", "",
             "Queries embedded by the first N layers of the original (+ a head), searched against documents the "
             "original embedded at full depth. Relevance labels never train or choose; the depth and stopping "
             "point are chosen by agreement with the original's top-10 on a dev slice of the training query "
             "texts; test queries are measured once. CIs: paired bootstrap over test queries, relative to the "
             "original's NDCG@10.", ""]
    for model, entry in report.items():
        chosen = entry.get("chosen", {})
        lines += [f"## {model}", ""]
        if chosen.get("depth") is not None:
            rel = ", ".join(f"{name} {100 * value:+.1f}%" for name, value in chosen["ndcg10_rel"].items())
            lines += [f"Chosen ({chosen['chosen_on']}): depth {chosen['depth']}; test NDCG@10 vs original: {rel}.", ""]
        else:
            lines += [f"Chosen: no depth reached {chosen.get('chosen_on', 'the dev floor')}.", ""]
        for result in entry["sets"].values():
            lines += render_set(result)
        lines += render_other_cuts(entry.get("other_cuts", {}))
        if entry.get("speed"):
            lines += render_speed(entry["speed"])
    return "\n".join(lines).rstrip() + "\n"


def _int8_path(speed: dict[str, Any], depth: str) -> str | None:
    """The depth's int8 path the README shows: per channel when it was measured (it keeps more quality)."""
    names = [p["name"] for p in speed["paths"] if str(p["depth"]) == depth and p["precision"].startswith("int8")]
    return next((n for n in names if "per-channel" in n), names[0] if names else None)


def readme_rows(report: dict[str, Any]) -> list[str]:
    """The README's table: per model and depth, the recipe's NDCG@10 change on each set (fp32), its worst dev
    agreement, and its ORT int8 export's batch-1 speedup over the original's ORT int8 with that path's quality."""
    sets = sorted({name for entry in report.values() for name in entry["sets"]})
    lines = ["| model | query depth | " + " | ".join(f"{name} NDCG@10 vs original (fp32)" for name in sets)
             + " | dev top-10 agreement (worst set) | ORT int8 vs the original's ORT int8, batch 1 | "
             + " | ".join(f"{name} NDCG@10 (int8)" for name in sets) + " |",
             "|---|---|" + "---|" * (2 * len(sets) + 2)]
    for model, entry in report.items():
        depths = sorted({d for result in entry["sets"].values() for d, rows in result["depths"].items()
                         if "recipe" in rows}, key=int)
        speed = entry.get("speed") or {}
        for depth in depths:
            rows = [entry["sets"][name]["depths"].get(depth, {}).get("recipe") if name in entry["sets"] else None
                    for name in sets]
            agreement = min(row["dev_agreement10"] for row in rows if row)
            path = _int8_path(speed, depth) if speed else None
            bs1 = speed["timing"]["batch_sizes"]["1"][path]["speedup"] if path else None
            int8 = [_relative(speed["quality"][path][name]) if path and name in speed["quality"][path] else ""
                    for name in sets]
            shown = f"{bs1:.2f}x ({path.split(' · ')[-1]})" if path else "not measured"
            lines.append(f"| {model} | {depth} | " + " | ".join(_relative(r) if r else "" for r in rows)
                         + f" | {agreement:.3f} | {shown} | " + " | ".join(int8) + " |")
    return lines
