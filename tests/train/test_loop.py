"""The trainer: exact resume, Ctrl-C, non-finite steps, accumulation, AMP, LR, metrics, logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tolerances import FLOAT64_EPS, float32_tolerance
from torch import Tensor, nn
from torch.utils.data import DataLoader

from torchkd.config import LRScheduleConfig, TrainConfig
from torchkd.data import TensorDictDataset
from torchkd.distiller import Distiller, Term
from torchkd.train import (
    FitResult,
    NonFiniteLossError,
    agreement,
    evaluate,
    expected_calibration_error,
    fit,
    load_checkpoint,
)
from torchkd.train.logging import read_jsonl
from torchkd.train.optim import LRSchedule

NUM_FEATURES, NUM_CLASSES = 8, 3


def make_data(num_samples: int, seed: int) -> TensorDictDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, NUM_FEATURES, generator=generator)
    labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
    return TensorDictDataset(inputs, labels)


def make_loaders(batch_size: int = 8, shuffle: bool = True) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(
        make_data(48, seed=1),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(0),
    )
    return train, DataLoader(make_data(16, seed=2), batch_size=8)


class StepTrigger(nn.Module):
    """A custom "labels" loss: cross-entropy, NaN or a Ctrl-C on chosen training steps."""

    signature = "labels"

    def __init__(self, nan_steps: set[int] = frozenset(), interrupt_step: int | None = None):
        super().__init__()
        self.nan_steps = set(nan_steps)
        self.interrupt_step = interrupt_step
        self.step = 0

    def set_progress(self, step: int, total_steps: int) -> None:
        self.step = step

    def forward(self, student_logits: Tensor, labels: Tensor) -> Tensor:
        if self.training and self.step == self.interrupt_step:
            self.interrupt_step = None
            raise KeyboardInterrupt
        loss = F.cross_entropy(student_logits.float(), labels)
        if self.training and self.step in self.nan_steps:
            return loss * float("nan")
        return loss


def make_distiller(
    *, seed: int = 0, dropout: float = 0.2, trigger: StepTrigger | None = None
) -> Distiller:
    """A dropout MLP student, a teacher of another width, a hint term with a linear adapter."""
    torch.manual_seed(seed)
    student = nn.Sequential(
        nn.Linear(NUM_FEATURES, 6), nn.ReLU(), nn.Dropout(dropout), nn.Linear(6, NUM_CLASSES)
    )
    torch.manual_seed(100)
    teacher = nn.Sequential(nn.Linear(NUM_FEATURES, 10), nn.ReLU(), nn.Linear(10, NUM_CLASSES))
    terms = [
        Term("ce", trigger or StepTrigger()),
        Term("dist", "dist", weight=0.5),
        Term("hint", "hint", student="1", teacher="1", adapter="linear", weight=0.1),
    ]
    return Distiller(student, teacher, terms)


def make_config(**overrides: object) -> TrainConfig:
    settings = {
        "epochs": 2,
        "optimizer": {"name": "adamw", "lr": 0.01},
        "lr_schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "grad_clip_norm": 5.0,
        "device": "cpu",
        "seed": 3,
        "log_every_steps": 2,
        "progress": False,
    }
    return TrainConfig.model_validate({**settings, **overrides})


def run(distiller: Distiller, run_dir: Path, config: TrainConfig, **kwargs: object) -> FitResult:
    train, val = make_loaders(**kwargs.pop("loader_kwargs", {}))
    return fit(distiller, train, val, config, run_dir, **kwargs)


def trained_state(distiller: Distiller) -> dict[str, Tensor]:
    state = {f"student.{k}": v for k, v in distiller.student.state_dict().items()}
    state.update({f"extras.{k}": v for k, v in distiller.extras.state_dict().items()})
    return state


def assert_bit_identical(left: dict[str, Tensor], right: dict[str, Tensor]) -> None:
    assert left.keys() == right.keys()
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"tensors differ: {different}"


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(
    ("interrupt_step", "accum"),
    [(6, 1), (4, 2)],  # 6 batches/epoch: at the epoch boundary; 3 steps/epoch: inside epoch 2
    ids=["epoch-boundary", "mid-epoch-accumulating"],
)
def test_resume_is_bit_identical(tmp_path: Path, interrupt_step: int, accum: int) -> None:
    config = make_config(grad_accum_steps=accum)
    straight = make_distiller()
    run(straight, tmp_path / "straight", config)

    interrupted = make_distiller(trigger=StepTrigger(interrupt_step=interrupt_step))
    with pytest.raises(KeyboardInterrupt):
        run(interrupted, tmp_path / "resumed", config)
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert saved["progress"]["step"] == interrupt_step

    fresh = make_distiller(seed=123)  # different initial weights: everything must come from disk
    result = run(fresh, tmp_path / "resumed", config, resume=True)

    assert_bit_identical(trained_state(straight), trained_state(fresh))
    assert [record["epoch"] for record in result.history] == [1, 2]
    epochs_logged = [r["epoch"] for r in read_jsonl(result.metrics_path) if r["kind"] == "epoch"]
    assert epochs_logged == [1, 2]
    steps_logged = [r["step"] for r in read_jsonl(result.metrics_path) if r["kind"] == "step"]
    assert steps_logged == sorted(set(steps_logged))  # no duplicates after the resume


def test_dropout_makes_the_resume_test_meaningful(tmp_path: Path) -> None:
    """Two runs with different seeds differ, so bit-identity above is not vacuous."""
    first, second = make_distiller(), make_distiller()
    run(first, tmp_path / "a", make_config(epochs=1))
    run(second, tmp_path / "b", make_config(epochs=1, seed=4))
    assert not torch.equal(first.student[0].weight, second.student[0].weight)


def test_keyboard_interrupt_saves_checkpoint_and_reraises(tmp_path: Path) -> None:
    distiller = make_distiller(trigger=StepTrigger(interrupt_step=3))
    with pytest.raises(KeyboardInterrupt):
        run(distiller, tmp_path / "run", make_config())
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["progress"]["step"] == 3
    assert checkpoint["progress"]["batches_done"] == 3
    assert checkpoint["progress"]["epoch"] == 0
    assert_bit_identical(
        {k: v for k, v in checkpoint["student"].items()}, distiller.student.state_dict()
    )


def test_refuses_to_overwrite_without_resume(tmp_path: Path) -> None:
    run(make_distiller(), tmp_path / "run", make_config(epochs=1))
    with pytest.raises(FileExistsError, match="resume=True"):
        run(make_distiller(), tmp_path / "run", make_config(epochs=1))


# ------------------------------------------------------------------------- non-finite steps


def test_nonfinite_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    distiller = make_distiller(trigger=StepTrigger(nan_steps={2, 3}))
    result = run(distiller, tmp_path / "run", make_config())
    assert result.nonfinite_steps == 2
    assert all(torch.isfinite(p).all() for p in distiller.student.parameters())
    assert result.history[-1]["nonfinite_steps"] == 2


def test_skipped_steps_do_not_update(tmp_path: Path) -> None:
    distiller = make_distiller(trigger=StepTrigger(nan_steps=set(range(6))))
    before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    result = run(distiller, tmp_path / "run", make_config(epochs=1, max_consecutive_nonfinite=10))
    assert result.nonfinite_steps == 6
    assert_bit_identical(before, distiller.student.state_dict())


def test_consecutive_nonfinite_steps_stop_naming_the_term(tmp_path: Path) -> None:
    distiller = make_distiller(trigger=StepTrigger(nan_steps=set(range(1, 12))))
    config = make_config(max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match="'ce'") as caught:
        run(distiller, tmp_path / "run", config)
    assert caught.value.terms == ["ce"]
    assert caught.value.step == 3  # steps 1, 2, 3 were skipped
    assert "dist" not in str(caught.value)


# ------------------------------------------------------------------ accumulation, AMP, device


def _linear_sgd_run(run_dir: Path, batch_size: int, accum: int) -> tuple[Tensor, Tensor]:
    """Six SGD steps of a float64 linear softmax regression on 48 samples; returns its
    parameters and the inputs with a bias column ``x̃``."""
    torch.manual_seed(0)
    student = nn.Linear(NUM_FEATURES, NUM_CLASSES).double()
    distiller = Distiller(student, None, [Term("ce", "ce")])
    config = make_config(
        epochs=1,
        optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.0},
        lr_schedule={"name": "constant"},
        grad_clip_norm=None,
        grad_accum_steps=accum,
    )
    data = make_data(48, seed=1)
    inputs = data.inputs.double()
    train = DataLoader(TensorDictDataset(inputs, data.labels), batch_size=batch_size)
    fit(distiller, train, DataLoader(train.dataset, batch_size=8), config, run_dir)
    parameters = torch.cat([p.detach().flatten() for p in distiller.student.parameters()])
    return parameters, torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)


def test_grad_accumulation_matches_a_larger_batch(tmp_path: Path) -> None:
    """Accumulating two micro-batches of 4 is one batch of 8, up to float64 rounding: the
    same sums in another order, so the bound holds on any CPU and a 1e-3 error shows."""
    accumulated, inputs = _linear_sgd_run(tmp_path / "accum", batch_size=4, accum=2)
    large_batch, _ = _linear_sgd_run(tmp_path / "large", batch_size=8, accum=1)
    small_steps, _ = _linear_sgd_run(tmp_path / "small", batch_size=4, accum=1)
    lr, steps, size = 0.5, 6, float(inputs.abs().max())
    # |θ| ≤ the init's 1/√8 + steps × lr × |∇| (|∇| ≤ max|x̃|: a mean of (p − y) x̃), so |z| ≤
    weight_size = 1 / math.sqrt(NUM_FEATURES) + steps * lr * size
    logit_size = float(inputs.abs().sum(1).max()) * weight_size
    # per step, a parameter's error: lr x (the batch's 8 terms (p − y) x̃, the 3-class softmax
    # of 9-term logits, /B, /accum, +=, ·lr, −) roundings of terms ≤ max|x̃| (1 + max|z|)
    step_error = lr * float32_tolerance(8 + 3 + 9 + 5, size * (1 + logit_size), FLOAT64_EPS)
    # errors grow by at most 1 + lr L per step, L = ½ max ‖x̃‖² ≥ ‖∇²CE‖ (softmax Jacobian ≤ ½)
    growth = (1 + lr * 0.5 * float(inputs.square().sum(1).max())) ** steps
    atol = 2 * steps * growth * step_error  # both runs' errors, summed over the steps
    assert atol < 1e-6  # far below the 1e-3 differences the check has to catch
    torch.testing.assert_close(accumulated, large_batch, rtol=0, atol=atol)
    assert not torch.allclose(small_steps, large_batch, atol=1e-3)  # the check can fail


def test_bf16_autocast_runs_on_cpu(tmp_path: Path) -> None:
    distiller = make_distiller(dropout=0.0)
    seen_dtypes: list[torch.dtype] = []
    distiller.student[3].register_forward_hook(lambda m, i, out: seen_dtypes.append(out.dtype))
    before = distiller.student[3].weight.detach().clone()
    result = run(distiller, tmp_path / "run", make_config(epochs=1, amp="bf16"))
    assert torch.bfloat16 in seen_dtypes
    assert math.isfinite(result.history[-1]["train"]["loss"])
    assert not torch.equal(before, distiller.student[3].weight)
    assert distiller.student[3].weight.dtype == torch.float32  # master weights stay fp32


def test_fp16_loss_scaling_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GradScaler path, run on CPU (this machine has no CUDA) with a CPU scaler whose
    large initial scale forces overflows: they skip updates without counting as non-finite."""
    import torchkd.train.loop as loop

    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(loop, "check_amp", lambda amp, device: None)
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: real_scaler("cpu", 2.0**20))
    distiller = make_distiller(dropout=0.0)
    result = run(distiller, tmp_path / "run", make_config(amp="fp16"))
    scale = load_checkpoint(result.last_checkpoint)["scaler"]["scale"]
    overflows = round(math.log2(2.0**20 / scale))
    assert 1 <= overflows < 12  # some of the 12 steps overflowed, not all
    assert result.nonfinite_steps == 0
    assert math.isfinite(result.history[-1]["train"]["grad_norm"])
    steps = [r for r in read_jsonl(result.metrics_path) if r["kind"] == "step"]
    assert steps[-1]["loss_scale"] == scale
    assert all(torch.isfinite(p).all() for p in distiller.trainable_parameters())


