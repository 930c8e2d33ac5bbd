"""The traffic log (bounded, whole files only, S3 too) and `leap monitor`'s alerts on a shift of depth."""

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.models import resolve_model
from leap_core.serve.monitor import ALERT_EXIT_CODE
from leap_core.serve.traffic import TrafficLog, log_files, read_traffic, replay

TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"
WORDS = "a man woman dog cat plays runs guitar snow kitchen river market city quietly red small old".split()


def test_the_log_keeps_its_newest_files_whole_and_samples_texts(tmp_path):
    log = TrafficLog(str(tmp_path / "log"), flush_rows=5, max_files=3, sample_text=0.5, seed=0)
    for start in range(0, 42, 7):
        log.record([f"text {i}" for i in range(start, start + 7)], [2] * 7, 4)
    assert len(log_files(log.location)) == 3  # 8 files written, the 5 oldest rotated out
    log.flush()  # the last 2 buffered rows: one more file, the oldest goes
    table = read_traffic(log.location)
    assert table.num_rows == 3 * 5 - 5 + 2 and table.column("exit_layer").to_pylist() == [2] * table.num_rows
    texts = table.column("text").to_pylist()
    assert texts[-1] in ("text 41", None) and 0 < sum(t is not None for t in texts) < len(texts)
    with pytest.raises(ValueError, match="no traffic log files"):
        read_traffic(str(tmp_path / "empty"))


def test_a_killed_server_leaves_only_whole_files(tmp_path):
    location = tmp_path / "log"
    writer = subprocess.Popen([sys.executable, "-c", (
        "from leap_core.serve.traffic import TrafficLog\n"
        f"log = TrafficLog({str(location)!r}, flush_rows=50, max_files=1000)\n"
        "print('ready', flush=True)\n"
        "while True:\n    log.record(['some text'] * 7, [3] * 7, 4)\n")], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    deadline = time.time() + 60
    while len(log_files(str(location))) < 5 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)  # mid-stream: maybe in the middle of writing a file
    writer.wait()
    table = read_traffic(str(location))  # every finished file reads whole
    assert table.num_rows == 50 * len(log_files(str(location))) and table.num_rows >= 250
    TrafficLog(str(location)).record(["after"], [1], 4)  # a restarted server goes on in the same log


def test_the_log_rotates_in_s3(s3_server):
    log = TrafficLog("s3://leap-test/traffic", flush_rows=2, max_files=2)
    log.record(["a", "b", "c", "d", "e", "f"], [1, 2, 3, 4, 4, 4], 4)
    assert [uri.startswith("s3://leap-test/traffic/traffic-") for uri in log_files(log.location)] == [True, True]
    assert read_traffic(log.location).column("exit_layer").to_pylist() == [3, 4, 4, 4]


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


@pytest.fixture(scope="module")
def split_model(tmp_path_factory):
    """A tiny model whose theta splits texts in two: those that leave at layer 2, and those that run to 4."""
    import shutil

    folder = tmp_path_factory.mktemp("monitor") / "model"
    shutil.copytree(resolve_model(TINY), folder)
    texts = _texts(600, 0)
    layers = EarlyExitEncoder.from_pretrained(folder, l_min=2).layer_embeddings(texts)
    theta = float(np.median((layers[1] * layers[0]).sum(-1)))
    policy = {"kind": "thresholds", "thresholds": [None, theta, None]}  # only layer 2 tests: rows leave at 2 or 4
    (folder / "leap_exit.json").write_text(json.dumps({"theta": theta, "k": 1, "l_min": 2, "policy": policy}))
    _, exits = EarlyExitEncoder.from_pretrained(folder).encode(texts, return_exit_layers=True)
    early = [t for t, layer in zip(texts, exits) if layer == 2]
    late = [t for t, layer in zip(texts, exits) if layer == 4]
    assert len(early) > 100 and len(late) > 100
    return folder, early, late


def test_monitor_alerts_on_a_depth_shift_and_stays_quiet_on_traffic_like_the_reference(split_model, tmp_path, capsys):
    from leap_core.cli import main

    folder, early, late = split_model
    (tmp_path / "reference.txt").write_text("\n".join(early[:150]) + "\n")
    encoder = EarlyExitEncoder.from_pretrained(folder)
    replay(encoder, early[150:] + early[:50], TrafficLog(str(tmp_path / "same"), sample_text=1.0))
    replay(encoder, late, TrafficLog(str(tmp_path / "shifted"), sample_text=1.0))
    assert main(["monitor", str(folder), "--traffic", str(tmp_path / "same"), "--reference-texts",
                 str(tmp_path / "reference.txt"), "--save-reference", "--out", str(tmp_path / "same.json")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())
    assert not same["alert"] and abs(same["depth_shift"]) < 0.5 and (folder / "leap_reference.json").is_file()
    assert "no alert" in capsys.readouterr().out and (tmp_path / "same.md").is_file()
    with webhook() as (url, received), pytest.raises(SystemExit) as alerted:  # saved reference, shifted traffic
        os.environ["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"] = url
        try:
            main(["monitor", str(folder), "--traffic", str(tmp_path / "shifted"), "--prometheus", "--publish-event"])
        finally:
            del os.environ["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"]
    assert alerted.value.code == ALERT_EXIT_CODE == 3  # apart from errors (2): cron retrains on alerts only
    shown = capsys.readouterr().out
    assert "leap_monitor_alert 1.0" in shown and 'leap_exit_mean_layer{source="traffic"} 4.0' in shown
    assert "# TYPE leap_exit_psi gauge" in shown
    # The Argo Event that starts RetrainFlow (its trigger maps the payload's traffic to --traffic).
    assert [event["name"] for event in received] == ["leap_monitor_alert"]
    payload = received[0]["payload"]
    assert payload["traffic"] == str(tmp_path / "shifted") and "layers" in payload["alerts"]


@contextlib.contextmanager
def webhook():
    """An HTTP endpoint standing in for the Argo Events webhook: it keeps every JSON body POSTed to it."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server convention
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", received
    finally:
        server.shutdown()
