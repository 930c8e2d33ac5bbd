import json

import pytest
import torch
from safetensors.torch import load_file

from leap_core.pipeline import experiment
from leap_core.config import load_profile


@pytest.fixture()
def smoke(tmp_path, data_dir):
    profile = load_profile("smoke", {"output_dir": str(tmp_path / "runs"), "data": {"data_dir": str(data_dir)}})
    sentences = experiment.extract(profile)
    cache = experiment.cache_teacher(profile, sentences, show_progress=False)
    return profile, cache


class Killed(Exception):
    pass


def _weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def test_killed_run_resumes_to_the_same_weights(smoke, tmp_path):
    profile, cache = smoke
    steps = experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "straight").steps
    assert steps == 6 and profile.training.checkpoint_every == 2

    def kill_at_step_5(step, terms):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "killed", on_step=kill_at_step_5)
    assert (tmp_path / "killed" / "checkpoint.pt").is_file()
    with open(tmp_path / "killed" / "train_log.jsonl", "a") as handle:
        handle.write('{"step": 6, "epo')  # a line the kill tore: dropped on resume
    (tmp_path / "killed" / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")  # what a kill leaves behind
    (tmp_path / "killed" / ".model.a1b2").mkdir()
    assert not (tmp_path / "killed" / "model").exists()
    experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "killed")
    assert not list((tmp_path / "killed").glob(".*.tmp")) and not (tmp_path / "killed" / ".model.a1b2").exists()
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "killed" / "model").stat().st_mode)
    assert mode == 0o777 & ~umask  # a serving user can read the model folder (mkdtemp alone gives 0700)

    straight, resumed = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "killed" / "model")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    log = [json.loads(line) for line in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5, 6]  # steps after the checkpoint not doubled


