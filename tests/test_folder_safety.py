"""No command deletes a folder it did not create; --name is a plain name; one writer per model folder at a time."""

import json
import shutil
import subprocess
import sys

import pytest

from leap_core.cli import main
from leap_core.evaluation.pareto import calibrate_policy, save_policy
from leap_core.retrofit.exit_branch import CUT_KIND, save_cut
from leap_core.model_folder import BRANCH_FILE, model_fingerprint, read_branch
from leap_core.io import (MANIFEST_FILE, check_replaceable, plain_name, read_manifest, replace_folder,
                          writer_lock)
from leap_core.models import resolve_model
from leap_core.policy import ExitPolicy

MODEL = "random-bert:layers=4,hidden=64,heads=2,seed=1"


def _build(text: str):
    def build(folder):
        (folder / "sub").mkdir(parents=True)
        (folder / "a.txt").write_text(text)
        (folder / "sub" / "b.txt").write_text("b")
    return build


def _user_folder(path):
    path.mkdir()
    (path / "thesis.tex").write_text("mine")
    return path


@pytest.fixture
def branch(tmp_path):
    """A stand-in exit branch (the tiny model and a leap_branch.json): cutting it needs no training."""
    folder = tmp_path / "branch"
    shutil.copytree(resolve_model(MODEL), folder)
    (folder / BRANCH_FILE).write_text(json.dumps({"original": MODEL, "exit_layers": [2, 3], "original_layers": 4,
                                                  "original_fingerprint": model_fingerprint(resolve_model(MODEL))}))
    return folder


