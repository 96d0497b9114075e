"""Born-again networks (Furlanello et al., "Born-Again Neural Networks", ICML 2018): a recipe
with ``generations: N`` trains its student ``N`` times in a chain.

Generation 1 is the recipe as written: its student distilled from its ``teacher:``. Generation
``g > 1`` trains a fresh student of the same architecture, seeded with
:func:`generation_seed` ``(train.seed, g)``, whose teacher is generation ``g - 1``'s student at
its best validation epoch (``RUN_DIR/gen<g-1>/checkpoints/best.pt``); the terms are the
recipe's, so with ``kd`` + ``ce`` generation ``g`` minimises

    w_kd · T² KL(softmax(z_{g-1} / T) ‖ softmax(z_g / T)) + w_ce · CE(z_g, y).

Each generation is an ordinary run in ``RUN_DIR/gen<g>/`` (config, checkpoints, metrics,
report); ``RUN_DIR/report.md`` tabulates the generations' validation and test top-1.
``--resume`` resumes the unfinished generation (finished ones resume to their end at once) and
goes on with the next; resumed with a larger ``generations``, it adds generations. More
``train.epochs`` on resume extend every generation in turn, each generation then continuing
with its teacher's new ``best.pt``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from torchkd.config.errors import ConfigError
from torchkd.config.schema import ModelConfig, Recipe
from torchkd.train.checkpoint_layout import checkpoint_exists

if TYPE_CHECKING:
    from torchkd.train import FitResult

__all__ = [
    "fit_generations",
    "generation_dir",
    "generation_recipe",
    "generation_seed",
    "generations_markdown",
]

FitOne = Callable[[Recipe, Path, bool], "FitResult"]


def generation_dir(run_dir: str | Path, generation: int) -> Path:
    """``run_dir/gen<generation>``, the run directory of one generation."""
    return Path(run_dir) / f"gen{generation}"


def generation_seed(seed: int, generation: int) -> int:
    """``train.seed`` of generation ``generation``: ``seed`` itself for generation 1, else a
    well-mixed 32-bit function of ``(seed, generation)``, so every generation starts from
    other initial weights and shuffles.

    Example:
        >>> generation_seed(7, 1), generation_seed(7, 2) == generation_seed(7, 2) != 7
        (7, True)
    """
    if generation == 1:
        return seed
    return int(np.random.SeedSequence([seed, generation]).generate_state(1, dtype=np.uint32)[0])


def generation_recipe(recipe: Recipe, generation: int, run_dir: str | Path) -> Recipe:
    """The single-run recipe of generation ``generation`` (1-based) of ``recipe``'s chain."""
    update: dict = {"name": f"{recipe.name}.gen{generation}", "generations": 1}
    if generation > 1:
        previous = generation_dir(run_dir, generation - 1) / "checkpoints" / "best.pt"
        update["teacher"] = ModelConfig(
            model=recipe.student.model, kwargs=recipe.student.kwargs, checkpoint=str(previous)
        )
        seed = generation_seed(recipe.train.seed, generation)
        update["train"] = recipe.train.model_copy(update={"seed": seed})
    return recipe.model_copy(update=update)


def _top1(metrics: dict[str, float] | None) -> str:
    return f"{metrics['top1']:.2f}" if metrics and "top1" in metrics else "–"


def generations_markdown(recipe: Recipe, results: list[FitResult]) -> str:
    """The chain's summary page: one row per generation, its teacher, seed, best epoch, and
    the validation and test top-1 (%) of its ``best.pt``."""
    lines = [
        f"# {recipe.name}: {recipe.generations} born-again generations",
        "",
        "Generation g > 1 is the student's architecture distilled from generation g - 1's "
        "`best.pt` (Furlanello et al., 2018). Top-1 in %, of each generation's `best.pt`.",
        "",
        "| generation | teacher | seed | best epoch | val top-1 | test top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for generation, result in enumerate(results, start=1):
        teacher = (
            recipe.teacher.model if generation == 1 and recipe.teacher else f"gen{generation - 1}"
        )
        seed = generation_seed(recipe.train.seed, generation)
        lines.append(
            f"| [gen{generation}](gen{generation}/report.md) | {teacher} | {seed} | "
            f"{result.best_epoch} | {_top1(result.best_metrics)} | "
            f"{_top1(result.best_test_metrics)} |"
        )
    return "\n".join(lines) + "\n"


def fit_generations(
    recipe: Recipe, run_dir: str | Path, fit_one: FitOne, *, resume: bool, report: bool
) -> FitResult:
    """Train ``recipe``'s chain of generations with ``fit_one(recipe, run_dir, resume)`` (one
    single-run :func:`~torchkd.config.fit_recipe`), write the summary ``run_dir/report.md``
    with ``report`` (rank 0 only) and return the last generation's result, its
    ``report_path`` the summary.

    Raises:
        ConfigError: a generation wrote no ``best.pt`` (no validation split) to teach the next.
    """
    from torchkd.train.distributed import is_main_process

    results = []
    for generation in range(1, recipe.generations + 1):
        directory = generation_dir(run_dir, generation)
        started = checkpoint_exists(directory / "checkpoints" / "last.pt")
        result = fit_one(
            generation_recipe(recipe, generation, run_dir), directory, resume and started
        )
        if generation < recipe.generations and result.best_checkpoint is None:
            raise ConfigError(
                [
                    f"generations: {directory} wrote no checkpoints/best.pt to teach generation "
                    f"{generation + 1}; born-again generations need a validation split "
                    "(data.val_fraction > 0)"
                ]
            )
        results.append(result)
    last = results[-1]
    if report and is_main_process():
        summary = Path(run_dir) / "report.md"
        summary.write_text(generations_markdown(recipe, results))
        last.report_path = summary
    return last
