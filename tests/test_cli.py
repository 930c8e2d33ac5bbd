"""The `leap` command speaks human: help for every option, tables by default, JSON on request, quiet libraries."""

import argparse
import json
import logging
from importlib.metadata import version

import pytest

from leap_core.cli import COMMANDS, configure_logging, build_parser, main

TINY = "random-bert:layers=4,hidden=32,heads=2,seed=0"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_and_every_option_has_help():
    parser = build_parser([])
    subparsers = _subparsers(parser)
    assert sorted(subparsers) == sorted(command.name for command in COMMANDS)
    missing = [f"leap {name} {action.dest}" for name, sub in subparsers.items() for action in sub._actions
               if not (action.help or "").strip()]
    assert not missing, missing
    assert all(command.help for command in COMMANDS)


def test_train_arm_choices_are_the_named_profiles_arms():
    from leap_core.config import load_profile

    for profile in ("smoke", "cpu"):
        arm = next(a for a in _subparsers(build_parser(["train", "--profile", profile]))["train"]._actions
                   if a.dest == "arm")
        assert sorted(arm.choices) == sorted(load_profile(profile).arms)
    # An arm added on the command line is a choice too.
    argv = ["train", "--profile", "smoke", "--set", "arms.mine={beta: 0.3}"]
    arm = next(a for a in _subparsers(build_parser(argv))["train"]._actions if a.dest == "arm")
    assert "mine" in arm.choices


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"leap {version('leap')}"


def test_eval_prints_a_table_and_json_on_request(data_dir, tmp_path, capsys):
    small = tmp_path / "data" / "stsb"  # 60 STS-B test pairs: the table, not the score, is under test
    small.mkdir(parents=True)
    (small / "test.tsv").write_text("".join((data_dir / "stsb" / "test.tsv").open().readlines()[:61]))
    common = ["eval", TINY, "--profile", "smoke", "--data-dir", str(small.parent), "--theta", "0.9", "--l-min", "2"]
    assert main(common + ["--out", str(tmp_path / "eval.json")]) == 0
    shown = capsys.readouterr().out
    written = json.loads((tmp_path / "eval.json").read_text())
    # The policy the model serves leads (here its rule: the folder names no other), then the rule's own table.
    assert shown.startswith(f"{TINY} serves rule(theta=0.9,k=1,l_min=2) (the exit rule (leap_exit.json names no "
                            "other policy)):")
    assert "The exit rule: theta=0.9 k=1 l_min=2" in shown
    assert f"| STS-B Spearman, full depth | {written['stsb_full']:.3f} |" in shown
    assert f"| exit rate (rows leaving before the last layer) | {written['exit_rate']:.1%} |" in shown
    assert sum(line.startswith("| 4 |") for line in shown.splitlines()) == 1  # the per-layer table, 4 layers
    assert main(common + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == written


def test_diagnose_prints_the_verdict_checklist_and_layers(data_dir, capsys):
    assert main(["diagnose", TINY, "--data-dir", str(data_dir), "--max-sentences", "40", "--no-overhead"]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[0].startswith(f"{TINY}: ") and "for early exit at theta=0.95" in shown
    assert "Diagnostics fired:" in shown and "| checklist at layer" in shown and "NN@10 vs final" in shown


def test_library_logs_are_quiet_unless_verbose():
    root = logging.getLogger()
    before = root.level
    try:
        configure_logging(verbose=False)
        assert not logging.getLogger("beir.retrieval.evaluation").isEnabledFor(logging.INFO)
        assert not logging.getLogger("sentence_transformers").isEnabledFor(logging.INFO)
        assert logging.getLogger("leap_core.pipeline.experiment").isEnabledFor(logging.INFO)
        configure_logging(verbose=True)
        assert logging.getLogger("beir.retrieval.evaluation").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(before)


def test_any_error_in_a_command_is_one_line_naming_its_type_unless_debug(monkeypatch, capsys):
    from leap_core.serve import monitor

    def bug(*args, **kwargs):
        raise KeyError("theta")  # what a reference lacking a key raised before it had a schema

    monkeypatch.setattr(monitor, "monitor", bug)
    assert main(["monitor", TINY, "--traffic", "nowhere"]) == 2
    assert capsys.readouterr().err.splitlines() == ["leap: error: KeyError: 'theta'"]
    with pytest.raises(KeyError):
        main(["--debug", "monitor", TINY, "--traffic", "nowhere"])
    assert main(["reliability", "--set", "no-equals-sign"]) == 2  # SystemExit("..."): Python would exit 1
    assert capsys.readouterr().err.splitlines() == ["leap: error: --set 'no-equals-sign': expected dotted.key=value"]


def test_monitors_help_names_its_exit_statuses():
    help_text = _subparsers(build_parser([]))["monitor"].format_help()
    assert "3 an alert" in " ".join(help_text.split()) and "2 an error" in " ".join(help_text.split())
