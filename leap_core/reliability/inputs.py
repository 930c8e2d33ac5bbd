"""Inputs and folders: bad exit settings and schemas, an unknown arm, corrupt weights, an altered export, bad texts,
and commands pointed at a user's folder or at one another's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.serve.export import export_onnx
from leap_core.serve.onnx_graph import OnnxEncoder
from leap_core.io import sha256_file
from leap_core.model_folder import BRANCH_FILE, model_fingerprint, read_branch
from leap_core.models import resolve_model
from leap_core.reliability.common import (TINY, Main, Row, cli_code, error_of, held_by_another, run_cli, tiny_copy,
                                          untouched, user_folder)


def probe_inputs(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """Bad exit settings, an unknown arm, corrupt weights, an altered export."""
    out = []
    folder = work / "model"
    shutil.copytree(resolve_model(TINY), folder)
    for settings, what in (({"theta": 2.0, "k": 1, "l_min": 2}, "theta 2.0"),
                           ({"theta": 0.9, "k": 1, "l_min": 99}, "l_min 99 on a 4-layer model")):
        (folder / "leap_exit.json").write_text(json.dumps(settings))
        said = error_of(lambda: EarlyExitEncoder.from_pretrained(folder))
        out.append({"probe": f"leap_exit.json with {what}", "tried": "exit settings that could never fire",
                    "outcome": said, "held": "leap_exit.json" in said})
    (folder / "leap_exit.json").unlink()
    runs = work / "arm-runs"
    code = cli_code(main, ["train", "--profile", "smoke", "--data-dir", str(data_dir), "--set",
                           f"output_dir={runs}", "--arm", "no-such-arm"])
    out.append({"probe": "unknown --arm", "tried": "leap train --arm no-such-arm",
                "outcome": f"exit {code}; anything written: {runs.exists()}", "held": code == 2 and not runs.exists()})
    exported = export_onnx(str(folder), work / "onnx", depth=2, int8=True)
    (exported / "tokenizer_config.json").write_text((exported / "tokenizer_config.json").read_text() + " ")
    said = error_of(lambda: OnnxEncoder(exported))
    out.append({"probe": "altered tokenizer in an ONNX export", "tried": "one byte appended to tokenizer_config.json",
                "outcome": said, "held": "differs from the one exported" in said})
    next(folder.glob("*.safetensors")).write_bytes(b"\0" * 64)
    said = error_of(lambda: EarlyExitEncoder.from_pretrained(folder))
    out.append({"probe": "corrupt model.safetensors", "tried": "the weights file overwritten with zeros",
                "outcome": said, "held": str(folder) in said and "delete" in said})
    return out


def probe_folders(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """--out into a user's folder (cut, export), a --name that is a path, two writers of one model folder."""
    branch = work / "branch"  # a stand-in exit branch: the tiny model and its record (cutting needs no training)
    shutil.copytree(resolve_model(TINY), branch)
    (branch / BRANCH_FILE).write_text(json.dumps({"original": TINY, "exit_layers": [2, 3], "original_layers": 4,
                                                  "original_fingerprint": model_fingerprint(resolve_model(TINY))}))
    existing, old = user_folder(work / "existing"), user_folder(work / "existing.old")
    code, said = run_cli(main, ["cut", str(branch), "--depth", "2", "--out", str(existing)])
    out = [{"probe": "cut into an existing user folder", "tried": "leap cut BRANCH --depth 2 --out EXISTING, beside "
            "EXISTING.old (both a user's files)", "outcome": f"exit {code}: {said}; files kept: "
            f"{untouched(existing, old)}", "held": code == 2 and untouched(existing, old)}]
    user = user_folder(work / "dir", "leap_onnx.json")
    code, said = run_cli(main, ["export", str(branch), "--out", str(user), "--depth", "2"])
    out.append({"probe": "export over a user's folder", "tried": "leap export MODEL --out DIR, DIR holding {} as "
                "leap_onnx.json beside the user's files", "outcome": f"exit {code}: {said}; files kept: "
                f"{untouched(user)}", "held": code == 2 and untouched(user)})
    reports = work / "reports" / "pareto"
    code, said = run_cli(main, ["pareto", TINY, "--profile", "smoke", "--data-dir", str(data_dir), "--name",
                                "../../escaped", "--out-dir", str(reports)])
    written = [p.name for p in work.rglob("escaped*")]
    out.append({"probe": "--name that is a path", "tried": "leap pareto MODEL --name ../../escaped",
                "outcome": f"exit {code}: {said}; written: {written or 'nothing'}", "held": code == 2 and not written})
    out.append(_concurrent_calibrate(work, data_dir, main))
    return out


