"""The README's headline numbers are the committed pipeline report's, and the report's figures exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "cpu" / "report.md"


def table_after(text: str, heading: str) -> list[str]:
    """The markdown table lines that follow `heading`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return rows


@pytest.mark.skipif(not REPORT.is_file(), reason="no committed pipeline report yet")
def test_readme_headline_table_is_the_reports():
    report_rows = table_after(REPORT.read_text(encoding="utf-8"), "## Headline")
    readme_rows = table_after((REPO / "README.md").read_text(encoding="utf-8"), "## Results")
    assert report_rows and readme_rows == report_rows


@pytest.mark.skipif(not REPORT.is_file(), reason="no committed pipeline report yet")
def test_every_figure_the_report_shows_is_committed():
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", REPORT.read_text(encoding="utf-8"))
    assert figures and all((REPORT.parent / figure).is_file() for figure in figures)


RETROFIT = REPO / "reports" / "retrofit.json"


@pytest.mark.skipif(not RETROFIT.is_file(), reason="no committed retrofit report yet")
def test_readme_retrofit_table_is_the_retrofit_reports():
    import json

    measured = json.loads(RETROFIT.read_text(encoding="utf-8"))
    rows = table_after((REPO / "README.md").read_text(encoding="utf-8"), "**Retrofit**")[2:]
    assert len(rows) == len(measured)
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        name = cells[0].split(" ")[0]
        s = measured[f"sentence-transformers/{name}"]
        cut = s["vs_truncated_original"]
        assert cells[1:7] == [f"{s['original_stsb']:.3f}", f"{s['stsb_full']:.3f}", f"{s['stsb_exited']:.3f}",
                              f"{s['exit_rate']:.0%}", f"{s['layer_reduction']:.2f}x",
                              f"{cut['difference']:+.3f} [{cut['ci_low']:.3f}, {cut['ci_high']:.3f}] "
                              f"({cut['truncated_depth']} layers)"]
        assert cells[7] == f"{s['train_seconds'] / 60:.0f} min"
        budget = s["at_quality_budget"]
        assert cells[8] == (f"{budget['theta']:.2f}: {budget['exit_rate']:.0%}, {budget['layer_reduction']:.2f}x, "
                            f"{budget['stsb_exited']:.3f}")
        genres = s["exit_by_genre"]
        assert cells[9] == ", ".join(f"{genres[f'main-{g}']['exit_rate']:.0%}" for g in ("captions", "news", "forums"))