def test_replace_folder_replaces_only_its_own_kind_with_every_file_listed_and_unchanged(tmp_path):
    target = tmp_path / "out"
    replace_folder(target, _build("one"), "cut model")
    assert read_manifest(target) and set(read_manifest(target)["files"]) == {"a.txt", "sub/b.txt"}
    replace_folder(target, _build("two"), "cut model")  # the happy path: a leap folder of the same kind
    assert (target / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.leap.lock", "out"]  # no staging left behind
    with pytest.raises(ValueError, match="a leap cut model folder, not a leap ONNX export"):
        replace_folder(target, _build("x"), "ONNX export")
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files leap did not write \(notes.txt\)"):
        replace_folder(target, _build("x"), "cut model")
    (target / "notes.txt").unlink()
    (target / "a.txt").write_text("edited by hand")
    with pytest.raises(ValueError, match="a.txt: changed since leap wrote it"):
        replace_folder(target, _build("x"), "cut model")
    assert (target / "a.txt").read_text() == "edited by hand"
    (tmp_path / "empty").mkdir()
    assert (replace_folder(tmp_path / "empty", _build("e"), "cut model") / "a.txt").read_text() == "e"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        check_replaceable(tmp_path / "file", "cut model")


def test_a_failed_build_leaves_the_old_folder_whole(tmp_path):
    target = tmp_path / "out"
    replace_folder(target, _build("one"), "cut model")

    def fails(folder):
        _build("half")(folder)
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        replace_folder(target, fails, "cut model")
    assert (target / "a.txt").read_text() == "one" and len(list(tmp_path.iterdir())) == 2


def test_cut_into_an_existing_user_folder_is_refused_and_deletes_nothing(branch, tmp_path, capsys):
    existing = _user_folder(tmp_path / "existing")
    old = _user_folder(tmp_path / "existing.old")  # a neighbour that only looks like a leftover
    assert main(["cut", str(branch), "--depth", "2", "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(existing) in err and "not overwriting it" in err
    assert (existing / "thesis.tex").read_text() == "mine" and (old / "thesis.tex").read_text() == "mine"
    # The happy path: a new folder, re-cut in place (after calibrate --save wrote into it), the neighbour kept.
    cut = save_cut(branch, 2, tmp_path / "cut")
    assert read_manifest(cut)["kind"] == CUT_KIND and read_branch(cut)["cut_depth"] == 2
    save_policy(cut, ExitPolicy("full", k=1, l_min=1))
    assert "leap_exit.json" in read_manifest(cut)["files"]
    assert main(["cut", str(branch), "--depth", "3", "--out", str(cut)]) == 0
    assert read_branch(cut)["cut_depth"] == 3 and not (cut / "leap_exit.json").exists()
    assert (old / "thesis.tex").read_text() == "mine"


def test_export_over_a_users_folder_with_a_fake_leap_onnx_json_is_refused(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    user = _user_folder(tmp_path / "dir")
    (user / "leap_onnx.json").write_text("{}")
    assert main(["export", MODEL, "--out", str(user), "--depth", "1"]) == 2
    assert "not a leap ONNX export" in capsys.readouterr().err
    assert sorted(p.name for p in user.iterdir()) == ["leap_onnx.json", "thesis.tex"]
    assert (user / "thesis.tex").read_text() == "mine" and (user / "leap_onnx.json").read_text() == "{}"


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/etc/x", "..", ".", "", "a\\b"])
def test_a_report_name_is_a_plain_name(name, tmp_path, capsys):
    with pytest.raises(ValueError, match="must be a plain name"):
        plain_name(name)
    out = tmp_path / "reports" / "pareto"
    assert main(["pareto", MODEL, "--profile", "smoke", "--name", name, "--out-dir", str(out)]) == 2
    assert "--name" in capsys.readouterr().err and not (tmp_path / "escaped").exists()
    assert plain_name("cpu_long-leap-student.v2") == "cpu_long-leap-student.v2"


def _holder(folder, what):
    """Another process holding the folder's writer lock, as a first `calibrate --save` would."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom leap_core.io import writer_lock\n"
        f"with writer_lock({str(folder)!r}, what={what!r}):\n    print('held', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    return holder


def test_a_second_writer_of_a_model_folder_is_refused_with_one_line(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    holder = _holder(folder, "calibrate --save")
    try:
        assert main(["calibrate", str(folder), "--profile", "smoke", "--save"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err and str(folder) in err
        with pytest.raises(ValueError, match="holds it"):
            calibrate_policy(None, str(folder), 0.01, save=True)  # refused before any measurement
        with pytest.raises(ValueError, match="holds it"):
            save_policy(folder, ExitPolicy("fixed", depth=2, k=1, l_min=2))
    finally:
        holder.kill()
        holder.wait()
    assert not (folder / "leap_exit.json").exists()
    with writer_lock(folder, what="calibrate --save"):  # one writer nests its own steps (calibrate -> save_policy)
        save_policy(folder, ExitPolicy("fixed", depth=2, k=1, l_min=2))
    assert json.loads((folder / "leap_exit.json").read_text())["policy"] == {"kind": "fixed", "depth": 2}


def test_the_manifest_is_no_part_of_a_models_fingerprint(branch, tmp_path):
    cut = save_cut(branch, 2, tmp_path / "cut")
    before = model_fingerprint(cut)
    (cut / MANIFEST_FILE).write_text("{}")
    assert model_fingerprint(cut) == before


def test_a_saved_model_replaces_only_its_own_folder_and_never_a_neighbour(tmp_path):
    from leap_core.models import MODEL_KIND, load_model, save_sentence_transformer

    model, tokenizer = load_model(MODEL)
    existing, old = _user_folder(tmp_path / "existing"), _user_folder(tmp_path / "existing.old")
    with pytest.raises(ValueError, match="not empty and not a leap sentence-transformers model"):
        save_sentence_transformer(model, tokenizer, existing)
    fresh, fresh_old = tmp_path / "fresh", _user_folder(tmp_path / "fresh.old")
    save_sentence_transformer(model, tokenizer, fresh)
    assert read_manifest(fresh)["kind"] == MODEL_KIND
    save_sentence_transformer(model, tokenizer, fresh, max_seq_length=32)  # its own folder: replaced whole
    assert json.loads((fresh / "tokenizer_config.json").read_text())["model_max_length"] == 32
    for folder in (existing, old, fresh_old):
        assert (folder / "thesis.tex").read_text() == "mine" and len(list(folder.iterdir())) == 1
    (fresh / "notes.txt").write_text("mine")  # a user's file inside it: refused from now on
    with pytest.raises(ValueError, match=r"holds files leap did not write \(notes.txt\)"):
        save_sentence_transformer(model, tokenizer, fresh)


def test_a_saved_reference_takes_the_model_folders_writer_lock(tmp_path):
    from leap_core.model_folder import REFERENCE_FILE
    from leap_core.serve.monitor import save_reference

    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    holder = _holder(folder, "calibrate --save")
    try:
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            save_reference(folder, {"n": 1})
    finally:
        holder.kill()
        holder.wait()
    assert not (folder / REFERENCE_FILE).exists()
    assert save_reference(folder, {"n": 1}).is_file()