def test_a_run_killed_on_one_machine_resumes_on_another_from_its_s3_checkpoint(smoke, tmp_path, s3_server):
    """The checkpoint is mirrored in S3: a restart with an empty run folder (another pod) goes on from it, to the
    same weights as a run never killed; a tampered mirror is refused by its sha256; a finished run leaves none."""
    from leap_core import storage

    profile, cache = smoke
    store = f"{s3_server}/checkpoints-test"
    straight = experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "straight" / "leap-seed0")

    def kill_at_step_5(step, terms):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "pod1" / "leap-seed0",
                             on_step=kill_at_step_5, checkpoint_store=store)
    bucket, prefix = storage.split(store)
    keys = sorted(item["Key"].rsplit("/", 1)[-1] for item in
                  storage.client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    assert len(keys) == 3 and keys[0].startswith("checkpoint-") and keys[1:] == ["checkpoint.json", "train_log.jsonl"]
    record_key = next(item["Key"] for item in storage.client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
                      if item["Key"].endswith("/checkpoint.json"))
    assert json.loads(storage.client().get_object(Bucket=bucket, Key=record_key)["Body"].read())["step"] == 4

    tensors_key = record_key.replace("checkpoint.json", keys[0])
    good = storage.client().get_object(Bucket=bucket, Key=tensors_key)
    body, metadata = good["Body"].read(), good["Metadata"]
    storage.client().put_object(Bucket=bucket, Key=tensors_key, Body=body[:-1] + bytes([body[-1] ^ 1]),
                                Metadata=metadata)  # a flipped bit, with the metadata left as it was
    with pytest.raises(ValueError, match="checkpoint-.*sha256"):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "pod2" / "leap-seed0", checkpoint_store=store)
    assert not (tmp_path / "pod2" / "leap-seed0" / "checkpoint.pt").exists()
    storage.client().put_object(Bucket=bucket, Key=tensors_key, Body=body, Metadata=metadata)

    resumed = experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "pod3" / "leap-seed0",
                                   checkpoint_store=store)
    for name, tensor in _weights(straight.model_dir).items():
        assert torch.equal(tensor, _weights(resumed.model_dir)[name]), name
    log = [json.loads(line) for line in (tmp_path / "pod3" / "leap-seed0" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5, 6]  # the killed pod's lines came with the checkpoint
    assert "Contents" not in storage.client().list_objects_v2(Bucket=bucket, Prefix=prefix)


class Payload:
    """Unpickling this runs code: it writes a marker file (what an attacker's planted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_or_altered_checkpoint_never_runs_its_pickle(smoke, tmp_path):
    from leap_core.io import sha256_file
    from leap_core.train.training import CHECKPOINT, CHECKPOINT_META

    profile, cache = smoke
    marker = tmp_path / "pwned"

    def kill_at_step_3(step, terms):
        if step == 3:
            raise Killed

    # 1. a .pt planted alone: never loaded, the run trains from step 0 and overwrites it
    planted = tmp_path / "planted"
    planted.mkdir()
    torch.save({"x": Payload(marker)}, planted / CHECKPOINT)
    experiment.train_arm(profile, "leap", 0, cache, out_dir=planted)
    assert not marker.exists() and (planted / "model").is_dir()
    # 2. a real checkpoint whose .pt is swapped for a payload and its record forged to match: weights_only refuses
    forged = tmp_path / "forged"
    with pytest.raises(Killed):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=forged, on_step=kill_at_step_3)
    torch.save({"x": Payload(marker)}, forged / CHECKPOINT)
    meta = json.loads((forged / CHECKPOINT_META).read_text())
    (forged / CHECKPOINT_META).write_text(json.dumps({**meta, "sha256": sha256_file(forged / CHECKPOINT)}))
    with pytest.raises(ValueError, match=f"{forged / CHECKPOINT}: not a checkpoint this run can load"):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=forged)
    assert not marker.exists()
    # 3. a .pt altered after its record was written (a torn or corrupt file): named, with the way out
    (forged / CHECKPOINT_META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"checkpoint.pt: missing or not the file .* records \(sha256\); delete both"):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=forged)


def test_training_moves_the_weights_and_logs_every_term(smoke, tmp_path):
    profile, cache = smoke
    result = experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "a")
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert {"final", "inter", "exit_teacher", "exit_self", "contrast", "late", "redund", "total"} <= set(log[-1])
    baseline = experiment.train_arm(profile, "baseline", 0, cache, out_dir=tmp_path / "b")
    assert "exit_teacher" not in json.loads((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()[-1])
    a, b = _weights(result.model_dir), _weights(baseline.model_dir)
    assert any(not torch.equal(a[name], b[name]) for name in a)
    assert json.loads((result.model_dir / "leap_exit.json").read_text()) == {"theta": 0.95, "k": 1, "l_min": 2}
    # `leap train` leaves leap's card: its recipe and the numbers of the policy it serves, not sentence-transformers'.
    card = (result.model_dir / "README.md").read_text()
    assert "It serves the policy **rule(theta=0.95,k=1,l_min=2)**" in card and "| arm | leap |" in card
    assert "STS-B Spearman at the served policy" in card and "https://www.SBERT.net" not in card
    # The saved student is a SentenceTransformer that exits: LeapEarlyExit first, as the encoder on the folder.
    from leap_core.serve.st_module import MODULE_TYPE, load_sentence_transformer

    assert json.loads((result.model_dir / "modules.json").read_text())[0]["type"] == MODULE_TYPE
    texts = ["a man plays a guitar", "rain"]
    from leap_core.serve.encoder import EarlyExitEncoder

    expected = EarlyExitEncoder.from_pretrained(result.model_dir).encode(texts)
    assert torch.allclose(torch.from_numpy(load_sentence_transformer(result.model_dir).encode(texts)),
                          torch.from_numpy(expected), atol=1e-6)


def test_frozen_layers_keep_their_weights_and_the_rest_learn(smoke, tmp_path):
    import dataclasses

    from leap_core.config import TrainConfig, config_fingerprint
    from leap_core.models import build_student

    profile, cache = smoke
    frozen = dataclasses.replace(profile, training=dataclasses.replace(profile.training, frozen_layers=2))
    result = experiment.train_arm(frozen, "leap", 0, cache, out_dir=tmp_path / "frozen")
    student, _ = build_student(profile.models.student_init, profile.models.student_layers, profile.models.layer_init)
    before, after = student.state_dict(), _weights(result.model_dir)
    kept = [name for name in before if name.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))]
    trained = [name for name in before if name.startswith("encoder.layer.2.")]
    assert kept and trained
    assert all(torch.equal(before[name], after[name]) for name in kept)
    assert any(not torch.equal(before[name], after[name]) for name in trained)
    # a training field added later stays out of the fingerprint at its neutral value (old runs resume)
    assert "frozen_layers" not in config_fingerprint(TrainConfig())
    assert "frozen_layers=2" in config_fingerprint(frozen.training)
    with pytest.raises(ValueError, match="frozen_layers must be in 0..4"):
        experiment.train_arm(dataclasses.replace(profile, training=dataclasses.replace(profile.training,
                                                                                         frozen_layers=9)),
                             "leap", 0, cache, out_dir=tmp_path / "bad")


def test_seeds_differ_and_repeat(smoke, tmp_path):
    profile, cache = smoke
    one = _weights(experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "s0").model_dir)
    again = _weights(experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "s0b").model_dir)
    other = _weights(experiment.train_arm(profile, "leap", 1, cache, out_dir=tmp_path / "s1").model_dir)
    assert all(torch.equal(one[name], again[name]) for name in one)
    assert any(not torch.equal(one[name], other[name]) for name in one)


def test_finished_run_is_not_retrained(smoke, tmp_path):
    profile, cache = smoke
    experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "done")
    again = experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "done",
                                 on_step=lambda step, terms: pytest.fail("retrained a finished run"))
    assert again.steps == 6
    # The whole run is named by identity.run_identity: the fingerprint its checkpoints and result carry.
    from leap_core import identity
    from leap_core.train.teacher_cache import load_teacher_cache

    recorded = json.loads((tmp_path / "done" / "train_result.json").read_text())["fingerprint"]
    assert recorded == identity.run_identity(profile, "leap", 0, load_teacher_cache(cache))
    assert recorded != identity.run_identity(profile, "leap", 1, load_teacher_cache(cache))


def test_checkpoint_of_another_configuration_is_refused(smoke, tmp_path):
    profile, cache = smoke

    def kill(step, terms):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "x", on_step=kill)
    with pytest.raises(ValueError, match="another configuration"):
        experiment.train_arm(profile, "baseline", 0, cache, out_dir=tmp_path / "x")


def test_finished_run_of_another_configuration_is_refused(smoke, tmp_path):
    profile, cache = smoke
    experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "done")
    with pytest.raises(ValueError, match="another configuration"):
        experiment.train_arm(profile, "baseline", 0, cache, out_dir=tmp_path / "done")


def test_a_second_trainer_on_a_held_run_folder_is_refused_with_the_holders_pid(smoke, tmp_path, capsys):
    import subprocess
    import sys
    import time

    from leap_core.cli import main

    profile, cache = smoke
    run = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom leap_core.io import folder_lock\n"
        f"with folder_lock({str(run)!r}, what='trainer'):\n    print('held', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"another trainer holds it \\(pid {holder.pid} on "):
            experiment.train_arm(profile, "leap", 0, cache, out_dir=run)
        argv = ["train", "--profile", "smoke", "--data-dir", str(profile.data.data_dir), "--set",
                f"output_dir={tmp_path / 'runs'}", "--arm", "leap", "--out", str(run)]
        assert main(argv) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert not (run / "train_log.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert experiment.train_arm(profile, "leap", 0, cache, out_dir=run).steps == 6  # free again: it trains


def test_an_unknown_arm_is_refused_before_any_extraction_or_teacher_pass(tmp_path, data_dir, monkeypatch, capsys):
    from leap_core.cli import main

    monkeypatch.setattr(experiment, "extract", lambda *a, **k: pytest.fail("extracted before checking the arm"))
    argv = ["train", "--profile", "smoke", "--data-dir", str(data_dir), "--set", f"output_dir={tmp_path}",
            "--arm", "no-such-arm"]
    with pytest.raises(SystemExit) as refused:  # argparse: the choices are the profile's arms
        main(argv)
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-arm'" in err and "'leap'" in err and "'baseline'" in err
    with pytest.raises(ValueError, match="has no arm 'no-such-arm'"):  # the library refuses it too
        load_profile("smoke").objective_for("no-such-arm")


def test_a_runs_identity_is_unchanged_by_how_the_models_are_fingerprinted(data_dir):
    """Run folders and checkpoints trained before config_fingerprint(models) keep their identity: it equals the
    dataclass repr that was hashed, for every committed profile."""
    from leap_core.config import config_fingerprint

    for name in ("cpu", "cpu_long", "paper", "smoke"):
        models = load_profile(name).models
        assert config_fingerprint(models) == str(models)


def test_a_non_finite_loss_stops_training_and_saves_no_model(smoke, tmp_path, monkeypatch):
    from leap_core.train import teacher_cache
    from leap_core.train.training import TrainingDiverged

    profile, cache = smoke
    real_load = teacher_cache.load_teacher_cache

    def one_bad_row(path):
        loaded = real_load(path)
        loaded.embeddings[:, 1] = float("nan")  # a teacher row gone bad after its checksum was taken
        return loaded

    monkeypatch.setattr(teacher_cache, "load_teacher_cache", one_bad_row)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan .*nothing was saved"):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "nan")
    assert not (tmp_path / "nan" / "model").exists() and not (tmp_path / "nan" / "train_result.json").exists()


def test_weights_that_went_non_finite_are_never_saved(smoke, tmp_path, monkeypatch):
    from leap_core.train import training
    from leap_core.train.training import TrainingDiverged

    profile, cache = smoke
    students = []
    real_init = training.LeapTrainer.__init__

    def remember(self, student, *args, **kwargs):
        students.append(student)
        real_init(self, student, *args, **kwargs)

    def poison_after_the_last_step(step, terms):
        if step == 6:  # the loss of every step was finite: only the weights check can catch it
            with torch.no_grad():
                next(iter(students[0].parameters())).fill_(float("inf"))

    monkeypatch.setattr(training.LeapTrainer, "__init__", remember)
    with pytest.raises(TrainingDiverged, match="non-finite weights after training"):
        experiment.train_arm(profile, "leap", 0, cache, out_dir=tmp_path / "inf", on_step=poison_after_the_last_step)
    assert not (tmp_path / "inf" / "model").exists()
