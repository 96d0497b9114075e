"""Search for a MNIST-1D distillation recipe that fits the ``torchkd demo`` budget.

Plain PyTorch loops (the library's engine and losses are not used, so this script measures the
recipe, not the library). One teacher (a wide :class:`~torchkd.models.CNN1D`, trained once per
teacher setting and cached) distils into a student trained in three arms, each over several
seeds:

- ``baseline``: cross-entropy on the labeled training split only;
- ``kd``: Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network") on the same
  labeled split, :math:`\\alpha T^2 \\mathrm{KL}(p_t^T \\| p_s^T) + (1 - \\alpha)\\mathrm{CE}`;
- ``transfer``: label-free KD, :math:`T^2 \\mathrm{KL}(p_t^T \\| p_s^T)` on fresh unlabeled
  MNIST-1D samples (:func:`torchkd.data.mnist1d_transfer_set`).

Augmentation (``--augment``) is applied identically in every arm; when it is on, the teacher
labels the augmented inputs online (the "consistent teaching" of Beyer et al. 2022, "Knowledge
distillation: A good teacher is patient and consistent"). Mixup (Zhang et al. 2018) mixes pairs
within a batch; the baseline then trains on the mixed one-hot labels.

Every run appends one JSON line to ``benchmarks/results/demo_recipe_search.jsonl``;
``--table`` renders all logged runs into ``benchmarks/results/demo_recipe_search.md``.

Usage::

    .venv/bin/python benchmarks/demo_recipe_search.py --name mlp-baseline --student mlp
    .venv/bin/python benchmarks/demo_recipe_search.py --table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from torchkd.data import cache_dir, load_mnist1d, mnist1d_transfer_set
from torchkd.data.base import cache_key
from torchkd.models import create_model

RESULTS = Path(__file__).parent / "results"
LOG_PATH = RESULTS / "demo_recipe_search.jsonl"
TABLE_PATH = RESULTS / "demo_recipe_search.md"
ARMS = ("baseline", "kd", "transfer")


@dataclass
class Recipe:
    """Every hyperparameter of one searched configuration."""

    name: str = "unnamed"
    note: str = ""
    # teacher
    teacher_width: int = 64
    teacher_steps: int = 3000
    teacher_lr: float = 1e-2
    teacher_batch: int = 128
    teacher_seed: int = 0
    teacher_augment: str = "none"  # same choices as ``augment``
    # student
    student: str = "mlp"
    student_width: int = 256
    steps: int = 3000
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | cosine
    # distillation
    temperature: float = 4.0
    alpha: float = 0.9
    augment: str = "none"  # none | shift | mixup | shift_mixup | noise
    shift: int = 4
    mixup_alpha: float = 1.0
    noise_std: float = 0.1
    transfer_samples: int = 25_000
    transfer_seed: int = 1
    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1
    val_fraction: float = 0.1

    def augment_for_teacher(self) -> Recipe:
        """This recipe with ``augment`` replaced by ``teacher_augment``."""
        return dataclasses.replace(self, augment=self.teacher_augment)


def build_student(recipe: Recipe) -> nn.Module:
    if recipe.student == "mlp":
        return create_model("mlp", hidden=(recipe.student_width,))
    if recipe.student == "mlp2":
        return create_model("mlp", hidden=(recipe.student_width, recipe.student_width))
    if recipe.student == "cnn1d":
        return create_model("cnn1d", width=recipe.student_width)
    raise ValueError(f"unknown student {recipe.student!r} (mlp, mlp2, cnn1d)")


def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(inputs).argmax(-1) == labels).float().mean().item()
    model.train()
    return 100.0 * correct


def train_teacher(recipe: Recipe, inputs: Tensor, labels: Tensor) -> tuple[nn.Module, float]:
    """Train (or load from the cache) the CNN teacher; returns it and its training seconds."""
    settings = {
        key: getattr(recipe, key)
        for key in ("teacher_width", "teacher_steps", "teacher_lr", "teacher_batch")
    }
    settings.update(seed=recipe.teacher_seed, val_fraction=recipe.val_fraction)
    if recipe.teacher_augment != "none":
        settings.update(
            augment=recipe.teacher_augment,
            shift=recipe.shift,
            mixup_alpha=recipe.mixup_alpha,
            noise_std=recipe.noise_std,
        )
    path = cache_dir() / "demo_recipe_search" / f"teacher-{cache_key(settings)}.safetensors"
    torch.manual_seed(recipe.teacher_seed)
    teacher = create_model("cnn1d", width=recipe.teacher_width)
    seconds = 0.0
    if path.exists():
        teacher.load_state_dict(load_file(path))
    else:
        start = time.perf_counter()
        optimizer = torch.optim.Adam(teacher.parameters(), lr=recipe.teacher_lr)
        one_hot = F.one_hot(labels, 10).float()
        generator = torch.Generator().manual_seed(recipe.teacher_seed)
        for _ in range(recipe.teacher_steps):
            rows = torch.randint(0, len(labels), (recipe.teacher_batch,), generator=generator)
            batch_inputs, targets = augment_batch(
                recipe.augment_for_teacher(), inputs[rows], one_hot[rows], generator
            )
            loss = soft_cross_entropy(teacher(batch_inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(teacher.state_dict(), str(path))
    return teacher.eval().requires_grad_(False), seconds


def augment_batch(
    recipe: Recipe, inputs: Tensor, targets: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Augment ``inputs`` ``[B, 1, L]`` and mix their one-hot ``targets`` ``[B, C]`` alike."""
    if "shift" in recipe.augment:
        offsets = torch.randint(
            -recipe.shift, recipe.shift + 1, (len(inputs),), generator=generator
        )
        positions = (torch.arange(inputs.shape[-1]) - offsets[:, None]) % inputs.shape[-1]
        inputs = inputs.gather(-1, positions[:, None, :])
    if recipe.augment == "noise":
        noise = torch.randn(inputs.shape, generator=generator)
        inputs = inputs + recipe.noise_std * noise
    if "mixup" in recipe.augment:
        beta = torch.distributions.Beta(recipe.mixup_alpha, recipe.mixup_alpha)
        weights = beta.sample((len(inputs),))
        weights = torch.maximum(weights, 1 - weights)
        partners = torch.randperm(len(inputs), generator=generator)
        inputs = weights[:, None, None] * inputs + (1 - weights[:, None, None]) * inputs[partners]
        targets = weights[:, None] * targets + (1 - weights[:, None]) * targets[partners]
    return inputs, targets


