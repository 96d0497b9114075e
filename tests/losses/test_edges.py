"""Numerics at the edges (issue 12, section 1): one regression test per defect found by the
robustness sweep. Each test failed before its fix; the fuzz suite (``test_fuzz.py``) covers the
same classes of input for every registered loss."""

from __future__ import annotations

import math

import pytest
import torch
from tolerances import (
    FLOAT32_EPS,
    FLOAT64_EPS,
    cascade_sum_terms,
    divergence_tolerance,
    float32_tolerance,
)
from torch import Tensor

import torchkd.losses as L
from torchkd.losses import _common, _compile
from torchkd.losses.crd import crd_nce_loss
from torchkd.losses.crd_inbatch import crd_inbatch_loss
from torchkd.losses.feature import at_loss, hint_loss
from torchkd.losses.logit import standardize_logits

NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_compile.COMPILE_ENV, "0")


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = 2.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def vocab_masked(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Logits whose last two classes are masked with ``-inf`` (vocabulary masking)."""
    values = randn(*shape, seed=seed, dtype=dtype)
    values[..., -2:] = NEG_INF
    return values


def finite_student_gradient(loss: Tensor, student: Tensor) -> Tensor:
    (gradient,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(gradient).all(), gradient
    return gradient


# --------------------------------------------------------------------------- -inf logits


@pytest.mark.parametrize(
    "call",
    [
        lambda s, t, y: L.ls_kd_loss(s, t),
        lambda s, t, y: L.hinton_loss(s, t, y, standardize=True),
        lambda s, t, y: L.kd_loss(s, t, standardize=True),
        lambda s, t, y: L.dkd_loss(s, t, y),
        lambda s, t, y: L.logit_mse_loss(s, t),
    ],
    ids=["ls_kd", "hinton_standardize", "kd_standardize", "dkd", "logit_mse"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_neg_inf_is_finite_and_equals_the_loss_without_those_classes(call, dtype):
    student = vocab_masked(4, 3, 7, seed=1, dtype=dtype).requires_grad_()
    teacher = vocab_masked(4, 3, 7, seed=2, dtype=dtype)
    labels = torch.randint(0, 5, (4, 3), generator=torch.Generator().manual_seed(3))
    value = call(student, teacher, labels)
    assert torch.isfinite(value), value
    gradient = finite_student_gradient(value, student)
    assert (gradient[..., -2:] == 0).all()
    # Masked classes carry no probability: the loss equals the loss on the other classes.
    expected = call(student.detach()[..., :-2], teacher[..., :-2], labels)
    torch.testing.assert_close(value.detach(), expected)


@pytest.mark.parametrize("name", ["ls_kd", "dkd", "logit_mse", "kd", "jsd", "reverse_kl"])
def test_shared_neg_inf_student_equals_teacher_is_zero(name):
    logits = vocab_masked(4, 7, seed=4).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3])
    loss = L.create(name)
    args = (logits, logits.detach().clone(), labels) if name == "dkd" else (logits, logits.detach())
    value = loss(*args)
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6)
    gradient = finite_student_gradient(value, logits)
    assert gradient.abs().max() < 1e-5


def test_ce_label_smoothing_spreads_over_the_classes_that_exist():
    """Found by the fuzz suite: smoothing mass on ``-inf`` classes made the loss ``inf``."""
    logits = vocab_masked(4, 7, seed=44).requires_grad_()
    labels = torch.tensor([0, 1, 2, 4])
    value = L.ce_loss(logits, labels, label_smoothing=0.1)
    finite_student_gradient(value, logits)
    expected = torch.nn.functional.cross_entropy(
        logits.detach()[:, :-2], labels, label_smoothing=0.1
    )
    torch.testing.assert_close(value.detach(), expected)


def test_standardize_keeps_neg_inf_and_standardizes_the_rest():
    row = torch.tensor([[1.0, 2.0, 3.0, NEG_INF]])
    out = standardize_logits(row)
    assert out[0, -1] == NEG_INF
    torch.testing.assert_close(out[:, :3], standardize_logits(row[:, :3]))


def test_learned_temperature_gets_a_finite_gradient_with_neg_inf():
    temperature = torch.tensor(2.0, requires_grad=True)
    student = vocab_masked(4, 7, seed=5).requires_grad_()
    teacher = vocab_masked(4, 7, seed=6)
    value = L.kd_loss(student, teacher, temperature=temperature)
    student_gradient, temperature_gradient = torch.autograd.grad(value, (student, temperature))
    assert torch.isfinite(student_gradient).all()
    assert torch.isfinite(temperature_gradient)
    plain = L.kd_loss(student[..., :-2], teacher[..., :-2], temperature=temperature)
    (expected,) = torch.autograd.grad(plain, temperature)
    torch.testing.assert_close(temperature_gradient, expected)


@pytest.mark.parametrize("name", ["jsd_loss", "kd_loss", "reverse_kl_loss", "soft_ce_loss"])
def test_compiled_loss_gradients_are_finite_where_eager_ones_are(name):
    torch._dynamo.reset()
    function = getattr(L, name)
    student = vocab_masked(4, 7, seed=7).requires_grad_()
    teacher = vocab_masked(4, 7, seed=8)
    eager = finite_student_gradient(function(student, teacher), student)
    compiled = torch.compile(function, backend="eager", fullgraph=False)
    gradient = finite_student_gradient(compiled(student, teacher), student)
    torch.testing.assert_close(gradient, eager)


# --------------------------------------------------------------------------- huge magnitudes


@pytest.mark.parametrize("name", ["kd", "soft_ce", "reverse_kl", "jsd"])
def test_huge_logits_give_the_float64_value_not_inf(name):
    student = randn(4, 6, seed=9, scale=1e38).clamp(-3e38, 3e38)
    teacher = randn(4, 6, seed=10, scale=1e38).clamp(-3e38, 3e38)
    loss = L.create(name)
    value = loss(student, teacher)
    expected = loss(student.double(), teacher.double())
    assert math.isfinite(float(expected)) and float(expected) < 3e38
    assert torch.isfinite(value), value
    # logit differences overflow float32 (±6e38), so the rows are redone in float64 and
    # rounded to float32 (1), averaged over 4 non-negative rows in float32, times T² = 1 (1)
    rel = float32_tolerance(2 + cascade_sum_terms(4), 1.0)
    assert float(value) == pytest.approx(float(expected), rel=rel)


def test_huge_features_give_the_float64_value_and_zero_at_equality():
    cases = {
        "at": ([randn(4, 3, 4, 4, seed=11, scale=1e38)], [randn(4, 5, 4, 4, seed=12, scale=1e38)]),
        "sp": (randn(4, 6, seed=13, scale=1e38), randn(4, 5, seed=14, scale=1e38)),
        "rkd": (randn(4, 6, seed=15, scale=1e38), randn(4, 5, seed=16, scale=1e38)),
        "ls_kd": (randn(4, 6, seed=17, scale=1e38), randn(4, 6, seed=18, scale=1e38)),
        "pkt": (randn(4, 6, seed=19, scale=1e38), randn(4, 5, seed=20, scale=1e38)),
        "nst": (randn(4, 3, 4, 4, seed=21, scale=1e38), randn(4, 5, 4, 4, seed=22, scale=1e38)),
    }
    for name, (student, teacher) in cases.items():
        loss = L.create(name)

        def as64(side):
            return [t.double() for t in side] if isinstance(side, list) else side.double()

        def scaled(side):  # by 2^-100: exact, and it commutes with every rounding
            return [t * 2.0**-100 for t in side] if isinstance(side, list) else side * 2.0**-100

        value, expected = loss(student, teacher), loss(as64(student), as64(teacher))
        assert torch.isfinite(value), (name, value)
        # no rounding of its own at this size: bit-identical to the loss of ordinary-sized
        # inputs; then a check that it is the float64 value, not an overflowed or clamped one
        # (1e-3 is no rounding tolerance: 8000 ε₃₂ of headroom over the ≤ 2 ε₃₂ seen)
        assert torch.equal(value, loss(scaled(student), scaled(teacher))), name
        assert float(value) == pytest.approx(float(expected), rel=1e-3, abs=1e-6), name
        same = loss(student, student)
        assert float(same) == pytest.approx(0.0, abs=1e-6), (name, same)


# --------------------------------------------------------------------------- half precision


def test_hint_half_precision_accumulates_and_returns_float32():
    student = randn(8, 2048, 7, 7, seed=23, dtype=torch.float16, scale=1.0)
    teacher = randn(8, 2048, 7, 7, seed=24, dtype=torch.float16, scale=1.0)
    value = hint_loss(student, teacher, reduction="sum")
    assert value.dtype == torch.float32
    expected = (student.double() - teacher.double()).square().sum()
    # The subtraction and the square round once each, the cascade sums over 2048·7·7 elements,
    # then over the 8 rows; every term is positive, so Σ|x| is the sum itself.
    roundings = 2 + cascade_sum_terms(2048 * 7 * 7) + cascade_sum_terms(8)
    tolerance = float32_tolerance(roundings, float(expected))
    assert float(value) == pytest.approx(float(expected), abs=tolerance)
    assert float(hint_loss(student, teacher, reduction="batchmean")) == pytest.approx(
        float(expected) / 8,
        abs=tolerance / 8,  # dividing by 8 is exact
    )


def test_ce_half_precision_sum_is_finite_float32():
    logits = randn(4, 8192, 10, seed=25, dtype=torch.float16)
    labels = torch.randint(0, 10, (4, 8192), generator=torch.Generator().manual_seed(26))
    value = L.ce_loss(logits, labels, reduction="sum")
    assert value.dtype == torch.float32 and torch.isfinite(value)
    expected = torch.nn.functional.cross_entropy(
        logits.double().reshape(-1, 10), labels.reshape(-1), reduction="sum"
    )
    # Each row's -log softmax: Σ exp of 10 terms, the log, two subtractions, all of size at most
    # 2 max|z| + log 10; then a cascade sum of the 4·8192 positive rows.
    row_size = 2 * float(logits.abs().max()) + math.log(10)
    tolerance = 4 * 8192 * float32_tolerance(10 + 4, row_size) + float32_tolerance(
        cascade_sum_terms(4 * 8192), float(expected)
    )
    assert float(value) == pytest.approx(float(expected), abs=tolerance)


@pytest.mark.parametrize("name", L.available())
def test_every_loss_returns_float32_for_half_inputs(name):
    from .test_fuzz import build_call

    call = build_call(name, dtype=torch.float16, seed=0)
    value = call()
    assert value.dtype == torch.float32, (name, value.dtype)


def test_exactly_one_float32_upcast_helper():
    import pathlib

    root = pathlib.Path(L.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")):
        if path.name == "_common.py":
            continue
        text = path.read_text()
        for needle in ("promote_types(", ".float()", "to(torch.float32", "dtype=torch.float32"):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert not offenders, offenders


# --------------------------------------------------------------------------- large temperatures


@pytest.mark.parametrize("temperature", [1e2, 1e4, 1e6])
def test_large_temperature_kd_dkd_multi_teacher_match_float64(temperature):
    student = randn(8, 10, seed=27)
    teachers = [randn(8, 10, seed=28), randn(8, 10, seed=29)]
    labels = torch.arange(8) % 10
    calls = {
        "kd": lambda s, t: L.kd_loss(s, t[0], temperature=temperature),
        "reverse_kl": lambda s, t: L.reverse_kl_loss(s, t[0], temperature=temperature),
        "jsd": lambda s, t: L.jsd_loss(s, t[0], temperature=temperature),
        "dkd": lambda s, t: L.dkd_loss(s, t[0], labels, temperature=temperature),
        "multi": lambda s, t: L.multi_teacher_kd_loss(s, t, temperature=temperature),
    }
    for name, call in calls.items():
        value = call(student, teachers)
        expected = call(student.double(), [t.double() for t in teachers])
        assert float(value) >= 0, (name, value)
        tolerance = _large_temperature_tolerance(name, student, teachers, temperature, expected)
        assert float(value) == pytest.approx(float(expected), rel=0, abs=tolerance), name


def _large_temperature_tolerance(
    name: str, student: Tensor, teachers: list[Tensor], temperature: float, expected: Tensor
) -> float:
    """The bound of a ``T²``-scaled divergence of ``[N, C]`` logits at a large ``T``.

    Rows whose float32 rounding is not small next to their value are redone in float64
    (``unresolved_divergences``); when every row of the float64 reference is below that
    threshold, the loss is the float64 rows' bound (ε₆₄) plus their float32 rounding and the
    float32 mean; otherwise, the float32 bound (which covers both kinds of rows). DKD is
    ``α TCKD + β NCKD`` (α = 1, β = 8): two divergences of the same ``z / T`` over at most
    ``C`` classes, each within KD's bound; the multi-teacher loss is the mean of KD rows, within
    the largest teacher's bound.
    """
    rows, classes = student.shape
    rounding = FLOAT32_EPS * math.log(classes)
    refined = (
        rounding * temperature**2 > _common.ABSOLUTE_TOLERANCE
        and float(expected) / temperature**2 < _common.PRECISION_FACTOR * rounding / rows
    )  # the largest row, below
    divergence = {"reverse_kl": "reverse_kl", "jsd": "jsd"}.get(name, "forward_kl")
    eps = FLOAT64_EPS if refined else FLOAT32_EPS
    bound = max(
        divergence_tolerance(
            student.double(),
            teacher.double(),
            temperature=temperature,
            divergence=divergence,
            scale=temperature**2,
            eps=eps,
        ).loss
        for teacher in (teachers if name == "multi" else teachers[:1])
    )
    factor = 1 + 8 if name == "dkd" else 1
    # the rows' float32 rounding (refined) or the weighted mean of the teachers (multi): ≤ 3
    # roundings per row, then the mean over the N non-negative rows
    rounded = float32_tolerance(3 + cascade_sum_terms(rows), float(expected))
    return factor * bound + rounded


def test_temperature_beyond_the_bound_is_refused():
    student, teacher = randn(2, 5, seed=30), randn(2, 5, seed=31)
    with pytest.raises(ValueError, match="temperature"):
        L.kd_loss(student, teacher, temperature=2e6)


# --------------------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize("name", ["kd", "tvd", "jsd", "dist", "dkd", "hinton", "ls_kd"])
@pytest.mark.parametrize("temperature", [math.inf, math.nan, "2", True])
def test_bad_temperature_is_refused_naming_it(name, temperature):
    student, teacher = randn(4, 5, seed=32), randn(4, 5, seed=33)
    labels = torch.arange(4)
    function = L.entry(name).functional
    args = (student, teacher, labels) if name in ("dkd", "hinton") else (student, teacher)
    error = TypeError if isinstance(temperature, str | bool) else ValueError
    with pytest.raises(error, match="temperature"):
        function(*args, temperature=temperature)


def test_crd_inbatch_infinite_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        crd_inbatch_loss(randn(4, 3), randn(4, 3), temperature=math.inf)
    with pytest.raises(ValueError, match="temperature"):
        L.CRDInBatchLoss(3, 3, temperature=math.inf)


@pytest.mark.parametrize(
    "build",
    [
        lambda: L.rkd_loss(randn(4, 3), randn(4, 3), eps=math.nan),
        lambda: L.rkd_loss(randn(4, 3), randn(4, 3), eps=-1.0),
        lambda: L.RKDLoss(eps=-1.0),
        lambda: L.pkt_loss(randn(4, 3), randn(4, 3), eps=math.nan),
        lambda: L.pkt_loss(randn(4, 3), randn(4, 3), eps=-1.0),
        lambda: L.PKTLoss(eps=-1.0),
        lambda: L.VIDLoss(3, 4, 5, eps=math.nan),
        lambda: L.VIDLoss(3, 4, 5, eps=-1.0),
        lambda: L.VIDLoss(3, 4, 5, init_pred_var=math.inf),
        lambda: at_loss([randn(2, 3, 4, 4)], [randn(2, 3, 4, 4)], p=0.0),
        lambda: at_loss([randn(2, 3, 4, 4)], [randn(2, 3, 4, 4)], p=-1.0),
        lambda: at_loss([randn(2, 3, 4, 4)], [randn(2, 3, 4, 4)], p=math.nan),
        lambda: L.ATLoss(p=0.0),
        lambda: L.AttentionAlignLoss([3], [4], embed_dim=0),
        lambda: L.AttentionAlignLoss([3], [4], embed_dim=-2),
    ],
    ids=[
        "rkd-eps-nan",
        "rkd-eps-neg",
        "RKDLoss-eps-neg",
        "pkt-eps-nan",
        "pkt-eps-neg",
        "PKTLoss-eps-neg",
        "vid-eps-nan",
        "vid-eps-neg",
        "vid-init-inf",
        "at-p-zero",
        "at-p-neg",
        "at-p-nan",
        "ATLoss-p-zero",
        "align-embed-zero",
        "align-embed-neg",
    ],
)
def test_bad_hyperparameters_are_refused(build):
    with pytest.raises(ValueError, match=r"eps|p must|embed_dim|init_pred_var"):
        build()


def test_vid_large_initial_variance_works():
    loss = L.VIDLoss(3, 4, 5, init_pred_var=1e4)
    torch.testing.assert_close(loss.variance(), torch.full((5,), 1e4))
    assert torch.isfinite(loss(randn(2, 3, 4, 4), randn(2, 5, 4, 4)))


@pytest.mark.parametrize("temperature", [0.0125, 0.005, 0.001])
def test_crd_small_temperature_is_finite(temperature):
    torch.manual_seed(0)
    crd = L.CRDLoss(6, 5, num_samples=32, feat_dim=4, num_negatives=8, temperature=temperature)
    student, teacher = randn(4, 6, seed=34), randn(4, 5, seed=35)
    value = crd(student, teacher, torch.arange(4))
    assert torch.isfinite(value), value
    assert torch.isfinite(crd(student, teacher, torch.arange(4, 8)))
    anchor = torch.nn.functional.normalize(randn(2, 3, seed=36), dim=1)
    rows = torch.nn.functional.normalize(randn(2, 5, 3, seed=37), dim=2)
    log_z = 1.0 / temperature + math.log(32)
    value = crd_nce_loss(
        anchor, rows, temperature=temperature, log_normalizer=log_z, num_samples=32
    )
    expected = crd_nce_loss(
        anchor.double(),
        rows.double(),
        temperature=temperature,
        log_normalizer=log_z,
        num_samples=32,
    )
    # each of the 5 terms per anchor: logsigmoid(v·m / τ − log Z − log(K/N)), the 3-term dot
    # product of unit vectors (≤ 1) and the division: 4 ε / τ; the two subtractions and the
    # logsigmoid (slope ≤ 1): 4 ε |x| with |x| ≤ 2 / τ + log 32 + log 8; then the float32
    # mean over the 2 · 5 terms
    term = float32_tolerance(4, 1 / temperature)
    term += float32_tolerance(4, 2 / temperature + math.log(32) + math.log(8))
    tolerance = 5 * term + float32_tolerance(1 + cascade_sum_terms(10), float(expected))
    assert float(value) == pytest.approx(float(expected), rel=0, abs=tolerance)


def test_rkd_eps_zero_gradient_is_finite():
    student = randn(5, 4, seed=38).requires_grad_()
    value = L.rkd_loss(student, randn(5, 3, seed=39), eps=0.0)
    finite_student_gradient(value, student)


def test_at_fractional_p_gradient_at_exact_zeros_is_finite():
    student = torch.relu(randn(2, 3, 4, 4, seed=40)).requires_grad_()
    value = at_loss([student], [torch.relu(randn(2, 3, 4, 4, seed=41))], p=0.5)
    finite_student_gradient(value, student)


def test_pkt_eps_zero_with_a_zero_row_is_finite():
    student = randn(4, 3, seed=42)
    student[1] = 0.0
    student.requires_grad_()
    value = L.pkt_loss(student, randn(4, 3, seed=43), eps=0.0)
    assert torch.isfinite(value)
    finite_student_gradient(value, student)


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("name", L.available())
def test_empty_batch_is_a_clear_value_error(name):
    from .test_fuzz import build_call

    call = build_call(name, dtype=torch.float32, seed=0, batch=0)
    with pytest.raises(ValueError, match=r"empty"):
        call()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("name", ["ce", "hinton", "dkd", "multi_teacher_kd"])
def test_narrow_integer_labels_work(name, dtype):
    from .test_fuzz import build_call

    wide = build_call(name, dtype=torch.float32, seed=0)()
    narrow = build_call(name, dtype=torch.float32, seed=0, label_dtype=dtype)()
    torch.testing.assert_close(narrow, wide)


@pytest.mark.parametrize("name", L.available())
def test_float32_student_with_float64_teacher_is_promoted(name):
    from .test_fuzz import build_call

    if L.entry(name).signature == "labels":
        pytest.skip("no teacher")
    mixed = build_call(name, dtype=torch.float32, seed=0, teacher_dtype=torch.float64)()
    assert torch.isfinite(mixed)
    if L.entry(name).functional is not None:
        assert mixed.dtype == torch.float64
        both = build_call(name, dtype=torch.float64, seed=0, rounded_to=torch.float32)()
        torch.testing.assert_close(mixed, both)


# --------------------------------------------------------------------------- fused, from hidden


def fused_inputs(
    seed: int = 50, rows: int = 6, vocab: int = 9, scale: float = 1.0, dtype=torch.float32
):
    """Student hidden ``[rows, 4]`` + weight ``[vocab, 4]``, teacher ``[rows, 3]`` + ``[vocab, 3]``,
    labels."""
    student = [randn(rows, 4, seed=seed, dtype=dtype), randn(vocab, 4, seed=seed + 1, dtype=dtype)]
    teacher = [
        randn(rows, 3, seed=seed + 2, dtype=dtype),
        randn(vocab, 3, seed=seed + 3, dtype=dtype),
    ]
    student = [t * scale for t in student]
    teacher = [t * scale for t in teacher]
    labels = torch.randint(0, vocab - 2, (rows,), generator=torch.Generator().manual_seed(seed))
    return student, teacher, labels


@pytest.mark.parametrize(
    ("argument", "value", "error"),
    [
        ("temperature", "2", TypeError),
        ("temperature", math.inf, ValueError),
        ("temperature", math.nan, ValueError),
        ("temperature", 0.0, ValueError),
        ("temperature", 2e6, ValueError),
        ("hard_label_weight", "2", TypeError),
        ("hard_label_weight", math.inf, ValueError),
        ("hard_label_weight", -1.0, ValueError),
        ("beta", math.nan, ValueError),
        ("beta", "0.5", TypeError),
        ("student_logit_scale", math.inf, ValueError),
        ("student_logit_scale", "2", TypeError),
        ("teacher_logit_scale", 0.0, ValueError),
        ("teacher_logit_scale", math.nan, ValueError),
        ("student_softcap", math.inf, ValueError),
        ("student_softcap", "30", TypeError),
        ("teacher_softcap", -1.0, ValueError),
        ("teacher_softcap", math.nan, ValueError),
        ("chunk_size", 0, ValueError),
        ("chunk_size", 2.5, ValueError),
        ("chunk_size", "4", TypeError),
        ("num_items_in_batch", math.inf, ValueError),
        ("num_items_in_batch", math.nan, ValueError),
        ("num_items_in_batch", 0, ValueError),
        ("num_items_in_batch", "12", TypeError),
        ("num_items_in_batch", torch.tensor([3.0, 4.0]), ValueError),
        ("ignore_index", 1.5, ValueError),
        ("ignore_index", "-100", TypeError),
    ],
)
def test_fused_bad_hyperparameters_are_refused_naming_them(argument, value, error):
    student, teacher, labels = fused_inputs()
    with pytest.raises(error, match=argument):
        L.fused_linear_kd_loss(*student, *teacher, labels, **{argument: value})
    if argument != "num_items_in_batch":  # a forward argument, not a stored hyperparameter
        with pytest.raises(error, match=argument):
            L.FusedLinearKDLoss(**{argument: value})


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd"])
def test_fused_neg_inf_bias_masks_vocabulary_on_both_sides(divergence):
    """Shared ``-inf`` output biases (masked vocabulary entries) contribute nothing: the loss
    and its gradients equal those of the model without those entries."""
    student, teacher, labels = fused_inputs(seed=51)
    student = [t.requires_grad_() for t in student]
    biases = [randn(9, seed=56), randn(9, seed=57)]
    for bias in biases:
        bias[-2:] = NEG_INF
    options = {"divergence": divergence, "temperature": 2.0, "hard_label_weight": 0.5}
    value = L.fused_linear_kd_loss(
        *student, *teacher, labels, student_bias=biases[0], teacher_bias=biases[1], **options
    )
    assert torch.isfinite(value), value
    hidden_gradient, weight_gradient = torch.autograd.grad(value, student)
    assert torch.isfinite(hidden_gradient).all() and torch.isfinite(weight_gradient).all()
    assert (weight_gradient[-2:] == 0).all()
    kept = [student[0].detach().requires_grad_(), student[1].detach()[:-2].requires_grad_()]
    expected = L.fused_linear_kd_loss(
        kept[0],
        kept[1],
        teacher[0],
        teacher[1][:-2],
        labels,
        student_bias=biases[0][:-2],
        teacher_bias=biases[1][:-2],
        **options,
    )
    torch.testing.assert_close(value.detach(), expected.detach())
    expected_hidden, expected_weight = torch.autograd.grad(expected, kept)
    torch.testing.assert_close(hidden_gradient, expected_hidden)
    torch.testing.assert_close(weight_gradient[:-2], expected_weight)


def test_fused_logits_beyond_float32_give_the_float64_result():
    """Hidden states and weights of ~1e20 make logits of ~1e40, beyond float32: the loss is
    redone in float64 (TVD is bounded, so its value is representable), and identical student and
    teacher still give exactly 0 with a zero gradient."""
    student, teacher, labels = fused_inputs(seed=52, scale=1e20)
    hidden = student[0].clone().requires_grad_()
    value = L.fused_linear_kd_loss(hidden, student[1], *teacher, labels, divergence="tvd")
    (gradient,) = torch.autograd.grad(value, hidden)
    wide = student[0].double().requires_grad_()
    expected = L.fused_linear_kd_loss(
        wide, student[1].double(), *(t.double() for t in teacher), labels, divergence="tvd"
    )
    (expected_gradient,) = torch.autograd.grad(expected, wide)
    assert value.dtype == torch.float32 and 0 < float(value.detach()) <= 1
    # redone in float64 by the same kernel on the same values, then rounded once to float32
    rel = float32_tolerance(1, 1.0)
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=rel)
    torch.testing.assert_close(gradient, expected_gradient.float())
    same = L.fused_linear_kd_loss(hidden, student[1], hidden.detach(), student[1], temperature=4.0)
    (same_gradient,) = torch.autograd.grad(same, hidden)
    assert float(same.detach()) == 0.0
    assert (same_gradient == 0).all()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_fused_narrow_integer_labels_work(dtype):
    student, teacher, labels = fused_inputs(seed=53)
    wide = L.fused_linear_kd_loss(*student, *teacher, labels, hard_label_weight=0.5)
    narrow = L.fused_linear_kd_loss(*student, *teacher, labels.to(dtype), hard_label_weight=0.5)
    torch.testing.assert_close(narrow, wide)


def test_fused_float64_teacher_promotes_and_gradients_keep_their_dtype():
    """A float32 student with a float64 teacher (hidden states, dense or top-k logits) computes
    in float64; each input's gradient keeps that input's dtype."""
    student, teacher, labels = fused_inputs(seed=54)
    hidden = student[0].requires_grad_()
    wide_teacher = [t.double() for t in teacher]
    logits = wide_teacher[0] @ wide_teacher[1].T
    targets = {
        "hidden": {"teacher_hidden": wide_teacher[0], "teacher_weight": wide_teacher[1]},
        "dense": {"teacher_logits": logits},
        "top-k": {"teacher_logits": L.TopKLogits.from_logits(logits, k=4)},
    }
    for name, teacher_kwargs in targets.items():
        value = L.fused_linear_kd_loss(hidden, student[1], labels=labels, **teacher_kwargs)
        assert value.dtype == torch.float64, name
        (gradient,) = torch.autograd.grad(value, hidden)
        assert gradient.dtype == torch.float32, name
        expected = L.fused_linear_kd_loss(
            hidden.detach().double(), student[1].double(), labels=labels, **teacher_kwargs
        )
        torch.testing.assert_close(value.detach(), expected, msg=name)
