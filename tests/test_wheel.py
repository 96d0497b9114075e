"""``pip install torchkd`` pulls the core only, and the core is enough for the losses and the
engine: a wheel built from this checkout holds the package data and declares the core
requirements; installed into a clean virtual environment (no system site packages) with torch
and those requirements alone, every module imports -- or, where it needs an extra, raises an
``ImportError`` naming ``pip install 'torchkd[EXTRA]'`` -- a loss, a ``Distiller`` and a
short training run with its report work, and ``torchkd tune`` names the ``tune`` extra.

torch is installed in that environment at the version running this test (from pip's cache or
the configured index; ``TORCH_INDEX``, as ``make`` passes it, is added as an index)."""

from __future__ import annotations

import email
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "numpy", "pyyaml", "pydantic", "tqdm", "safetensors"}
EXTRAS = {"tune", "log", "hf", "demo", "all", "dev"}
# packages of the extras, none of which a core install may pull
EXTRA_PACKAGES = {
    "optuna",
    "scikit-learn",
    "matplotlib",
    "tensorboard",
    "mnist1d",
    "transformers",
    "tokenizers",
    "accelerate",
}
TIMEOUT_S = 300

# Run by the clean environment's python, outside the checkout (its torchkd is the wheel's).
SCRIPT = r"""
import importlib, pkgutil, sys, tempfile
from pathlib import Path

import torch
import torchkd
import torchkd.losses as L
from torchkd import Distiller, Term
from torchkd.config import TrainConfig
from torchkd.data import TensorDictDataset
from torchkd.report import write_report
from torchkd.train import fit

assert "site-packages" in torchkd.__file__, torchkd.__file__

# every module imports, or names the extra that it needs
needs = {}
for info in pkgutil.walk_packages(torchkd.__path__, "torchkd."):
    try:
        importlib.import_module(info.name)
    except ImportError as error:
        needs[info.name] = str(error)
expected = {"torchkd.tune": "tune", "torchkd.integrations.transformers": "hf"}
assert set(needs) == set(expected), needs
for name, extra in expected.items():
    assert f"pip install 'torchkd[{extra}]'" in needs[name], needs[name]

# a loss, forward and backward
torch.manual_seed(0)
student_logits = torch.randn(8, 10, requires_grad=True)
loss = L.kd_loss(student_logits, torch.randn(8, 10), temperature=4.0)
loss.backward()
assert torch.isfinite(loss) and student_logits.grad.abs().sum() > 0

# a Distiller with a Hinton term, then two epochs of training and the run's report
student, teacher = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
distiller = Distiller(student, teacher, [Term("kd", "hinton", loss_kwargs={"temperature": 2.0})])
inputs = torch.randn(32, 6)
labels = torch.randint(0, 3, (32,))
batch = {"inputs": inputs[:8], "labels": labels[:8]}
distiller.build(batch)
output = distiller(batch)
output.loss.backward()
assert torch.isfinite(output.loss) and student.weight.grad is not None

run_dir = Path(tempfile.mkdtemp()) / "run"
loader = torch.utils.data.DataLoader(TensorDictDataset(inputs, labels), batch_size=8)
config = TrainConfig(epochs=2, device="cpu", progress=False, log_every_steps=2)
fit(distiller, loader, loader, config, run_dir)
assert not (run_dir / "tb").exists()  # train.tensorboard: null, and tensorboard is absent
text = write_report(run_dir).read_text()
assert "## Epochs" in text and "pip install 'torchkd[log]'" in text, text
print("core ok")
"""


def _run(
    command: list[str], returncode: int = 0, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, **kwargs
    )
    assert result.returncode == returncode, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built from a copy of its sources (a ``build/`` left in the
    checkout by an earlier build would put its stale files into the wheel)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("building the wheel needs setuptools: pip install -e '.[dev]'")
    source = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "torchkd", source / "torchkd", ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    pip_wheel = ["-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    _run([sys.executable, *pip_wheel, "-w", str(out), "."], cwd=source)
    (built,) = out.glob("torchkd-*.whl")
    return built


def test_the_wheel_holds_the_package_data_and_requires_the_core_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    assert "torchkd/py.typed" in names
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "torchkd").glob("configs/**/*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    core = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert {re.match(r"[\w.-]+", r)[0].lower() for r in core} == CORE, core
    assert set(metadata.get_all("Provides-Extra")) == EXTRAS


def test_a_clean_environment_with_the_core_alone_runs_the_losses_and_the_engine(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    index = os.environ.get("TORCH_INDEX")
    torch_index = ["--extra-index-url", index] if index else []
    pip_install = [python, "-m", "pip", "install", "--quiet"]
    _run([*pip_install, f"torch=={torch.__version__}", *torch_index])
    _run([*pip_install, str(wheel)])

    listed = _run([python, "-m", "pip", "list", "--format=freeze"]).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert not installed & EXTRA_PACKAGES, sorted(installed & EXTRA_PACKAGES)

    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["OMP_NUM_THREADS"] = "1"
    (tmp_path / "check.py").write_text(SCRIPT)
    result = _run([python, "check.py"], cwd=tmp_path, env=environment)
    assert result.stdout.strip().endswith("core ok"), result.stdout
    command = [str(venv / "bin" / "torchkd"), "tune", "recipe.yaml"]
    tune = _run(command, returncode=1, cwd=tmp_path, env=environment)
    assert "needs optuna: pip install 'torchkd[tune]'" in tune.stderr
    shutil.rmtree(venv)  # torch alone is most of a gigabyte; kept only when the test fails
