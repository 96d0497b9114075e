"""SEED: the loss against a float64 loop reference (values and gradcheck), the queue (random
unit start, FIFO order, wrap-around, left alone in eval, checkpoints resume exactly), argument
errors, and a label-free Distiller term on MNIST-1D-shaped inputs."""

from __future__ import annotations

import io
import math

import pytest
import torch

import torchkd.losses as L
from torchkd.distiller import Distiller, Term
from torchkd.losses.seed import SEEDLoss, seed_loss
from torchkd.models import create_model


def reference_seed(student, teacher, queue, student_temperature, teacher_temperature):
    """-mean_i sum_k p_T(i, k) log p_S(i, k) over [own teacher embedding; queue], float64 loops."""

    def unit(row):
        norm = math.sqrt(sum(float(v) ** 2 for v in row))
        return [float(v) / norm for v in row]

    def dot(first, second):
        return math.fsum(a * b for a, b in zip(first, second, strict=True))

    queue_rows = [unit(row) for row in queue]
    total = 0.0
    for student_row, teacher_row in zip(student, teacher, strict=True):
        s, t = unit(student_row), unit(teacher_row)
        instances = [t, *queue_rows]
        teacher_scores = [dot(t, d) / teacher_temperature for d in instances]
        student_scores = [dot(s, d) / student_temperature for d in instances]
        top_t, top_s = max(teacher_scores), max(student_scores)
        weights = [math.exp(v - top_t) for v in teacher_scores]
        log_total_s = top_s + math.log(math.fsum(math.exp(v - top_s) for v in student_scores))
        for weight, score in zip(weights, student_scores, strict=True):
            total -= weight / math.fsum(weights) * (score - log_total_s)
    return total / len(student)


def unit(rows):
    return rows / rows.norm(dim=1, keepdim=True)


def float64_inputs(batch=5, dim=4, queue_size=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(rows, dim, generator=generator, dtype=torch.float64) * 2
        for rows in (batch, batch, queue_size)
    )


@pytest.mark.parametrize("temperatures", [(0.2, 1e-4), (0.5, 0.07), (1.0, 3.0)])
def test_functional_matches_loop_reference_and_gradcheck(temperatures):
    student_temperature, teacher_temperature = temperatures
    student, teacher, queue = float64_inputs()
    got = seed_loss(
        student,
        teacher,
        queue,
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
    )
    expected = reference_seed(student, teacher, queue, *temperatures)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-10)
    inputs = tuple(t.clone().requires_grad_() for t in (student, teacher, queue))
    assert torch.autograd.gradcheck(
        lambda s, t, q: seed_loss(
            s,
            t,
            q,
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
        ),
        inputs,
    )


def test_functional_is_a_cross_entropy_minimized_at_the_teacher_distribution():
    """Equal temperatures and the student equal to the teacher: the loss is the teacher's
    entropy, and the student's gradient vanishes (the cross-entropy's minimum)."""
    _, teacher, queue = float64_inputs()
    student = teacher.clone().requires_grad_()
    loss = seed_loss(student, teacher, queue, student_temperature=0.3, teacher_temperature=0.3)
    (gradient,) = torch.autograd.grad(loss, student)
    assert gradient.abs().max().item() < 1e-12
    logits = torch.cat(
        [torch.ones(len(teacher), 1, dtype=torch.float64), unit(teacher) @ unit(queue).T], 1
    )
    entropy = torch.special.entr(torch.softmax(logits / 0.3, 1)).sum(1).mean()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-12)


