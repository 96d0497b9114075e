"""Without a terminal (logs, CI, nohup) training prints step lines with the loss, each term,
samples/s and an ETA, at the interval ``train.progress_every_s`` sets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .test_loop import make_config, make_distiller, run

# 48 samples in batches of 8: 6 steps an epoch, 2 epochs; a step record every 2 steps
LINE = re.compile(
    r"^epoch (\d)/2 step (\d+)/12: loss=\S+ ce=\S+ dist=\S+ hint=\S+, \S+ samples/s, "
    r"ETA (\d+s|\d+m\d\ds)$"
)


def test_step_lines_without_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(progress=True, progress_every_s=0.0)
    run(make_distiller(), tmp_path / "run", config)
    error = capsys.readouterr().err  # captured: not a terminal
    lines = [match for line in error.splitlines() if (match := LINE.match(line))]
    assert [int(match.group(2)) for match in lines] == [2, 4, 6, 8, 10, 12]
    assert [int(match.group(1)) for match in lines] == [1, 1, 1, 2, 2, 2]
    assert lines[-1].group(3) == "0s"  # nothing left after the last step
    assert "epoch 2/2: " in error  # the epoch summary lines stay


def test_the_interval_spaces_the_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(make_distiller(), tmp_path / "run", make_config(progress=True, progress_every_s=3600.0))
    error = capsys.readouterr().err
    assert len([line for line in error.splitlines() if LINE.match(line)]) == 1  # the first only
    run(make_distiller(), tmp_path / "quiet", make_config(progress=False, progress_every_s=0.0))
    assert capsys.readouterr().err == ""
