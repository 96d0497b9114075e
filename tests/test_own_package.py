"""The README's "Your own model and dataset" walkthrough runs as written: its package and recipes
are written from the README's own blocks into a fresh directory, and its commands (train ->
distil -> tune -> select-teacher -> eval -> export) run there through the CLI, shortened only in
epochs, trials and probe steps."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from torchkd.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = README.read_text().split("\n## Your own model and dataset\n")[1].split("\n## ")[0]
# blocks whose first line is "# <file>" are the walkthrough's files
FILES = {
    match[1]: match[2]
    for match in re.finditer(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", SECTION, re.S)
}
COMMANDS = [
    shlex.split(line)[1:]
    for block in re.findall(r"```bash\n(.*?)```", SECTION, re.S)
    for line in block.splitlines()
    if line.startswith(".venv/bin/torchkd ")
]
SHORTER = {
    "train": ["train.epochs=2"],
    "tune": ["--trials", "2", "--workers", "1", "train.epochs=1"],
    "select-teacher": ["--probe-steps", "4", "train.epochs=1"],
}


def test_the_walkthrough_has_its_files_and_every_step() -> None:
    assert set(FILES) == {"mypkg/models.py", "mypkg/data.py", "teacher.yaml", "distil.yaml"}
    steps = [argv[0] for argv in COMMANDS]
    assert steps == ["train", "train", "tune", "select-teacher", "eval", "export"]


def test_the_walkthrough_runs_from_its_own_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    try:
        for argv in COMMANDS:
            extra = [*SHORTER.get(argv[0], [])]
            if argv[0] != "export":
                extra.append("train.progress=false")
            assert main([*argv, *extra]) == 0, shlex.join(argv)
    finally:
        for module in [module for module in sys.modules if module.split(".")[0] == "mypkg"]:
            del sys.modules[module]
    runs = tmp_path / "runs"
    assert (runs / "my_teacher" / "checkpoints" / "best.pt").is_file()
    assert (runs / "my_distil" / "report.md").is_file()
    assert (runs / "my_distil" / "tune_report.md").is_file()
    assert (runs / "my_distil" / "teacher_selection.md").is_file()
    assert (tmp_path / "student.safetensors").is_file()
