"""A saved folder loads with sentence-transformers alone (leap_early_exit.py ships inside it), its exit_mode survives
save and load, model_kwargs are honoured or refused, and backend="onnx" points to `leap export`."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.evaluation.pareto import save_policy
from leap_core.serve.leap_early_exit import StandaloneEarlyExit
from leap_core.models import load_model
from leap_core.policy import ExitPolicy
from leap_core.serve.st_module import MODULE_TYPE, load_sentence_transformer, save_exit_folder

TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"
TEXTS = ["a man is playing a guitar on stage", "the cat sat on the mat", "stocks fell sharply on monday", "x",
         "a woman slices an onion in a small kitchen while the radio plays", "two dogs run in the snow"] * 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A student whose rows leave at different layers: theta is the median cos(p_2, p_1) of the texts."""
    model, tokenizer = load_model(TINY)
    target = tmp_path_factory.mktemp("remote") / "student"
    save_exit_folder(model, tokenizer, target, 64, {"theta": 0.9, "k": 1, "l_min": 2})
    layers = EarlyExitEncoder.from_pretrained(target, l_min=2).layer_embeddings(TEXTS)
    theta = float(np.median((layers[1] * layers[0]).sum(-1)))
    return save_exit_folder(model, tokenizer, target, 64, {"theta": theta, "k": 1, "l_min": 2})


def _standalone(folder: Path, exit_mode: str | None = None) -> SentenceTransformer:
    """The folder with its first module loaded by the shipped file's own code, as it runs where leap is absent."""
    model = load_sentence_transformer(folder, device="cpu")
    return SentenceTransformer(modules=[StandaloneEarlyExit.load(str(folder), model_kwargs={"exit_mode": exit_mode}),
                                        *list(model)[1:]], device="cpu")


@pytest.mark.parametrize("mode", ["batch", "compact", "fixed:2", "full", None])
def test_the_shipped_code_embeds_and_exits_as_leaps_engine(folder, mode):
    leap = load_sentence_transformer(folder, device="cpu")
    ours = _standalone(folder, mode)
    # The shipped code keeps a batch whole, as leap's "batch" mode; "compact" drops rows as they leave (same result
    # up to float noise), so the exact comparison is with "batch".
    expected = leap.encode(TEXTS, output_value=None, exit_mode="batch" if mode in (None, "compact") else mode)
    got = ours.encode(TEXTS, output_value=None)
    assert [int(row["exit_layer"]) for row in got] == [int(row["exit_layer"]) for row in expected]
    np.testing.assert_allclose(np.stack([row["sentence_embedding"].numpy() for row in got]),
                               np.stack([row["sentence_embedding"].numpy() for row in expected]), atol=1e-6)
    if mode is None:
        assert 1 < len({int(row["exit_layer"]) for row in got})  # the test covers rows leaving at different layers


def test_the_shipped_code_serves_a_thresholds_policy_as_leap_does(folder, tmp_path):
    import shutil

    copy = tmp_path / "thresholds"
    shutil.copytree(folder, copy)
    save_policy(copy, ExitPolicy("thresholds", thresholds=(None, 0.5, None), k=1, l_min=2))
    expected = EarlyExitEncoder.from_pretrained(copy).encode(TEXTS, mode="batch", return_exit_layers=True)
    got = _standalone(copy).encode(TEXTS, output_value=None)
    assert [int(row["exit_layer"]) for row in got] == expected[1].tolist()


def _isolated_python() -> list[str]:
    """This interpreter without site processing (so no editable-install hook) and with only site-packages on its
    path, run from a folder outside the repository: what a user without leap has."""
    return [sys.executable, "-I", "-S", "-c"]


LOAD_WITHOUT_LEAP = r"""
import json, sys
sys.path.append(sys.argv[1])
try:
    import leap_core
    print(json.dumps({"leap": True})); raise SystemExit(0)
except ImportError:
    pass
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[2], trust_remote_code=True, device="cpu")
texts = json.loads(sys.argv[3])
rows = model.encode(texts, output_value=None)
model[0].exit_mode = "fixed:2"
model.save(sys.argv[4])
again = SentenceTransformer(sys.argv[4], trust_remote_code=True, device="cpu")
print(json.dumps({"leap": False, "module": type(model[0]).__module__,
                  "layers": [int(r["exit_layer"]) for r in rows],
                  "embeddings": [r["sentence_embedding"].tolist() for r in rows],
                  "saved_mode": again[0].exit_mode,
                  "saved_layers": [int(r["exit_layer"]) for r in again.encode(texts, output_value=None)]}))
"""