def kd_term(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    divergence = F.kl_div(
        student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True
    )
    return temperature**2 * divergence


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def train_student(
    recipe: Recipe,
    arm: str,
    seed: int,
    teacher: nn.Module,
    data: dict[str, Tensor],
) -> dict[str, float]:
    torch.manual_seed(seed)
    student = build_student(recipe)
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    labeled = arm != "transfer"
    pool = data["train_x"] if labeled else data["transfer_x"]
    one_hot = F.one_hot(data["train_y"], 10).float()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(recipe.steps):
        progress = step / recipe.steps
        if recipe.lr_schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * recipe.lr * (1 + math.cos(math.pi * progress))
        rows = torch.randint(0, len(pool), (recipe.batch_size,), generator=generator)
        targets = one_hot[rows] if labeled else torch.zeros(recipe.batch_size, 10)
        inputs, targets = augment_batch(recipe, pool[rows], targets, generator)
        student_logits = student(inputs)
        if arm == "baseline":
            loss = soft_cross_entropy(student_logits, targets)
        else:
            if recipe.augment == "none":  # the teacher's outputs on the fixed pool, precomputed
                teacher_logits = data["train_t" if labeled else "transfer_t"][rows]
            else:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
            soft = kd_term(student_logits, teacher_logits, recipe.temperature)
            if arm == "transfer":
                loss = soft
            else:
                hard = soft_cross_entropy(student_logits, targets)
                loss = recipe.alpha * soft + (1 - recipe.alpha) * hard
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "test": accuracy(student, data["test_x"], data["test_y"]),
        "val": accuracy(student, data["val_x"], data["val_y"]),
        "train": accuracy(student, data["train_x"], data["train_y"]),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def run(recipe: Recipe) -> dict[str, object]:
    torch.set_num_threads(recipe.threads)
    train = load_mnist1d("train", val_fraction=recipe.val_fraction)
    val = load_mnist1d("val", val_fraction=recipe.val_fraction)
    test = load_mnist1d("test")
    data = {
        "train_x": train.inputs,
        "train_y": train.labels,
        "val_x": val.inputs,
        "val_y": val.labels,
        "test_x": test.inputs,
        "test_y": test.labels,
    }
    if "transfer" in recipe.arms:
        transfer = mnist1d_transfer_set(recipe.transfer_samples, seed=recipe.transfer_seed)
        data["transfer_x"] = transfer.inputs
    teacher, teacher_seconds = train_teacher(recipe, data["train_x"], data["train_y"])
    with torch.no_grad():
        data["train_t"] = teacher(data["train_x"])
        if "transfer_x" in data:
            data["transfer_t"] = teacher(data["transfer_x"])
    result: dict[str, object] = {
        "recipe": dataclasses.asdict(recipe),
        "teacher_test": accuracy(teacher, data["test_x"], data["test_y"]),
        "teacher_val": accuracy(teacher, data["val_x"], data["val_y"]),
        "teacher_seconds": teacher_seconds,
        "arms": {},
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    for arm in recipe.arms:
        runs = [train_student(recipe, arm, seed, teacher, data) for seed in recipe.seeds]
        result["arms"][arm] = runs  # type: ignore[index]
        tests = [r["test"] for r in runs]
        print(
            f"{recipe.name:>28} {arm:>9}: test {statistics.mean(tests):5.1f} ± "
            f"{statistics.stdev(tests):4.1f}  ({', '.join(f'{t:.1f}' for t in tests)})  "
            f"{statistics.mean(r['seconds'] for r in runs):5.1f}s/run",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    with LOG_PATH.open("a") as stream:
        stream.write(json.dumps(result) + "\n")
    return result


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


# Settings that change the baseline arm (it never sees the teacher or the KD settings).
BASELINE_KEYS = (
    "student",
    "student_width",
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "lr_schedule",
    "augment",
    "shift",
    "mixup_alpha",
    "noise_std",
    "seeds",
    "val_fraction",
)


def render_table() -> None:
    """Rewrite the markdown table from every logged run (header text is kept above a marker)."""
    marker = "<!-- runs table: generated by demo_recipe_search.py --table -->"
    head = TABLE_PATH.read_text().split(marker)[0] if TABLE_PATH.exists() else ""
    defaults = dataclasses.asdict(Recipe())
    lines = [
        marker,
        "",
        "| # | name | changed settings (vs. defaults) | teacher test | baseline | kd | transfer "
        "| kd − baseline | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = [json.loads(line) for line in LOG_PATH.read_text().splitlines()]
    baselines = {
        json.dumps([result["recipe"][key] for key in BASELINE_KEYS]): result["arms"]["baseline"]
        for result in results
        if "baseline" in result["arms"]
    }
    for number, result in enumerate(results, start=1):
        recipe = result["recipe"]
        changed = {
            key: value
            for key, value in recipe.items()
            if key in defaults
            and key not in ("name", "note", "arms")
            and value != defaults[key]
            and not (isinstance(value, list) and tuple(value) == defaults[key])
        }
        arms = dict(result["arms"])
        baseline_key = json.dumps([recipe[key] for key in BASELINE_KEYS])
        shared = "baseline" not in arms and baseline_key in baselines
        if shared:
            arms["baseline"] = baselines[baseline_key]
        cells = [_mean_std([r["test"] for r in arms[arm]]) if arm in arms else "–" for arm in ARMS]
        gain = "–"
        if "kd" in arms and "baseline" in arms:
            diffs = [
                k["test"] - b["test"] for k, b in zip(arms["kd"], arms["baseline"], strict=True)
            ]
            gain = _mean_std(diffs)
        if shared:
            cells[0] += " (shared)"
        seconds = [r["seconds"] for runs in result["arms"].values() for r in runs]
        settings = ", ".join(f"{key}={value}" for key, value in changed.items())
        note = f" — {recipe['note']}" if recipe["note"] else ""
        lines.append(
            f"| {number} | {recipe['name']} | {settings}{note} | {result['teacher_test']:.1f} | "
            f"{' | '.join(cells)} | {gain} | {statistics.mean(seconds):.1f} |"
        )
    TABLE_PATH.write_text(head + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="render the markdown table and exit")
    for recipe_field in dataclasses.fields(Recipe):
        default = getattr(Recipe(), recipe_field.name)
        if isinstance(default, tuple):
            kind = str if recipe_field.name == "arms" else int
            parser.add_argument(f"--{recipe_field.name}", type=kind, nargs="+", default=default)
        else:
            parser.add_argument(f"--{recipe_field.name}", type=type(default), default=default)
    args = vars(parser.parse_args())
    if args.pop("table"):
        render_table()
        return
    run(Recipe(**{key: tuple(v) if isinstance(v, list) else v for key, v in args.items()}))


if __name__ == "__main__":
    main()
