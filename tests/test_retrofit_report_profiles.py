"""`leap retrofit` under a profile other than the committed one writes its own report folder and never merges into
the committed reports/retrofit.json, whose rows were measured with cpu_long."""

import json
from pathlib import Path

import pytest

from leap_core.retrofit import retrofit
from leap_core.cli import main
from leap_core.retrofit.retrofit import COMMITTED_PROFILE, check_same_profile, default_report, entry_profile

REPO = Path(__file__).resolve().parents[1]
MODEL = "random-bert:layers=4,hidden=64,heads=2,seed=1"


def test_the_default_report_of_a_profile_is_its_own_unless_it_is_the_committed_one():
    assert default_report(COMMITTED_PROFILE) == Path("reports/retrofit.json")
    assert default_report("smoke") == Path("reports/smoke/retrofit.json")
    assert default_report("cpu", "elsewhere") == Path("elsewhere/cpu/retrofit.json")


def test_the_committed_report_holds_only_the_committed_profiles_rows():
    committed = json.loads((REPO / "reports" / "retrofit.json").read_text())
    assert {entry_profile(entry) for entry in committed.values()} == {COMMITTED_PROFILE}
    with pytest.raises(ValueError, match=r"holds rows of profile cpu_long; this run is profile smoke: not merging"):
        check_same_profile(committed, "smoke", Path("reports/retrofit.json"))
    check_same_profile(committed, COMMITTED_PROFILE, Path("reports/retrofit.json"))  # the same profile merges


def _fake_run(monkeypatch) -> None:
    """retrofit_branch and calibration replaced by a record of the entry they would write (no training here)."""
    entry = {"model": MODEL, "model_dir": "runs/smoke/branch-x-seed0/model", "evaluation": {}, "exit_layers": [2, 3],
             "texts": "generic", "train_texts": 8, "train_steps": 1}
    monkeypatch.setattr(retrofit, "retrofit_branch", lambda profile, model, seed, max_sts_drop: dict(entry))
    monkeypatch.setattr("leap_core.evaluation.pareto.calibrate_policy", lambda *args, **kwargs: {"name": "full"})
    # each name where it is called from (the caller imported it at its top)
    monkeypatch.setattr(retrofit, "write_card", lambda *args, **kwargs: None)
    monkeypatch.setattr(retrofit, "render_markdown", lambda report, source="": f"from {source}\n")
    monkeypatch.setattr("leap_core.cli.shipping.summary_rows", lambda report: ["row"])


def test_a_smoke_run_writes_its_own_report_and_leaves_the_committed_one_alone(tmp_path, monkeypatch):
    _fake_run(monkeypatch)
    committed = tmp_path / "reports" / "retrofit.json"
    committed.parent.mkdir()
    committed.write_text((REPO / "reports" / "retrofit.json").read_text())
    before = committed.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["retrofit", MODEL, "--profile", "smoke"]) == 0
    assert committed.read_bytes() == before
    written = json.loads((tmp_path / "reports" / "smoke" / "retrofit.json").read_text())
    assert written[MODEL]["profile"] == "smoke"
    assert (tmp_path / "reports" / "smoke" / "retrofit.md").read_text() == "from reports/smoke/retrofit.json\n"
    # Pointed at the committed report explicitly, a smoke run is refused, the file untouched.
    assert main(["retrofit", MODEL, "--profile", "smoke", "--out", "reports/retrofit.json"]) == 2
    assert committed.read_bytes() == before
