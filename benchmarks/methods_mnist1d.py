"""Every distillation method of torchkd on MNIST-1D: one teacher, two students, two settings.

A wide 1-D CNN teacher (``configs/mnist1d/teacher.yaml``, trained once and cached) is distilled
into a narrow CNN of the same family and into an MLP (a different family: no spatial feature
maps, so the methods that need them — AT, NST, FSP, factor transfer — are marked n/a there).
Each method is its recipe in ``configs/mnist1d/`` (the MLP is the override
``student.model=mlp`` plus the tap paths in each :class:`Method`'s ``mlp_overrides``), built
with :func:`torchkd.config.build_from_recipe` and trained with :func:`torchkd.train.fit`: the
library's engine, not a loop of its own. Every run uses the same optimizer, learning-rate
schedule, batch size and number of optimizer steps (:func:`common_overrides`); the table
reports the test top-1 of the final model (no checkpoint selection). Training batches are
drawn by :class:`MixedBatchSampler` (random permutations, 50-batch epochs) and built whole by
:class:`RowBatches`, which is much cheaper than collating one sample at a time.

Two settings:

- ``labeled``: batches of labeled MNIST-1D training samples (the 3600 left after the
  400-sample validation hold-out);
- ``transfer``: a quarter of every batch is labeled, three quarters are fresh unlabeled
  MNIST-1D samples from the transfer-set generator (:func:`torchkd.data.mnist1d_transfer_set`).
  Unlabeled rows carry the label ``-100`` (``ignore_index``): CE and DKD skip them, every
  other term (logit, feature and relation) uses all rows. The baseline cannot use unlabeled
  samples, so its transfer row is its labeled runs.

Two-stage methods (FitNets: hint stage then KD; factor transfer: paraphraser stage then
transfer) run their first stage for a quarter of the step budget before the full second stage.

``--group self`` is a table of its own (``methods_mnist1d_self.md``, its own recipe key, its
baseline rerun in it), CNN student only: BYOT (the top-1 of the deepest exit), SEED with
label-free KD, and born-again networks: the teacher's architecture distilled generation after
generation (``generations: 3``, one row per generation), measured against that architecture
trained alone with CE on the same steps and seeds.

Results go to ``benchmarks/results/methods_mnist1d.jsonl`` (one line per run and generation,
so partial runs add up) and the table to ``benchmarks/results/methods_mnist1d.md``.

Usage::

    .venv/bin/python benchmarks/methods_mnist1d.py                      # the full table
    .venv/bin/python benchmarks/methods_mnist1d.py --steps 3000 --methods baseline,kd
    .venv/bin/python benchmarks/methods_mnist1d.py --methods kd,crd --students mlp \
        --settings transfer --seeds 0,1
    .venv/bin/python benchmarks/methods_mnist1d.py --table-only         # re-render the table
    .venv/bin/python benchmarks/methods_mnist1d.py --group self --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from torchkd.environment import environment

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "torchkd" / "configs" / "mnist1d"
RESULTS = ROOT / "benchmarks" / "results"
LOG_PATH = RESULTS / "methods_mnist1d.jsonl"

STUDENTS = ("cnn", "mlp")
SETTINGS = ("labeled", "transfer")
UNLABELED = -100  # the ignore_index of the CE and DKD losses

# The one training recipe of every run (on top of each method recipe's own train section).
STEPS = 1200  # the default budget; --steps N writes methods_mnist1d_steps<N>.md instead
BATCHES_PER_EPOCH = 50
BATCH_SIZE = 256
TRANSFER_SAMPLES = 25_000
TRANSFER_SEED = 1
TRANSFER_LABELED_PER_BATCH = 64
STAGE1_FRACTION = 0.25


def common_overrides(steps: int) -> list[str]:
    """The training settings every run shares, for a budget of ``steps`` optimizer steps."""
    return [
        f"data.batch_size={BATCH_SIZE}",
        f"train.epochs={steps // BATCHES_PER_EPOCH}",
        "train.optimizer={name: adam, lr: 0.01, weight_decay: 0.0}",
        "train.lr_schedule={name: cosine}",
        "train.progress=false",
        f"train.log_every_steps={steps}",
        "train.checkpoint_every_epochs=1000",
    ]


TEACHER_OVERRIDES = ["train.progress=false", "train.log_every_steps=1000"]


@dataclass(frozen=True)
class Method:
    """One row of the table: its recipe, an optional first stage, and where it applies.

    Attributes:
        label: the name shown in the table.
        recipe: the recipe file in ``configs/mnist1d/``.
        stage1: the first-stage recipe of a two-stage method.
        cnn_only: needs spatial feature maps (n/a for the MLP).
        mlp_overrides: tap paths (and sizes) for the MLP student, whose penultimate layer is
            ``hidden1`` (``[B, 256]``); the teacher's flattened conv3 is ``flatten``
            (``[B, 320]``).
        stage1_mlp_overrides: the same for the first stage.
        overrides: benchmark-only changes to the recipe (shown under the table).
        generations: born-again generations, each a row (the recipe's ``generations:`` chain,
            trained by :func:`torchkd.config.generations.fit_generations`).
        baseline: the method whose runs (same seed) the row's gains are measured against.
        teacher_architecture: trains the teacher's architecture whatever the student family
            (run once, shown in the CNN student's tables only).
    """

    label: str
    recipe: str
    stage1: str | None = None
    cnn_only: bool = False
    mlp_overrides: tuple[str, ...] = ()
    stage1_mlp_overrides: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    generations: int = 1
    baseline: str = "baseline"
    teacher_architecture: bool = False


EMBEDDING = ("terms.0.student=hidden1",)
# The recipes' K = 1024 CRD negatives cost 0.75 s per step at batch 256 on one CPU thread (the
# bank gathers dominate), 64 cost 0.06 s; RKD's angle term builds B^3 = 16.7M triplet angles.
CRD_BUDGET = ("terms.0.loss_kwargs.num_negatives=64",)
CRD_MLP = ("terms.0.student=hidden1", "terms.0.loss_kwargs.student_dim=256")
METHODS: dict[str, Method] = {
    "baseline": Method("baseline (CE)", "baseline.yaml"),
    "kd": Method("KD", "kd.yaml"),
    "fitnets": Method(
        "FitNets (hint stage, then KD)",
        "fitnets.yaml",
        stage1="fitnets_stage1_hint.yaml",
        stage1_mlp_overrides=(
            "terms.0.student=hidden1",
            "terms.0.teacher=flatten",
            "terms.0.adapter=linear",
        ),
    ),
    "at": Method("AT", "at.yaml", cnn_only=True),
    "nst": Method("NST", "nst.yaml", cnn_only=True),
    "fsp": Method("FSP", "fsp.yaml", cnn_only=True),
    "pkt": Method("PKT", "pkt.yaml", mlp_overrides=EMBEDDING),
    "vid": Method(
        "VID",
        "vid.yaml",
        mlp_overrides=(
            "terms.0.student=hidden1",
            "terms.0.teacher=flatten",
            "terms.0.loss_kwargs={num_input_channels: 256, num_mid_channels: 320, "
            "num_target_channels: 320}",
        ),
    ),
    "factor_transfer": Method(
        "factor transfer",
        "factor_transfer.yaml",
        stage1="factor_transfer_stage1_paraphraser.yaml",
        cnn_only=True,
    ),
    "attention_align": Method(
        "attention-weighted alignment",
        "attention_align.yaml",
        mlp_overrides=(  # one student layer, one (flat) teacher layer: a single aligned pair
            "terms.0.student=[hidden1]",
            "terms.0.teacher=[flatten]",
            "terms.0.loss_kwargs={student_channels: [256], teacher_channels: [320]}",
        ),
    ),
    "rkd": Method(
        "RKD (distance term)",
        "rkd.yaml",
        mlp_overrides=EMBEDDING,
        overrides=("terms.0.loss_kwargs.angle_weight=0.0",),
    ),
    "sp": Method("SP", "sp.yaml", mlp_overrides=EMBEDDING),
    "cc": Method("CC", "cc.yaml", mlp_overrides=EMBEDDING),
    "crd": Method("CRD (K = 64)", "crd.yaml", mlp_overrides=CRD_MLP, overrides=CRD_BUDGET),
    "crd_kd": Method(
        "CRD + KD (K = 64)", "crd_kd.yaml", mlp_overrides=CRD_MLP, overrides=CRD_BUDGET
    ),
    "dkd": Method("DKD", "dkd.yaml"),
    "dist": Method("DIST", "dist.yaml"),
    "ls_kd": Method("KD + logit standardization", "ls_kd.yaml"),
    # no teacher: the student's deepest exit teaches its early exits (cnn1d_exits)
    "byot": Method("BYOT (self-distillation, deepest exit)", "byot.yaml", cnn_only=True),
    # label-free: the runner's batches replace the recipe's own transfer set and augmentation
    "seed": Method(
        "SEED + label-free KD",
        "seed.yaml",
        mlp_overrides=EMBEDDING,
        overrides=("data.transfer=null", "data.augment=null"),
    ),
    # born-again: the teacher's own architecture (CNN1D width 64) distilled generation after
    # generation; its baseline is that architecture trained alone with CE on the same steps
    "baseline_wide": Method(
        "baseline (CE), teacher architecture",
        "baseline.yaml",
        overrides=("student.kwargs={width: 64}",),
        teacher_architecture=True,
    ),
    "born_again": Method(
        "born-again, teacher architecture",
        "born_again.yaml",
        generations=3,
        baseline="baseline_wide",
        teacher_architecture=True,
    ),
}
BASELINES = ("baseline", "baseline_wide")  # CE only: no unlabeled rows, no transfer runs
# --group: which methods a table holds (each group has its own recipe key and table file)
GROUPS = {
    "all": tuple(name for name in METHODS if not METHODS[name].teacher_architecture),
    "self": ("baseline", "kd", "byot", "seed", "baseline_wide", "born_again"),
}
GROUP_STUDENTS = {"all": STUDENTS, "self": ("cnn",)}
SELF_NOTES = [
    "- BYOT: the top-1 of the student's deepest exit (its logits), same width as the baseline",
    "- SEED + label-free KD: no label reaches the loss; in the labeled setting its inputs are "
    "the labeled rows, in the transfer setting the labeled and unlabeled rows",
    "- born-again: the teacher's architecture (CNN1D width 64) trained with the teacher's "
    "outputs only (KD, T = 1): generation 1 from the cached teacher, generation g > 1 a fresh "
    "network (seed generation_seed(seed, g)) taught by generation g − 1's best-validation "
    "`best.pt` (`generations: 3`, run by `fit_generations`); its gains are against the "
    "teacher architecture trained alone with CE (same steps, same seed)",
]


# ----------------------------------------------------------------------------------- data


class RowBatches(Dataset[dict[str, torch.Tensor]]):
    """Labeled rows followed by unlabeled rows; ``dataset[positions]`` is a whole batch.

    ``index`` is the row's position in this union (CRD memory banks are keyed by it);
    unlabeled rows get the label ``-100``.
    """

    def __init__(self, labeled: Any, unlabeled: Any | None) -> None:
        inputs, labels = [labeled.inputs], [labeled.labels]
        if unlabeled is not None:
            inputs.append(unlabeled.inputs)
            labels.append(torch.full((len(unlabeled),), UNLABELED, dtype=torch.long))
        self.inputs = torch.cat(inputs)
        self.labels = torch.cat(labels)
        self.num_labeled = len(labeled)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(positions)
        return {"inputs": self.inputs[rows], "labels": self.labels[rows], "index": rows}


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of ``labeled_per_batch`` labeled and ``batch_size - labeled_per_batch``
    unlabeled rows, each part walked through in fresh random permutations.

    An epoch is ``batches_per_epoch`` batches. The permutations come from ``generator``,
    which the trainer reseeds every epoch.
    """

    def __init__(
        self,
        rows: RowBatches,
        batch_size: int,
        labeled_per_batch: int,
        batches_per_epoch: int,
        generator: torch.Generator,
    ) -> None:
        self.parts = [(0, rows.num_labeled, labeled_per_batch)]
        if labeled_per_batch < batch_size:
            self.parts.append((rows.num_labeled, len(rows), batch_size - labeled_per_batch))
        self.batches_per_epoch = batches_per_epoch
        self.generator = generator

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _stream(self, start: int, stop: int, take: int) -> Iterator[list[int]]:
        pending: list[int] = []
        while True:
            while len(pending) < take:
                order = torch.randperm(stop - start, generator=self.generator) + start
                pending += order.tolist()
            yield pending[:take]
            pending = pending[take:]

    def __iter__(self) -> Iterator[list[int]]:
        streams = [self._stream(*part) for part in self.parts]
        for _ in range(self.batches_per_epoch):
            yield [position for stream in streams for position in next(stream)]


def train_loader(setting: str, labeled: Any, seed: int) -> DataLoader:
    """The training batches of ``setting`` (see the module docstring)."""
    from torchkd.data import mnist1d_transfer_set

    unlabeled = None
    labeled_per_batch = BATCH_SIZE
    if setting == "transfer":
        unlabeled = mnist1d_transfer_set(TRANSFER_SAMPLES, seed=TRANSFER_SEED)
        labeled_per_batch = TRANSFER_LABELED_PER_BATCH
    rows = RowBatches(labeled, unlabeled)
    generator = torch.Generator().manual_seed(seed)
    sampler = MixedBatchSampler(rows, BATCH_SIZE, labeled_per_batch, BATCHES_PER_EPOCH, generator)
    return DataLoader(rows, batch_size=None, sampler=sampler, generator=generator)


def num_train_rows(setting: str, num_labeled: int) -> int:
    return num_labeled + (TRANSFER_SAMPLES if setting == "transfer" else 0)


# ----------------------------------------------------------------------------------- runs


def recipe_hash(paths: Sequence[Path], overrides: Sequence[str], ignore: Sequence[str] = ()) -> str:
    """A short hash of the recipes' parsed contents and ``overrides``.

    Comments do not count, nor the dotted keys in ``ignore`` (settings the benchmark overrides).
    """
    import yaml

    contents = [yaml.safe_load(path.read_text()) for path in paths]
    for content in contents:
        for dotted in ignore:
            *parents, leaf = dotted.split(".")
            section = content
            for part in parents:
                section = section.get(part) or {}
            section.pop(leaf, None)
    text = json.dumps([contents, list(overrides)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def teacher_checkpoint() -> Path:
    """Train ``teacher.yaml`` once; later calls return the cached checkpoint."""
    from torchkd.config import build_from_recipe, load_recipe
    from torchkd.data import cache_dir
    from torchkd.train import fit

    path = RECIPES / "teacher.yaml"
    run_dir = (
        cache_dir() / "benchmarks" / f"mnist1d_teacher-{recipe_hash([path], TEACHER_OVERRIDES)}"
    )
    checkpoint = run_dir / "checkpoints" / "best.pt"
    if checkpoint.exists():
        return checkpoint
    started = time.perf_counter()
    recipe = load_recipe(path, TEACHER_OVERRIDES)
    distiller, loaders, config = build_from_recipe(recipe)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=".partial-"))
    result = fit(
        distiller,
        loaders.train,
        loaders.val,
        config,
        scratch,
        test_loader=loaders.test,
        resolved_config=recipe.model_dump(mode="json"),
    )
    print(
        f"teacher: test top-1 {result.test_metrics['top1']:.1f}% "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    os.replace(scratch, run_dir)
    return checkpoint


@dataclass(frozen=True)
class Job:
    method: str
    student: str
    setting: str
    seed: int
    teacher: str
    steps: int = STEPS
    group: str = "all"


def stage_overrides(job: Job, recipe: Path, num_labeled: int, stage1: bool = False) -> list[str]:
    """Common settings, seed, teacher, student family and (for CRD) the bank size."""
    import yaml

    overrides = [*common_overrides(job.steps), f"train.seed={job.seed}"]
    raw = yaml.safe_load(recipe.read_text())
    if "teacher" in raw:
        overrides.append(f"teacher.checkpoint={job.teacher}")
    if job.student == "mlp":
        method = METHODS[job.method]
        overrides += ["student.model=mlp", "student.kwargs={}"]
        overrides += method.stage1_mlp_overrides if stage1 else method.mlp_overrides
    if not stage1:
        overrides += METHODS[job.method].overrides
    for index, term in enumerate(raw["terms"]):
        if term["loss"] == "crd":
            rows = num_train_rows(job.setting, num_labeled)
            overrides.append(f"terms.{index}.loss_kwargs.num_samples={rows}")
    return overrides


def train_stage(
    job: Job, recipe_name: str, overrides: list[str], run_dir: Path, extras_from: Path | None
) -> Any:
    """Build ``recipe_name`` with ``overrides`` and train it with :func:`torchkd.train.fit`."""
    from torchkd.config import load_recipe

    return train_recipe(job, load_recipe(RECIPES / recipe_name, overrides), run_dir, extras_from)


def train_recipe(job: Job, recipe: Any, run_dir: Path, extras_from: Path | None = None) -> Any:
    """Build the loaded ``recipe`` and train it on ``job``'s batches with :func:`fit`."""
    from torchkd.config import build_from_recipe
    from torchkd.train import fit
    from torchkd.train.checkpoint import load_checkpoint

    distiller, loaders, config = build_from_recipe(recipe)
    loader = train_loader(job.setting, loaders.train.dataset, job.seed)
    if extras_from is not None:
        # Factor transfer's second stage starts from the paraphraser of the first (the recipe
        # schema cannot load extras weights yet): build, then load the stage-1 extras.
        distiller.build(next(iter(loader)))
        extras = load_checkpoint(extras_from)["extras"]
        own = distiller.extras.state_dict()
        distiller.extras.load_state_dict(
            {k: v for k, v in extras.items() if "paraphraser" in k}
            | {k: v for k, v in own.items() if "paraphraser" not in k}
        )
    return fit(
        distiller,
        loader,
        loaders.val,
        config,
        run_dir,
        test_loader=loaders.test,
        resolved_config=recipe.model_dump(mode="json"),
    )


def train_generations(job: Job, overrides: list[str], run_dir: Path) -> list[tuple[Any, float]]:
    """The born-again chain of ``job``'s recipe (``generations: N``), run by the library's
    :func:`~torchkd.config.generations.fit_generations` with every generation trained by
    :func:`train_recipe` on the runner's batches: generation 1 learns from the cached teacher,
    generation ``g > 1`` is a fresh network of the same architecture (seed
    ``generation_seed(seed, g)``) taught by generation ``g - 1``'s ``best.pt``.

    Returns ``(result, seconds)`` per generation.
    """
    from torchkd.config import load_recipe
    from torchkd.config.generations import fit_generations

    recipe = load_recipe(RECIPES / METHODS[job.method].recipe, overrides)
    trained: list[tuple[Any, float]] = []

    def fit_one(generation: Any, directory: Path, resume: bool) -> Any:
        started = time.perf_counter()
        result = train_recipe(job, generation, directory)
        trained.append((result, time.perf_counter() - started))
        return result

    fit_generations(recipe, run_dir, fit_one, resume=False, report=False)
    return trained


def record(job: Job, result: Any, seconds: float, generation: int = 1) -> dict[str, Any]:
    """The log line of one trained model."""
    return {
        "method": job.method,
        "student": job.student,
        "setting": job.setting,
        "seed": job.seed,
        **({"generation": generation} if METHODS[job.method].generations > 1 else {}),
        "test_top1": result.test_metrics["top1"],
        "val_top1": result.final_metrics.get("top1", float("nan")),
        "nonfinite_steps": result.nonfinite_steps,
        "seconds": seconds,
        "config": config_key(job.steps, job.group),
    }


def run_job(job: Job) -> list[dict[str, Any]]:
    """Train one (method, student, setting, seed); return its records (one per generation)."""
    torch.set_num_threads(1)
    from torchkd.data import load_mnist1d

    method = METHODS[job.method]
    num_labeled = len(load_mnist1d("train"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="torchkd-methods-") as scratch:
        if method.generations > 1:
            overrides = stage_overrides(job, RECIPES / method.recipe, num_labeled)
            overrides.append(f"generations={method.generations}")
            chain = train_generations(job, overrides, Path(scratch))
            return [record(job, *trained, g) for g, trained in enumerate(chain, start=1)]
        student_checkpoint, extras_from = None, None
        if method.stage1 is not None:
            stage1 = stage_overrides(job, RECIPES / method.stage1, num_labeled, stage1=True)
            stage1_epochs = max(1, round(STAGE1_FRACTION * job.steps / BATCHES_PER_EPOCH))
            stage1.append(f"train.epochs={stage1_epochs}")
            result = train_stage(job, method.stage1, stage1, Path(scratch) / "stage1", None)
            if job.method == "factor_transfer":
                extras_from = result.last_checkpoint
            else:
                student_checkpoint = result.last_checkpoint
        overrides = stage_overrides(job, RECIPES / method.recipe, num_labeled)
        if student_checkpoint is not None:
            overrides.append(f"student.checkpoint={student_checkpoint}")
        result = train_stage(job, method.recipe, overrides, Path(scratch) / "run", extras_from)
    return [record(job, result, time.perf_counter() - started)]


def config_key(steps: int, group: str = "all") -> str:
    """Identifies the training recipe of ``group``'s table: runs with another key are not mixed
    into it."""
    methods = [METHODS[name] for name in GROUPS[group]]
    names = {"teacher.yaml"} | {m.recipe for m in methods}
    names |= {m.stage1 for m in methods if m.stage1 is not None}
    paths = [RECIPES / name for name in sorted(names)]
    sizes = (steps, BATCHES_PER_EPOCH, TRANSFER_SAMPLES, TRANSFER_LABELED_PER_BATCH)
    extra = [str(value) for value in (*sizes, STAGE1_FRACTION)]
    extra += [repr(method) for method in methods]
    overridden = [override.split("=", 1)[0] for override in common_overrides(steps)]
    return recipe_hash(paths, [*common_overrides(steps), *extra], ignore=overridden)


def table_path(steps: int, group: str = "all") -> Path:
    suffix = ("" if group == "all" else f"_{group}") + ("" if steps == STEPS else f"_steps{steps}")
    return RESULTS / f"methods_mnist1d{suffix}.md"


# ----------------------------------------------------------------------------------- table


def read_log(key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(runs, invocations)`` of the log that belong to the recipe key ``key``."""
    if not LOG_PATH.exists():
        return [], []
    lines = LOG_PATH.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    current = [record for record in records if record.get("config") == key]
    runs = [record for record in current if record.get("kind", "run") == "run"]
    invocations = [record for record in current if record.get("kind") == "invocation"]
    return runs, invocations


def teacher_test_top1(checkpoint: Path) -> float:
    """Test top-1 (%) of the cached teacher."""
    import yaml

    from torchkd.config import ModelConfig, build_model
    from torchkd.data import load_mnist1d
    from torchkd.train.evaluate import evaluate

    spec = yaml.safe_load((RECIPES / "teacher.yaml").read_text())["student"]
    teacher = build_model(ModelConfig(**spec, checkpoint=str(checkpoint)), "teacher")
    test = DataLoader(load_mnist1d("test"), batch_size=1000)
    return evaluate(teacher, test)["top1"]


def targets(runs: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on the runs in the table."""
    lines = ["", "### Targets", ""]

    def mean(method: str, student: str, setting: str) -> float | None:
        found = [r["test_top1"] for r in _runs(runs, method, student, setting).values()]
        return statistics.mean(found) if found else None

    for student in STUDENTS:
        found = [r["test_top1"] for r in _runs(runs, "baseline", student, "labeled").values()]
        if len(found) > 1:
            spread = statistics.stdev(found)
            verdict = "met" if spread <= 1.5 else "NOT met"
            lines.append(
                f"- {student.upper()} baseline seed std {spread:.2f} points (target ≤ 1.5): "
                f"{verdict}"
            )
    kd, base = mean("kd", "mlp", "transfer"), mean("baseline", "mlp", "labeled")
    if kd is not None and base is not None:
        verdict = "met" if kd - base >= 12 else "NOT met"
        lines.append(
            f"- transfer setting, KD on the MLP: {kd - base:+.1f} points over the baseline "
            f"(target ≥ +12): {verdict}"
        )
    best = []
    for student in STUDENTS:
        base = mean("baseline", student, "labeled")
        gains = [
            (value - base, METHODS[name].label)
            for name in METHODS
            if name != "baseline"
            and base is not None
            and (value := mean(name, student, "labeled")) is not None
        ]
        if gains:
            gain, label = max(gains)
            best.append(gain)
            lines.append(
                f"- labeled setting, {student.upper()}: best method {label}, {gain:+.1f} points"
            )
    if best:
        verdict = "met" if max(best) >= 2 else "NOT met"
        lines.append(f"- best labeled-setting gain ≥ +2 on at least one student: {verdict}")
    return lines


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def _runs(
    records: list[dict[str, Any]], method: str, student: str, setting: str, generation: int = 1
) -> dict:
    if method in BASELINES:
        setting = "labeled"  # the baselines cannot use unlabeled samples
    return {
        r["seed"]: r
        for r in records
        if r["method"] == method
        and r["student"] == student
        and r["setting"] == setting
        and r.get("generation", 1) == generation
    }


def render_table(records: list[dict[str, Any]], header: list[str], group: str = "all") -> str:
    """One table per student x setting: accuracy, gain and paired per-seed differences against
    each row's baseline (a born-again generation is a row of its own)."""
    lines = [*header]
    rows = [
        (name, generation)
        for name in GROUPS[group]
        for generation in range(1, METHODS[name].generations + 1)
    ]
    for student in GROUP_STUDENTS[group]:
        for setting in SETTINGS:
            lines += [
                "",
                f"### {student.upper()} student, {setting} setting",
                "",
                "| method | test top-1 (%) | gain over baseline | paired diff (mean ± std) "
                "| wins | seeds | s / run |",
                "|---|---|---|---|---|---|---|",
            ]
            for name, generation in rows:
                method = METHODS[name]
                label = method.label
                if method.generations > 1:
                    label += f", generation {generation}"
                baseline = _runs(records, method.baseline, student, setting)
                base_mean = (
                    statistics.mean(r["test_top1"] for r in baseline.values()) if baseline else None
                )
                if student == "mlp" and method.teacher_architecture:
                    continue
                if student == "mlp" and method.cnn_only:
                    lines.append(
                        f"| {method.label} | n/a: needs spatial feature maps; the MLP has none "
                        "| | | | | |"
                    )
                    continue
                runs = _runs(records, name, student, setting, generation)
                if not runs:
                    lines.append(f"| {label} | not run | | | | | |")
                    continue
                accuracies = [r["test_top1"] for r in runs.values()]
                seconds = statistics.mean(r["seconds"] for r in runs.values())
                gain, paired, wins = "—", "—", "—"
                if name not in BASELINES and base_mean is not None:
                    gain = f"{statistics.mean(accuracies) - base_mean:+.1f}"
                    common = sorted(set(runs) & set(baseline))
                    diffs = [runs[s]["test_top1"] - baseline[s]["test_top1"] for s in common]
                    if diffs:
                        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                        paired = f"{statistics.mean(diffs):+.1f} ± {spread:.1f}"
                        wins = f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
                    if statistics.mean(accuracies) <= base_mean:
                        gain += " (no gain)"
                elif setting == "transfer" and name in BASELINES:
                    gain = "(labeled runs: CE cannot use unlabeled rows)"
                nonfinite = sum(r["nonfinite_steps"] for r in runs.values())
                note = f" ({nonfinite} skipped non-finite steps)" if nonfinite else ""
                lines.append(
                    f"| {label} | {_mean_std(accuracies)}{note} | {gain} | {paired} "
                    f"| {wins} | {len(runs)} | {seconds:.1f} |"
                )
    methods = [METHODS[name] for name in GROUPS[group]]
    notes = [f"- {m.label}: `{' '.join(m.overrides)}`" for m in methods if m.overrides]
    if notes:
        lines += ["", "Benchmark-only overrides of the recipes:", "", *notes]
    return "\n".join(lines) + "\n"


def environment_lines() -> list[str]:
    details = environment()
    return [
        f"- torch {details['torch']}, Python {details['python']}, {details['cpu']}, "
        f"{details['cores']} cores, device {details['device']}, 1 thread per worker",
    ]


# ----------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--group",
        choices=GROUPS,
        default="all",
        help="which table: all (methods_mnist1d.md) or self (self-distillation, SEED and "
        "born-again: methods_mnist1d_self.md)",
    )
    parser.add_argument("--methods", help="default: every method of --group")
    parser.add_argument("--students", help="default: every student of --group")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per run")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    args.methods = args.methods or ",".join(GROUPS[args.group])
    args.students = args.students or ",".join(GROUP_STUDENTS[args.group])
    choices = (
        ("methods", GROUPS[args.group]),
        ("students", GROUP_STUDENTS[args.group]),
        ("settings", SETTINGS),
    )
    for flag, allowed in choices:
        values = [v for v in getattr(args, flag).split(",") if v]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            parser.error(f"--{flag}: unknown {unknown}; choose from {list(allowed)}")
        setattr(args, flag, values)
    args.seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/methods_mnist1d.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    started = time.perf_counter()
    key = config_key(args.steps, args.group)
    if not args.table_only:
        torch.set_num_threads(1)
        teacher = str(teacher_checkpoint())
        jobs = [
            Job(method, student, setting, seed, teacher, args.steps, args.group)
            for seed in args.seeds
            for setting in args.settings
            for student in args.students
            for method in args.methods
            if not (student == "mlp" and METHODS[method].cnn_only)
            and not (student == "mlp" and METHODS[method].teacher_architecture)
            and not (method in BASELINES and setting == "transfer")
        ]
        RESULTS.mkdir(parents=True, exist_ok=True)
        print(f"{len(jobs)} runs on {args.workers} workers", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for count, future in enumerate(as_completed(futures), start=1):
                for record in future.result():
                    with LOG_PATH.open("a") as stream:
                        stream.write(json.dumps(record) + "\n")
                    generation = f" gen {record['generation']}" if "generation" in record else ""
                    print(
                        f"[{count}/{len(jobs)}] {record['method']}{generation} "
                        f"{record['student']} {record['setting']} seed {record['seed']}: "
                        f"{record['test_top1']:.1f}% ({record['seconds']:.1f} s, "
                        f"{time.perf_counter() - started:.0f} s total)",
                        flush=True,
                    )
        invocation = {
            "kind": "invocation",
            "command": command,
            "seconds": time.perf_counter() - started,
            "runs": len(jobs),
            "teacher_test_top1": teacher_test_top1(Path(teacher)),
            "finished": time.strftime("%Y-%m-%d %H:%M %Z"),
            "config": key,
        }
        with LOG_PATH.open("a") as stream:
            stream.write(json.dumps(invocation) + "\n")
    runs, invocations = read_log(key)
    produced_by = [
        f"- `{record['command']}`: {record['runs']} runs in {record['seconds'] / 60:.1f} min "
        f"wall time (finished {record['finished']}; teacher test top-1 "
        f"{record['teacher_test_top1']:.1f}%)"
        for record in invocations
    ]
    title = {"all": "Distillation methods", "self": "Self-distillation, SEED and born-again"}
    header = [
        f"# {title[args.group]} on MNIST-1D",
        "",
        "Written by `benchmarks/methods_mnist1d.py` (see its docstring for the protocol).",
        "",
        "Produced by (each invocation's exact command and total wall time):",
        "",
        *(produced_by or ["- (no finished invocation logged)"]),
        "",
        *environment_lines(),
        f"- recipe key {key}: {args.steps} Adam steps (lr 0.01, cosine), batch "
        f"{BATCH_SIZE}; transfer setting: {TRANSFER_LABELED_PER_BATCH} labeled + "
        f"{BATCH_SIZE - TRANSFER_LABELED_PER_BATCH} "
        f"unlabeled rows per batch from {TRANSFER_SAMPLES} fresh samples",
        "- test top-1 of the final model on the 1000 MNIST-1D test samples; paired diff = "
        "mean ± std over seeds of (method − baseline) with the same seed; wins = seeds where "
        "the method beats the baseline",
    ]
    if args.group == "self":
        header += SELF_NOTES
    path = table_path(args.steps, args.group)
    goals = targets(runs) if args.group == "all" else []
    path.write_text(render_table(runs, header, args.group) + "\n".join(goals) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