def test_fp16_on_cpu_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"amp='fp16' needs a CUDA device.*bf16"):
        run(make_distiller(), tmp_path / "run", make_config(amp="fp16"))


# -------------------------------------------------------------------------------- LR schedule


def _schedule(name: str, steps_per_epoch: int, epochs: int, **kwargs: object) -> LRSchedule:
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    config = LRScheduleConfig.model_validate({"name": name, **kwargs})
    return LRSchedule(optimizer, config, steps_per_epoch, steps_per_epoch * epochs)


def test_warmup_then_cosine_learning_rates() -> None:
    schedule = _schedule("cosine", steps_per_epoch=4, epochs=3, warmup_epochs=1, min_lr=0.01)
    rates = [schedule.apply(step) for step in range(12)]
    expected = [0.1 * (step + 1) / 4 for step in range(4)]
    expected += [
        0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * (step - 4) / 8)) for step in range(4, 12)
    ]
    assert rates == pytest.approx(expected, abs=1e-12)
    assert rates[3] == pytest.approx(0.1) and rates[-1] > 0.01


def test_step_decay_and_constant_learning_rates() -> None:
    step_decay = _schedule("step", steps_per_epoch=2, epochs=4, milestones=[1, 3], gamma=0.5)
    assert [step_decay.apply(s) for s in range(8)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025]
    )
    constant = _schedule("constant", steps_per_epoch=2, epochs=2)
    assert [constant.apply(s) for s in range(4)] == pytest.approx([0.1] * 4)


