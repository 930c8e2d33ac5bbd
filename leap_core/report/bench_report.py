"""reports/bench_exit_cpu.md: bench.run_benchmark's result (every encoder mode vs sentence-transformers) as markdown."""

from __future__ import annotations

from typing import Any

from leap_core.bench.latency import PEER
from leap_core.report.markdown import fmt


def render_markdown(result: dict[str, Any]) -> str:
    """The headline numbers, the per-mode table and the setting, as markdown."""
    settings, env = result["settings"], result["environment"]
    lines = [
        "# Early-exit latency benchmark",
        "",
        f"Model `{settings['model']}` ({settings['n_layers']} layers, d={settings['hidden_size']}), "
        f"theta={settings['theta']}, k={settings['k']}, l_min={settings['l_min']}; "
        f"{settings['warmup']} warm-up + {settings['iterations']} timed iterations per batch size, "
        f"{settings['dtype']}, timer: {settings['timer']}; {settings['order']}.",
        f"Device {env['device']} ({env.get('gpu') or env['cpu_model']}), torch {env['torch']}, "
        f"{env['torch_threads']} thread(s), load average {env.get('load_average_before')} -> "
        f"{env.get('load_average_after')}.",
        "",
        "| headline | value |",
        "|---|---|",
    ]
    for key in ("layer_reduction", "overhead_monitored", "overhead_monitored_paired", "speedup_bs1", "speedup_bs1_vs_theoretical",
                "speedup_bs32_compact", "speedup_bs32_compact_vs_theoretical", "speedup_bs32_batch",
                "compact_vs_batch_bs32", "compact_vs_batch_bs32_bound", "full_vs_sentence_transformers"):
        spec = "+.1%" if key.startswith("overhead") else ".3f"
        value = fmt(result.get(key), spec)
        if key == "overhead_monitored_paired" and result.get("overhead_monitored_paired_ci"):
            low, high = result["overhead_monitored_paired_ci"]
            value += f" (95% CI {low:+.1%} to {high:+.1%})"
        lines.append(f"| {key} | {value} |")
    lines += [
        "",
        "| mode | batch | median ms | p95 ms | IQR ms | ms/sentence | speedup | paired speedup | theoretical "
        "| speedup/theor. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(result["table"], key=lambda r: (r["batch_size"], r["mode"] == PEER)):
        lines.append(
            f"| {row['mode']} | {row['batch_size']} | {fmt(row['median_ms'], '.2f')} | {fmt(row['p95_ms'], '.2f')} | "
            f"{fmt(row['iqr_ms'], '.2f')} | {fmt(row['median_ms_per_sentence'], '.3f')} | {fmt(row['speedup'], '.3f')} | "
            f"{fmt(row.get('paired_speedup'), '.3f')} | "
            f"{fmt(row['theoretical_reduction'], '.3f')} | {fmt(row['efficiency'], '.3f')} |"
        )
    agreement = result.get("agreement") or []
    if agreement:
        worst = min(row["min_cosine"] for row in agreement)
        same = all(row["exit_layers_equal"] is not False for row in agreement)
        lines += ["", f"Agreement with per-sentence batch-1 encoding (the peer: with our full): min cosine "
                      f"{worst:.6f}, exit layers {'identical' if same else 'DIFFER'} for every mode and batch size."]
    return "\n".join(lines) + "\n"
