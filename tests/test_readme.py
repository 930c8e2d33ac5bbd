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
def test_readme_retrofit_tables_are_the_retrofit_reports():
    import json

    from leap_core.report.retrofit_report import render_markdown, summary_rows

    measured = json.loads(RETROFIT.read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert (REPO / "reports" / "retrofit.md").read_text(encoding="utf-8") == render_markdown(measured)
    for model in measured:
        expected = summary_rows({model: measured[model]})
        table = [line for line in expected if line.startswith("|")]
        assert table_after(readme, f"### {model}") == table


PARETO = REPO / "reports" / "pareto"


@pytest.mark.skipif(not PARETO.is_dir(), reason="no committed pareto reports yet")
def test_readme_depth_table_is_the_pareto_reports():
    import json

    from leap_core.report.pareto_report import readme_rows, report_markdown

    results = {file.stem: json.loads(file.read_text(encoding="utf-8")) for file in sorted(PARETO.glob("*.json"))}
    assert results
    for name, result in results.items():
        assert (PARETO / f"{name}.md").read_text(encoding="utf-8") == report_markdown(result, name)
        assert (PARETO / f"{name}.png").is_file()
        assert set(result["chosen"]) >= {"policy", "test_stsb", "layer_reduction", "speedup_bs1", "speedup_bs32"}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert table_after(readme, "## Depth that pays") == readme_rows(results)


BENCH = REPO / "reports" / "bench_cpu.json"


@pytest.mark.skipif(not BENCH.is_file(), reason="no committed deployment bench yet")
def test_readme_serving_table_is_the_deployment_bench():
    import json

    from leap_core.report.deploy_report import readme_rows, render_markdown

    result = json.loads(BENCH.read_text(encoding="utf-8"))
    assert BENCH.with_suffix(".md").read_text(encoding="utf-8") == render_markdown(result)
    assert set(result["vs_peer_int8"]) >= {"bs1", "bs32"}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert table_after(readme, "## Serving on CPU") == readme_rows(result)


QUERY_ENCODER = REPO / "reports" / "query_encoder.json"


@pytest.mark.skipif(not QUERY_ENCODER.is_file(), reason="no committed query-encoder report yet")
def test_readme_search_table_is_the_query_encoder_report():
    import json

    from leap_core.report.query_encoder_report import readme_rows, render_markdown

    report = json.loads(QUERY_ENCODER.read_text(encoding="utf-8"))
    assert QUERY_ENCODER.with_suffix(".md").read_text(encoding="utf-8") == render_markdown(report)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert table_after(readme, "## Search: a shallow query encoder") == readme_rows(report)


INT8 = REPO / "reports" / "int8.json"


@pytest.mark.skipif(not INT8.is_file(), reason="no committed int8 report yet")
def test_readme_int8_rule_and_table_are_the_int8_report():
    import json

    from leap_core.report.int8_report import HEADLINE, readme_rows, render_markdown, rule_lines

    report = json.loads(INT8.read_text(encoding="utf-8"))
    assert INT8.with_suffix(".md").read_text(encoding="utf-8") == render_markdown(report)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert table_after(readme, HEADLINE) == readme_rows(report)
    assert all(line in readme.splitlines() for line in rule_lines(report) if line)
