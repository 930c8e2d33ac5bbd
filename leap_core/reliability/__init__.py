"""Faults and bad inputs, tried for real on the smoke profile: what happened, and that nothing was lost.

Each probe builds what it needs in its own folder, does what an attacker, a kill or a careless user would, and
returns {probe, tried, outcome, held}: `held` is True when the system refused or recovered as it should. `leap
reliability` runs them all and writes reports/reliability.{json,md}; the same behaviours are pinned by tests.

Probes are grouped by concern: files.py (checkpoints, locks, resume, the teacher cache), inputs.py (bad settings,
schemas, texts; commands pointed at a user's folder), serving.py (the served model, S3), monitoring.py (leap monitor,
the CLI's errors). A probe is called as probe(work, data_dir, main): `main` is leap_core.cli.main, handed in by the
command, so nothing here imports the CLI.
"""

from __future__ import annotations

from pathlib import Path

from leap_core.reliability.common import Main, Probe, Row
from leap_core.reliability.files import probe_checkpoints, probe_chunks, probe_lock_and_cache, probe_writers
from leap_core.reliability.inputs import probe_encode_inputs, probe_folders, probe_inputs, probe_schemas
from leap_core.reliability.monitoring import probe_cli_errors, probe_monitor_log, probe_reference
from leap_core.reliability.serving import probe_s3, probe_served_model

__all__ = ["PROBES", "SCHEMA_AND_EXIT_PROBES", "run_probes"]

PROBES: tuple[Probe, ...] = (probe_checkpoints, probe_lock_and_cache, probe_inputs, probe_folders, probe_chunks,
                             probe_served_model, probe_s3, probe_schemas, probe_reference, probe_monitor_log,
                             probe_cli_errors, probe_writers, probe_encode_inputs)
SCHEMA_AND_EXIT_PROBES = PROBES[-6:]  # issue 31's second part: no model, data or S3 server needed, seconds to run


def run_probes(data_dir: str | Path, work: str | Path, probes: tuple[Probe, ...] = PROBES, *,
               main: Main) -> list[Row]:
    """Every probe (or those given), each group in its own subfolder of `work`; `main` is the CLI's
    (leap_core.cli.main), which the probes that run a command call."""
    results = []
    for probe in probes:
        folder = Path(work) / probe.__name__
        folder.mkdir(parents=True, exist_ok=True)
        results += probe(folder, Path(data_dir), main)
    for row in results:  # the report names files relative to the probes' folder, not this machine's temp dir
        row["outcome"] = row["outcome"].replace(str(Path(work).resolve()), "<work>").replace(str(work), "<work>")
    return results
