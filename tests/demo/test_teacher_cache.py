"""The demo teacher's cache key: everything that determines the teacher, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchkd import demo
from torchkd.demo import fingerprint


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in torchkd source tree, read by the fingerprint instead of the real one."""
    root = tmp_path / "torchkd"
    for name in (
        "train/loop.py",
        "data/mnist1d.py",
        "losses/kl.py",
        "demo/arms.py",
        "demo/report.py",
        "tune/search.py",
        "cli/runs.py",
        "integrations/transformers.py",
        "distiller.py",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    monkeypatch.setattr(fingerprint, "package_root", lambda: root)
    monkeypatch.setenv("TORCHKD_CACHE", str(tmp_path / "cache"))
    return root


def test_same_inputs_give_the_same_key(fake_package: Path) -> None:
    first = demo.teacher_cache_path(quick=False)
    assert demo.teacher_cache_path(quick=False) == first
    assert first.parent == fake_package.parent / "cache" / "teachers"
    assert first.name.startswith("demo_teacher-") and first.suffix == ".safetensors"


@pytest.mark.parametrize(
    "source", ["train/loop.py", "data/mnist1d.py", "losses/kl.py", "distiller.py", "demo/arms.py"]
)
def test_a_change_in_the_training_code_changes_the_key(fake_package: Path, source: str) -> None:
    before = demo.teacher_cache_path(quick=False)
    with (fake_package / source).open("a") as stream:
        stream.write("step = step + 1\n")
    assert demo.teacher_cache_path(quick=False) != before


def test_a_new_training_module_changes_the_key(fake_package: Path) -> None:
    before = demo.teacher_cache_path(quick=False)
    (fake_package / "train" / "augment.py").write_text("SHIFT = 4\n")
    assert demo.teacher_cache_path(quick=False) != before


@pytest.mark.parametrize(
    "source", ["demo/report.py", "tune/search.py", "cli/runs.py", "integrations/transformers.py"]
)
def test_code_that_trains_no_teacher_keeps_the_key(fake_package: Path, source: str) -> None:
    before = demo.teacher_cache_path(quick=False)
    with (fake_package / source).open("a") as stream:
        stream.write("LABEL = 'changed'\n")
    assert demo.teacher_cache_path(quick=False) == before


def test_the_torch_version_changes_the_key(
    fake_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = demo.teacher_cache_path(quick=False)
    monkeypatch.setattr(torch, "__version__", "0.0.1+other")
    assert demo.teacher_cache_path(quick=False) != before


def test_the_recipe_changes_the_key(fake_package: Path) -> None:
    assert demo.teacher_cache_path(quick=True) != demo.teacher_cache_path(quick=False)


def test_the_real_package_is_fingerprinted() -> None:
    files = {
        path.relative_to(fingerprint.package_root()).as_posix()
        for path in fingerprint.teacher_source_files()
    }
    assert {"train/loop.py", "distiller.py", "config/build.py", "demo/arms.py"} <= files
    assert {"demo/report.py", "tune/search.py"}.isdisjoint(files)
    assert not any(
        name.startswith(("tune/", "demo/report", "cli/", "integrations/")) for name in files
    )
