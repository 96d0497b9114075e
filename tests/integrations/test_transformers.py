"""DistillationTrainer: a transformers.Trainer whose loss is a torchkd Distiller (tiny Llamas
built from configs, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers.Trainer needs it (transformers[torch])

from torchkd import Term  # noqa: E402
from torchkd.integrations.transformers import (  # noqa: E402
    EXTRAS_FILE,
    DistillationTrainer,
    default_terms,
    distillation_batch,
)
from torchkd.lm.on_policy import OnPolicy  # noqa: E402
from torchkd.losses import TopKLogits  # noqa: E402

VOCAB = 24
LENGTH = 12
# valid tokens per sequence: uneven, so micro-batches of 2 hold 15, 7, 18 and 4 tokens
LENGTHS = (3, 12, 5, 2, 9, 9, 3, 1)


def llama(width: int, layers: int, seed: int, dtype: torch.dtype = torch.float64):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).to(dtype)


def samples(lengths: tuple[int, ...] = LENGTHS, seed: int = 0) -> list[dict[str, Tensor]]:
    """Right-padded sequences with HF (unshifted) labels: -100 at the padding."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        ids = torch.zeros(LENGTH, dtype=torch.long)
        ids[:length] = torch.randint(1, VOCAB, (length,), generator=generator)
        mask = (torch.arange(LENGTH) < length).long()
        rows.append(
            {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        )
    return rows


def arguments(directory: Path, **overrides) -> transformers.TrainingArguments:
    settings = {
        "output_dir": str(directory),
        "report_to": [],
        "use_cpu": True,
        "per_device_train_batch_size": 2,
        "max_steps": 1,
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **overrides,
    }
    return transformers.TrainingArguments(**settings)


def gradient_arguments(directory: Path, **overrides) -> transformers.TrainingArguments:
    """Arguments for reading gradients: the parameters never move (SGD, learning rate 0) and
    the gradients are not clipped."""
    return arguments(directory, learning_rate=0.0, optim="sgd", max_grad_norm=0.0, **overrides)


class GradientCapture(transformers.TrainerCallback):
    """The accumulated gradients just before each optimizer step."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        self.parameters = parameters
        self.gradients: list[dict[str, Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.gradients.append({n: p.grad.detach().clone() for n, p in self.parameters.items()})


class ModeRecorder(transformers.TrainerCallback):
    """(student.training, teacher.training) at the end of every step."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        self.student, self.teacher = student, teacher
        self.seen: set[tuple[bool, bool]] = set()

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.add((self.student.training, self.teacher.training))


def dense_forward_kl(student, teacher, rows: list[dict[str, Tensor]]) -> Tensor:
    """Reference: one batch of all rows, full logits, forward KL(q || p) per predicted token
    (hidden state t against token t + 1 of the same sequence), mean over those tokens."""
    ids = torch.stack([row["input_ids"] for row in rows])
    mask = torch.stack([row["attention_mask"] for row in rows])
    log_p = torch.log_softmax(student(input_ids=ids, attention_mask=mask).logits, -1)
    with torch.no_grad():
        log_q = torch.log_softmax(teacher(input_ids=ids, attention_mask=mask).logits, -1)
    per_token = (log_q.exp() * (log_q - log_p)).sum(-1)[:, :-1]
    predicted = (mask[:, :-1] * mask[:, 1:]).bool()
    return per_token[predicted].sum() / predicted.sum()


def as_trainer(trainer: DistillationTrainer, behaviour: str) -> DistillationTrainer:
    """``trainer`` with the loss-division rule of a transformers 5.x release. From 5.20,
    ``training_step`` reads ``loss_is_scaled_for_ga`` when it is not None; when it is None (and
    in every 5.0-5.18 release, which have no such attribute: read from their wheels), it skips
    the division by G exactly when ``model_accepts_loss_kwargs and num_items_in_batch is not
    None`` (or a ``compute_loss_func`` is set). Setting it to None on the instance therefore
    runs the installed Trainer with the 5.0-5.18 rule."""
    if behaviour == "5.0-5.18":
        trainer.loss_is_scaled_for_ga = None
    return trainer


TRAINER_BEHAVIOURS = ("5.20+", "5.0-5.18")


@pytest.mark.parametrize("behaviour", TRAINER_BEHAVIOURS)
def test_accumulated_gradients_equal_one_batch(tmp_path: Path, behaviour: str) -> None:
    """gradient_accumulation_steps=4 over micro-batches of 15, 7, 18 and 4 valid tokens gives
    the gradient and the logged loss of the one batch of all 8 sequences (float64, dense
    reference), under each Trainer rule for dividing the loss by G."""
    student, teacher = llama(8, 1, seed=0), llama(16, 2, seed=1)
    reference_student = llama(8, 1, seed=0)
    rows = samples()
    expected_loss = dense_forward_kl(reference_student, teacher, rows)
    expected_loss.backward()
    expected = {n: p.grad for n, p in reference_student.named_parameters()}

    capture = GradientCapture(dict(student.named_parameters()))
    args = gradient_arguments(
        tmp_path,
        gradient_accumulation_steps=4,
        logging_strategy="steps",
        logging_steps=1,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=rows, callbacks=[capture]
    )
    metrics = as_trainer(trainer, behaviour).train().metrics
    (gradients,) = capture.gradients
    # float64: each value is a sum of at most ~10^3 products, so rounding stays below 1e-12
    for name, gradient in expected.items():
        torch.testing.assert_close(
            gradients[name], gradient, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
        )
    # the accumulation matters: one micro-batch's mean loss would weight its tokens differently
    assert any(gradient.abs().max() > 1e-6 for gradient in expected.values())
    expected_value = float(expected_loss.detach())
    # Trainer sums the loss in float32: a cast and 4 additions, each within 2^-24 relative
    assert metrics["train_loss"] == pytest.approx(expected_value, rel=5 * 2**-24)
    (logged,) = [log for log in trainer.state.log_history if "loss" in log]
    assert logged["loss"] == pytest.approx(expected_value, rel=5 * 2**-24)
    assert logged["terms/token_kd"] == pytest.approx(expected_value, rel=1e-9)  # float64 sums


def test_token_count_uses_shifted_labels(tmp_path: Path) -> None:
    """num_items_in_batch counts the tokens the loss reads: label t + 1 valid, positions t and
    t + 1 attended (left padding included), not the unshifted labels."""
    left_padded = {
        "input_ids": torch.tensor([[0, 0, 5, 6, 7]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1]]),
        "labels": torch.tensor([[3, 3, 5, 6, 7]]),  # a collator that left labels at the padding
    }
    batch = distillation_batch(left_padded)
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, -100]]
    assert sorted(batch["inputs"]) == ["attention_mask", "input_ids"]
    trainer = DistillationTrainer(
        model=llama(8, 1, seed=0),
        teacher_model=llama(8, 1, seed=1),
        args=arguments(tmp_path),
        train_dataset=samples(),
    )
    count = trainer._get_num_items_in_batch([left_padded, left_padded], torch.device("cpu"))
    assert int(count) == 4
    collated = trainer.data_collator(samples()[:2])  # 3 + 12 tokens -> 2 + 11 predictions
    assert int(trainer._get_num_items_in_batch([collated], torch.device("cpu"))) == 13


