"""Without a terminal (logs, CI, nohup) training prints step lines with the loss, each weighted
term and its share of the loss, samples/s and an ETA, at the interval
``train.progress_every_s`` sets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tolerances import FLOAT32_EPS

from torchkd.train.logging import term_texts

from .test_loop import make_config, make_distiller, run

# 48 samples in batches of 8: 6 steps an epoch, 2 epochs; a step record every 2 steps.
# Weights: ce 1 (shown without a factor), dist 0.5, hint 0.1.
NUMBER = r"(-?[\d.e+-]+)"
TERMS = (
    rf"ce={NUMBER} \((\d+)%\) dist=0\.5×{NUMBER}={NUMBER} \((\d+)%\) "
    rf"hint=0\.1×{NUMBER}={NUMBER} \((\d+)%\)"
)
PRINTED = 5e-4  # ``:.4g``: half a unit of the 4th significant digit, relative
LINE = re.compile(
    rf"^epoch (\d)/2 step (\d+)/12: loss=\S+ {TERMS}, \S+ samples/s, ETA (\d+s|\d+m\d\ds)$"
)


def test_step_lines_without_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(progress=True, progress_every_s=0.0)
    run(make_distiller(), tmp_path / "run", config)
    error = capsys.readouterr().err  # captured: not a terminal
    lines = [match for line in error.splitlines() if (match := LINE.match(line))]
    assert [int(match.group(2)) for match in lines] == [2, 4, 6, 8, 10, 12]
    assert [int(match.group(1)) for match in lines] == [1, 1, 1, 2, 2, 2]
    assert lines[-1].group(11) == "0s"  # nothing left after the last step
    for match in lines:
        ce, ce_share, dist, dist_weighted, dist_share, hint, hint_weighted, hint_share = (
            float(match.group(index)) for index in range(3, 11)
        )
        # both printed to 4 significant digits (relative error h ≤ 5e-4 each) after one
        # product (≤ ε₃₂): |x(1 + h) − y(1 + h')| / |y(1 + h')| ≤ (2h + h²) / (1 − h) + ε
        rel = (2 * PRINTED + PRINTED**2) / (1 - PRINTED) + FLOAT32_EPS
        assert dist_weighted == pytest.approx(0.5 * dist, rel=rel)
        assert hint_weighted == pytest.approx(0.1 * hint, rel=rel)
        total = abs(ce) + abs(dist_weighted) + abs(hint_weighted)
        shares = ((ce, ce_share), (dist_weighted, dist_share), (hint_weighted, hint_share))
        for weighted, share in shares:
            assert abs(share - 100 * abs(weighted) / total) <= 0.6  # rounded to whole percent
    assert "epoch 2/2: " in error  # the epoch summary lines stay


def test_the_interval_spaces_the_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(make_distiller(), tmp_path / "run", make_config(progress=True, progress_every_s=3600.0))
    error = capsys.readouterr().err
    assert len([line for line in error.splitlines() if LINE.match(line)]) == 1  # the first only
    run(make_distiller(), tmp_path / "quiet", make_config(progress=False, progress_every_s=0.0))
    assert capsys.readouterr().err == ""


def test_term_texts_weight_each_term_and_give_its_share() -> None:
    # the LM run: a hint of 24.5 at weight 0.1 against KD 1.58 at weight 1
    weights = {"kd": 1.0, "hint": 0.1, "temperature/kd": 4.0}  # a temperature is no term
    texts = term_texts({"terms": {"kd": 1.58, "hint": 24.5}, "weights": weights})
    assert texts == {"kd": "1.58 (39%)", "hint": "0.1×24.5=2.45 (61%)"}  # 1.58 / 4.03 = 39.2 %
    assert term_texts({"terms": {"kd": 1.58}, "weights": {}}) == {"kd": "1.58"}