def test_functional_low_precision_computes_in_float32():
    student, teacher, queue = (t.half() for t in float64_inputs())
    got = seed_loss(student, teacher, queue)
    assert got.dtype == torch.float32
    expected = reference_seed(student.double(), teacher.double(), queue.double(), 0.2, 1e-4)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_functional_errors_name_the_argument():
    student, teacher, queue = float64_inputs()
    with pytest.raises(ValueError, match="same shape"):
        seed_loss(student, teacher[:, :3], queue)
    with pytest.raises(ValueError, match=r"queue must be \[K, 4\]"):
        seed_loss(student, teacher, queue[:, :3])
    with pytest.raises(ValueError, match=r"queue must be \[K, 4\]"):
        seed_loss(student, teacher, queue[0])
    with pytest.raises(TypeError, match="queue"):
        seed_loss(student, teacher, queue.long())
    for name in ("student_temperature", "teacher_temperature"):
        with pytest.raises(ValueError, match=name):
            seed_loss(student, teacher, queue, **{name: 0.0})


def test_module_value_is_the_functional_on_the_head_and_the_stored_queue():
    torch.manual_seed(0)
    module = SEEDLoss(6, 4, queue_size=7, student_temperature=0.5, teacher_temperature=0.1)
    module.double()
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(3, 2, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(3, 2, 2, generator=generator, dtype=torch.float64)
    queue = module.queue.clone()
    expected = reference_seed(
        module.student_head(student).detach(), teacher.reshape(3, 4), queue, 0.5, 0.1
    )
    assert module(student, teacher).item() == pytest.approx(expected, rel=1e-10)


def test_module_gradcheck_in_eval():
    torch.manual_seed(0)
    module = SEEDLoss(6, 4, queue_size=5, student_temperature=0.5, teacher_temperature=0.1)
    module.double().eval()
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(3, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: module(s, teacher), (student,))


def test_queue_starts_as_seeded_random_unit_vectors():
    first, again, other = (SEEDLoss(3, 5, queue_size=16, seed=s) for s in (4, 4, 5))
    assert first.queue.shape == (16, 5) and first.queue.dtype == torch.float32
    torch.testing.assert_close(first.queue.norm(dim=1), torch.ones(16))
    assert torch.equal(first.queue, again.queue)
    assert not torch.allclose(first.queue, other.queue)
    assert int(first.queue_pointer) == 0
    torch.manual_seed(0)  # the global generator plays no part in the queue
    assert torch.equal(SEEDLoss(3, 5, queue_size=16, seed=4).queue, first.queue)


def test_queue_is_fifo_with_wrap_around_after_the_loss():
    torch.manual_seed(0)
    module = SEEDLoss(3, 2, queue_size=5)
    start = module.queue.clone()
    batches = [torch.randn(rows, 2) * 3 for rows in (2, 2, 3, 7)]
    student = torch.randn(7, 3)

    # batch 1 fills slots 0, 1; the loss used the queue before the update
    loss = module(student[:2], batches[0])
    torch.testing.assert_close(loss, seed_loss(module.student_head(student[:2]), batches[0], start))
    expected = start.clone()
    expected[:2] = unit(batches[0])
    torch.testing.assert_close(module.queue, expected)
    assert int(module.queue_pointer) == 2
    module(student[:2], batches[1])  # slots 2, 3
    expected[2:4] = unit(batches[1])
    torch.testing.assert_close(module.queue, expected)
    assert int(module.queue_pointer) == 4
    module(student[:3], batches[2])  # slots 4, 0, 1: wraps around
    expected[[4, 0, 1]] = unit(batches[2])
    torch.testing.assert_close(module.queue, expected)
    assert int(module.queue_pointer) == 2
    # a batch longer than the queue: as if enqueued row by row, only the last 5 rows remain
    module(student, batches[3])
    expected[[4, 0, 1, 2, 3]] = unit(batches[3][2:])
    torch.testing.assert_close(module.queue, expected)
    assert int(module.queue_pointer) == (2 + 7) % 5


def test_backward_after_the_enqueue_reaches_the_student_only():
    module = SEEDLoss(3, 2, queue_size=4)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 2, requires_grad=True)
    loss = module(student, teacher)
    loss.backward()  # the in-place queue update does not touch what autograd saved
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.student_head.parameters())
    assert teacher.grad is None  # the teacher is a fixed target


