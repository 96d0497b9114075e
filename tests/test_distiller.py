"""Distiller: frozen teachers, weighted terms checked by hand, schedules, auto weights, output
types, label-free batches, probing-built adapters and losses, multi-teacher lists, state."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tolerances import float32_tolerance
from torch import Tensor, nn

from torchkd import losses
from torchkd.distiller import Distiller, Term, TermError
from torchkd.forward import select_logits
from torchkd.schedules import Linear
from torchkd.teachers import TeacherEnsemble, as_teacher_list
from torchkd.temperature import LearnableTemperature

NUM_CLASSES = 3
LENGTH = 8


class ConvNet(nn.Module):
    """[B, 1, 8] -> features.0 [B, w, 8], features.2 [B, w, 8] -> logits [B, 3]."""

    def __init__(self, width: int, dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        norm: nn.Module = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1),
            norm,
            nn.ReLU(),
        )
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width * LENGTH, NUM_CLASSES)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.dropout(self.flatten(self.features(inputs))))


def make_batch(batch_size: int = 6, labels: bool = True, seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "inputs": torch.randn(batch_size, 1, LENGTH, generator=generator),
        "index": torch.arange(batch_size),
    }
    if labels:
        batch["labels"] = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    return batch


def kd_reference(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(p_teacher || p_student) at temperature T, times T², summed over classes, batch mean."""
    teacher_probs = F.softmax(teacher_logits / temperature, dim=-1)
    log_ratio = teacher_probs.log() - F.log_softmax(student_logits / temperature, dim=-1)
    return (teacher_probs * log_ratio).sum() / student_logits.shape[0] * temperature**2


def kd_like(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0
) -> Tensor:
    """Stand-in logit loss (signature "logits") accepting a per-step temperature."""
    if isinstance(temperature, Tensor):
        temperature = temperature.reshape(())
    teacher_probs = F.softmax(teacher_logits / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")
    return kl * temperature**2


def seeded(width: int, seed: int, **kwargs: Any) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(width, **kwargs)


def test_teachers_are_frozen_and_stay_in_eval() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1, dropout=0.5)
    distiller = Distiller(student, teacher, [Term("kd", kd_like, signature="logits")])
    batch = make_batch()
    distiller.build(batch)
    distiller.train()
    assert student.training and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    first, second = distiller(batch), distiller(batch)
    torch.testing.assert_close(first.teacher_logits[0], second.teacher_logits[0])  # no dropout
    assert not first.teacher_logits[0].requires_grad
    first.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    trainable = distiller.trainable_parameters()
    assert not teacher_ids & {id(p) for p in trainable}
    assert {id(p) for p in student.parameters()} <= {id(p) for p in trainable}


def test_loss_is_the_weighted_sum_of_terms_by_hand() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    terms = [
        Term("ce", "ce", weight=0.3),
        Term("kd", kd_like, weight=0.7, temperature=2.0, signature="logits"),
        Term("hint", "hint", weight=2.0, student="features", teacher="features"),
    ]
    distiller = Distiller(student, teacher, terms)
    batch = make_batch()
    distiller.build(batch)
    out = distiller(batch)

    student_logits, teacher_logits = student(batch["inputs"]), teacher(batch["inputs"])
    student_feature = student.features(batch["inputs"])
    teacher_feature = teacher.features(batch["inputs"])
    adapter = distiller.extras["hint"]["adapters"][0]
    assert isinstance(adapter[0], nn.Conv1d) and adapter[0].out_channels == 8
    expected = {
        "ce": F.cross_entropy(student_logits, batch["labels"]),
        "kd": kd_reference(student_logits, teacher_logits, 2.0),
        "hint": ((adapter(student_feature) - teacher_feature) ** 2).mean(),
    }
    for name, value in expected.items():
        torch.testing.assert_close(out.terms[name], value)
    assert out.weights == {"ce": 0.3, "kd": 0.7, "hint": 2.0}
    assert out.temperatures == {"kd": 2.0}
    total = 0.3 * expected["ce"] + 0.7 * expected["kd"] + 2.0 * expected["hint"]
    torch.testing.assert_close(out.loss, total)
    torch.testing.assert_close(out.student_logits, student_logits)