def test_teacher_frozen_on_student_device_and_loss_decreases(tmp_path: Path) -> None:
    student, teacher = llama(8, 1, seed=0, dtype=torch.float32), llama(16, 2, seed=1)
    rows = samples(seed=3)
    modes = ModeRecorder(student, teacher)
    args = arguments(tmp_path, max_steps=30, learning_rate=3e-2, per_device_train_batch_size=4)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        terms=default_terms(temperature=2.0),
        teacher_dtype=torch.float32,
        args=args,
        train_dataset=rows,
        callbacks=[modes],
    )
    batch = distillation_batch(trainer.data_collator(rows))

    def loss() -> float:
        trainer.build_distiller()
        trainer.distiller.eval()
        with torch.no_grad():
            return float(trainer.distiller(batch).loss)

    before = loss()
    trainer.train()
    after = loss()
    assert after < 0.7 * before, (before, after)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert modes.seen == {(True, False)}  # (student.training, teacher.training) at every step
    assert {p.device for p in teacher.parameters()} == {next(student.parameters()).device}
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}


def test_hidden_state_adapters_are_trained_and_saved(tmp_path: Path) -> None:
    """A hint between layers (student width 8, teacher 16): its linear adapter is in the
    optimizer, changes with training, and is saved beside the student and loaded back."""
    student, teacher = llama(8, 1, seed=0, dtype=torch.float32), llama(16, 2, seed=1)
    terms = [
        *default_terms(hard_label_weight=0.5),
        Term("hint", "hint", student="model.layers.0", teacher="model.layers.1", weight=0.1),
    ]
    args = arguments(tmp_path / "run", max_steps=5, learning_rate=1e-2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        terms=terms,
        teacher_dtype=torch.float32,
        args=args,
        train_dataset=samples(),
    )
    trainer.create_optimizer()
    adapters = list(trainer.distiller.extras["hint"]["adapters"].parameters())
    assert adapters, "the 8 -> 16 hint needs an adapter"
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in adapters)
    initial = [p.detach().clone() for p in adapters]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(initial, adapters, strict=True))

    saved = tmp_path / "saved"
    trainer.save_model(str(saved))
    assert (saved / EXTRAS_FILE).is_file()
    reloaded = transformers.LlamaForCausalLM.from_pretrained(saved)
    for name, value in student.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, msg=name)

    fresh = DistillationTrainer(
        model=reloaded,
        teacher_model=teacher,
        terms=terms,
        args=arguments(tmp_path / "again"),
        train_dataset=samples(),
    )
    fresh.load_extras(str(saved))
    fresh_adapters = list(fresh.distiller.extras["hint"]["adapters"].parameters())
    for loaded, trained in zip(fresh_adapters, adapters, strict=True):
        torch.testing.assert_close(loaded, trained)


