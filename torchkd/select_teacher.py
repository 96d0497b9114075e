r"""Teacher selection: rank candidate teacher checkpoints for a recipe's student.

The most accurate teacher is not always the best one to distil from. Early-stopped teachers
often teach better than fully trained ones (Cho & Hariharan, "On the Efficacy of Knowledge
Distillation", ICCV 2019), and a large capacity gap between teacher and student can hurt
(Mirzadeh et al., "Improved Knowledge Distillation via Teacher Assistant", AAAI 2020). So each
candidate is measured twice:

1. as a classifier on the validation split: top-1, NLL and expected calibration error;
2. optionally, by a *distillation probe*: a short training of the recipe's student with that
   teacher (same seed, data and steps for every candidate), scored by the student's validation
   top-1. The probe also trains the student without distillation (one cross-entropy term), the
   baseline a teacher has to beat.

When probes ran they decide the ranking (the question is which teacher makes the best student);
otherwise the teachers are ranked by validation top-1, then NLL. Only the training and
validation splits are built: selecting a teacher never looks at the test split.

Candidates holding the same weights (``best.pt`` and the ``epoch_XXX.pt`` of the same epoch)
are measured once and shown as one row. A recommendation says when its lead (over the runner-up
or over the student without KD) is within noise: two standard errors of the difference, from the
spread over probe seeds, or with one seed from the validation split's sampling error alone
(binomial, :math:`\sqrt{p(1-p)/n}` per accuracy). When no candidate's probe student beats the
student trained without KD, none is recommended.

Candidates are torchkd checkpoints (``runs/x/checkpoints/best.pt``, ``last.pt``, the
``epoch_XXX.pt`` kept with ``train.keep_teacher_checkpoints_every``), whose stored recipe names
their architecture, or bare weights (``.safetensors``, a saved state dict) for the recipe's
``teacher`` architecture.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkd.config import (
    ConfigError,
    ModelConfig,
    Recipe,
    TermConfig,
    build_loaders,
    build_model,
    fit_recipe,
)

__all__ = ["CandidateResult", "TeacherSelection", "select_teacher"]

Echo = Callable[[str], None]


@dataclass
class CandidateResult:
    """One candidate teacher, measured.

    Attributes:
        path: the checkpoint or weights file.
        model: its architecture, e.g. ``cnn1d(width=64)``.
        parameters: its parameter count.
        val: its validation metrics (``top1``, ``nll``, ``ece``).
        probe_top1: the probe students' validation top-1, one per probe seed (empty without
            probes).
        rank: 1 for the recommended teacher.
        reason: why it ranks where it does.
        warning: set when distilling from it did not beat the student trained without KD.
        same_weights: further candidate files holding the very same weights (measured once).
    """

    path: str
    model: str
    parameters: int
    val: dict[str, float]
    probe_top1: list[float] = field(default_factory=list)
    rank: int = 0
    reason: str = ""
    warning: str = ""
    same_weights: list[str] = field(default_factory=list)

    @property
    def probe_mean(self) -> float | None:
        """Mean probe-student top-1 (``None`` without probes)."""
        return statistics.fmean(self.probe_top1) if self.probe_top1 else None


@dataclass
class TeacherSelection:
    """The ranked candidates and how they were ranked.

    Attributes:
        candidates: best first.
        baseline_top1: validation top-1 of the probe student trained without KD, per seed
            (empty without probes).
        probe_steps: optimizer steps each probe took (0: no probes; whole epochs when more
            steps than one epoch were asked).
        ranked_by: ``"distillation probe"`` or ``"teacher validation top-1"``.
        caveat: why the recommendation may not hold (a lead within noise), or ``""``.
    """

    candidates: list[CandidateResult]
    baseline_top1: list[float]
    probe_steps: int
    ranked_by: str
    caveat: str = ""

    @property
    def recommended(self) -> CandidateResult | None:
        """The best candidate, or ``None`` when probes ran and no candidate's student beat
        the student trained without KD."""
        best = self.candidates[0]
        return None if self.baseline_top1 and best.warning else best

    def recommendation(self) -> str:
        """The recommended ``teacher.checkpoint`` (and a ``caveat:`` line), or why none."""
        best = self.recommended
        if best is None:
            return (
                "recommended: none: no candidate's probe student beat the student trained "
                "without KD (train without KD, or try other teachers)"
            )
        line = f"recommended: teacher.checkpoint={best.path}"
        return f"{line}\ncaveat: {self.caveat}" if self.caveat else line

    @property
    def baseline_mean(self) -> float | None:
        """Mean top-1 of the no-KD probe students (``None`` without probes)."""
        return statistics.fmean(self.baseline_top1) if self.baseline_top1 else None

    def table(self) -> str:
        """The ranking as a markdown table."""
        probes = bool(self.baseline_top1)
        header = ["rank", "candidate", "model", "params", "val top-1", "NLL", "ECE"]
        header += ["probe student top-1"] if probes else []
        header.append("why")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for result in self.candidates:
            cells = [
                str(result.rank),
                " = ".join(f"`{path}`" for path in [result.path, *result.same_weights]),
                result.model,
                f"{result.parameters:,}",
                f"{result.val['top1']:.2f} %",
                f"{result.val['nll']:.3f}",
                f"{result.val['ece']:.3f}",
            ]
            if probes:
                cells.append(_percent_spread(result.probe_top1))
            cells.append(result.reason + (f" **{result.warning}**" if result.warning else ""))
            lines.append("| " + " | ".join(cells) + " |")
        if probes:
            lines.append(
                f"\nstudent without KD (same probe): {_percent_spread(self.baseline_top1)} "
                f"validation top-1; probes of {self.probe_steps} optimizer steps"
            )
        return "\n".join(lines)


def _percent_spread(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f} %"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f} %"


def _describe(spec: ModelConfig) -> str:
    arguments = ", ".join(f"{key}={value}" for key, value in spec.kwargs.items())
    return f"{spec.model}({arguments})"


def candidate_spec(path: str | Path, recipe: Recipe) -> ModelConfig:
    """The architecture of candidate ``path`` with ``checkpoint`` set to it.

    A torchkd checkpoint stores the recipe that trained it; its ``student`` is the candidate's
    architecture. Bare weights use the recipe's ``teacher`` architecture.
    """
    from torchkd.train import CheckpointError, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--candidates: {path} does not exist")
    stored: Any = None
    if path.suffix != ".safetensors":
        try:
            stored = load_checkpoint(path)["config"].get("student")
        except CheckpointError:
            stored = None  # a bare state dict
    if stored is not None:
        spec = ModelConfig.model_validate(stored)
    elif isinstance(recipe.teacher, ModelConfig):
        spec = recipe.teacher
    else:
        raise ConfigError(
            [f"teacher: required to read the bare weights {path} (its architecture is unknown)"]
        )
    weights = {"checkpoint": str(path), "pretrained": False, "untrained": False}
    return spec.model_copy(update=weights)


def _single_teacher(recipe: Recipe) -> None:
    if not isinstance(recipe.teacher, ModelConfig):
        given = "a list of teachers" if recipe.teachers is not None else "no teacher"
        raise ConfigError(
            [
                "teacher: select-teacher needs a recipe with one `teacher:` model (its terms say "
                "how the probe distils); got "
                + ("a teacher server" if recipe.teacher is not None else given)
            ]
        )


def _probe_plan(recipe: Recipe, probe_steps: int, seed: int) -> tuple[int, int | None]:
    """``(epochs, train_samples)`` for a probe of about ``probe_steps`` optimizer steps.

    Fewer steps than an epoch: one epoch over the first ``probe_steps`` batches' worth of a
    fixed permutation of the training set. More: whole epochs, as many as needed.
    """
    train = build_loaders(recipe.data, seed=seed, splits=["train"]).train
    assert train is not None
    batches_per_step = recipe.train.grad_accum_steps
    steps_per_epoch = math.ceil(len(train) / batches_per_step)
    if probe_steps >= steps_per_epoch:
        return math.ceil(probe_steps / steps_per_epoch), None
    return 1, probe_steps * batches_per_step * recipe.data.batch_size


def _probe(
    recipe: Recipe, teacher_spec: ModelConfig | None, probe_steps: int, seed: int
) -> tuple[float, int]:
    """The recipe's student after a short fit (no teacher: no KD): validation top-1, steps.

    The probe is the recipe itself with the candidate as its teacher (or, for the baseline, no
    teacher and one cross-entropy term), run through :func:`torchkd.config.fit_recipe`: the
    same data, augmentation and initial weights for every candidate.
    """
    epochs, train_samples = _probe_plan(recipe, probe_steps, seed)
    train = recipe.train.model_copy(update={"epochs": epochs, "seed": seed, "progress": False})
    if teacher_spec is None:
        update: dict[str, Any] = {"teacher": None, "terms": [TermConfig(name="ce", loss="ce")]}
    else:
        update = {"teacher": teacher_spec}
    probe = recipe.model_copy(update={**update, "train": train, "tune": None})
    with tempfile.TemporaryDirectory(prefix="torchkd-probe-") as run_dir:
        result = fit_recipe(
            probe, run_dir, evaluate_test=False, report=False, train_samples=train_samples
        )
    return float(result.final_metrics["top1"]), int(result.history[-1]["step"])


def _noise(first: Sequence[float], second: Sequence[float], val_samples: int) -> float:
    r"""Two standard errors (points) of the difference of two mean probe top-1 values: from
    their spread over seeds when both have two or more, else from the validation split's
    sampling error (binomial: :math:`\sqrt{p(1-p)/n}` per accuracy)."""
    if len(first) > 1 and len(second) > 1:
        variances = [statistics.variance(values) / len(values) for values in (first, second)]
    else:
        shares = [statistics.fmean(values) / 100.0 for values in (first, second)]
        variances = [share * (1.0 - share) / val_samples * 100.0**2 for share in shares]
    return 2.0 * math.sqrt(sum(variances))


def _lead_caveat(results: list[CandidateResult], baseline: list[float], val_samples: int) -> str:
    """Say whether the recommended candidate's lead over the runner-up and over the student
    without KD is within noise (``""`` when both are not)."""
    best = results[0]
    rivals = [(result.path, result.probe_top1) for result in results[1:2]]
    rivals.append(("the student without KD", baseline))
    within = []
    for name, values in rivals:
        lead = (best.probe_mean or 0.0) - statistics.fmean(values)
        noise = _noise(best.probe_top1, values, val_samples)
        if lead < noise:
            within.append(
                f"its {lead:+.2f}-point lead over {name} is within noise "
                f"(2 standard errors: {noise:.2f} points)"
            )
    if not within:
        return ""
    seeds = len(best.probe_top1)
    basis = (
        f"one probe seed: the noise counts only the sampling error of the {val_samples} "
        "validation samples, not the spread over seeds (rerun with --probe-seeds 3)"
        if seeds < 2
        else f"the spread over {seeds} probe seeds"
    )
    return "; ".join([*within, basis])


def _rank(results: list[CandidateResult], baseline: list[float]) -> str:
    """Order ``results`` in place, fill rank, reason and warning; returns the criterion."""
    most_accurate = max(results, key=lambda r: (r.val["top1"], -r.val["nll"]))
    if baseline:
        results.sort(key=lambda r: (-(r.probe_mean or 0.0), -r.val["top1"], r.val["nll"]))
        baseline_mean = statistics.fmean(baseline)
        for position, result in enumerate(results, start=1):
            result.rank = position
            gain = (result.probe_mean or 0.0) - baseline_mean
            result.reason = f"probe student {gain:+.2f} points vs no KD"
            if position == 1:
                result.reason = "best probe student: " + result.reason
            if result is most_accurate and position > 1:
                result.reason += (
                    "; the most accurate teacher, but its student learns less (capacity gap or "
                    "over-confident targets?)"
                )
            if (result.probe_mean or 0.0) <= baseline_mean:
                result.warning = "not better than the student trained without KD"
        return "distillation probe"
    results.sort(key=lambda r: (-r.val["top1"], r.val["nll"]))
    for position, result in enumerate(results, start=1):
        result.rank = position
        result.reason = "highest validation top-1" if position == 1 else "lower validation top-1"
        if position > 1 and result.val["top1"] == results[0].val["top1"]:
            result.reason = "same top-1, higher NLL"
    return "teacher validation top-1"


def select_teacher(
    recipe: Recipe,
    candidates: Sequence[str | Path],
    *,
    probe_steps: int = 0,
    probe_seeds: int = 1,
    echo: Echo = print,
) -> TeacherSelection:
    """Measure and rank candidate teachers for ``recipe``'s student.

    Args:
        recipe: a recipe with one ``teacher:``; its terms are the probe's distillation.
        candidates: checkpoint or weights files, one per candidate teacher.
        probe_steps: optimizer steps of each distillation probe (0: no probes; the ranking is
            then by teacher validation top-1).
        probe_seeds: probes per candidate (and for the baseline), seeds ``train.seed + k``;
            the ranking uses their mean.
        echo: where progress lines go.

    Returns:
        :class:`TeacherSelection`, best candidate first.

    Raises:
        ConfigError: the recipe has no single teacher, or bare weights without a ``teacher``.
        FileNotFoundError: a candidate file is missing.
    """
    from torchkd.train import evaluate, resolve_device
    from torchkd.train.digest import content_sha256

    _single_teacher(recipe)
    if not candidates:
        raise ValueError("candidates: expected at least one checkpoint")
    if probe_steps < 0 or probe_seeds < 1:
        raise ValueError(
            f"probe_steps must be >= 0 and probe_seeds >= 1, got {probe_steps} and {probe_seeds}"
        )
    device = resolve_device(recipe.train.device)
    val_loader = build_loaders(recipe.data, seed=recipe.train.seed, splits=["val"]).val
    seeds = [recipe.train.seed + offset for offset in range(probe_seeds)]
    results: list[CandidateResult] = []
    baseline: list[float] = []
    steps_taken = 0
    if probe_steps:
        probes = [_probe(recipe, None, probe_steps, seed) for seed in seeds]
        baseline, steps_taken = [top1 for top1, _ in probes], probes[0][1]
        echo(f"student without KD: validation top-1 {_percent_spread(baseline)}")
    measured: dict[tuple[str, str], CandidateResult] = {}
    for path in candidates:
        spec = candidate_spec(path, recipe)
        teacher = build_model(spec, f"--candidates {path}").eval()
        weights = (_describe(spec), content_sha256(dict(teacher.state_dict())))
        if weights in measured:
            same = measured[weights]
            same.same_weights.append(str(path))
            echo(f"{path}: the same weights as {same.path} (measured once)")
            continue
        metrics = evaluate(teacher.to(device), val_loader, device=device)
        result = CandidateResult(
            path=str(path),
            model=_describe(spec),
            parameters=sum(p.numel() for p in teacher.parameters()),
            val=metrics,
        )
        measured[weights] = result
        line = f"{path}: teacher validation top-1 {metrics['top1']:.2f} %"
        if probe_steps:
            probes = [_probe(recipe, spec, probe_steps, seed) for seed in seeds]
            result.probe_top1 = [top1 for top1, _ in probes]
            line += f", probe student {_percent_spread(result.probe_top1)}"
        echo(line)
        results.append(result)
    ranked_by = _rank(results, baseline)
    selection = TeacherSelection(results, baseline, steps_taken, ranked_by)
    if baseline and selection.recommended is not None:
        selection.caveat = _lead_caveat(results, baseline, int(results[0].val["samples"]))
    return selection
