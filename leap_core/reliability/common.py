"""What the probes share: the tiny model, a stand-in kill, a planted payload, and how a probe runs a call or the CLI.

The CLI's `main` is handed in by `leap reliability` (leap_core.cli.cmd_reliability): nothing here imports the CLI.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from leap_core.pipeline import experiment
from leap_core.config import load_profile
from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.models import resolve_model
from leap_core.serve.traffic import TrafficLog, replay

TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"

Main = Callable[[list[str]], int]  # leap_core.cli.main: argv -> exit status
Row = dict[str, Any]  # {probe, tried, outcome, held}
Probe = Callable[[Path, Path, Main], list[Row]]  # (its own work folder, the data folder, the CLI's main)


class Killed(Exception):
    """A stand-in for a kill: raised from a step or chunk hook."""


class Payload:
    """Unpickling it would create a marker file: what a planted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def error_of(call: Callable[[], Any]) -> str:
    """`<Type>: <message>` of what `call` raised, or "no error"."""
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the probe reports whatever was raised
        return f"{type(err).__name__}: {err}"
    return "no error"


def smoke(work: Path, data_dir: Path) -> tuple[Any, Path]:
    """The smoke profile writing under `work`, and its teacher cache."""
    profile = load_profile("smoke", {"output_dir": str(work / "runs"), "data": {"data_dir": str(data_dir)}})
    return profile, experiment.cache_teacher(profile, experiment.extract(profile), show_progress=False)


def cli_code(main: Main, argv: list[str]) -> int:
    """The CLI's exit code (its stderr discarded)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return main(argv)
        except SystemExit as refused:  # argparse refuses a bad option before the command runs
            return int(refused.code)


def run_cli(main: Main, argv: list[str]) -> tuple[int, str]:
    """The CLI's exit code and its last line on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):  # the command's report: not ours
        try:
            code = main(argv)
        except SystemExit as refused:
            code = int(refused.code)
    lines = err.getvalue().strip().splitlines()
    return code, lines[-1] if lines else ""


@contextlib.contextmanager
def held_by_another(lock: str, folder: Path, what: str) -> Iterator[int]:
    """`folder` held through leap_core.io.<lock> by another process while the block runs; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", (
        f"import time\nfrom leap_core.io import {lock}\n"
        f"with {lock}({str(folder)!r}, what={what!r}):\n    print('held', flush=True)\n    time.sleep(120)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def user_folder(path: Path, *extra: str) -> Path:
    """A folder of a user's own files (what no leap command may delete)."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("mine")
    for name in extra:
        (path / name).write_text("{}")
    return path


def untouched(*folders: Path) -> bool:
    """Whether every user_folder here still holds the user's file, unchanged."""
    return all((folder / "thesis.tex").is_file() and (folder / "thesis.tex").read_text() == "mine"
               for folder in folders)


def tiny_copy(folder: Path, settings: dict[str, Any] | None = None) -> Path:
    """A copy of the tiny model, with `settings` as its leap_exit.json when given."""
    shutil.copytree(resolve_model(TINY), folder)
    if settings is not None:
        (folder / "leap_exit.json").write_text(json.dumps(settings))
    return folder


def float16_column(values: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float16 values as a teacher-cache layer column (one fixed-size list per row)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=pa.float16()), values.shape[-1])


def monitor_setup(work: Path, rows: int = 300) -> tuple[Path, Path, dict[str, Any]]:
    """A tiny model serving fixed:2, a log of `rows` texts it served, and a valid reference of depth 4."""
    folder = tiny_copy(work / "model", {"theta": 0.9, "k": 1, "l_min": 2, "policy": {"kind": "fixed", "depth": 2}})
    texts = [f"text {i} about {'rivers ' * (i % 4)}and the hills near town {i % 7}" for i in range(rows)]
    replay(EarlyExitEncoder.from_pretrained(folder), texts, TrafficLog(str(work / "log"), sample_text=1.0))
    reference = {"exit_distribution": [0.0, 0.0, 0.0, 1.0], "mean_exit_layer": 4.0, "n": rows, "n_layers": 4,
                 "nn10": None, "source": "probe"}
    return folder, work / "log", reference