def test_evaluate_reports_the_distillation_loss(tmp_path: Path) -> None:
    trainer = DistillationTrainer(
        model=llama(8, 1, seed=0),
        teacher_model=llama(8, 1, seed=1),
        args=arguments(tmp_path, per_device_eval_batch_size=4),
        eval_dataset=samples(),
    )
    rows = samples()
    metrics = trainer.evaluate()
    # two eval batches of 4 rows, each normalized by its own tokens; Trainer averages them
    with torch.no_grad():
        first = dense_forward_kl(trainer.model, trainer.teacher_model, rows[:4])
        second = dense_forward_kl(trainer.model, trainer.teacher_model, rows[4:])
    assert float(first) > 0 and float(second) > 0
    assert metrics["eval_loss"] == pytest.approx(float(first + second) / 2, rel=1e-9)


def test_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="teacher_model"):
        DistillationTrainer(model=llama(8, 1, seed=0), args=arguments(tmp_path))
    with pytest.raises(TypeError, match="model="):
        DistillationTrainer(teacher_model=llama(8, 1, seed=0), args=arguments(tmp_path))
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        DistillationTrainer(
            model=llama(8, 1, seed=0),
            teacher_model=llama(8, 1, seed=1),
            args=arguments(tmp_path, label_smoothing_factor=0.1),
        )
    with pytest.raises(ValueError, match=r"labels.*unshifted"):
        distillation_batch({"input_ids": torch.zeros(2, 3, dtype=torch.long)})


def test_checkpoint_resume_restores_extras(tmp_path: Path) -> None:
    """Checkpoints hold the adapters; resuming loads them (with the optimizer's extra group)."""
    teacher = llama(16, 2, seed=1, dtype=torch.float32)
    terms = [Term("hint", "hint", student="model.layers.0", teacher="model.layers.1")]
    args = arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    first = DistillationTrainer(
        model=llama(8, 1, seed=0, dtype=torch.float32),
        teacher_model=teacher,
        terms=terms,
        args=args,
        train_dataset=samples(),
    )
    first.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / EXTRAS_FILE).is_file()
    second = DistillationTrainer(
        model=llama(8, 1, seed=0, dtype=torch.float32),
        teacher_model=teacher,
        terms=terms,
        args=args,
        train_dataset=samples(),
    )
    second.train(resume_from_checkpoint=str(checkpoint))
    trained = first.distiller.extras.state_dict()
    resumed = second.distiller.extras.state_dict()
    assert trained.keys() == resumed.keys() and trained
    for name, value in trained.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_a_given_optimizer_must_hold_the_adapters(tmp_path: Path) -> None:
    student = llama(8, 1, seed=0, dtype=torch.float32)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=llama(16, 2, seed=1, dtype=torch.float32),
        terms=[Term("hint", "hint", student="model.layers.0", teacher="model.layers.1")],
        args=arguments(tmp_path),
        train_dataset=samples(),
        optimizers=(torch.optim.SGD(student.parameters(), lr=0.1), None),
    )
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        trainer.train()


