"""The README's examples run as written: every Python block executes, every ``torchkd`` command
line parses with the real CLI parser, and the ``list`` commands run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from torchkd.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
# "Your own model and dataset" runs in its own project directory: tests/test_own_package.py
OWN_PACKAGE = TEXT.split("\n## Your own model and dataset\n")[1].split("\n## ")[0]
COMMANDS = [
    line.split("#")[0].strip()
    for block in re.findall(r"```bash\n(.*?)```", TEXT.replace(OWN_PACKAGE, ""), re.S)
    for line in block.splitlines()
    if line.strip().startswith(".venv/bin/torchkd ")
]


def test_the_readme_has_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 2 and len(COMMANDS) >= 5


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_python_example_runs(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples write runs/... relative to the working directory
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})


@pytest.mark.parametrize("command", COMMANDS)
def test_command_line_parses(command: str) -> None:
    argv = shlex.split(command)[1:]
    arguments = build_parser().parse_args(argv)
    assert arguments.command == argv[0]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.split()[1] == "list"])
def test_list_commands_run(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out.strip()


def test_the_recipe_format_block_is_a_valid_recipe() -> None:
    import yaml

    from torchkd.config import recipe_from_dict

    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", TEXT, re.S) if "name: my_run" in b]
    text = "\n".join(line for line in block.splitlines() if not line.startswith("tune:"))
    recipe = recipe_from_dict(yaml.safe_load(text))
    assert [term.name for term in recipe.terms] == ["kd", "ce", "hint"]


# Extra arguments that only shorten a README command for the test (none changes what it does).
SHORTER = {
    "configs/mnist1d/teacher.yaml": ["train.epochs=2"],
    "tune": ["--trials", "2", "train.epochs=1", "--workers", "1"],
    "select-teacher": ["--probe-steps", "4"],
}


def test_the_command_lines_run_in_order_from_a_fresh_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh clone's view: only ``configs/``; every command line of the README, in order."""
    import glob

    (tmp_path / "configs").symlink_to(README.parent / "torchkd" / "configs")
    monkeypatch.chdir(tmp_path)
    for command in COMMANDS:
        argv = shlex.split(command)[1:]
        argv = [
            match for arg in argv for match in (sorted(glob.glob(arg)) if "*" in arg else [arg])
        ]
        extra = SHORTER.get(argv[0], []) + SHORTER.get(argv[1] if len(argv) > 1 else "", [])
        if argv[0] in ("train", "eval", "tune", "select-teacher"):  # the ones taking overrides
            extra += ["train.progress=false", "data.batch_size=1024"]
        assert main([*argv, *extra]) == 0, command