def _concurrent_calibrate(work: Path, data_dir: Path, main: Main) -> Row:
    """A second `leap calibrate --save` while another writer (a first calibrate) holds the model folder."""
    folder = work / "model"
    shutil.copytree(resolve_model(TINY), folder)
    with held_by_another("writer_lock", folder, "calibrate --save") as pid:
        code, said = run_cli(main, ["calibrate", str(folder), "--profile", "smoke", "--data-dir", str(data_dir),
                                    "--set", f"output_dir={work / 'runs'}", "--save"])
    written = (folder / "leap_exit.json").exists()
    return {"probe": "concurrent calibrate --save", "tried": "leap calibrate MODEL --save while a first one holds "
            "the model folder", "outcome": f"exit {code}: {said}; leap_exit.json written: {written}",
            "held": code == 2 and f"pid {pid}" in said and not written}


def _onnx_record(folder: Path) -> dict[str, Any]:
    """A well-formed leap_onnx.json for a stand-in export folder (a graph file and a tokenizer file)."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"a stand-in graph")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    digest = {name: sha256_file(folder / name) for name in ("model.onnx", "vocab.txt")}
    return {"source": TINY, "source_fingerprint": "0" * 64, "served_folder_fingerprint": "0" * 64,
            "policy": "fixed:2", "depth": 2, "n_layers": 4, "max_length": 128, "max_positions": 512,
            "pooling": "mean", "normalized": True, "inputs": ["input_ids", "attention_mask", "token_type_ids"],
            "graph": "model.onnx", "graphs": {"fp32": "model.onnx"}, "sha256": {"model.onnx": digest["model.onnx"]},
            "tokenizer_sha256": {"vocab.txt": digest["vocab.txt"]}}


def probe_schemas(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """NaN, wrong types, missing keys and out-of-range values in leap_exit.json, leap_branch.json, leap_onnx.json."""
    folder = tiny_copy(work / "model", {"theta": float("nan"), "k": 1, "l_min": 2})  # json.dumps writes NaN
    said = error_of(lambda: EarlyExitEncoder.from_pretrained(folder))
    out = [{"probe": "leap_exit.json with theta NaN", "tried": "a NaN theta in the model's exit settings",
            "outcome": said, "held": "leap_exit.json: theta" in said and "finite" in said}]
    record = {"original": TINY, "original_fingerprint": "0" * 64, "original_layers": 4, "exit_layers": [2, 3]}
    said = []
    for bad in ({**record, "exit_layers": "2"}, {k: v for k, v in record.items() if k != "original_layers"}):
        (folder / BRANCH_FILE).write_text(json.dumps(bad))
        said.append(error_of(lambda: read_branch(folder)))
    out.append({"probe": "leap_branch.json with a wrong type or a missing key", "tried": "exit_layers \"2\"; "
                "original_layers deleted", "outcome": " / ".join(said),
                "held": "leap_branch.json: exit_layers" in said[0] and "leap_branch.json: original_layers" in said[1]})
    export = work / "export"
    good = _onnx_record(export)
    cases = {"missing max_length, sha256 or graph": [{k: v for k, v in good.items() if k != key}
                                                      for key in ("max_length", "sha256", "graph")],
             "max_length 1e6 or -1": [{**good, "max_length": 10 ** 6}, {**good, "max_length": -1}],
             "tokenizer_sha256 deleted": [{k: v for k, v in good.items() if k != "tokenizer_sha256"}],
             "graph an absolute path outside the folder": [{**good, "graph": "/model.onnx"}]}
    for what, records in cases.items():
        said = []
        for bad in records:
            (export / "leap_onnx.json").write_text(json.dumps(bad))
            said.append(error_of(lambda: OnnxEncoder(export)))
        out.append({"probe": f"leap_onnx.json: {what}", "tried": f"{what} in an export's leap_onnx.json, loaded "
                    "by export.OnnxEncoder", "outcome": " / ".join(said),
                    "held": all(line.startswith("ValueError: ") and "leap_onnx.json: " in line for line in said)})
    return out


def probe_encode_inputs(work: Path, data_dir: Path, main: Main) -> list[Row]:
    """A lone surrogate among the texts; a max_seq_length beyond the model's position table."""
    folder = tiny_copy(work / "model", {"theta": 0.9, "k": 1, "l_min": 2})
    said = error_of(lambda: EarlyExitEncoder.from_pretrained(folder).encode(["a sentence", "ok", "bad \ud800 text"]))
    out = [{"probe": "lone surrogate to encode", "tried": 'encode(["a sentence", "ok", "bad \\ud800 text"])',
            "outcome": said, "held": said.startswith("ValueError: sentences[2]")}]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 100000}))
    said = error_of(lambda: EarlyExitEncoder.from_pretrained(folder))
    out.append({"probe": "max_seq_length beyond the model's positions", "tried": "max_seq_length 100000 on a model "
                "of 512 positions", "outcome": said,
                "held": said.startswith("ValueError: ") and "100000" in said and "512" in said and str(folder) in said})
    return out