def test_cached_teacher_without_a_teacher_model(tmp_path: Path) -> None:
    """Terms reading a teacher cache need no teacher model; with k = V (the whole
    distribution cached) the step's gradient is the dense teacher's."""
    teacher = llama(16, 2, seed=1)
    rows = samples()
    for row in rows:
        with torch.no_grad():
            logits = teacher(input_ids=row["input_ids"][None]).logits[0]
        cached = TopKLogits.from_logits(logits, VOCAB, 1.0)
        row["teacher_topk_ids"] = cached.token_ids
        row["teacher_topk_log_probs"] = cached.log_probs
        row["teacher_topk_tail"] = cached.tail_log_mass
    gradients = []
    for teacher_model, terms in (
        (None, [Term("kd", "fused_linear_kd", teacher="cache")]),
        (teacher, None),
    ):
        student = llama(8, 1, seed=0)
        capture = GradientCapture(dict(student.named_parameters()))
        args = gradient_arguments(tmp_path, gradient_accumulation_steps=4)
        DistillationTrainer(
            model=student,
            teacher_model=teacher_model,
            terms=terms,
            args=args,
            train_dataset=rows,
            callbacks=[capture],
        ).train()
        gradients.append(capture.gradients[0])
    for name, gradient in gradients[1].items():
        torch.testing.assert_close(gradients[0][name], gradient, msg=lambda m, n=name: f"{n}: {m}")
    with pytest.raises(TypeError, match="teacher cache"):
        DistillationTrainer(model=llama(8, 1, seed=0), args=arguments(tmp_path))


def hint_terms(weight: float = 0.1) -> list[Term]:
    """A token term and a hint between layers through a learned 8 -> 16 adapter."""
    hint = Term("hint", "hint", student="model.layers.0", teacher="model.layers.1", weight=weight)
    return [*default_terms(), hint]


def trainable(trainer: DistillationTrainer) -> dict[str, torch.nn.Parameter]:
    """Every parameter the optimizer updates: the student's and the terms' (adapters)."""
    named = trainer.distiller.named_parameters()
    return {name: p for name, p in named if p.requires_grad and not name.startswith("teachers.")}


