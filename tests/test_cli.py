"""The ``torchkd`` command line: every command on a tiny setting, exit codes and messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from torchkd.cli import COMMANDS, main
from torchkd.data import load_mnist1d
from torchkd.models import create_model
from torchkd.train import load_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "torchkd" / "configs"
FAST = ["train.epochs=1", "train.progress=false", "data.batch_size=256"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset cache for the module, so MNIST-1D is generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache: Path) -> None:
    monkeypatch.setenv("TORCHKD_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)


def run(*argv: str) -> int:
    return main([str(arg) for arg in argv])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> dict[str, Path]:
    """A one-epoch teacher, and a one-epoch student distilled from it with KD + FitNets hint
    (the hint's 1x1-conv adapter lives in the checkpoint's extras)."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHKD_CACHE", str(cache))
        teacher_dir = root / "teacher"
        teacher_args = [CONFIGS / "mnist1d" / "teacher.yaml", *FAST, "student.kwargs.width=8"]
        assert run("train", *teacher_args, "--run-dir", teacher_dir) == 0
        recipe = root / "kd_hint.yaml"
        recipe.write_text(
            "name: kd_hint\n"
            "data: {dataset: mnist1d, batch_size: 256}\n"
            f"teacher: {{model: cnn1d, kwargs: {{width: 8}}, checkpoint: "
            f"{teacher_dir / 'checkpoints' / 'best.pt'}}}\n"
            "student: {model: cnn1d, kwargs: {width: 4}}\n"
            "terms:\n"
            "  - {name: kd, loss: kd, loss_kwargs: {temperature: 4.0}, weight: 0.9}\n"
            "  - {name: ce, loss: ce, weight: 0.1}\n"
            "  - {name: hint, loss: hint, student: conv2, teacher: conv2, weight: 0.1}\n"
            "train: {epochs: 1, progress: false}\n"
        )
        student_dir = root / "student"
        assert run("train", recipe, "--run-dir", student_dir) == 0
    return {"recipe": recipe, "teacher": teacher_dir, "student": student_dir}