# -------------------------------------------------------------------------------- metrics


def test_expected_calibration_error_by_hand() -> None:
    probabilities = torch.tensor(
        [[0.95, 0.05], [0.85, 0.15], [0.40, 0.60], [0.30, 0.70], [0.55, 0.45]]
    )
    labels = torch.tensor([0, 1, 1, 0, 0])
    # 2 bins: (0, .5] holds nothing; (.5, 1] holds all 5: accuracy 3/5, mean confidence
    # (.95 + .85 + .6 + .7 + .55) / 5 = .73 -> ECE = |.6 - .73| = .13
    two_bins = expected_calibration_error(probabilities.log(), labels, num_bins=2)
    assert two_bins == pytest.approx(0.13)
    # 15 bins: a brute-force loop over bins (lower-exclusive, upper-inclusive edges)
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).float()
    expected = 0.0
    for b in range(15):
        inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
        if inside.any():
            gap = (correct[inside].mean() - confidence[inside].mean()).abs()
            expected += inside.float().mean().item() * gap.item()
    assert expected_calibration_error(probabilities.log(), labels) == pytest.approx(expected)


def test_agreement_counts_same_argmax() -> None:
    student = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    assert agreement(student, teacher) == 50.0
    with pytest.raises(ValueError, match="same shape"):
        agreement(student, teacher[:, :2])