class AllGradientCapture(transformers.TrainerCallback):
    """The gradient of every trainable parameter of ``trainer`` (student and adapters) just
    before each optimizer step."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer
        self.gradients: list[dict[str, Tensor]] = []
        trainer.add_callback(self)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        named = trainable(self.trainer).items()
        self.gradients.append({name: p.grad.clone() for name, p in named})


def fresh_gradients(trainer: DistillationTrainer, batch: dict) -> dict[str, Tensor]:
    """The gradients of one fresh forward and backward of ``batch`` (an HF batch)."""
    trainer.distiller.train()
    trainer.distiller.set_progress(0, 1)
    parameters = trainable(trainer)
    gradients = torch.autograd.grad(trainer.distiller(batch).loss, list(parameters.values()))
    return dict(zip(parameters, gradients, strict=True))


def test_every_step_gradient_is_a_fresh_computation(tmp_path: Path) -> None:
    """With adapters, the gradient of every trainable parameter at each step is that of a
    fresh forward and backward of the step's batch, not one summed over the earlier steps
    (Trainer's model.zero_grad() reaches the student only); after training none is left."""
    rows = samples()
    args = gradient_arguments(
        tmp_path,
        max_steps=3,
        per_device_train_batch_size=len(rows),  # every step: all the rows (shuffled)
    )
    trainer = DistillationTrainer(
        model=llama(8, 1, seed=0),
        teacher_model=llama(16, 2, seed=1),
        terms=hint_terms(),
        args=args,
        train_dataset=rows,
    )
    capture = AllGradientCapture(trainer)
    trainer.train()
    assert all(p.grad is None for p in trainable(trainer).values())
    expected = fresh_gradients(trainer, distillation_batch(trainer.data_collator(rows)))
    assert len(capture.gradients) == 3
    assert any(name.startswith("extras.hint.adapters") for name in expected)
    # float64: the steps differ from the fresh pass only in the order of the rows' sums
    for step, gradients in enumerate(capture.gradients):
        assert gradients.keys() == expected.keys()
        for name, gradient in expected.items():
            torch.testing.assert_close(
                gradients[name], gradient, rtol=1e-9, atol=1e-12, msg=f"step {step}: {name}"
            )


class FirstLabelsOnly:
    """An on_policy hook that trains on the first 4 next-token labels of each row only (fewer
    tokens than the batch has), recording the step it is called at."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def __call__(self, batch, *, step, student, teachers):
        self.steps.append(step)
        labels = batch["labels"].clone()
        labels[:, 4:] = -100
        return {**batch, "labels": labels}


def test_on_policy_prepares_every_micro_batch(tmp_path: Path) -> None:
    """on_policy runs on each micro-batch at its step (Distiller.prepare), and the step's
    tokens are counted on the prepared batches: the gradient is that of the prepared batch."""
    rows = samples()
    hook = FirstLabelsOnly()
    args = gradient_arguments(
        tmp_path,
        max_steps=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # each step: the 8 rows in two micro-batches
    )
    trainer = DistillationTrainer(
        model=llama(8, 1, seed=0),
        teacher_model=llama(16, 2, seed=1),
        on_policy=hook,
        args=args,
        train_dataset=rows,
    )
    capture = AllGradientCapture(trainer)
    trainer.train()
    assert hook.steps == [0, 0, 1, 1]
    prepared = hook(
        distillation_batch(trainer.data_collator(rows)), step=0, student=None, teachers=[]
    )
    expected = fresh_gradients(trainer, prepared)
    for step, gradients in enumerate(capture.gradients):
        for name, gradient in expected.items():
            torch.testing.assert_close(
                gradients[name], gradient, rtol=1e-9, atol=1e-12, msg=f"step {step}: {name}"
            )


@pytest.mark.parametrize("on_policy", [None, OnPolicy(1.0, max_new_tokens=3, prompt_length=4)])
def test_resume_is_bit_identical_with_adapters(tmp_path: Path, on_policy) -> None:
    """4 steps in one run and 2 + 2 steps resumed from the transformers checkpoint end with
    the same student and adapters, bit for bit (on-policy samples are seeded per step)."""
    teacher = llama(16, 2, seed=1, dtype=torch.float32)
    rows = samples(lengths=(5, 12, 6, 4, 9, 9, 7, 4))  # prompts of 4 real tokens
    settings = {"max_steps": 4, "gradient_accumulation_steps": 2, "learning_rate": 1e-2}
    runs = []
    for name, checkpoint in (("whole", None), ("resumed", tmp_path / "whole" / "checkpoint-2")):
        args = arguments(tmp_path / name, save_strategy="steps", save_steps=2, **settings)
        trainer = DistillationTrainer(
            model=llama(8, 1, seed=0, dtype=torch.float32),
            teacher_model=teacher,
            terms=hint_terms(),
            on_policy=on_policy,
            args=args,
            train_dataset=rows,
        )
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        runs.append({name: p.detach().clone() for name, p in trainable(trainer).items()})
    whole, resumed = runs
    assert whole.keys() == resumed.keys()
    assert any(name.startswith("extras.hint.adapters") for name in whole)
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("behaviour", TRAINER_BEHAVIOURS)
def test_each_term_is_logged_as_its_interval_mean(tmp_path: Path, behaviour: str) -> None:
    """Every logging interval (2 steps of 2 micro-batches) logs each term's mean over its
    steps beside ``loss``: here every step holds the same 8 rows (of equal lengths, so the
    hint's per-micro-batch mean is the rows' mean), so each logged term is a fresh value."""
    rows = samples(lengths=(7,) * 8)
    args = gradient_arguments(
        tmp_path,
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        logging_strategy="steps",
        logging_steps=2,
    )
    trainer = DistillationTrainer(
        model=llama(8, 1, seed=0),
        teacher_model=llama(16, 2, seed=1),
        terms=hint_terms(weight=0.1),
        args=args,
        train_dataset=rows,
    )
    as_trainer(trainer, behaviour).train()
    trainer.distiller.eval()
    with torch.no_grad():
        fresh = trainer.distiller(distillation_batch(trainer.data_collator(rows))).terms
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["step"] for log in logs] == [2, 4]
    for log in logs:
        for name, value in fresh.items():  # float64 throughout: only the sums' order differs
            assert log[f"terms/{name}"] == pytest.approx(float(value), rel=1e-9), name
        # Trainer sums the loss in float32: a cast and 4 additions, each within 2^-24 relative
        weighted = float(fresh["token_kd"] + 0.1 * fresh["hint"])
        assert log["loss"] == pytest.approx(weighted, rel=5 * 2**-24)