# ------------------------------------------------------------------------------ help, list


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"demo", "train", "eval", "export", "list"} <= set(COMMANDS)
    for name in COMMANDS:
        assert run(name, "--help") == 0
        text = capsys.readouterr().out
        assert f"usage: torchkd {name}" in text and "examples:" in text and "torchkd " in text
    assert run("--help") == 0
    overview = capsys.readouterr().out
    assert all(name in overview for name in COMMANDS)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("models", ["cnn1d", "mlp", "resnet8x4"]),
        ("datasets", ["mnist1d", "mnist1d_transfer", "digits"]),
        ("losses", ["kd", "hinton", "ce", "crd"]),
        ("schedules", ["constant", "cosine", "exponential"]),
    ],
)
def test_list(kind: str, expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list", kind) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert set(expected) <= set(names)


def test_list_losses_shows_family_and_signature(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list", "losses") == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["kd"] == ["logit", "logits"]
    assert rows["hinton"] == ["logit", "logits_labels"]


def test_list_losses_verbose_shows_arguments_and_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("list", "losses", "--verbose") == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "loss_kwargs (defaults)" in lines["name"]
    assert lines["hinton"].endswith(
        "temperature=4.0, alpha=0.9, standardize=False, ignore_index=-100, reduction='batchmean'"
    )
    assert "student_dim=<probed>, teacher_dim=<probed>, feat_dim=128" in lines["crd_inbatch"]
    assert lines["sp"].endswith("(none)")


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("torchkd")
    done = subprocess.run(
        [str(script), "list", "schedules"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "cosine" in done.stdout.split()


# ------------------------------------------------------------------------------- exit codes


def test_unknown_recipe_key_exits_2_naming_the_path(capsys: pytest.CaptureFixture[str]) -> None:
    code = run("train", CONFIGS / "mnist1d" / "baseline.yaml", "train.optimizer.lrr=0.1")
    error = capsys.readouterr().err
    assert code == 2
    assert "train.optimizer.lrr" in error and "did you mean 'lr'" in error
    assert "Traceback" not in error


def test_bad_value_exits_2_naming_the_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("train", CONFIGS / "mnist1d" / "baseline.yaml", "train.epochs=abc") == 2
    assert "train.epochs: expected an integer, got 'abc'" in capsys.readouterr().err


def test_invalid_yaml_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: x\ndata: {dataset: mnist1d}\nstudent: {model: mlp}\nterms: []\n")
    assert run("train", recipe) == 2
    error = capsys.readouterr().err
    assert "terms" in error and "Traceback" not in error


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "missing.yaml"],
        ["eval", "missing.yaml", "--checkpoint", "x.pt"],
        ["export", "missing.yaml", "--checkpoint", "x.pt", "--out", "s.safetensors"],
    ],
)
def test_missing_recipe_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(*argv) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_missing_checkpoint_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("eval", CONFIGS / "mnist1d" / "baseline.yaml", "--checkpoint", "nope.pt") == 2
    assert "nope.pt" in capsys.readouterr().err


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("frobnicate") == 2
    assert run("list", "teachers") == 2
    assert run("demo", "--seeds", "0") == 2
    assert run("eval", CONFIGS / "mnist1d" / "baseline.yaml") == 2  # --checkpoint missing
    assert "invalid choice" in capsys.readouterr().err


def test_runtime_failure_exits_1_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a learning rate this large diverges: a runtime failure (NonFiniteLossError), not a
    # recipe error
    overrides = [*FAST, "train.optimizer.lr=1e30"]
    baseline = CONFIGS / "mnist1d" / "baseline.yaml"
    assert run("train", baseline, *overrides, "--run-dir", tmp_path / "a") == 1
    error = capsys.readouterr().err
    assert "failed:" in error and "Traceback" not in error and "--traceback" in error
    assert run("--traceback", "train", baseline, *overrides, "--run-dir", tmp_path / "b") == 1
    assert "Traceback" in capsys.readouterr().err


# ------------------------------------------------------------------------- train, resume


def test_train_writes_a_run_and_refuses_to_overwrite_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = CONFIGS / "mnist1d" / "baseline.yaml"
    assert run("train", baseline, *FAST) == 0  # default run dir: runs/<recipe name>
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "mnist1d_baseline"
    for name in ("checkpoints/last.pt", "metrics.jsonl", "config.yaml", "report.md"):
        assert (run_dir / name).is_file(), name
    assert re.search(r"test top-1 of checkpoints/best.pt \(epoch \d+\): \d+\.\d\d %", out)
    assert run("train", baseline, *FAST) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_the_run(tmp_path: Path) -> None:
    baseline = CONFIGS / "mnist1d" / "baseline.yaml"
    run_dir = tmp_path / "run"
    assert run("train", baseline, *FAST, "--run-dir", run_dir) == 0
    assert run("train", baseline, *FAST, "train.epochs=2", "--run-dir", run_dir, "--resume") == 0
    epochs = [
        json.loads(line)["epoch"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "epoch"
    ]
    assert epochs == [1, 2]
    assert run("train", baseline, *FAST, "--run-dir", tmp_path / "none", "--resume") == 2


# -------------------------------------------------------------------------- eval, export


def test_eval_prints_the_metrics_of_the_checkpoint(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    last = trained["student"] / "checkpoints" / "last.pt"
    assert run("eval", trained["recipe"], "--checkpoint", last, "--json") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["split"] == "test" and metrics["samples"] == 1000
    student = create_model("cnn1d", width=4)
    student.load_state_dict(load_checkpoint(last)["student"])
    test = load_mnist1d("test")
    with torch.no_grad():
        correct = (student(test.inputs).argmax(-1) == test.labels).double().mean().item()
    assert metrics["top1"] == pytest.approx(100 * correct, abs=1e-7)  # percent, like every report

    assert run("eval", trained["recipe"], "--checkpoint", last, "--split", "val") == 0
    text = capsys.readouterr().out
    assert re.search(r"^split\s+val$", text, re.MULTILINE)
    printed = re.search(r"^top1\s+(\d+\.\d\d) %$", text, re.MULTILINE)
    assert printed is not None
    # fit evaluated the same final model on the validation split after its last epoch
    last_epoch = [
        record
        for record in map(json.loads, (trained["student"] / "metrics.jsonl").open())
        if record.get("kind") == "epoch"
    ][-1]
    assert float(printed.group(1)) == pytest.approx(last_epoch["val"]["top1"], abs=0.006)


def test_eval_refuses_a_checkpoint_of_another_student(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    teacher_checkpoint = trained["teacher"] / "checkpoints" / "last.pt"
    assert run("eval", trained["recipe"], "--checkpoint", teacher_checkpoint) == 2
    assert "does not fit the recipe's student" in capsys.readouterr().err


def test_export_writes_bare_student_weights(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = trained["student"] / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    assert any(key.startswith("hint.adapters") for key in checkpoint["extras"])
    out = tmp_path / "student.safetensors"
    assert run("export", trained["recipe"], "--checkpoint", last, "--out", out) == 0
    assert "wrote" in capsys.readouterr().out
    exported = load_file(out)
    fresh = create_model("cnn1d", width=4)
    assert set(exported) == set(fresh.state_dict())  # no adapter or other extras keys
    fresh.load_state_dict(exported)  # strict
    inputs = torch.randn(5, 1, 40)
    trained_student = create_model("cnn1d", width=4)
    trained_student.load_state_dict(checkpoint["student"])
    torch.testing.assert_close(fresh(inputs), trained_student(inputs), rtol=0, atol=0)


def test_export_needs_a_safetensors_name(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    last = trained["student"] / "checkpoints" / "last.pt"
    assert run("export", trained["recipe"], "--checkpoint", last, "--out", "student.pt") == 2
    assert ".safetensors" in capsys.readouterr().err


def test_train_refuses_a_teacher_without_weights_unless_untrained_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = CONFIGS / "demo" / "kd.yaml"  # its teacher.checkpoint is left to `torchkd demo`
    assert run("train", recipe, *FAST, "--run-dir", tmp_path / "run") == 2
    error = capsys.readouterr().err
    assert "teacher.checkpoint: required" in error and "teacher.untrained=true" in error
    assert "Traceback" not in error and not (tmp_path / "run").exists()
    untrained = "teacher.untrained=true"
    assert run("train", recipe, *FAST, untrained, "--run-dir", tmp_path / "run") == 0
    assert "teacher's own validation top-1: " in capsys.readouterr().out


# ---------------------------------------------------------- overrides, --traceback, usage


def test_overrides_after_options_reach_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = CONFIGS / "mnist1d" / "baseline.yaml"
    run_dir = tmp_path / "run"
    assert run("train", baseline, "--run-dir", run_dir, *FAST, "train.epochs=1") == 0
    written = (run_dir / "config.yaml").read_text()
    assert "batch_size: 256" in written and "epochs: 1" in written
    capsys.readouterr()
    # an override after the options is applied (so its bad value is reported by its path)
    last = run_dir / "checkpoints" / "last.pt"
    for argv in (
        ["tune", CONFIGS / "mnist1d" / "tune_kd.yaml", "--trials", "4", "train.epochs=abc"],
        ["train", baseline, "--run-dir", tmp_path / "other", "train.epochs=abc", "--resume"],
        ["eval", baseline, "--checkpoint", last, "train.epochs=abc"],
        ["select-teacher", baseline, "--candidates", last, "train.epochs=abc"],
    ):
        assert run(*argv) == 2
        error = capsys.readouterr().err
        assert "train.epochs: expected an integer" in error, error
        assert "unrecognized arguments" not in error and "does not exist" not in error


def test_traceback_anywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [*FAST, "train.optimizer.lr=1e30"]
    baseline = CONFIGS / "mnist1d" / "baseline.yaml"
    assert run("train", baseline, "--traceback", *overrides, "--run-dir", tmp_path / "a") == 1
    assert "Traceback" in capsys.readouterr().err
    assert run("train", baseline, *overrides, "--run-dir", tmp_path / "b", "--traceback") == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "R.yaml", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["export", "R.yaml", "--checkpoint", "x", "--out", "y", "--frobnicate"], "unrecognized"),
        (["eval", "R.yaml", "--checkpoint", "nope.pt"], "does not exist"),  # a UsageError
        (["train", "train.epochs=1", "R.yaml"], "the recipe comes first"),
        (["tune", "R.yaml", "--trials", "0"], "expected a positive integer"),
    ],
)
def test_errors_print_the_subcommand_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("R.yaml").write_text((CONFIGS / "mnist1d" / "baseline.yaml").read_text())
    assert run(*argv) == 2
    error = capsys.readouterr().err
    assert f"usage: torchkd {argv[0]} " in error and message in error, error
    assert f"torchkd {argv[0]}: error:" in error


def test_python_dash_m_torchkd(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    for argv, expected in ((["--help"], "usage: torchkd"), (["list", "losses"], "hinton")):
        done = subprocess.run(
            [sys.executable, "-m", "torchkd", *argv],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


def test_the_program_exits_with_mains_code_inside_a_process_group(tmp_path: Path) -> None:
    """Under a process group the program ends with ``os._exit`` (no interpreter
    finalization racing gloo's threads): the code and the message still come out."""
    root = Path(__file__).resolve().parents[1]
    program = (
        "import sys, torch.distributed as dist\n"
        "dist.init_process_group('gloo', init_method='tcp://127.0.0.1:0', rank=0, "
        "world_size=1)\n"
        "sys.argv = ['torchkd', 'train', 'missing.yaml']\n"
        "from torchkd.cli import entry_point\n"
        "entry_point()\n"
        "print('not reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 2, done.stderr
    assert "missing.yaml" in done.stderr.splitlines()[-1]
    assert "not reached" not in done.stdout


# ------------------------------------------------------------------ damaged checkpoints


def _flip_student_bytes(path: Path) -> None:
    """Invert 16 bytes inside the stored data of the student's largest tensor."""
    student = load_checkpoint(path)["student"]
    largest = max(student.values(), key=lambda tensor: tensor.numel())
    data = largest.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    raw = bytearray(path.read_bytes())
    start = raw.find(data)
    assert start >= 0
    middle = start + len(data) // 2
    raw[middle : middle + 16] = bytes(byte ^ 0xFF for byte in raw[middle : middle + 16])
    path.write_bytes(bytes(raw))


def test_eval_and_resume_refuse_a_damaged_last_pt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = CONFIGS / "mnist1d" / "baseline.yaml"
    run_dir = tmp_path / "run"
    keep = "train.keep_teacher_checkpoints_every=1"
    assert run("train", baseline, *FAST, keep, "--run-dir", run_dir) == 0
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.pt"
    _flip_student_bytes(last)
    before = {path.name: path.read_bytes() for path in checkpoints.iterdir()}
    capsys.readouterr()

    assert run("eval", baseline, "--checkpoint", last) == 2
    error = capsys.readouterr().err
    assert f"{last} is damaged" in error and "usage: torchkd eval" in error
    assert run("train", baseline, *FAST, keep, "--run-dir", run_dir, "--resume") == 2
    assert f"{last} is damaged" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in checkpoints.iterdir()} == before
    for other in ("best.pt", "epoch_001.pt"):
        assert run("eval", baseline, "--checkpoint", checkpoints / other, "--json") == 0
        assert json.loads(capsys.readouterr().out)["samples"] == 1000


def test_eval_refuses_a_damaged_export(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = trained["student"] / "checkpoints" / "last.pt"
    out = tmp_path / "student.safetensors"
    assert run("export", trained["recipe"], "--checkpoint", last, "--out", out) == 0
    assert run("eval", trained["recipe"], "--checkpoint", out) == 0
    weights = load_file(out)
    largest = max(weights.values(), key=lambda tensor: tensor.numel())
    raw = bytearray(out.read_bytes())
    start = raw.find(largest.reshape(-1).view(torch.uint8).numpy().tobytes()) + 8
    raw[start : start + 16] = bytes(16)
    out.write_bytes(bytes(raw))
    capsys.readouterr()
    assert run("eval", trained["recipe"], "--checkpoint", out) == 2
    assert f"{out} is damaged" in capsys.readouterr().err


def test_train_refuses_a_baseline_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = CONFIGS / "mnist1d" / "baseline.yaml"
    argv = ["train", recipe, *FAST, "--run-dir", tmp_path / "r", "--baseline", tmp_path]
    assert run(*argv) == 2
    assert f"--baseline {tmp_path}: no metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