def test_schedule_weight_and_temperature_follow_progress() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    term = Term(
        "kd",
        kd_like,
        weight=Linear(start=0.0, end=1.0),
        temperature=Linear(start=1.0, end=5.0),
        signature="logits",
    )
    distiller = Distiller(student, teacher, [term])
    batch = make_batch()
    distiller.build(batch)
    student_logits, teacher_logits = student(batch["inputs"]), teacher(batch["inputs"])
    for step, weight, temperature in ((0, 0.0, 1.0), (5, 0.5, 3.0), (10, 1.0, 5.0)):
        distiller.set_progress(step, 10)
        out = distiller(batch)
        assert out.weights["kd"] == pytest.approx(weight)
        assert out.temperatures["kd"] == pytest.approx(temperature)
        reference = kd_reference(student_logits, teacher_logits, temperature)
        torch.testing.assert_close(out.terms["kd"], reference)
        torch.testing.assert_close(out.loss, weight * reference)
    with pytest.raises(ValueError, match="step must be <= total_steps"):
        distiller.set_progress(11, 10)


def test_auto_weights_are_learnable_kendall_uncertainty() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    terms = [
        Term("ce", "ce", weight="auto"),
        Term("kd", kd_like, weight="auto", signature="logits"),
    ]
    distiller = Distiller(student, teacher, terms)
    batch = make_batch()
    distiller.build(batch)
    log_variances = {"ce": 0.5, "kd": -1.0}
    with torch.no_grad():
        for name, value in log_variances.items():
            distiller.extras[name]["weight"].log_variance.fill_(value)
    params = [distiller.extras[name]["weight"].log_variance for name in log_variances]
    trainable_ids = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in trainable_ids for p in params)

    out = distiller(batch)
    expected = sum(
        math.exp(-value) * out.terms[name].detach() + value for name, value in log_variances.items()
    )
    torch.testing.assert_close(out.loss.detach(), expected)
    for name, value in log_variances.items():
        assert out.weights[name] == pytest.approx(math.exp(-value))
    out.loss.backward()
    for name, value in log_variances.items():  # d/ds (e^{-s} L + s) = 1 - e^{-s} L
        grad = distiller.extras[name]["weight"].log_variance.grad
        expected_grad = 1.0 - math.exp(-value) * out.terms[name].item()
        # float32 exp (≤ 1 ulp), ·L, 1 −: ≤ 2 ε of the operands, ≤ 1 + e^{-s} L
        bound = float32_tolerance(2, 1.0 + math.exp(-value) * out.terms[name].item())
        assert grad.item() == pytest.approx(expected_grad, rel=0, abs=bound)


class AttributeOutput:
    """Stand-in for an output object exposing ``.logits`` (no mapping access)."""

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits


