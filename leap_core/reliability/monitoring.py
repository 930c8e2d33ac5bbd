"""leap monitor and the CLI's errors: monitor's exit codes, bad references and traffic logs, an unexpected exception."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from leap_core.serve import monitor
from leap_core.reliability.common import Main, Row, error_of, monitor_setup, run_cli


def probe_reference(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """leap monitor's exit codes, and a reference with NaN, a missing key or another model's depth."""
    folder, log, reference = monitor_setup(work)
    file = folder / "leap_reference.json"
    file.write_text(json.dumps(reference))
    alert, _ = run_cli(main, ["monitor", str(folder), "--traffic", str(log)])
    code, said = run_cli(main, ["monitor", str(folder), "--traffic", str(work / "no-log")])
    out = [{"probe": "monitor's alert has its own exit code", "tried": "leap monitor on traffic 2 layers shallower "
            "than its reference; then on a traffic log that is not there", "outcome": f"alert: exit {alert}; "
            f"error: exit {code}: {said}", "held": alert == 3 and code == 2}]
    cases = (("mean_exit_layer NaN", {**reference, "mean_exit_layer": float("nan")}, "mean_exit_layer"),
             ("a missing key", {k: v for k, v in reference.items() if k != "exit_distribution"}, "exit_distribution"),
             ("12 layers on a 4-layer model", {**reference, "exit_distribution": [0.0] * 11 + [1.0],
                                               "mean_exit_layer": 12.0, "n_layers": 12}, "n_layers"))
    for what, bad, field in cases:
        file.write_text(json.dumps(bad))
        code, said = run_cli(main, ["monitor", str(folder), "--traffic", str(log)])
        out.append({"probe": f"leap_reference.json with {what}", "tried": f"leap monitor, its reference with {what}",
                    "outcome": f"exit {code}: {said}", "held": code == 2 and f"leap_reference.json: {field}" in said})
    return out


def _log_file(log: Path, columns: dict[str, Any]) -> None:
    """One Parquet file in the traffic log's naming, with these columns."""
    log.mkdir(parents=True)
    pq.write_table(pa.table(columns), log / "traffic-00000000000000000001-1.parquet")


def probe_monitor_log(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """leap monitor on a one-row log, and on logs with a missing column, a null exit layer or no rows."""
    folder, _, reference = monitor_setup(work, rows=1)
    (folder / "leap_reference.json").write_text(json.dumps(reference))
    code, _ = run_cli(main, ["monitor", str(folder), "--traffic", str(work / "log"), "--out", str(work / "one.json")])
    warned = json.loads((work / "one.json").read_text())["warnings"]
    out = [{"probe": "monitor on a one-row log", "tried": "leap monitor on a log of one row",
            "outcome": f"exit {code}; warnings: {warned}",
            "held": any("only 1 logged rows" in line for line in warned) and "Warning:" in
            (work / "one.md").read_text()}]
    int16 = lambda values: pa.array(values, type=pa.int16())  # noqa: E731
    logs = {"a missing column": {"time": [1.0], "n_layers": int16([4]), "text_chars": pa.array([3], pa.int32()),
                                 "text": ["abc"]},
            "a null exit_layer": {"time": [1.0], "exit_layer": int16([None]), "n_layers": int16([4]),
                                  "text_chars": pa.array([3], pa.int32()), "text": ["abc"]},
            "0 rows": {"time": pa.array([], pa.float64()), "exit_layer": int16([]), "n_layers": int16([]),
                       "text_chars": pa.array([], pa.int32()), "text": pa.array([], pa.string())}}
    for index, (what, columns) in enumerate(logs.items()):
        log = work / f"log{index}"
        _log_file(log, columns)
        code, said = run_cli(main, ["monitor", str(folder), "--traffic", str(log)])
        out.append({"probe": f"traffic log with {what}", "tried": f"leap monitor on a log with {what}",
                    "outcome": f"exit {code}: {said}", "held": code == 2 and str(log) in said})
    return out


def probe_cli_errors(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """An exception no command expects (a bug) is one line naming its type; --debug shows the traceback."""
    def bug(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug\nover two lines")

    real, monitor.monitor = monitor.monitor, bug
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(["monitor", "anything", "--traffic", str(work)])
        debug = error_of(lambda: main(["--debug", "monitor", "anything", "--traffic", str(work)]))
    finally:
        monitor.monitor = real
    lines = err.getvalue().strip().splitlines()
    return [{"probe": "uncaught exception in a command", "tried": "a RuntimeError (two lines) raised inside leap "
             "monitor; again with --debug", "outcome": f"exit {code}: {' / '.join(lines)}; with --debug: {debug}",
             "held": code == 2 and lines == ["leap: error: RuntimeError: a bug over two lines"]
             and debug.startswith("RuntimeError")}]
