"""Born-again generations (``generations: N``): validated with YAML paths; a chain trains each
generation in ``RUN_DIR/gen<g>/`` taught by the previous one's ``best.pt`` with a seed of its
own, summarises them in ``RUN_DIR/report.md`` and resumes the unfinished generation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from torchkd.cli import main
from torchkd.config import ConfigError, recipe_from_dict
from torchkd.config.generations import generation_recipe, generation_seed

MLP = {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [16]}}
RECIPE = {
    "name": "born",
    "generations": 2,
    "data": {"dataset": "digits", "batch_size": 512},
    "teacher": {**MLP, "untrained": True},
    "student": MLP,
    "terms": [
        {"name": "kd", "loss": "kd", "loss_kwargs": {"temperature": 2.0}, "weight": 0.5},
        {"name": "ce", "loss": "ce", "weight": 0.5},
    ],
    "train": {"epochs": 1, "log_every_steps": 1, "progress": False, "device": "cpu", "seed": 3},
}


def _recipe(**update: object):
    return recipe_from_dict({**RECIPE, **update})


def test_one_generation_is_the_default_and_the_recipe_itself() -> None:
    recipe = _recipe(generations=1)
    assert (
        recipe_from_dict({k: v for k, v in RECIPE.items() if k != "generations"}).generations == 1
    )
    assert generation_recipe(recipe, 1, "run").teacher == recipe.teacher


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        ({"generations": 0}, "generations: expected a value greater than 0, got 0"),
        ({"teacher": None}, "generations: 2 generations needs one teacher"),
        (
            {"student": {**MLP, "checkpoint": "s.pt"}},
            "generations: 2 generations trains fresh students; drop student.checkpoint",
        ),
    ],
)
def test_generations_are_validated(update: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        _recipe(**update)


def test_later_generations_are_taught_by_the_previous_best_checkpoint() -> None:
    recipe = _recipe(generations=3)
    third = generation_recipe(recipe, 3, "runs/born")
    assert third.teacher.model == "mlp" and third.teacher.kwargs == MLP["kwargs"]
    assert third.teacher.checkpoint == str(Path("runs/born/gen2/checkpoints/best.pt"))
    assert third.train.seed == generation_seed(3, 3) not in (3, generation_seed(3, 2))
    assert third.student == recipe.student and third.terms == recipe.terms
    assert third.name == "born.gen3" and third.generations == 1


def _digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "tb" not in path.parts
    }


def test_a_chain_trains_summarises_and_resumes(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    run_dir = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run_dir)]) == 0
    for generation in (1, 2):
        assert (run_dir / f"gen{generation}" / "checkpoints" / "best.pt").is_file()
        assert (run_dir / f"gen{generation}" / "report.md").is_file()
    second = yaml.safe_load((run_dir / "gen2" / "config.yaml").read_text())
    assert second["teacher"]["checkpoint"] == str(run_dir / "gen1" / "checkpoints" / "best.pt")
    assert second["train"]["seed"] == generation_seed(3, 2)
    summary = (run_dir / "report.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| [gen")]
    assert len(rows) == 2 and "| mlp | 3 |" in rows[0] and "| gen1 |" in rows[1], summary
    # a fresh run refuses the directory; resume continues where the chain stopped
    assert main(["train", str(recipe), "--run-dir", str(run_dir)]) == 2
    first = _digests(run_dir / "gen1")
    for path in sorted((run_dir / "gen2").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--resume"]) == 0
    assert (run_dir / "gen2" / "checkpoints" / "best.pt").is_file()
    assert _digests(run_dir / "gen1") == first  # the finished generation is not retrained
    more = ["generations=3", "--run-dir", str(run_dir), "--resume"]
    assert main(["train", str(recipe), *more]) == 0  # a longer chain adds generations
    assert (run_dir / "gen3" / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "report.md").read_text().count("| [gen") == 3
