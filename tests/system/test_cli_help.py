"""`--help` works on every command and subcommand: argparse formats help lazily, so a
bad help string (a bare %) only shows when someone asks for help."""

from __future__ import annotations

import argparse
import contextlib
import io
import os

import pytest
from conftest import run_cli

from cascadeq.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path in the argparse tree, the root included."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def test_the_walk_finds_the_nested_commands() -> None:
    assert ("bench", "latency") in COMMANDS
    assert ("dlq", "replay") in COMMANDS
    assert ("router", "train") in COMMANDS
    assert ("models", "measure") in COMMANDS
    for command in ("submit", "status", "cancel", "retry", "worker"):
        assert ("bulk", command) in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "cascadeq")
def test_help_exits_zero_with_usage(path: tuple[str, ...]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        build_parser().parse_args([*path, "--help"])
    assert done.value.code == 0
    assert out.getvalue().startswith("usage: cascadeq")


def test_help_in_a_real_process_lists_the_exit_codes() -> None:
    done = run_cli(dict(os.environ), "bench", "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: cascadeq bench")
    top = run_cli(dict(os.environ), "--help", timeout=60)
    assert top.returncode == 0, top.stderr
    assert "exit codes" in top.stdout
    assert "cannot reach Redis" in top.stdout