def test_a_saved_folder_loads_with_sentence_transformers_alone_in_an_environment_without_leap(folder, tmp_path):
    assert json.loads((folder / "modules.json").read_text())[0]["type"] == MODULE_TYPE
    assert (folder / "leap_early_exit.py").is_file()
    site_packages = sysconfig.get_paths()["purelib"]
    done = subprocess.run([*_isolated_python(), LOAD_WITHOUT_LEAP, site_packages, str(folder), json.dumps(TEXTS),
                           str(tmp_path / "saved")], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["leap"]:
        pytest.skip("could not build an interpreter that lacks leap_core")
    assert result["module"].startswith("transformers_modules.")  # the folder's own file, not leap's package
    expected, layers = EarlyExitEncoder.from_pretrained(folder).encode(TEXTS, mode="batch",
                                                                       return_exit_layers=True)
    assert result["layers"] == layers.tolist()
    np.testing.assert_allclose(np.array(result["embeddings"]), expected, atol=1e-5)
    # Saved there (no leap), the exit mode travels and the copy loads again from its own shipped file.
    assert result["saved_mode"] == "fixed:2" and set(result["saved_layers"]) == {2}
    assert json.loads((tmp_path / "saved" / "modules.json").read_text())[0]["type"] == MODULE_TYPE


def test_the_exit_mode_survives_save_and_load(folder, tmp_path):
    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    model[0].exit_mode = "fixed:3"
    model.save(str(tmp_path / "copy"))
    for again in (SentenceTransformer(str(tmp_path / "copy"), trust_remote_code=True, device="cpu"),
                  load_sentence_transformer(tmp_path / "copy", device="cpu")):
        assert again[0].exit_mode == "fixed:3"
        assert {int(row["exit_layer"]) for row in again.encode(TEXTS, output_value=None)} == {3}


def test_model_kwargs_exit_mode_is_honoured_and_anything_else_refused(folder):
    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu",
                                model_kwargs={"exit_mode": "fixed:1"})
    assert {int(row["exit_layer"]) for row in model.encode(TEXTS, output_value=None)} == {1}
    with pytest.raises(ValueError, match=r"model_kwargs \['torch_dtype'\]: not supported by LeapEarlyExit"):
        SentenceTransformer(str(folder), trust_remote_code=True, device="cpu", model_kwargs={"torch_dtype": "float16"})
    with pytest.raises(ValueError, match="unknown mode"):
        SentenceTransformer(str(folder), trust_remote_code=True, device="cpu", model_kwargs={"exit_mode": "often"})


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_backend_other_than_torch_fails_pointing_to_leap_export(folder, backend):
    with pytest.raises(ValueError, match=rf"backend='{backend}'.*`leap export MODEL --out DIR`"):
        SentenceTransformer(str(folder), trust_remote_code=True, device="cpu", backend=backend)


def test_a_folder_saved_before_the_move_still_loads_through_its_old_module_path(folder, tmp_path):
    """Folders saved before leap_early_exit.py shipped name leap_core.st_module.LeapEarlyExit in modules.json."""
    import shutil

    from leap_core.serve.st_module import LEGACY_TYPE

    old = tmp_path / "old"
    shutil.copytree(folder, old)
    (old / "leap_early_exit.py").unlink()
    modules = json.loads((old / "modules.json").read_text())
    modules[0]["type"] = LEGACY_TYPE
    (old / "modules.json").write_text(json.dumps(modules))
    expected = load_sentence_transformer(folder, device="cpu").encode(TEXTS)
    for loaded in (load_sentence_transformer(old, device="cpu"), SentenceTransformer(str(old), device="cpu", trust_remote_code=True)):
        np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-6)
