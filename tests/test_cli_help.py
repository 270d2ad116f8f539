"""Every ``dalab`` command's help is complete: a description, examples, exit code 0."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import dalab
from dalab.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix=()):
    """Yield (argv prefix, parser) for every registered sub-command, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


COMMANDS = list(_commands(build_parser()))


def test_there_are_commands_to_check():
    names = {" ".join(argv) for argv, _ in COMMANDS}
    assert {"data", "data prepare", "data list", "data show", "train", "evaluate", "quickstart"} <= names


@pytest.mark.parametrize("argv", [(), *[a for a, _ in COMMANDS]], ids=lambda a: " ".join(a) or "dalab")
def test_help_has_description_and_examples(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dalab")
    parser = build_parser()
    for a in argv:
        parser = next(p for (names, p) in _commands(parser) if names[-1] == a)
    assert parser.description and parser.description.strip(), f"`dalab {' '.join(argv)}` has no description"
    assert parser.description.split()[0] in out
    assert "example" in out.lower(), f"`dalab {' '.join(argv)} --help` shows no example"
    # the epilog is shown and holds runnable example lines of this very command
    examples = [ln.strip() for ln in (parser.epilog or "").splitlines() if ln.strip().startswith("dalab ")]
    assert examples, f"`dalab {' '.join(argv)} --help`: no `dalab ...` example line"
    assert any(ln.startswith(" ".join(("dalab", *argv))) for ln in examples)
    assert examples[0] in out


def test_every_option_says_what_it_does_for_train(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--tensorboard", "--method", "--lambda-max", "--out", "--resume"):
        assert flag in out


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"dalab {dalab.__version__}"


def test_version_from_the_installed_entry_point():
    r = subprocess.run([sys.executable, "-m", "dalab", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"dalab {dalab.__version__}"


def test_package_and_pyproject_versions_agree():
    import re
    from pathlib import Path

    import dalab

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == dalab.__version__


@pytest.mark.parametrize("argv", [(), *[a for a, _ in COMMANDS]], ids=lambda a: " ".join(a) or "dalab")
def test_each_option_states_its_default_at_most_once_and_never_none(argv, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help lines are wrapped: undo it
    for empty in ("None", "[]", "False", "''"):
        assert f"(default: {empty})" not in out
    parser = build_parser()
    for a in argv:
        parser = next(p for (names, p) in _commands(parser) if names[-1] == a)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            text = formatter._expand_help(action)
            assert text.lower().count("default") <= 1, (action.option_strings, text)
            assert "".join(text.split()) in "".join(out.split())  # the text checked is the text shown


def test_a_plain_default_is_still_shown(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "GRL strength (default: 1.0)" in out
    # hand-written notes (the classification default, the segmentation recipe's), not repeated
    assert "images per domain per step (default 64; segmentation: 16)" in out
    assert "(default 10; segmentation: 3; with --resume, the checkpoint's)" in out


def test_method_lists_keep_a_comma_inside_parentheses():
    """``--methods`` names rows such as ``target-only (oracle, warm-up)``: a comma inside parentheses
    belongs to the name, and only the others separate names."""
    from dalab.cli.common import split_names

    assert split_names("source-only,target-only (oracle),target-only (oracle, warm-up)") == [
        "source-only", "target-only (oracle)", "target-only (oracle, warm-up)"]
    assert split_names(" dann , ,vada,") == ["dann", "vada"]
    assert split_names("") == []


def test_benchmark_names_the_unknown_row_not_a_piece_of_a_known_one(tmp_path, capsys):
    code = main(["benchmark", "--suite", "scenes-recipe", "--out", str(tmp_path / "out"),
                 "--methods", "target-only (oracle, warm-up),no-such-row"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'no-such-row' is not in suite scenes-recipe" in err
    assert not (tmp_path / "out").exists()
