"""Every fault and bad input of leap_core/reliability/ holds, and the committed report is its rendering."""

import json
from pathlib import Path

import pytest

from leap_core.cli import main
from leap_core.reliability import SCHEMA_AND_EXIT_PROBES, run_probes
from leap_core.report.reliability_report import render_markdown

REPORT = Path(__file__).resolve().parents[1] / "reports" / "reliability.json"


def test_every_probe_holds(tmp_path, data_dir):
    results = run_probes(data_dir, tmp_path, main=main)
    assert len(results) >= 20 and {"tampered file between steps", "training pod lost"} <= {r["probe"] for r in results}
    assert {"cut into an existing user folder", "export over a user's folder", "--name that is a path",  # issue 31
            "concurrent calibrate --save", "NaN chunk planted", "S3 object replaced with matching metadata",
            "forged shared teacher cache"} <= {r["probe"] for r in results}
    assert set(NEW_PROBES) <= {r["probe"] for r in results}
    assert [row["probe"] for row in results if not row["held"]] == []
    assert all("<work>" in row["outcome"] or str(tmp_path) not in row["outcome"] for row in results)


# Issue 31, second part: a schema per JSON file, monitor's exit codes and log checks, one-line errors, writers.
NEW_PROBES = ("leap_exit.json with theta NaN", "leap_branch.json with a wrong type or a missing key",
              "leap_onnx.json: missing max_length, sha256 or graph", "leap_onnx.json: max_length 1e6 or -1",
              "leap_onnx.json: tokenizer_sha256 deleted", "leap_onnx.json: graph an absolute path outside the folder",
              "monitor's alert has its own exit code", "leap_reference.json with mean_exit_layer NaN",
              "leap_reference.json with a missing key", "leap_reference.json with 12 layers on a 4-layer model",
              "monitor on a one-row log", "traffic log with a missing column", "traffic log with a null exit_layer",
              "traffic log with 0 rows", "uncaught exception in a command",
              "model saved over a user's folder or beside FOLDER.old",
              "leap_reference.json while another writer holds the folder", "lone surrogate to encode",
              "max_seq_length beyond the model's positions")


def test_the_schema_and_exit_code_probes_hold(tmp_path):
    """The quick probes (tiny model, no data or S3): each case of issue 31's second part, held."""
    results = run_probes(tmp_path / "data-unused", tmp_path, SCHEMA_AND_EXIT_PROBES, main=main)
    assert [row["probe"] for row in results] == list(NEW_PROBES)
    assert [(row["probe"], row["outcome"]) for row in results if not row["held"]] == []


@pytest.mark.skipif(not REPORT.is_file(), reason="no committed reliability report yet")
def test_the_committed_report_is_the_rendering_of_its_json():
    results = json.loads(REPORT.read_text(encoding="utf-8"))
    assert REPORT.with_suffix(".md").read_text(encoding="utf-8") == render_markdown(results)
    assert all(row["held"] for row in results)


def test_the_probes_never_import_the_cli():
    """The CLI hands its `main` to the probes (leap reliability): nothing under leap_core/reliability/ imports
    leap_core.cli (an upward arrow, and a cycle), nor another module's private name."""
    import ast

    package = Path(__file__).resolve().parents[1] / "leap_core" / "reliability"
    for file in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "leap_core.cli" and not any(a.name == "cli" for a in node.names
                                                                   if node.module == "leap_core"), file.name
                assert not any(a.name.startswith("_") for a in node.names), (file.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("leap_core.cli") for a in node.names), file.name
