"""Every command and option is in the README, and every command has help with an example."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from surgery.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_command_is_documented(name, runner):
    command = cli.commands[name]
    assert f"surgery {name}" in README
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in README for opt in param.opts), f"{name} {param.opts} missing from README"
    result = runner.invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and "Example:" in result.stdout


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "surgery trim fixtures/" in first_block and "pytest" in first_block