class MappingOutput(OrderedDict):
    """Stand-in for a Hugging Face ModelOutput: an OrderedDict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner = inner
        self.kind = kind

    def forward(self, inputs: Tensor) -> Any:
        logits = self.inner(inputs)
        if self.kind == "tuple":
            return logits, logits.sum()
        if self.kind == "dict":
            return {"hidden": logits * 0, "logits": logits}
        if self.kind == "attribute":
            return AttributeOutput(logits)
        if self.kind == "scores":
            return {"scores": logits}
        return MappingOutput(logits=logits, hidden=logits * 0)


@pytest.mark.parametrize("kind", ["tuple", "dict", "attribute", "model_output", "scores"])
def test_output_types_select_the_logits(kind: str) -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    output_key = "scores" if kind == "scores" else None
    distiller = Distiller(
        Wrapped(student, kind),
        Wrapped(teacher, kind),
        [
            Term("kd", kd_like, signature="logits"),
            Term("hint", "hint", student="inner.features", teacher="inner.features"),
        ],
        output_key=output_key,
    )
    batch = make_batch()
    distiller.build(batch)
    out = distiller(batch)
    torch.testing.assert_close(out.student_logits, student(batch["inputs"]))
    torch.testing.assert_close(out.teacher_logits[0], teacher(batch["inputs"]))
    torch.testing.assert_close(distiller.student_logits(batch["inputs"]), student(batch["inputs"]))
    torch.testing.assert_close(distiller.teacher_logits(batch["inputs"])[0], out.teacher_logits[0])


def test_missing_output_key_is_explained() -> None:
    distiller = Distiller(Wrapped(seeded(4, 0), "scores"), None, [Term("ce", "ce")])
    with pytest.raises(KeyError, match=r"no key 'logits' \(keys: \['scores'\]\)"):
        distiller.build(make_batch())


def test_label_free_batch_feeds_teacher_terms_and_rejects_label_terms() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    unlabeled = make_batch(labels=False)
    terms = [
        Term("kd", "kd", loss_kwargs={"temperature": 4.0}),
        Term("kd_like", kd_like, signature="logits"),
    ]
    distiller = Distiller(student, teacher, terms)
    distiller.build(unlabeled)
    out = distiller(unlabeled)
    student_logits, teacher_logits = student(unlabeled["inputs"]), teacher(unlabeled["inputs"])
    torch.testing.assert_close(out.terms["kd"], kd_reference(student_logits, teacher_logits, 4.0))
    torch.testing.assert_close(
        out.terms["kd_like"], kd_reference(student_logits, teacher_logits, 1.0)
    )

    with_ce = Distiller(
        student, teacher, [Term("kd", kd_like, signature="logits"), Term("hard", "ce", weight=0.1)]
    )
    with_ce.build(unlabeled)  # building needs no labels
    with pytest.raises(ValueError, match=r"term 'hard' \(loss 'ce', signature 'labels'\)"):
        with_ce(unlabeled)


def test_build_creates_adapters_that_the_optimizer_sees() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    distiller = Distiller(
        student, teacher, [Term("hint", "hint", student="features.0", teacher="features.0")]
    )
    batch = make_batch()
    with pytest.raises(RuntimeError, match=r"call Distiller.build"):
        distiller(batch)
    assert len(distiller.trainable_parameters()) == len(list(student.parameters()))
    distiller.build(batch)
    adapters = distiller.extras["hint"]["adapters"]
    adapter_params = list(adapters.parameters())
    assert adapter_params  # conv weight + BatchNorm affine
    trainable_ids = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in trainable_ids for p in adapter_params)
    distiller.build(batch)  # idempotent: the same modules stay
    assert distiller.extras["hint"]["adapters"] is adapters
    distiller(batch).loss.backward()
    assert all(p.grad is not None for p in adapter_params)


def test_build_probes_without_touching_student_state() -> None:
    student, teacher = seeded(4, 0, batch_norm=True), seeded(8, 1)
    distiller = Distiller(student, teacher, [Term("kd", kd_like, signature="logits")])
    running_mean = student.features[3].running_mean.clone()
    distiller.train()
    distiller.build(make_batch())
    assert student.training
    torch.testing.assert_close(student.features[3].running_mean, running_mean)


def test_multi_teacher_term_gets_every_teachers_logits() -> None:
    student = seeded(4, 0)
    teachers = [seeded(8, 1), seeded(6, 2)]
    received: list[Any] = []

    def recording_loss(
        student_logits: Tensor, teacher_logits: list[Tensor], labels: Tensor | None = None
    ) -> Tensor:
        received.append((teacher_logits, labels))
        return student_logits.sum() * 0

    terms = [
        Term("record", recording_loss, signature="multi_teacher"),
        Term("second", kd_like, teacher_index=1, signature="logits"),
    ]
    distiller = Distiller(student, teachers, terms)
    batch = make_batch()
    distiller.build(batch)
    out = distiller(batch)
    teacher_logits = [teacher(batch["inputs"]) for teacher in teachers]
    ((received_logits, received_labels),) = received
    assert len(received_logits) == 2
    for got, expected in zip(received_logits, teacher_logits, strict=True):
        torch.testing.assert_close(got, expected)
    assert torch.equal(received_labels, batch["labels"])
    torch.testing.assert_close(
        out.terms["second"], kd_reference(student(batch["inputs"]), teacher_logits[1], 1.0)
    )


@pytest.mark.skipif("kd" not in losses.available(), reason="multi_teacher_kd builds on 'kd'")
def test_registered_multi_teacher_loss_gets_the_teacher_list() -> None:
    student = seeded(4, 0)
    teachers = [seeded(8, 1), seeded(6, 2)]
    term = Term("mt", "multi_teacher_kd", loss_kwargs={"temperature": 2.0})
    distiller = Distiller(student, teachers, [term])
    batch = make_batch()
    distiller.build(batch)
    reference = losses.multi_teacher_kd_loss(
        student(batch["inputs"]),
        [teacher(batch["inputs"]) for teacher in teachers],
        labels=batch["labels"],
        temperature=2.0,
    )
    torch.testing.assert_close(distiller(batch).terms["mt"], reference)


def test_shape_rules_fill_loss_sizes_and_skip_adapters() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    batch = make_batch()
    terms = [
        Term("vid", "vid", student="features.2", teacher="features.2"),
        Term(
            "crd",
            "crd",
            loss_kwargs={"num_samples": 6, "num_negatives": 4, "feat_dim": 5},
            student="flatten",
            teacher="flatten",
        ),
        Term(
            "align",
            "attention_align",
            loss_kwargs={"embed_dim": 4},
            student=["features.0", "features.2"],
            teacher=["features.2"],
        ),
        Term("at", "at", student=["features.0"], teacher=["features.0"]),
        Term("ft", "factor_transfer", student="features.2", teacher="features.2"),
        Term(
            "fsp", "fsp", student=["features.0", "features.2"], teacher=["features.0", "features.2"]
        ),
    ]
    distiller = Distiller(student, teacher, terms)
    distiller.build(batch)
    vid = distiller.extras["vid"]["loss"]
    assert (vid.num_input_channels, vid.num_mid_channels, vid.num_target_channels) == (4, 8, 8)
    crd = distiller.extras["crd"]["loss"]
    assert crd.student_head.linear.in_features == 4 * LENGTH
    assert crd.teacher_head.linear.in_features == 8 * LENGTH
    align = distiller.extras["align"]["loss"]
    assert (align.student_channels, align.teacher_channels) == ([4, 4], [8])
    factor = distiller.extras["ft"]["loss"]
    assert (factor.student_channels, factor.teacher_channels, factor.spatial_dims) == (4, 8, 1)
    for name in ("vid", "crd", "align", "at", "ft"):  # these compare different shapes themselves
        adapters = distiller.extras[name]["adapters"]
        assert all(isinstance(adapter, nn.Identity) for adapter in adapters)
    fsp_adapters = distiller.extras["fsp"]["adapters"]  # FSP needs equal channels: adapted
    assert [type(adapter[0]) for adapter in fsp_adapters] == [nn.Conv1d, nn.Conv1d]
    out = distiller(batch)
    assert all(value.dim() == 0 and torch.isfinite(value) for value in out.terms.values())

    unindexed = {key: value for key, value in batch.items() if key != "index"}
    with pytest.raises(ValueError, match=r"term 'crd' \(loss 'crd', signature 'indexed'\)"):
        distiller(unindexed)


TEMPERATURE_LOSSES = [
    name
    for name in losses.available()
    if losses.entry(name).signature in ("logits", "logits_labels", "multi_teacher")
    and hasattr(losses.create(name), "temperature")
]


@pytest.mark.parametrize("name", TEMPERATURE_LOSSES)
def test_term_temperature_reaches_registered_losses(name: str) -> None:
    student, teachers = seeded(4, 0), [seeded(8, 1), seeded(6, 2)]
    distiller = Distiller(student, teachers, [Term(name, name, temperature=Linear(1.0, 5.0))])
    batch = make_batch()
    distiller.build(batch)
    distiller.set_progress(1, 2)  # temperature 3.0 at this step
    value = distiller(batch).terms[name]
    student_logits = student(batch["inputs"])
    teacher_logits = [teacher(batch["inputs"]) for teacher in teachers]
    reference_loss = losses.create(name, temperature=3.0)
    signature = losses.entry(name).signature
    if signature == "multi_teacher":
        reference = reference_loss(student_logits, teacher_logits, labels=batch["labels"])
    elif signature == "logits_labels":
        reference = reference_loss(student_logits, teacher_logits[0], batch["labels"])
    else:
        reference = reference_loss(student_logits, teacher_logits[0])
    torch.testing.assert_close(value, reference)
    configured = losses.create(name).temperature
    assert distiller.extras[name]["loss"].temperature == configured  # never changed


def test_temperature_given_twice_is_refused() -> None:
    term = Term("kd", "kd", loss_kwargs={"temperature": 2.0}, temperature=4.0)
    with pytest.raises(ValueError, match=r"temperature is given twice.*loss_kwargs"):
        Distiller(seeded(4, 0), seeded(8, 1), [term])


def test_learned_temperature_is_built_and_driven_by_progress() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    term = Term("kd", kd_like, temperature="learned", signature="logits")
    distiller = Distiller(student, teacher, [term])
    batch = make_batch()
    distiller.set_progress(100, 100)  # progress set before build reaches the new module
    distiller.build(batch)
    temperature = distiller.extras["kd"]["temperature"]
    assert isinstance(temperature, LearnableTemperature)
    assert id(temperature.temperature_logit) in {id(p) for p in distiller.trainable_parameters()}
    assert temperature.reversal_strength == pytest.approx(1.0)
    distiller.set_progress(0, 100)
    assert temperature.reversal_strength == pytest.approx(0.0)
    distiller.set_progress(100, 100)
    out = distiller(batch)
    tau = 1.0 + 20.0 * torch.sigmoid(torch.tensor(1.0)).item()
    # the same float32 sigmoid both sides; the module's ×20, +1 round in float32: 2 ε · τ
    assert out.temperatures["kd"] == pytest.approx(tau, rel=0, abs=float32_tolerance(2, tau))
    reference = kd_reference(student(batch["inputs"]), teacher(batch["inputs"]), tau)
    torch.testing.assert_close(out.terms["kd"], reference)
    out.loss.backward()  # reversed gradient: the temperature ascends the loss
    assert temperature.temperature_logit.grad is not None

    registered = Distiller(student, teacher, [Term("kd", "kd", temperature="learned")])
    registered.set_progress(100, 100)
    registered.build(batch)
    out = registered(batch)  # a tensor τ reaches KDLoss as the temperature= keyword
    torch.testing.assert_close(out.terms["kd"], reference)
    out.loss.backward()
    logit_grad = registered.extras["kd"]["temperature"].temperature_logit.grad
    assert logit_grad is not None and logit_grad.item() != 0.0
    assert registered.extras["kd"]["loss"].temperature == 1.0  # the configured value is kept


def test_supervised_baseline_and_dict_inputs() -> None:
    class NamedInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = seeded(4, 0)

        def forward(self, input_values: Tensor, scale: Tensor) -> Tensor:
            return self.body(input_values) * scale

    model = NamedInputs()
    batch = make_batch()
    batch = {
        "inputs": {"input_values": batch["inputs"], "scale": torch.tensor(2.0)},
        "labels": batch["labels"],
    }
    distiller = Distiller(model, None, [Term("ce", "ce")])
    distiller.build(batch)
    out = distiller(batch)
    expected = F.cross_entropy(model.body(batch["inputs"]["input_values"]) * 2, batch["labels"])
    torch.testing.assert_close(out.loss, expected)
    assert out.teacher_logits == []
    assert len(distiller.teachers) == 0


def test_extras_state_dict_round_trip() -> None:
    batch = make_batch()

    def make() -> Distiller:
        terms = [
            Term("hint", "hint", weight="auto", student="features.2", teacher="features.2"),
            Term("vid", "vid", student="features.0", teacher="features.0"),
        ]
        return Distiller(seeded(4, 0), seeded(8, 1), terms)

    source = make()
    source.build(batch)
    with torch.no_grad():
        for param in source.extras.parameters():
            param.add_(torch.randn_like(param))
    state = source.extras.state_dict()
    assert "hint.weight.log_variance" in state and "hint.adapters.0.0.weight" in state
    target = make()
    target.build(batch)
    target.extras.load_state_dict(state)
    for key, value in target.extras.state_dict().items():
        torch.testing.assert_close(value, state[key])
    torch.testing.assert_close(target(batch).loss, source(batch).loss)
    target.load_state_dict(source.state_dict())  # the whole distiller too


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"teachers": None, "terms": [Term("kd", kd_like, signature="logits")]},
            ValueError,
            r"term 'kd' \(signature 'logits'\) needs a teacher",
        ),
        ({"terms": [Term("ce", "ce"), Term("ce", "ce")]}, ValueError, "duplicate term name"),
        ({"terms": [Term("a.b", "ce")]}, ValueError, "without '.'"),
        ({"terms": [Term("custom", kd_like)]}, ValueError, "custom loss needs signature="),
        (
            {"terms": [Term("fsp", "fsp", student="features.0")]},
            ValueError,
            "non-empty list of paths",
        ),
        (
            {"terms": [Term("kd", kd_like, signature="logits", teacher_index=3)]},
            ValueError,
            r"teacher_index=3 out of range for 1 teacher",
        ),
        (
            {"terms": [Term("kd", kd_like, signature="logits", adapter="linear")]},
            ValueError,
            "adapters apply to feature terms",
        ),
        (
            {"terms": [Term("kd", kd_like, signature="logits", weight="fixed")]},
            TermError,
            "weight must be a number, a Schedule or 'auto'",
        ),
        (
            {"terms": [Term("kd", kd_like, signature="logits", temperature=-1.0)]},
            ValueError,
            "temperature must be > 0",
        ),
        (
            {"terms": [Term("ce", "ce", signature="logits")]},
            ValueError,
            "has signature 'labels', not 'logits'",
        ),
        ({"terms": [Term("x", "not_a_loss")]}, TermError, "unknown loss 'not_a_loss'"),
        (
            {"terms": [Term("fsp", "fsp", student=["features.0"], teacher=["a", "b"])]},
            ValueError,
            "1 student paths but 2 teacher paths",
        ),
        ({"terms": []}, ValueError, "at least one Term"),
        (
            {"terms": [Term("hint", "hint", student="feature.2", teacher="features.2")]},
            TermError,
            r"no module at path 'feature\.2' in ConvNet \(closest: 'features\.2'",
        ),
    ],
)
def test_bad_terms_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments = {"student": seeded(4, 0), "teachers": seeded(8, 1), **kwargs}
    with pytest.raises(error, match=message):
        Distiller(**arguments)


def test_build_errors_name_the_term() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    batch = make_batch()

    def no_temperature_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return (student_logits - teacher_logits).pow(2).mean()

    term = Term("fixed", no_temperature_loss, temperature=2.0, signature="logits")
    no_temperature = Distiller(student, teacher, [Term("ok", "ce"), term])
    with pytest.raises(TermError, match=r"term 'fixed'.*call takes `temperature=`"):
        no_temperature.build(batch)
    assert len(no_temperature.extras) == 0  # a failed build leaves nothing half-made
    missing_size = Distiller(
        student, teacher, [Term("crd", "crd", student="flatten", teacher="flatten")]
    )
    with pytest.raises(TermError, match=r"term 'crd': cannot build loss 'crd'.*num_samples"):
        missing_size.build(batch)
    per_row = Distiller(student, None, [Term("ce", "ce", loss_kwargs={"reduction": "none"})])
    per_row.build(batch)
    with pytest.raises(ValueError, match=r"term 'ce' returned \(6,\), expected a scalar"):
        per_row(batch)


def test_logits_labels_terms_need_labels() -> None:
    student, teacher = seeded(4, 0), seeded(8, 1)
    distiller = Distiller(student, teacher, [Term("dkd", "dkd", loss_kwargs={"temperature": 2.0})])
    batch = make_batch()
    distiller.build(batch)
    reference = losses.dkd_loss(
        student(batch["inputs"]), teacher(batch["inputs"]), batch["labels"], temperature=2.0
    )
    torch.testing.assert_close(distiller(batch).terms["dkd"], reference)
    with pytest.raises(ValueError, match=r"term 'dkd' \(loss 'dkd', signature 'logits_labels'\)"):
        distiller(make_batch(labels=False))


def test_select_logits_and_teacher_containers() -> None:
    logits = torch.randn(2, 3)
    assert select_logits(logits, "ignored") is logits
    assert select_logits([logits.sum(), logits], 1) is logits
    assert select_logits(AttributeOutput(logits)) is logits
    with pytest.raises(KeyError, match="does not index"):
        select_logits((logits,), 3)
    with pytest.raises(KeyError, match="no attribute 'scores'"):
        select_logits(AttributeOutput(logits), "scores")
    with pytest.raises(TypeError, match="must be a tensor"):
        select_logits({"logits": [1, 2]})

    first, second = seeded(4, 0), seeded(8, 1)
    assert len(as_teacher_list(None)) == 0
    assert len(as_teacher_list(nn.Sequential(first))) == 1  # a Sequential is one network
    assert len(as_teacher_list(nn.ModuleList([first, second]))) == 2
    with pytest.raises(TypeError, match=r"teachers\[1\] must be an nn.Module"):
        as_teacher_list([first, "second"])  # type: ignore[list-item]

    ensemble = TeacherEnsemble([first, second], weights=[1.0, 3.0])
    inputs = torch.randn(5, 1, LENGTH)
    expected = 0.25 * first(inputs) + 0.75 * second(inputs)
    torch.testing.assert_close(ensemble.train()(inputs), expected)
    assert not first.training and not second.training
    with pytest.raises(ValueError, match="2 weights for 1 ensemble members"):
        TeacherEnsemble([first], weights=[1.0, 1.0])


EXTERNAL_LOSS = '''
"""A feature loss registered from outside torchkd, used by a Distiller untouched."""
import torch
from torch import nn

import torchkd.losses as L
from torchkd import Distiller, Term


def _projection_sizes(student_shapes, teacher_shapes):
    return {"student_dim": student_shapes[0][1], "teacher_dim": teacher_shapes[0][1]}


@L.register(
    "projected_cosine",
    functional=None,
    signature="features",
    family="feature",
    compares_shapes=True,
    sizes=_projection_sizes,
)
class ProjectedCosine(nn.Module):
    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(student_dim, teacher_dim)

    def forward(self, student, teacher):
        projected = self.project(student.flatten(1))
        return 1 - torch.cosine_similarity(projected, teacher.flatten(1), dim=1).mean()


torch.manual_seed(0)
student = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
teacher = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3))
distiller = Distiller(student, teacher, [Term("cos", "projected_cosine", student="1", teacher="1")])
batch = {"inputs": torch.randn(4, 6), "labels": torch.tensor([0, 1, 2, 0])}
distiller.build(batch)
loss = distiller.extras["cos"]["loss"]
adapters = distiller.extras["cos"]["adapters"]
assert isinstance(loss, ProjectedCosine) and loss.project.weight.shape == (9, 5)
assert all(isinstance(a, nn.Identity) for a in adapters)  # compares_shapes: no adapter
value = distiller(batch).loss
value.backward()
assert loss.project.weight.grad is not None and student[0].weight.grad is not None
assert "projected_cosine" in L.available("feature")
print("ok", float(value))
'''


def test_a_loss_registered_outside_torchkd_works_in_a_distiller(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "my_losses.py"
    script.write_text(EXTERNAL_LOSS)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


@pytest.mark.parametrize(
    ("term", "field"),
    [
        (Term("hint", "hint", student="feature.2", teacher="features.2"), "student"),
        (Term("hint", "hint", student="features.2", teacher="feature.2"), "teacher"),
        (Term("kd", "kd", weight="fixed"), "weight"),
        (Term("kd", "kd", loss_kwargs={"temperature": 2.0}, temperature=3.0), ""),
    ],
)
def test_term_errors_name_the_field_at_fault(term: Term, field: str) -> None:
    with pytest.raises(TermError) as caught:
        Distiller(seeded(4, 0), seeded(8, 1), [Term("ok", "ce"), term])
    assert (caught.value.term, caught.value.field) == (term.name, field)


def test_build_refuses_logits_of_different_class_counts() -> None:
    # (a bad loss argument fails when the loss is first called: see tests/config/test_checks.py)
    student = nn.Linear(4, 5)
    distiller = Distiller(student, nn.Linear(4, 10), [Term("kd", "kd")])
    with pytest.raises(TermError, match="student's logits have 5 classes but teacher 0's have 10"):
        distiller.build({"inputs": torch.randn(3, 4)})
