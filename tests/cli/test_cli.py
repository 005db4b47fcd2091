"""The ``fxquant`` command line: help, usage errors, defaults from the library, a demo run."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from fxquant.cli.main import COMMANDS, build_parser, main
from fxquant.demo import run_demo


def test_demo_help_exits_zero(capsys):
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fxquant demo")
    for opt in ("--epochs", "--qat-epochs", "--seed", "--quiet"):
        assert opt in out


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_help_shows_an_example(capsys, name):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"example: fxquant {name} " in out


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "demo" in err


def test_missing_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_negative_epochs_rejected(capsys):
    assert main(["demo", "--epochs", "-1"]) == 2
    assert "must be >= 0" in capsys.readouterr().err


def test_demo_defaults_come_from_run_demo():
    args = build_parser().parse_args(["demo"])
    params = inspect.signature(run_demo).parameters
    for name in ("epochs", "qat_epochs", "seed"):
        assert getattr(args, name) == params[name].default
    assert args.quiet is False


def test_demo_runs_in_process(capsys):
    assert main(["demo", "--epochs", "1", "--qat-epochs", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("stage") and "accuracy (%)" in lines[0]
    assert [line.split("|")[0].strip() for line in lines[2:5]] == ["float", "PTQ W8A8",
                                                                     "QAT W8A8"]
    assert "size ratio" in captured.out
    assert captured.err == ""  # --quiet: no progress bars


@pytest.mark.parametrize("module", ["fxquant", "fxquant.demo"])
def test_python_m_entry_points(module):
    done = subprocess.run([sys.executable, "-m", module, *(["demo"] if module == "fxquant" else []),
                           "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"usage: python -m {module}" in done.stdout and "--qat-epochs" in done.stdout