def _float64_nll(student: nn.Sequential, inputs: Tensor, labels: Tensor) -> tuple[float, float]:
    """The mean NLL of the float32 MLP ``Linear, ReLU, Dropout, Linear`` (eval mode) computed in
    float64 on the same weights and inputs, and the error bound of a float32 computation.

    Each layer ``y = W x + b`` of ``n`` inputs is off by ``≤ (n + 1) ε (|W| |x| + |b|)`` from
    its own rounding plus ``|W| δx`` carried from ``x``; ``log_softmax(z)_y = z_y − lse(z)`` by
    ``2 max δz`` carried plus ``ε (2 max|z| + log V + V + 2)`` of its own; the mean over ``N``
    samples (in any order and grouping, the division) adds ``(N + 2) ε mean``.
    """
    first, second = ([t.detach().double() for t in student[i].parameters()] for i in (0, 3))
    x = inputs.double()
    hidden = torch.relu(F.linear(x, *first))
    logits = F.linear(hidden, *second)
    nll = float(-logits.log_softmax(-1).gather(1, labels[:, None]).mean())
    rows, classes = logits.shape
    error = float32_tolerance(x.shape[1] + 1, 1.0) * (x.abs() @ first[0].abs().T + first[1].abs())
    error = error @ second[0].abs().T + float32_tolerance(hidden.shape[1] + 1, 1.0) * (
        hidden.abs() @ second[0].abs().T + second[1].abs()
    )
    log_softmax = float32_tolerance(
        2 * float(logits.abs().max()) + math.log(classes) + classes + 2, 1.0
    )
    per_sample = 2 * float(error.max()) + log_softmax
    return nll, per_sample + float32_tolerance(rows + 2, nll)


