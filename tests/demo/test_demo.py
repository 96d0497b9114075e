"""``torchkd demo --quick``: the teacher cache, the three arms, the table and the report."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from torchkd import cli, demo
from torchkd.cli.base import positive_int
from torchkd.data import load_mnist1d
from torchkd.demo.run import check_publishable, write_results
from torchkd.models import create_model
from torchkd.train import load_checkpoint

SEEDS = 2


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[demo.DemoResult, Path, Path]:
    """One quick demo (teacher trained into an empty cache), shared by the tests."""
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHKD_CACHE", str(cache))
        result = demo.run_demo(seeds=SEEDS, quick=True, out=out, workers=1, echo=lines.append)
    return result, out, cache


def _accuracy(model: torch.nn.Module) -> float:
    """Test top-1 in percent, counted here."""
    test = load_mnist1d("test")
    with torch.no_grad():
        return 100 * (model(test.inputs).argmax(-1) == test.labels).double().mean().item()


def _build(spec: dict) -> torch.nn.Module:
    return create_model(spec["model"], **spec["kwargs"])


def test_teacher_is_cached_as_safetensors_and_reused(
    quick_demo: tuple[demo.DemoResult, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    result, _, cache = quick_demo
    cached = list((cache / "teachers").glob("*.safetensors"))
    assert len(cached) == 1 and not result.teacher_cached and result.teacher_seconds > 0
    monkeypatch.setenv("TORCHKD_CACHE", str(cache))
    assert demo.teacher_cache_path(quick=True) == cached[0]
    assert demo.teacher_cache_path(quick=False) != cached[0]  # another recipe, another key
    teacher = create_model("cnn1d", width=64)
    teacher.load_state_dict(load_file(cached[0]))
    assert result.teacher_test["top1"] == pytest.approx(_accuracy(teacher), abs=1e-7)

    def no_training(*args: object) -> None:
        raise AssertionError("the cached teacher should have been reused")

    monkeypatch.setattr(demo, "train_teacher", no_training)
    again = demo.run_demo(seeds=1, quick=True, out=tmp_path, workers=1, echo=lambda line: None)
    assert again.teacher_cached and again.teacher_test == result.teacher_test
    assert "cached" in again.table().splitlines()[1]


def test_every_arm_runs_its_recipe_per_seed(
    quick_demo: tuple[demo.DemoResult, Path, Path],
) -> None:
    result, out, cache = quick_demo
    assert sorted((run.arm, run.seed) for run in result.runs) == sorted(
        (arm.key, seed) for arm in demo.ARMS for seed in range(SEEDS)
    )
    teacher_weights = str(next((cache / "teachers").glob("*.safetensors")))
    for run in result.runs:
        run_dir = out / run.arm / f"seed{run.seed}"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["train"]["seed"] == run.seed
        # the reported accuracy is the final checkpoint's, measured on the test split
        student = _build(config["student"])
        student.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["student"])
        assert run.test["top1"] == pytest.approx(_accuracy(student), abs=1e-7)
        terms = {term["name"]: term for term in config["terms"]}
        if run.arm == "baseline":
            assert config.get("teacher") is None and set(terms) == {"ce"}
        else:
            assert config["teacher"]["checkpoint"] == teacher_weights
        if run.arm == "label_free":  # the student never sees a label
            assert set(terms) == {"kd"}
            assert config["data"]["transfer"]["labeled"] is False
        else:
            assert config["data"]["transfer"] is None


def test_table_reports_mean_std_and_paired_gain(
    quick_demo: tuple[demo.DemoResult, Path, Path],
) -> None:
    result, _, _ = quick_demo
    table = result.table().splitlines()
    assert len(table) == 5  # header, teacher, baseline, (a), (b)
    assert table[1].startswith("teacher cnn1d(width=64)")
    baseline = result.top1("baseline")
    for line, arm in zip(table[2:], demo.ARMS, strict=True):
        values = result.top1(arm.key)
        assert line.startswith(arm.label)
        assert f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" in line
        if arm.key != "baseline":
            differences = [a - b for a, b in zip(values, baseline, strict=True)]
            wins = sum(d > 0 for d in differences)
            assert f"{statistics.fmean(differences):+.1f} ± " in line
            assert line.endswith(f"{wins}/{SEEDS} seeds")


def test_report_and_plots_are_written(quick_demo: tuple[demo.DemoResult, Path, Path]) -> None:
    result, out, _ = quick_demo
    assert result.report_path == out / "report.md"
    report = result.report_path.read_text()
    assert "--quick run" in report
    assert demo.summary_markdown(result) in report
    for arm in demo.ARMS:
        assert arm.label in report
    for plot in ("test_top1.png", "val_top1.png"):
        assert (out / "plots" / plot).read_bytes().startswith(b"\x89PNG")


def test_results_file_holds_the_table_command_and_environment(
    quick_demo: tuple[demo.DemoResult, Path, Path],
) -> None:
    result, out, cache = quick_demo
    assert result.command == f"torchkd demo --seeds {SEEDS} --quick --out {out} --workers 1"
    text = demo.results_markdown(result)
    assert demo.summary_markdown(result) in text and f"Command: `{result.command}`" in text
    assert f"torch {torch.__version__}" in text and "Wall time" in text
    assert str(next((cache / "teachers").glob("*.safetensors"))) in text
    assert "- (a) Hinton KD with labels: `" in text
    # the markdown table holds no wall time, so that the same run gives the same table
    assert "trained in" not in demo.summary_markdown(result)


def test_a_run_writes_its_results_page_under_out_only(
    quick_demo: tuple[demo.DemoResult, Path, Path], tmp_path: Path
) -> None:
    result, out, _ = quick_demo
    assert (out / "results.md").read_text() == demo.results_markdown(result)
    published = tmp_path / "benchmarks" / "results" / "demo.md"
    published.parent.mkdir(parents=True)
    lines: list[str] = []
    assert write_results("page", tmp_path, None, lines.append) == tmp_path / "results.md"
    assert not published.exists() and (tmp_path / "results.md").read_text() == "page"
    write_results("published", tmp_path, published, lines.append)
    assert published.read_text() == (tmp_path / "results.md").read_text() == "published"
    assert lines[-1] == f"results table written to {published}"


def test_publish_is_refused_for_quick_runs_and_outside_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no benchmarks/results/ here
    with pytest.raises(ValueError, match="publish from the root of a torchkd checkout"):
        demo.run_demo(seeds=1, out=tmp_path / "out", publish=True)
    assert not (tmp_path / "out").exists()  # refused before anything ran
    assert cli.main(["demo", "--publish"]) == 2
    assert "--publish: benchmarks/results/ does not exist" in capsys.readouterr().err
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    with pytest.raises(ValueError, match="smoke test"):
        check_publishable(demo.RESULTS_FILE, quick=True)
    assert cli.main(["demo", "--quick", "--publish"]) == 2
    error = capsys.readouterr().err
    assert "a --quick run is a smoke test" in error and "Traceback" not in error
    check_publishable(demo.RESULTS_FILE, quick=False)  # a full run from a checkout may


def test_paired_gain() -> None:
    assert demo.paired_gain([80.0, 82.0, 81.0], [78.0, 79.0, 81.5]) == ("+1.5 ± 1.8", 2)
    assert demo.paired_gain([70.0], [71.0]) == ("-1.0", 0)


def test_cli_demo_prints_the_table(
    quick_demo: tuple[demo.DemoResult, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    result, out, _ = quick_demo
    received: dict[str, object] = {}

    def fake_run_demo(**kwargs: object) -> demo.DemoResult:
        received.update(kwargs)
        return result

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    expected = {"seeds": 2, "quick": True, "out": str(out), "workers": None, "publish": False}
    assert received == expected
    printed = capsys.readouterr().out
    assert result.table() in printed and str(result.report_path) in printed
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the root of a torchkd checkout
    assert cli.main(["demo", "--seeds", "2", "--out", str(out), "--publish"]) == 0
    assert received == {**expected, "quick": False, "publish": True}
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int("0")


def test_every_run_trains_with_one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Thread counts change the sums' rounding, so the demo fixes one thread per run: the same
    numbers on any machine. The caller's thread count is restored afterwards."""
    import types

    import torchkd.config

    seen: list[int] = []

    def record(*args: object, **kwargs: object) -> types.SimpleNamespace:
        seen.append(torch.get_num_threads())
        return types.SimpleNamespace(
            test_metrics={"top1": 0.5}, history=[], best_checkpoint=None, last_checkpoint=None
        )

    monkeypatch.setattr(torchkd.config, "fit_recipe", record)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        demo.train_arm("baseline", 0, ["train.progress=false"], str(tmp_path / "run"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert seen == [1]
