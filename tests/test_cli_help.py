"""Every option's help says what it does and what happens by default, as printed."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from evicctl.cli import app

COMMANDS = tuple(typer.main.get_command(app).commands)  # every registered command, fleet's group too


def test_no_help_text_loses_its_defaults_to_markup():
    """Square brackets in help are rich markup: '[default: x]' vanished, leaving 'text .'."""
    runner = CliRunner()
    for name in COMMANDS:
        out = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output
        assert not re.search(r"\w \.\s", out), f"{name}: help text lost a bracketed part:\n{out}"


def test_demo_help_prints_its_defaults():
    out = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).output
    from evicctl.engine import demo_defaults

    assert f"[default: {demo_defaults.DEFAULT_CONTEXTS}]" in out
    assert "[default: 64MiB]" in out and "[default: 1GiB]" in out and "256MiB" in out