def test_evaluate_distiller_against_brute_force() -> None:
    distiller = make_distiller(dropout=0.5)
    distiller.build(next(iter(make_loaders()[0])))
    distiller.train()
    _, val = make_loaders()
    metrics = evaluate(distiller, val, with_terms=True)
    assert distiller.training  # mode restored
    inputs = torch.cat([b["inputs"] for b in val])
    labels = torch.cat([b["labels"] for b in val])
    with torch.no_grad():
        distiller.eval()
        student_logits = distiller.student(inputs)
        teacher_logits = distiller.teachers[0](inputs)
    correct = sum(int(student_logits[i].argmax() == labels[i]) for i in range(len(labels)))
    same = sum(
        int(student_logits[i].argmax() == teacher_logits[i].argmax()) for i in range(len(labels))
    )
    teacher_correct = sum(int(teacher_logits[i].argmax() == labels[i]) for i in range(len(labels)))
    nll, tolerance = _float64_nll(distiller.student, inputs, labels)
    assert metrics["top1"] == 100 * correct / len(labels)
    assert metrics["agreement"] == 100 * same / len(labels)
    assert metrics["teacher_top1"] == 100 * teacher_correct / len(labels)
    assert metrics["nll"] == pytest.approx(nll, rel=0, abs=tolerance)
    assert set(metrics) >= {"terms/ce", "terms/dist", "terms/hint", "loss", "ece"}


def test_evaluate_plain_model_has_no_teacher_metrics() -> None:
    model = nn.Linear(NUM_FEATURES, NUM_CLASSES)
    metrics = evaluate(model, make_loaders()[1])
    assert set(metrics) == {"samples", "top1", "nll", "ece"}
    assert metrics["samples"] == 16


# --------------------------------------------------------------------------------- logging


def test_jsonl_and_tensorboard_hold_the_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(make_distiller(), tmp_path / "run", make_config())
    records = read_jsonl(result.metrics_path)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10, 12]
    assert set(steps[0]["terms"]) == {"ce", "dist", "hint"}
    assert steps[0]["weights"] == {"ce": 1.0, "dist": 0.5, "hint": 0.1}
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert 0.0 <= epochs[-1]["val"]["top1"] <= 100.0
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/terms/ce", "weights/dist", "val/top1"} <= tags
    val_top1 = [event.value for event in events.Scalars("val/top1")]
    assert val_top1 == pytest.approx([r["val"]["top1"] for r in epochs])
    # the recipe file and the report belong to fit_recipe, which owns the recipe
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert not (tmp_path / "run" / "report.md").exists()


def test_checkpoints_written_as_configured(tmp_path: Path) -> None:
    config = make_config(epochs=3, keep_teacher_checkpoints_every=2, checkpoint_every_epochs=2)
    result = run(make_distiller(), tmp_path / "run", config)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_002.pt", "last.pt"]
    assert load_checkpoint(result.last_checkpoint)["progress"]["epoch"] == 3
    best = load_checkpoint(result.best_checkpoint)
    assert best["progress"]["best_epoch"] == result.best_epoch
    assert result.best_metrics["top1"] == max(r["val"]["top1"] for r in result.history)


def test_evaluate_reports_each_teacher_and_the_ensemble() -> None:
    torch.manual_seed(0)
    teachers = [nn.Linear(NUM_FEATURES, NUM_CLASSES) for _ in range(2)]
    distiller = Distiller(nn.Linear(NUM_FEATURES, NUM_CLASSES), teachers, [Term("dist", "dist")])
    _, val = make_loaders()
    metrics = evaluate(distiller, val)
    inputs = torch.cat([b["inputs"] for b in val])
    labels = torch.cat([b["labels"] for b in val])
    with torch.no_grad():
        student = distiller.student(inputs)
        probabilities = [teacher(inputs).softmax(-1) for teacher in distiller.teachers]
    ensemble = (probabilities[0] + probabilities[1]) / 2
    for index in range(2):
        correct = (probabilities[index].argmax(-1) == labels).float().mean().item()
        assert metrics[f"teacher{index}_top1"] == pytest.approx(100 * correct)
    assert metrics["teacher_top1"] == pytest.approx(
        100 * (ensemble.argmax(-1) == labels).float().mean().item()
    )
    assert metrics["agreement"] == pytest.approx(
        100 * (student.argmax(-1) == ensemble.argmax(-1)).float().mean().item()
    )


def test_fit_accepts_the_tuples_a_tensor_dataset_yields(tmp_path: Path) -> None:
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    distiller = Distiller(nn.Linear(4, 3), nn.Linear(4, 3), [Term("kd", "hinton")])
    config = TrainConfig(epochs=2, progress=False, device="cpu")
    result = fit(
        distiller, DataLoader(data, 16, shuffle=True), DataLoader(data, 32), config, tmp_path
    )
    assert len(result.history) == 2 and 0.0 <= result.final_metrics["top1"] <= 100.0
    with pytest.raises(
        TypeError, match=r"or an \(inputs, labels\) tuple, got a tuple of 3 entries"
    ):
        distiller((torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1])))