def test_zero_teacher_rows_keep_half_precision_gradients_finite():
    module = SEEDLoss(6, 6, queue_size=5)
    student = torch.zeros(4, 6, dtype=torch.float16, requires_grad=True)
    loss = module(student, student)  # the fuzz suite's zero, identical case
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_eval_mode_leaves_the_queue_untouched():
    module = SEEDLoss(3, 2, queue_size=4).eval()
    queue = module.queue.clone()
    module(torch.randn(3, 3), torch.randn(3, 2))
    assert torch.equal(module.queue, queue) and int(module.queue_pointer) == 0


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    module = SEEDLoss(3, 2, queue_size=6, seed=1)
    for _ in range(3):
        module(torch.randn(4, 3), torch.randn(4, 2))
    assert set(module.state_dict()) >= {"queue", "queue_pointer"}
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    resumed = SEEDLoss(3, 2, queue_size=6, seed=7)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(resumed.queue, module.queue)
    assert int(resumed.queue_pointer) == int(module.queue_pointer) == 0  # 12 rows into 6 slots
    student, teacher = torch.randn(5, 3), torch.randn(5, 2)
    assert torch.equal(resumed(student, teacher), module(student, teacher))
    assert torch.equal(resumed.queue, module.queue)
    assert int(resumed.queue_pointer) == int(module.queue_pointer) == 5


def test_module_errors_name_the_argument():
    for name in ("student_dim", "teacher_dim", "queue_size"):
        with pytest.raises(ValueError, match=name):
            SEEDLoss(**{"student_dim": 3, "teacher_dim": 2, name: 0})
    with pytest.raises(ValueError, match="seed"):
        SEEDLoss(3, 2, seed=-1)
    for name in ("student_temperature", "teacher_temperature"):
        with pytest.raises(ValueError, match=name):
            SEEDLoss(3, 2, **{name: -1.0})
    module = SEEDLoss(3, 2, queue_size=4)
    with pytest.raises(ValueError, match="batch size"):
        module(torch.randn(4, 3), torch.randn(3, 2))
    with pytest.raises(ValueError, match="teacher_embedding flattens to 3"):
        module(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="head expects 3"):
        module(torch.randn(4, 5), torch.randn(4, 2))


def test_registry_and_repr():
    loss_entry = L.entry("seed")
    assert (loss_entry.signature, loss_entry.family) == ("embeddings", "relation")
    assert loss_entry.compares_shapes and loss_entry.functional is None
    module = L.create("seed", student_dim=3, teacher_dim=2, queue_size=4)
    assert isinstance(module, SEEDLoss)
    assert "queue_size=4, student_temperature=0.2, teacher_temperature=0.0001" in repr(module)


def test_label_free_distiller_term_on_mnist1d_shapes():
    """cnn1d student and teacher on [B, 1, 40] inputs, no labels in the batch: the head and the
    queue are sized from the probed taps, training enqueues, validation does not."""
    torch.manual_seed(0)
    student, teacher = create_model("cnn1d", width=4), create_model("cnn1d", width=8)
    term = Term(
        "seed",
        "seed",
        loss_kwargs={"queue_size": 32},
        student="flatten",
        teacher="flatten",
    )
    distiller = Distiller(student, teacher, [term])
    batch = {"inputs": torch.randn(12, 1, 40)}
    distiller.build(batch)
    loss_module = distiller.extras["seed"]["loss"]
    assert loss_module.student_head.linear.in_features == student.head.in_features == 4 * 5
    assert loss_module.queue.shape == (32, teacher.head.in_features)
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in trainable for p in loss_module.student_head.parameters())

    distiller.train()
    out = distiller(batch)
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    out.loss.backward()
    tapped = [p for name, p in student.named_parameters() if not name.startswith("head.")]
    assert all(p.grad is not None for p in tapped)  # the classifier lies after the tap
    assert int(loss_module.queue_pointer) == 12
    distiller.eval()
    queue = loss_module.queue.clone()
    with torch.no_grad():
        distiller(batch)
    assert torch.equal(loss_module.queue, queue) and int(loss_module.queue_pointer) == 12
