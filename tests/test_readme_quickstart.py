"""The README's quick start leads with the smoke profile, sets up the virtualenv before pip, and serves the model
each run registers; its sentence-transformers section never loads a student without trust_remote_code."""

import re
from pathlib import Path

import yaml

from leap_core.config import load_profile

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    start = README.index(f"## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _commands(section: str) -> list[str]:
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_quick_start_runs_smoke_first_and_serves_what_each_run_registers():
    commands = _commands(_section("Quick start"))
    venv = next(i for i, line in enumerate(commands) if "python3 -m venv" in line)
    pip = next(i for i, line in enumerate(commands) if line.startswith("pip install") or " pip install" in line)
    assert venv < pip and "pip install" not in commands[venv]
    runs = [i for i, line in enumerate(commands) if line.startswith("python flows/leap_flow.py run")]
    assert "--profile smoke" in commands[runs[0]] and "--profile" not in commands[runs[1]]
    # Each run is followed by a serve line naming the model that run registers (its profile's registry name).
    for run, profile in zip(runs, ("smoke", "cpu")):
        serve = commands[run + 1]
        assert "mlflow models serve" in serve
        assert f'"models:/{load_profile(profile).registry.model_name}@champion"' in serve
    assert load_profile("smoke").registry.model_name == "leap-student-smoke"  # as params/smoke.yaml says
    assert yaml.safe_load((Path(__file__).resolve().parents[1] / "params" / "smoke.yaml").read_text())[
        "registry"]["model_name"] == "leap-student-smoke"


def test_no_line_of_the_readme_loads_a_student_without_trust_remote_code():
    loads = re.findall(r"SentenceTransformer\(([^)]*)\)", README)
    assert loads and all("trust_remote_code=True" in call for call in loads)
    section = " ".join(_section("Use it from sentence-transformers").split())  # line breaks as spaces
    assert "trust_remote_code=True" in section and "pip install leap` from PyPI is an unrelated project" in section
    assert "full depth" not in section
