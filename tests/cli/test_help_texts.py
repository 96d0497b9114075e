"""Every ``torchkd COMMAND --help`` text is true: its examples parse with the real parser and
every recipe it names under ``configs/`` exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from torchkd.cli import build_parser
from torchkd.cli.base import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
NAMES = COMMANDS.available()


@pytest.mark.parametrize("name", NAMES)
def test_help_examples_parse(name: str) -> None:
    command = COMMANDS.entry(name)
    for line in command.examples.splitlines():
        argv = shlex.split(line)
        assert argv[:2] == ["torchkd", name], line
        assert build_parser().parse_known_args(argv[1:])[0].command == name


@pytest.mark.parametrize("name", NAMES)
def test_help_names_only_recipes_that_exist(name: str) -> None:
    command = COMMANDS.entry(name)
    text = f"{command.summary}\n{command.description}\n{command.examples}"
    for recipe in re.findall(r"configs/[\w./-]+\.yaml", text):
        assert (ROOT / recipe).is_file(), f"torchkd {name} --help names {recipe}"
