"""Every fault and bad input of leap_core/reliability.py holds, and the committed report is its rendering."""

import json
from pathlib import Path

import pytest

from leap_core.reliability import render_markdown, run_probes

REPORT = Path(__file__).resolve().parents[1] / "reports" / "reliability.json"


def test_every_probe_holds(tmp_path, data_dir):
    results = run_probes(data_dir, tmp_path)
    assert len(results) >= 20 and {"tampered file between steps", "training pod lost"} <= {r["probe"] for r in results}
    assert {"cut into an existing user folder", "export over a user's folder", "--name that is a path",  # issue 31
            "concurrent calibrate --save", "NaN chunk planted", "S3 object replaced with matching metadata",
            "forged shared teacher cache"} <= {r["probe"] for r in results}
    assert [row["probe"] for row in results if not row["held"]] == []
    assert all("<work>" in row["outcome"] or str(tmp_path) not in row["outcome"] for row in results)


@pytest.mark.skipif(not REPORT.is_file(), reason="no committed reliability report yet")
def test_the_committed_report_is_the_rendering_of_its_json():
    results = json.loads(REPORT.read_text(encoding="utf-8"))
    assert REPORT.with_suffix(".md").read_text(encoding="utf-8") == render_markdown(results)
    assert all(row["held"] for row in results)
