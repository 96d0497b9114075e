"""Independent brute-force references for every registered loss, and how to test each one.

Every loss registered in :mod:`torchkd.losses` needs an entry in :data:`REFERENCES`; the test
template (``test_template.py``) fails for a loss without one. An entry is a :class:`Reference`:

- ``fn``: the reference, written from the paper's formula with explicit Python loops over
  rows and classes (``math``/``numpy`` only, never a call into torchkd). It is called with the
  loss's positional inputs converted to float64 numpy arrays (lists stay lists, labels and
  indices stay integer arrays), the test's keyword arguments, and ``reduction=`` when the
  reduction test runs. A loss without a functional form (stateful modules) is checked through
  its module: ``fn`` then also receives ``module=`` (read its buffers or parameters, never call
  its forward). It returns a float, or an array for ``reduction="none"``.
- ``kwargs``: the (preferably non-default) hyperparameters every check uses.
- ``variants``: more keyword sets checked against the reference by value.
- ``reductions``: the reductions the loss supports, each checked against ``fn``; for logit
  losses every other reduction must raise ``ValueError``. Empty: only the default is checked.
- ``skip``: check name -> reason, for a check that does not apply (the reason is shown).
- ``make_inputs``: optional ``(generator, dtype) -> tuple`` of positional inputs, replacing the
  template's inputs for the loss's signature (e.g. a feature loss needing particular shapes).
- ``teacher_grad``: whether gradcheck also differentiates the teacher side.

To add a loss: write ``my_reference(...)`` below (or in a file imported here) and add
``REFERENCES["my_loss"] = Reference(my_reference, {...})``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .hybrid_uld_reference import hybrid_uld_reference
from .uld_reference import fused_linear_uld_reference, uld_reference

ALL_REDUCTIONS: tuple[str, ...] = ("batchmean", "sum", "mean", "none")


@dataclass(frozen=True)
class Reference:
    """How the template checks one registered loss (see the module docstring)."""

    fn: Callable[..., float | np.ndarray]
    kwargs: dict[str, object] = field(default_factory=dict)
    variants: tuple[dict[str, object], ...] = ()
    reductions: tuple[str, ...] = ()
    skip: dict[str, str] = field(default_factory=dict)
    make_inputs: Callable[..., tuple[object, ...]] | None = None
    teacher_grad: bool = True


# --------------------------------------------------------------------------- building blocks


def softmax(logits: np.ndarray, temperature: float = 1.0) -> list[float]:
    """Softmax of one row, by explicit loop (shifted by the max for stability)."""
    scaled = [float(value) / temperature for value in logits]
    largest = max(scaled)
    exps = [math.exp(value - largest) for value in scaled]
    total = sum(exps)
    return [value / total for value in exps]


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> list[float]:
    """Log-softmax of one row, by explicit loop."""
    scaled = [float(value) / temperature for value in logits]
    largest = max(scaled)
    log_total = largest + math.log(sum(math.exp(value - largest) for value in scaled))
    return [value - log_total for value in scaled]


def kl(p: list[float], log_p: list[float], log_q: list[float]) -> float:
    """KL(p || q) = sum_c p_c (log p_c - log q_c), with 0 log 0 = 0."""
    return sum(pc * (lpc - lqc) for pc, lpc, lqc in zip(p, log_p, log_q, strict=True) if pc > 0)


def kl_from_probs(p: list[float], q: list[float]) -> float:
    """KL(p || q) from probabilities (q > 0 wherever p > 0)."""
    return sum(pc * math.log(pc / qc) for pc, qc in zip(p, q, strict=True) if pc > 0)


def rows_of(array: np.ndarray) -> list[np.ndarray]:
    """The rows of ``[..., C]`` as a list of ``[C]`` arrays (row-major order)."""
    return list(array.reshape(-1, array.shape[-1]))


def reduce(values: list[float], reduction: str, rows_shape: tuple[int, ...], classes: int):
    """Apply a torchkd reduction to per-row values by its definition."""
    if reduction == "none":
        return np.array(values, dtype=np.float64).reshape(rows_shape)
    total = math.fsum(values)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / len(values)
    if reduction == "mean":
        return total / (len(values) * classes)
    raise ValueError(reduction)


def rowwise(row_fn: Callable[..., float], *, mean_over_classes: bool = True):
    """Turn ``row_fn(student_row, teacher_row, [label], **kw)`` into a batch reference.

    ``mean_over_classes``: whether ``reduction="mean"`` also divides by the class count (true
    for distribution losses; false for a loss with one value per row, like cross-entropy).
    """

    def reference(*inputs: np.ndarray, reduction: str = "batchmean", **kwargs: object):
        student = inputs[0]
        flat_inputs = [rows_of(x) if x.dtype.kind == "f" else list(x.reshape(-1)) for x in inputs]
        values = [row_fn(*row_inputs, **kwargs) for row_inputs in zip(*flat_inputs, strict=True)]
        classes = student.shape[-1] if mean_over_classes else 1
        return reduce(values, reduction, student.shape[:-1], classes)

    return reference


# --------------------------------------------------------------------------- logit losses


def ce_row(student: np.ndarray, label: int, *, label_smoothing: float = 0.0) -> float:
    """Cross-entropy with label smoothing: -sum_c q_c log softmax(z)_c."""
    log_p = log_softmax(student)
    classes = len(log_p)
    target = [
        label_smoothing / classes + (1 - label_smoothing) * (c == label) for c in range(classes)
    ]
    return -sum(q * lp for q, lp in zip(target, log_p, strict=True))


def kd_row(student: np.ndarray, teacher: np.ndarray, *, temperature: float = 4.0) -> float:
    """Hinton et al. 2015: T^2 KL(p_T || p_S), p = softmax(z / T)."""
    log_p_teacher = log_softmax(teacher, temperature)
    p_teacher = [math.exp(v) for v in log_p_teacher]
    return temperature**2 * kl(p_teacher, log_p_teacher, log_softmax(student, temperature))


def reverse_kl_row(student: np.ndarray, teacher: np.ndarray, *, temperature: float = 4.0) -> float:
    """T^2 KL(p_S || p_T)."""
    return kd_row(teacher, student, temperature=temperature)


def hinton_row(
    student: np.ndarray,
    teacher: np.ndarray,
    label: int,
    *,
    alpha: float = 0.9,
    temperature: float = 4.0,
) -> float:
    """alpha * T^2 KL(p_T || p_S) + (1 - alpha) CE(z_S, y) (Hinton et al. 2015)."""
    soft = kd_row(student, teacher, temperature=temperature)
    return alpha * soft + (1 - alpha) * ce_row(student, label)


def soft_ce_row(student: np.ndarray, teacher: np.ndarray, *, temperature: float = 4.0) -> float:
    """T^2 H(p_T, p_S) = -T^2 sum_c p_T,c log p_S,c."""
    p_teacher = softmax(teacher, temperature)
    log_p_student = log_softmax(student, temperature)
    return -(temperature**2) * sum(p * lq for p, lq in zip(p_teacher, log_p_student, strict=True))


def jsd_row(
    student: np.ndarray, teacher: np.ndarray, *, beta: float = 0.5, temperature: float = 1.0
) -> float:
    """Generalized JSD (Agarwal et al. 2024): beta KL(p_T||m) + (1-beta) KL(p_S||m), x T^2.

    ``m = beta p_T + (1 - beta) p_S``; beta = 0 is forward KL(p_T||p_S), beta = 1 reverse KL.
    """
    p_teacher = softmax(teacher, temperature)
    p_student = softmax(student, temperature)
    if beta == 0:
        return temperature**2 * kl_from_probs(p_teacher, p_student)
    if beta == 1:
        return temperature**2 * kl_from_probs(p_student, p_teacher)
    mixture = [beta * pt + (1 - beta) * ps for pt, ps in zip(p_teacher, p_student, strict=True)]
    divergence = beta * kl_from_probs(p_teacher, mixture) + (1 - beta) * kl_from_probs(
        p_student, mixture
    )
    return temperature**2 * divergence


def tvd_row(student: np.ndarray, teacher: np.ndarray, *, temperature: float = 1.0) -> float:
    """Total variation distance 1/2 sum_c |p_T,c - p_S,c| (no T^2 factor)."""
    p_teacher = softmax(teacher, temperature)
    p_student = softmax(student, temperature)
    return 0.5 * sum(abs(pt - ps) for pt, ps in zip(p_teacher, p_student, strict=True))


def skew_kl_row(
    student: np.ndarray,
    teacher: np.ndarray,
    *,
    skew_lambda: float = 0.1,
    temperature: float = 1.0,
    reverse: bool = False,
) -> float:
    """DistiLLM's skew KL (Ko et al. 2024), x T^2: forward KL(p_T || l p_T + (1 - l) p_S),
    reverse KL(p_S || l p_S + (1 - l) p_T)."""
    p_teacher = softmax(teacher, temperature)
    p_student = softmax(student, temperature)
    first, second = (p_student, p_teacher) if reverse else (p_teacher, p_student)
    mixture = [skew_lambda * a + (1 - skew_lambda) * b for a, b in zip(first, second, strict=True)]
    return temperature**2 * kl_from_probs(first, mixture)


def skew_reverse_kl_row(student: np.ndarray, teacher: np.ndarray, **kwargs: float) -> float:
    return skew_kl_row(student, teacher, reverse=True, **kwargs)


def akl_weight(p_teacher: list[float], p_student: list[float], akl_mu: float) -> float:
    """AKL's g_head / (g_head + g_tail): the head is the teacher's top token and every token
    whose cumulative teacher mass (descending, ties by index, up to and including it) is at most
    mu (the authors' get_ratio); 1/2 where the gaps are all 0."""
    order = sorted(range(len(p_teacher)), key=lambda c: (-p_teacher[c], c))
    head = tail = cumulative = 0.0
    for rank, c in enumerate(order):
        gap = abs(p_teacher[c] - p_student[c])
        cumulative += p_teacher[c]
        if rank == 0 or cumulative <= akl_mu:
            head += gap
        else:
            tail += gap
    return head / (head + tail) if head + tail > 0 else 0.5


def akl_row(
    student: np.ndarray, teacher: np.ndarray, *, akl_mu: float = 0.5, temperature: float = 1.0
) -> float:
    """Adaptive KL (Wu et al. 2025), x T^2: w_head KL(p_T || p_S) + w_tail KL(p_S || p_T)."""
    p_teacher = softmax(teacher, temperature)
    p_student = softmax(student, temperature)
    weight = akl_weight(p_teacher, p_student, akl_mu)
    forward, reverse = kl_from_probs(p_teacher, p_student), kl_from_probs(p_student, p_teacher)
    return temperature**2 * (weight * forward + (1 - weight) * reverse)


def logit_mse_row(student: np.ndarray, teacher: np.ndarray) -> float:
    """sum_c (z_S,c - z_T,c)^2 (Ba & Caruana 2014 logit regression)."""
    return sum((float(s) - float(t)) ** 2 for s, t in zip(student, teacher, strict=True))


def standardize(logits: np.ndarray, eps: float = 1e-7) -> list[float]:
    """(z - mean) / (std + eps) with the sample (N - 1) std, as in Sun et al.'s code."""
    values = [float(v) for v in logits]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return [(v - mean) / (std + eps) for v in values]


def ls_kd_row(student: np.ndarray, teacher: np.ndarray, *, temperature: float = 2.0) -> float:
    """Logit standardization KD (Sun et al., CVPR 2024): KD on z-scored logits, x T^2."""
    return kd_row(
        np.array(standardize(student)), np.array(standardize(teacher)), temperature=temperature
    )


def dkd_row(
    student: np.ndarray,
    teacher: np.ndarray,
    label: int,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> float:
    """DKD (Zhao et al. 2022): T^2 (alpha KL(b_T||b_S) + beta KL(p^_T||p^_S)).

    ``b = (p_y, 1 - p_y)``; ``p^`` = softmax over the non-target classes only.
    """
    p_student = softmax(student, temperature)
    p_teacher = softmax(teacher, temperature)
    binary_student = [p_student[label], sum(p for c, p in enumerate(p_student) if c != label)]
    binary_teacher = [p_teacher[label], sum(p for c, p in enumerate(p_teacher) if c != label)]
    rest_student = softmax(np.delete(student, label), temperature)
    rest_teacher = softmax(np.delete(teacher, label), temperature)
    tckd = kl_from_probs(binary_teacher, binary_student)
    nckd = kl_from_probs(rest_teacher, rest_student)
    return temperature**2 * (alpha * tckd + beta * nckd)


def pearson(first: list[float], second: list[float], eps: float) -> float:
    """Pearson correlation with ``eps`` added to the product of norms (DIST's code)."""
    mean_first = sum(first) / len(first)
    mean_second = sum(second) / len(second)
    centered_first = [v - mean_first for v in first]
    centered_second = [v - mean_second for v in second]
    covariance = sum(a * b for a, b in zip(centered_first, centered_second, strict=True))
    norm_first = math.sqrt(sum(a * a for a in centered_first))
    norm_second = math.sqrt(sum(b * b for b in centered_second))
    return covariance / (norm_first * norm_second + eps)


def dist_reference(
    student: np.ndarray,
    teacher: np.ndarray,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    eps: float = 1e-8,
    reduction: str = "batchmean",
) -> float:
    """DIST (Huang et al. 2022): T^2 (beta mean(1 - rho(rows)) + gamma mean(1 - rho(columns)))."""
    assert reduction in ("batchmean", "mean")
    p_student = [softmax(row, temperature) for row in rows_of(student)]
    p_teacher = [softmax(row, temperature) for row in rows_of(teacher)]
    rows, classes = len(p_student), len(p_student[0])
    inter = sum(1 - pearson(p_student[i], p_teacher[i], eps) for i in range(rows)) / rows
    intra = 0.0
    for c in range(classes):
        column_student = [p_student[i][c] for i in range(rows)]
        column_teacher = [p_teacher[i][c] for i in range(rows)]
        intra += (1 - pearson(column_student, column_teacher, eps)) / classes
    return temperature**2 * (beta * inter + gamma * intra)


def teacher_weights_row(
    teachers: list[np.ndarray], label: int | None, weighting: object
) -> list[float]:
    """Multi-teacher weights for one row (see ``multi_teacher_kd_loss``)."""
    count = len(teachers)
    if not isinstance(weighting, str):
        fixed = [float(w) for w in np.asarray(weighting, dtype=np.float64)]
        return [w / sum(fixed) for w in fixed]
    if weighting == "mean":
        return [1.0 / count] * count
    if weighting == "entropy":
        entropies = [-sum(p * math.log(p) for p in softmax(t) if p > 0) for t in teachers]
        return softmax(np.array([-h for h in entropies]))
    if weighting == "confidence":  # CA-MKD eq. 2: (1 - softmax_m(CE_m)) / (M - 1)
        if count == 1:
            return [1.0]
        cross_entropies = [-log_softmax(t)[label] for t in teachers]
        return [(1 - s) / (count - 1) for s in softmax(np.array(cross_entropies))]
    raise ValueError(weighting)


def multi_teacher_reference(
    student: np.ndarray,
    teachers: list[np.ndarray],
    labels: np.ndarray | None = None,
    *,
    weighting: object = "mean",
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> float | np.ndarray:
    """sum_m w_m,i T^2 KL(p_Tm,i || p_S,i), reduced over rows."""
    student_rows = rows_of(student)
    teacher_rows = [rows_of(t) for t in teachers]
    label_rows = [None] * len(student_rows) if labels is None else list(labels.reshape(-1))
    values = []
    for i, student_row in enumerate(student_rows):
        row_teachers = [rows[i] for rows in teacher_rows]
        weights = teacher_weights_row(row_teachers, label_rows[i], weighting)
        values.append(
            sum(
                w * kd_row(student_row, t, temperature=temperature)
                for w, t in zip(weights, row_teachers, strict=True)
            )
        )
    return reduce(values, reduction, student.shape[:-1], student.shape[-1])


_EQUAL_NOT_ZERO = "a cross-entropy term does not vanish when student equals teacher"
_AKL_WEIGHTS_CONSTANT = (
    "AKL's gradient holds its weights constant, so it is not the finite-difference derivative "
    "of the value (checked against autograd with detached weights in test_mixed_kl.py)"
)

REFERENCES: dict[str, Reference] = {
    "ce": Reference(
        rowwise(ce_row, mean_over_classes=False),
        {"label_smoothing": 0.1},
        variants=({},),
        reductions=ALL_REDUCTIONS,
    ),
    "kd": Reference(
        rowwise(kd_row), {"temperature": 2.0}, variants=({},), reductions=ALL_REDUCTIONS
    ),
    "hinton": Reference(
        rowwise(hinton_row),
        {"alpha": 0.7, "temperature": 2.0},
        variants=({},),
        reductions=ALL_REDUCTIONS,
        skip={"zero_at_equal": _EQUAL_NOT_ZERO},
    ),
    "soft_ce": Reference(
        rowwise(soft_ce_row),
        {"temperature": 2.0},
        reductions=ALL_REDUCTIONS,
        skip={"zero_at_equal": "soft cross-entropy equals the teacher's entropy at equality"},
    ),
    "reverse_kl": Reference(
        rowwise(reverse_kl_row), {"temperature": 2.0}, reductions=ALL_REDUCTIONS
    ),
    "jsd": Reference(
        rowwise(jsd_row),
        {"beta": 0.3, "temperature": 2.0},
        variants=({"beta": 0.0}, {"beta": 1.0}, {"beta": 0.5}),
        reductions=ALL_REDUCTIONS,
    ),
    "tvd": Reference(rowwise(tvd_row), {"temperature": 2.0}, reductions=ALL_REDUCTIONS),
    "skew_forward_kl": Reference(
        rowwise(skew_kl_row),
        {"skew_lambda": 0.3, "temperature": 2.0},
        variants=({"skew_lambda": 0.0}, {}),
        reductions=ALL_REDUCTIONS,
    ),
    "skew_reverse_kl": Reference(
        rowwise(skew_reverse_kl_row),
        {"skew_lambda": 0.3, "temperature": 2.0},
        variants=({"skew_lambda": 0.0}, {}),
        reductions=ALL_REDUCTIONS,
    ),
    "akl": Reference(
        rowwise(akl_row),
        {"akl_mu": 0.6, "temperature": 2.0},
        variants=({"akl_mu": 0.0}, {"akl_mu": 0.95}, {}),  # mu = 1 sits on cumsum rounding
        reductions=ALL_REDUCTIONS,
        skip={"gradcheck": _AKL_WEIGHTS_CONSTANT},
    ),
    "logit_mse": Reference(rowwise(logit_mse_row), {}, reductions=ALL_REDUCTIONS),
    "ls_kd": Reference(
        rowwise(ls_kd_row), {"temperature": 3.0}, variants=({},), reductions=ALL_REDUCTIONS
    ),
    "dkd": Reference(
        rowwise(dkd_row),
        {"alpha": 0.5, "beta": 2.0, "temperature": 2.0},
        variants=({}, {"alpha": 2.0, "beta": 0.0, "temperature": 1.0}),
        reductions=ALL_REDUCTIONS,
    ),
    "dist": Reference(
        dist_reference,
        {"beta": 2.0, "gamma": 0.5, "temperature": 2.0},
        variants=({},),
        reductions=("batchmean", "mean"),
    ),
    "multi_teacher_kd": Reference(
        multi_teacher_reference,
        {"temperature": 2.0},
        variants=(
            {"weighting": "entropy"},
            {"weighting": "confidence", "temperature": 3.0},
            {"weighting": torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)},
        ),
        reductions=ALL_REDUCTIONS,
    ),
}


# --------------------------------------------------------------------------- relation losses


def _smooth_l1(difference: float) -> float:
    """Huber / smooth-L1 with delta = 1."""
    return 0.5 * difference**2 if abs(difference) < 1.0 else abs(difference) - 0.5


def rkd_reference(
    student: np.ndarray,
    teacher: np.ndarray,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    eps: float = 1e-12,
) -> float:
    """RKD (Park et al. 2019) with explicit loops over pairs and triplets of samples."""
    student, teacher = student.reshape(len(student), -1), teacher.reshape(len(teacher), -1)
    size = len(student)

    def distances(points: np.ndarray) -> np.ndarray:
        matrix = np.zeros((size, size))
        for i in range(size):
            for j in range(size):
                if i != j:
                    squared = sum(
                        float(a - b) ** 2 for a, b in zip(points[i], points[j], strict=True)
                    )
                    matrix[i, j] = math.sqrt(max(squared, eps))
        return matrix / matrix[matrix > 0].mean()

    def angles(points: np.ndarray) -> np.ndarray:
        cube = np.zeros((size, size, size))
        for a in range(size):
            for b in range(size):
                for c in range(size):
                    if b == a or c == a:
                        continue  # a zero direction gives a zero cosine
                    first, second = points[b] - points[a], points[c] - points[a]
                    cube[a, b, c] = (
                        first @ second / (np.linalg.norm(first) * np.linalg.norm(second))
                    )
        return cube

    distance_terms = [_smooth_l1(x) for x in (distances(student) - distances(teacher)).ravel()]
    angle_terms = [_smooth_l1(x) for x in (angles(student) - angles(teacher)).ravel()]
    return distance_weight * math.fsum(distance_terms) / len(distance_terms) + (
        angle_weight * math.fsum(angle_terms) / len(angle_terms)
    )


def sp_reference(student: object, teacher: object) -> float:
    """Similarity preserving (Tung & Mori 2019): row-normalized Grams, ||G_s - G_t||^2 / B^2.

    Lists of layer outputs give the sum over the pairs.
    """
    if isinstance(student, list):
        return math.fsum(sp_reference(s, t) for s, t in zip(student, teacher, strict=True))
    size = len(student)

    def gram(features: np.ndarray) -> np.ndarray:
        flat = features.reshape(size, -1)
        matrix = np.array([[float(flat[i] @ flat[j]) for j in range(size)] for i in range(size)])
        for i in range(size):
            matrix[i] /= math.sqrt(sum(value**2 for value in matrix[i]))
        return matrix

    return float(((gram(student) - gram(teacher)) ** 2).sum()) / size**2


def cc_reference(
    student: np.ndarray, teacher: np.ndarray, *, gamma: float = 0.4, order: int = 2
) -> float:
    """Correlation congruence (Peng et al. 2019): order-P Taylor expansion of the Gaussian RBF
    kernel on L2-normalized rows, ||C_s - C_t||^2 / B^2."""
    size = len(student)

    def correlation(features: np.ndarray) -> np.ndarray:
        rows = features.reshape(size, -1)
        unit = [row / math.sqrt(sum(float(v) ** 2 for v in row)) for row in rows]
        matrix = np.zeros((size, size))
        for i in range(size):
            for j in range(size):
                cosine = float(unit[i] @ unit[j])
                matrix[i, j] = sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cosine**p
                    for p in range(order + 1)
                )
        return matrix

    return float(((correlation(student) - correlation(teacher)) ** 2).sum()) / size**2


def _unit_head(head: torch.nn.Module, features: np.ndarray) -> list[np.ndarray]:
    """CRD embedding head by hand: flatten, W x + b, divide by the L2 norm (loops over rows)."""
    weight = head.linear.weight.detach().double().numpy()
    bias = head.linear.bias.detach().double().numpy()
    rows = []
    for row in features.reshape(len(features), -1):
        projected = weight @ row + bias
        rows.append(projected / math.sqrt(sum(float(v) ** 2 for v in projected)))
    return rows


def _nce_side(anchors: list[np.ndarray], rows: np.ndarray, normalizer, temperature, num_samples):
    """One side of CRD's NCE (Tian et al. 2020, eq. 18): positive in column 0, K negatives.

    ``normalizer`` None: Z = N x mean of exp(score / tau) over this batch (first batch).
    """
    exps = [
        [math.exp(float(anchor @ row) / temperature) for row in anchor_rows]
        for anchor, anchor_rows in zip(anchors, rows, strict=True)
    ]
    if normalizer is None:
        flat = [value for anchor_exps in exps for value in anchor_exps]
        normalizer = num_samples * math.fsum(flat) / len(flat)
    noise = (rows.shape[1] - 1) / num_samples
    total = 0.0
    for anchor_exps in exps:
        for k, value in enumerate(anchor_exps):
            probability = value / normalizer
            total += math.log((probability if k == 0 else noise) / (probability + noise))
    return -total / len(anchors)


def crd_reference(
    student: np.ndarray,
    teacher: np.ndarray,
    index: np.ndarray,
    contrast_index: np.ndarray,
    *,
    module: torch.nn.Module,
    temperature: float = 0.07,
    num_samples: int,
    **_: object,
) -> float:
    """CRD (Tian et al. 2020): student anchors against the teacher bank plus teacher anchors
    against the student bank, each with its normalizer (estimated on this batch if unset)."""
    student_bank = module.student_bank.double().numpy()
    teacher_bank = module.teacher_bank.double().numpy()

    def stored(buffer: torch.Tensor) -> float | None:
        return None if float(buffer) < 0 else float(buffer)

    return _nce_side(
        _unit_head(module.student_head, student),
        teacher_bank[contrast_index],
        stored(module.student_normalizer),
        temperature,
        num_samples,
    ) + _nce_side(
        _unit_head(module.teacher_head, teacher),
        student_bank[contrast_index],
        stored(module.teacher_normalizer),
        temperature,
        num_samples,
    )


def crd_inputs(generator: torch.Generator, dtype: torch.dtype) -> tuple[object, ...]:
    """Batch of 4 of 16 samples whose contrast rows avoid the batch's own indices, so the bank
    update after each forward never changes a later call (gradcheck calls the loss many times)."""
    order = torch.randperm(16, generator=generator)
    index, others = order[:4], order[4:]
    contrast_index = others[torch.randint(len(others), (4, 6), generator=generator)]
    student = (torch.randn(4, 6, generator=generator, dtype=torch.float64) * 2).to(dtype)
    teacher = (torch.randn(4, 2, 5, generator=generator, dtype=torch.float64) * 2).to(dtype)
    return student, teacher, index, contrast_index


def crd_inbatch_reference(
    student: np.ndarray, teacher: np.ndarray, *, module: torch.nn.Module, temperature: float, **_
) -> float:
    """Symmetric InfoNCE over the batch on the heads' unit embeddings, by loops."""
    student_units = _unit_head(module.student_head, student)
    teacher_units = _unit_head(module.teacher_head, teacher)
    size = len(student_units)
    total = 0.0
    for i in range(size):
        row = [float(student_units[i] @ teacher_units[j]) / temperature for j in range(size)]
        column = [float(student_units[j] @ teacher_units[i]) / temperature for j in range(size)]
        total -= row[i] - math.log(math.fsum(math.exp(v) for v in row))
        total -= column[i] - math.log(math.fsum(math.exp(v) for v in column))
    return total / (2 * size)


def seed_reference(
    student: np.ndarray,
    teacher: np.ndarray,
    *,
    module: torch.nn.Module,
    student_temperature: float,
    teacher_temperature: float,
    **_: object,
) -> float:
    """SEED (Fang et al. 2021): -mean_i sum_k p_T(i, k) log p_S(i, k), both softmaxes over the
    similarities to [own teacher embedding; queue rows], by loops (the queue read before the
    forward enqueues the batch)."""
    queue = [unit_vector(list(row)) for row in module.queue.double().numpy()]
    student_units = _unit_head(module.student_head, student)
    total = 0.0
    teacher_rows = teacher.reshape(len(teacher), -1)
    for student_row, teacher_row in zip(student_units, teacher_rows, strict=True):
        teacher_unit = unit_vector(list(teacher_row))
        instances = [teacher_unit, *queue]
        teacher_scores = np.array([dot_product(teacher_unit, d) for d in instances])
        student_scores = np.array([dot_product(list(student_row), d) for d in instances])
        targets = softmax(teacher_scores, teacher_temperature)
        log_probs = log_softmax(student_scores, student_temperature)
        total -= math.fsum(p * log_q for p, log_q in zip(targets, log_probs, strict=True))
    return total / len(student_units)


_NOT_A_DISTANCE = "a contrastive objective is not zero when student equals teacher"

REFERENCES.update(
    {
        "rkd": Reference(
            rkd_reference,
            {"distance_weight": 2.0, "angle_weight": 3.0},
            variants=({}, {"angle_weight": 0.0}, {"distance_weight": 0.0}),
        ),
        "sp": Reference(sp_reference),
        "cc": Reference(cc_reference, {"gamma": 0.7, "order": 3}, variants=({},)),
        "crd": Reference(
            crd_reference,
            {
                "student_dim": 6,
                "teacher_dim": 10,
                "num_samples": 16,
                "feat_dim": 3,
                "num_negatives": 5,
                "temperature": 0.5,
                "momentum": 0.3,
            },
            variants=({"temperature": 0.07, "normalizer": "ema"},),
            skip={"zero_at_equal": _NOT_A_DISTANCE},
            make_inputs=crd_inputs,
        ),
        "crd_inbatch": Reference(
            crd_inbatch_reference,
            {"student_dim": 6, "teacher_dim": 6, "feat_dim": 3, "temperature": 0.5},
            skip={"zero_at_equal": _NOT_A_DISTANCE},
        ),
        "seed": Reference(
            seed_reference,
            {
                "student_dim": 6,
                "teacher_dim": 6,
                "queue_size": 5,
                "student_temperature": 0.5,
                "teacher_temperature": 0.1,
                "seed": 3,
            },
            variants=({"student_temperature": 0.2, "teacher_temperature": 1e-4},),
            skip={
                "zero_at_equal": "a cross-entropy (the teacher's entropy remains) through a "
                "random head, at two temperatures",
                "gradcheck": "each training forward enqueues the batch, so repeated calls "
                "differ; tests/losses/test_seed.py gradchecks seed_loss and the module in eval",
            },
        ),
    }
)
# --------------------------------------------------------------------------- feature losses
# Feature maps are [B, C, *spatial]; every reference loops over samples, channels and positions.


def adaptive_avg_pool_reference(feature: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Adaptive average pooling by definition: along a dim of length n pooled to m, output cell
    i averages the input cells floor(i n / m) .. ceil((i + 1) n / m) - 1."""
    batch, channels, *spatial = feature.shape
    pooled = np.zeros((batch, channels, *size))
    for b, c, *cell in np.ndindex(batch, channels, *size):
        ranges = [
            range(math.floor(i * n / m), math.ceil((i + 1) * n / m))
            for i, n, m in zip(cell, spatial, size, strict=True)
        ]
        offsets = [r.start for r in ranges]
        values = [
            float(feature[(b, c, *(o + p for o, p in zip(offsets, position, strict=True)))])
            for position in np.ndindex(*map(len, ranges))
        ]
        pooled[(b, c, *cell)] = sum(values) / len(values)
    return pooled


def pooled_to_common_size(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps pooled to the elementwise smaller spatial size (RepDistiller's rule)."""
    size = tuple(min(a, b) for a, b in zip(first.shape[2:], second.shape[2:], strict=True))
    return adaptive_avg_pool_reference(first, size), adaptive_avg_pool_reference(second, size)


def channel_maps(sample: np.ndarray) -> list[list[float]]:
    """``[C, *spatial]`` -> one list of the positions' values per channel."""
    return [
        [float(sample[(c, *x)]) for x in np.ndindex(*sample.shape[1:])] for c in range(len(sample))
    ]


def dot_product(first: list[float], second: list[float]) -> float:
    return sum(a * b for a, b in zip(first, second, strict=True))


def unit_vector(vector: list[float], eps: float = 1e-12) -> list[float]:
    """``v / max(||v||, eps)`` (the clamp of F.normalize)."""
    norm = math.sqrt(dot_product(vector, vector))
    return [v / max(norm, eps) for v in vector]


def as_layers(features: object) -> list[np.ndarray]:
    return [features] if isinstance(features, np.ndarray) else list(features)


def hint_reference(student: np.ndarray, teacher: np.ndarray, *, reduction: str = "mean"):
    """FitNets (Romero et al. 2015): sum of squared differences per sample, then reduced."""
    per_sample = [
        sum(
            (float(student[(b, *i)]) - float(teacher[(b, *i)])) ** 2
            for i in np.ndindex(*student.shape[1:])
        )
        for b in range(len(student))
    ]
    return reduce(per_sample, reduction, (len(student),), student[0].size)


def attention_vector(sample: np.ndarray, p: float) -> list[float]:
    """Zagoruyko & Komodakis 2017: mean_c |F_c|^p per position, scaled to unit L2 norm."""
    maps = channel_maps(sample)
    values = [sum(abs(m[x]) ** p for m in maps) / len(maps) for x in range(len(maps[0]))]
    return unit_vector(values)


def at_reference(
    students: object,
    teachers: object,
    *,
    p: float = 2.0,
    pool: bool = True,
    pair_reduction: str = "sum",
) -> float:
    """Per pair: mean over samples and positions of (Q_s - Q_t)^2; sum (or mean) over pairs."""
    pair_values = []
    for student, teacher in zip(as_layers(students), as_layers(teachers), strict=True):
        student, teacher = pooled_to_common_size(student, teacher)
        squares = []
        for b in range(len(student)):
            q_student, q_teacher = attention_vector(student[b], p), attention_vector(teacher[b], p)
            squares += [(a - t) ** 2 for a, t in zip(q_student, q_teacher, strict=True)]
        pair_values.append(sum(squares) / len(squares))
    total = math.fsum(pair_values)
    return total if pair_reduction == "sum" else total / len(pair_values)


def nst_reference(student: np.ndarray, teacher: np.ndarray, *, pool: bool = True) -> float:
    """Huang & Wang 2017: MMD^2 of unit channel maps, polynomial kernel (x.y)^2, mean over B."""
    student, teacher = pooled_to_common_size(student, teacher)
    values = []
    for b in range(len(student)):
        neurons_s = [unit_vector(m) for m in channel_maps(student[b])]
        neurons_t = [unit_vector(m) for m in channel_maps(teacher[b])]

        def mean_kernel(first: list[list[float]], second: list[list[float]]) -> float:
            return sum(dot_product(x, y) ** 2 for x in first for y in second) / (
                len(first) * len(second)
            )

        values.append(
            mean_kernel(neurons_s, neurons_s)
            + mean_kernel(neurons_t, neurons_t)
            - 2 * mean_kernel(neurons_s, neurons_t)
        )
    return sum(values) / len(values)


def fsp_matrices(first: np.ndarray, second: np.ndarray) -> list[list[list[float]]]:
    """Yim et al. 2017: G[b][i][j] = sum_x F1[b, i, x] F2[b, j, x] / (number of positions)."""
    first, second = pooled_to_common_size(first, second)
    matrices = []
    for b in range(len(first)):
        maps_1, maps_2 = channel_maps(first[b]), channel_maps(second[b])
        matrices.append([[dot_product(m1, m2) / len(m1) for m2 in maps_2] for m1 in maps_1])
    return matrices


def fsp_reference(
    students: list[np.ndarray],
    teachers: list[np.ndarray],
    *,
    pool: bool = True,
    pair_reduction: str = "sum",
) -> float:
    """Per consecutive pair of layers: mean squared difference of the FSP matrices."""
    pair_values = []
    for k in range(len(students) - 1):
        g_student = fsp_matrices(students[k], students[k + 1])
        g_teacher = fsp_matrices(teachers[k], teachers[k + 1])
        squares = [
            (g_student[b][i][j] - g_teacher[b][i][j]) ** 2
            for b in range(len(g_student))
            for i in range(len(g_student[b]))
            for j in range(len(g_student[b][i]))
        ]
        pair_values.append(sum(squares) / len(squares))
    total = math.fsum(pair_values)
    return total if pair_reduction == "sum" else total / len(pair_values)


def pkt_reference(
    student: np.ndarray, teacher: np.ndarray, *, eps: float = 1e-7, reduction: str = "mean"
):
    """Passalis & Tefas 2018: KL between cosine-kernel conditional distributions of the batch."""

    def conditionals(embedding: np.ndarray) -> list[list[float]]:
        rows = [[float(v) for v in row.reshape(-1)] for row in embedding]
        rows = [[v / (math.sqrt(dot_product(row, row)) + eps) for v in row] for row in rows]
        kernel = [[(dot_product(a, b) + 1) / 2 for b in rows] for a in rows]
        return [[k / sum(row) for k in row] for row in kernel]

    p_student, p_teacher = conditionals(student), conditionals(teacher)
    per_row = [
        sum(t * math.log((t + eps) / (s + eps)) for s, t in zip(row_s, row_t, strict=True))
        for row_s, row_t in zip(p_student, p_teacher, strict=True)
    ]
    return reduce(per_row, reduction, (len(student),), len(student))


def channel_linear_reference(
    feature: np.ndarray, weight: object, bias: object = None
) -> np.ndarray:
    """A 1x1 convolution by loops: out[b, o, x] = sum_i W[o, i] F[b, i, x] + bias[o]."""
    weight = weight.detach().double().numpy()
    bias = None if bias is None else bias.detach().double().numpy()
    out = np.zeros((feature.shape[0], weight.shape[0], *feature.shape[2:]))
    for b, o, *x in np.ndindex(*out.shape):
        value = sum(
            float(weight[o, i]) * float(feature[(b, i, *x)]) for i in range(weight.shape[1])
        )
        out[(b, o, *x)] = value + (0.0 if bias is None else float(bias[o]))
    return out


def vid_reference(
    student: np.ndarray, teacher: np.ndarray, *, module: object, **_: object
) -> float:
    """Ahn et al. 2019: mean of -log N(t; mu, sigma_c^2) + log(2 pi)/2; mu from the regressor."""
    student, teacher = pooled_to_common_size(student, teacher)
    weights = [layer.weight for layer in module.regressor if hasattr(layer, "weight")]
    hidden = np.maximum(channel_linear_reference(student, weights[0]), 0.0)
    hidden = np.maximum(channel_linear_reference(hidden, weights[1]), 0.0)
    mean = channel_linear_reference(hidden, weights[2])
    raw = [float(v) for v in module.raw_variance.detach()]
    variances = [math.log1p(math.exp(r)) + module.eps for r in raw]
    values = []
    for index in np.ndindex(*teacher.shape):
        variance = variances[index[1]]
        gaussian_nll = 0.5 * math.log(2 * math.pi * variance) + (
            float(teacher[index]) - float(mean[index])
        ) ** 2 / (2 * variance)
        values.append(gaussian_nll - 0.5 * math.log(2 * math.pi))
    return sum(values) / len(values)


def conv3_reference(feature: np.ndarray, conv: object) -> np.ndarray:
    """A 3x3 (x3) convolution with zero padding 1 by loops over outputs, inputs and offsets."""
    weight = conv.weight.detach().double().numpy()
    bias = conv.bias.detach().double().numpy()
    spatial = feature.shape[2:]
    out = np.zeros((feature.shape[0], weight.shape[0], *spatial))
    for b, o, *x in np.ndindex(*out.shape):
        total = float(bias[o])
        for i, *k in np.ndindex(weight.shape[1], *([3] * len(spatial))):
            source = [xd + kd - 1 for xd, kd in zip(x, k, strict=True)]
            if all(0 <= s < n for s, n in zip(source, spatial, strict=True)):
                total += float(weight[(o, i, *k)]) * float(feature[(b, i, *source)])
        out[(b, o, *x)] = total
    return out


def conv_stack_reference(feature: np.ndarray, stack: object, final_activation: bool) -> np.ndarray:
    """Conv layers of ``stack`` in order, LeakyReLU(0.1) between them (and after the last)."""
    convs = [layer for layer in stack if hasattr(layer, "weight")]
    for index, conv in enumerate(convs):
        feature = conv3_reference(feature, conv)
        if final_activation or index < len(convs) - 1:
            feature = np.where(feature > 0, feature, 0.1 * feature)
    return feature


def factor_transfer_reference(
    student: np.ndarray,
    teacher: np.ndarray,
    *,
    module: object,
    stage: str = "transfer",
    p: float = 1.0,
    **_: object,
) -> float:
    """Kim et al. 2018: paraphraser reconstruction MSE, or mean |S/|S| - T/|T||^p of the factors."""
    encoder, decoder = module.paraphraser.encoder, module.paraphraser.decoder
    teacher_factor = conv_stack_reference(teacher, encoder, True)
    if stage == "paraphraser":
        reconstruction = conv_stack_reference(teacher_factor, decoder, False)
        squares = [
            (float(a) - float(t)) ** 2
            for a, t in zip(reconstruction.ravel(), teacher.ravel(), strict=True)
        ]
        return sum(squares) / len(squares)
    student_factor = conv_stack_reference(student, module.translator.encoder, True)
    student_factor, teacher_factor = pooled_to_common_size(student_factor, teacher_factor)
    values = []
    for b in range(len(student_factor)):
        unit_s = unit_vector([float(v) for v in student_factor[b].ravel()])
        unit_t = unit_vector([float(v) for v in teacher_factor[b].ravel()])
        values += [abs(s - t) ** p for s, t in zip(unit_s, unit_t, strict=True)]
    return sum(values) / len(values)


def global_average(sample: np.ndarray) -> list[float]:
    """``[C, *spatial]`` -> the mean of each channel over the positions (``[D]`` unchanged)."""
    if sample.ndim == 1:
        return [float(v) for v in sample]
    return [sum(m) / len(m) for m in channel_maps(sample)]


def attention_align_reference(
    students: list[np.ndarray], teachers: list[np.ndarray], *, module: object, **_: object
) -> float:
    """mean_b sum_s sum_t softmax_t(q_bs . k_bt / sqrt d) mean((A_st(F_s) - F_t)^2)."""

    def linear(layer: object, vector: list[float]) -> list[float]:
        weight = layer.weight.detach().double().numpy()
        bias = layer.bias.detach().double().numpy()
        return [
            dot_product([float(w) for w in weight[o]], vector) + float(bias[o])
            for o in range(len(bias))
        ]

    per_sample = []
    for b in range(len(students[0])):
        total = 0.0
        keys = [
            linear(layer, global_average(t[b]))
            for layer, t in zip(module.keys, teachers, strict=True)
        ]
        for s_index, student in enumerate(students):
            query = linear(module.queries[s_index], global_average(student[b]))
            weights = softmax(
                np.array([dot_product(query, key) / math.sqrt(len(query)) for key in keys])
            )
            for t_index, teacher in enumerate(teachers):
                adapter = module.adapters[s_index][t_index]
                if teacher.ndim == 2:
                    adapted = linear(adapter, global_average(student[b]))
                    target = [float(v) for v in teacher[b]]
                else:
                    resized = adaptive_avg_pool_reference(student[b : b + 1], teacher.shape[2:])
                    adapted = channel_linear_reference(resized, adapter.weight, adapter.bias)[
                        0
                    ].ravel()
                    target = teacher[b].ravel()
                squares = [(float(a) - float(t)) ** 2 for a, t in zip(adapted, target, strict=True)]
                total += weights[t_index] * sum(squares) / len(squares)
        per_sample.append(total)
    return sum(per_sample) / len(per_sample)


def _feature_inputs(*shapes: object):
    """``make_inputs`` for feature losses: tensors (or lists of tensors) of the given shapes."""

    def make(generator: torch.Generator, dtype: torch.dtype) -> tuple[object, ...]:
        def randn(shape: tuple[int, ...]) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator, dtype=torch.float64) * 2.0).to(dtype)

        return tuple(
            [randn(s) for s in shape] if isinstance(shape, list) else randn(shape)
            for shape in shapes
        )

    return make


_RANDOM_HEADS = "its trainable heads are random, so equal inputs do not give zero loss"

REFERENCES.update(
    {
        "hint": Reference(hint_reference, {}, reductions=ALL_REDUCTIONS),
        "at": Reference(
            at_reference,
            {"p": 3.0},
            variants=({}, {"pair_reduction": "mean"}),
            # pairs with different channels, and the student or the teacher map is larger
            make_inputs=_feature_inputs([(3, 2, 4, 4), (3, 3, 2, 2)], [(3, 4, 2, 2), (3, 2, 4, 4)]),
        ),
        "nst": Reference(
            nst_reference, {}, make_inputs=_feature_inputs((3, 3, 4, 4), (3, 4, 2, 2))
        ),
        "fsp": Reference(
            fsp_reference,
            {"pair_reduction": "mean"},
            variants=({},),
            make_inputs=_feature_inputs(
                [(3, 2, 4, 4), (3, 3, 2, 2), (3, 2, 2, 2)],
                [(3, 2, 2, 2), (3, 3, 2, 2), (3, 2, 4, 4)],
            ),
        ),
        "pkt": Reference(
            pkt_reference,
            {"eps": 1e-6},
            reductions=ALL_REDUCTIONS,
            make_inputs=_feature_inputs((4, 6), (4, 5)),
        ),
        "vid": Reference(
            vid_reference,
            {
                "num_input_channels": 3,
                "num_mid_channels": 4,
                "num_target_channels": 2,
                "init_pred_var": 2.0,
            },
            make_inputs=_feature_inputs((3, 3, 4, 4), (3, 2, 2, 2)),
            skip={"zero_at_equal": _RANDOM_HEADS},
        ),
        "factor_transfer": Reference(
            factor_transfer_reference,
            {"student_channels": 2, "teacher_channels": 4, "rate": 0.5},
            variants=({"stage": "paraphraser"}, {"p": 2.0}),
            make_inputs=_feature_inputs((3, 2, 4, 4), (3, 4, 2, 2)),
            skip={"zero_at_equal": _RANDOM_HEADS},
            teacher_grad=False,  # the transfer stage encodes the teacher under no_grad
        ),
        "attention_align": Reference(
            attention_align_reference,
            {"student_channels": [2, 3], "teacher_channels": [3, 2, 4], "embed_dim": 4},
            # pooling down and up to the teacher's size, and a [B, D] teacher layer
            make_inputs=_feature_inputs(
                [(3, 2, 4, 4), (3, 3, 2, 2)], [(3, 3, 2, 2), (3, 2, 4, 4), (3, 4)]
            ),
            skip={"zero_at_equal": _RANDOM_HEADS},
        ),
    }
)


# --------------------------------------------------------------------------- fused token losses


def linear_row(hidden: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``z_c = sum_h hidden_h weight_c,h`` by explicit loops."""
    return np.array(
        [
            math.fsum(float(hidden[h]) * float(weight[c, h]) for h in range(len(hidden)))
            for c in range(weight.shape[0])
        ]
    )


def fused_linear_reference(
    student_hidden: np.ndarray,
    student_weight: np.ndarray,
    teacher_hidden: np.ndarray,
    teacher_weight: np.ndarray,
    labels: np.ndarray,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_lambda: float = 0.1,
    akl_mu: float = 0.5,
    temperature: float = 1.0,
    temperature_squared: bool = True,
    hard_label_weight: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    student_softcap: float | None = None,
    student_logit_scale: float = 1.0,
    chunk_size: int | None = None,
) -> float:
    """Per token: materialize both logit rows, then T^2 D(p_T, p_S) + w CE (T = 1).

    Tokens whose label is ``ignore_index`` are skipped; batchmean divides by the tokens kept.
    ``chunk_size`` does not change the value.
    """
    del chunk_size
    divergences = {
        "forward_kl": lambda s, t: kd_row(s, t, temperature=temperature),
        "reverse_kl": lambda s, t: reverse_kl_row(s, t, temperature=temperature),
        "jsd": lambda s, t: jsd_row(s, t, beta=beta, temperature=temperature),
        "tvd": lambda s, t: tvd_row(s, t, temperature=temperature) * temperature**2,
        "skew_forward_kl": lambda s, t: skew_kl_row(
            s, t, skew_lambda=skew_lambda, temperature=temperature
        ),
        "skew_reverse_kl": lambda s, t: skew_reverse_kl_row(
            s, t, skew_lambda=skew_lambda, temperature=temperature
        ),
        "akl": lambda s, t: akl_row(s, t, akl_mu=akl_mu, temperature=temperature),
    }
    student_rows = student_hidden.reshape(-1, student_hidden.shape[-1])
    teacher_rows = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    values = []
    for student_row, teacher_row, label in zip(
        student_rows, teacher_rows, labels.reshape(-1), strict=True
    ):
        if label == ignore_index:
            continue
        student_logits = linear_row(student_row, student_weight) * student_logit_scale
        if student_softcap is not None:
            student_logits = np.array(
                [student_softcap * math.tanh(z / student_softcap) for z in student_logits]
            )
        teacher_logits = linear_row(teacher_row, teacher_weight)
        value = divergences[divergence](student_logits, teacher_logits)  # includes T^2
        if not temperature_squared or divergence == "tvd":
            value /= temperature**2
        values.append(value + hard_label_weight * ce_row(student_logits, int(label)))
    if reduction == "sum":
        return math.fsum(values)
    return math.fsum(values) / len(values) if values else 0.0


REFERENCES["fused_linear_kd"] = Reference(
    fused_linear_reference,
    {"temperature": 2.0, "chunk_size": 5},
    variants=(
        {"divergence": "reverse_kl", "chunk_size": 2},
        {"divergence": "jsd", "beta": 0.3},
        {"divergence": "jsd", "beta": 0.0},
        {"divergence": "jsd", "beta": 1.0},
        {"divergence": "tvd"},
        {"divergence": "skew_forward_kl", "skew_lambda": 0.3},
        {"divergence": "skew_reverse_kl"},
        {"divergence": "skew_reverse_kl", "skew_lambda": 0.0},
        {"divergence": "akl", "akl_mu": 0.4, "chunk_size": 2},
        {"hard_label_weight": 0.5, "temperature_squared": False},
        {"student_softcap": 3.0, "student_logit_scale": 0.5},
    ),
    reductions=("batchmean", "sum"),
)


# --------------------------------------------------------------------------- ULD (uld_reference)

_ULD_VOCABULARIES = "ULD compares distributions over vocabularies of different sizes"
_ULD_SKIP = {"bad_inputs:class_mismatch": _ULD_VOCABULARIES}
REFERENCES["uld"] = Reference(
    uld_reference,
    {"temperature": 2.0},
    variants=({}, {"hard_label_weight": 0.5, "temperature": 1.5}),
    reductions=("batchmean", "sum"),
    skip=_ULD_SKIP,
)
REFERENCES["hybrid_uld"] = Reference(
    hybrid_uld_reference,
    # a partial map that swaps two ids (and pairs two of the last ids, which the fuzz masks)
    {"temperature": 2.0, "shared_ids": [[0, 0], [1, 2], [2, 1], [4, 3]]},
    variants=(
        {"shared_ids": [], "hard_label_weight": 0.5},
        {"shared_ids": [[c, c] for c in range(5)], "temperature": 1.5},
    ),
    reductions=("batchmean", "sum"),
    skip={
        **_ULD_SKIP,
        "zero_at_equal": "equal logits differ under a map that swaps ids (0 for the identity "
        "map: tests/cross_tokenizer/test_hybrid_uld.py)",
    },
)
REFERENCES["fused_linear_uld"] = Reference(
    fused_linear_uld_reference,
    {"temperature": 2.0, "chunk_size": 5},
    variants=(
        {"chunk_size": 2, "hard_label_weight": 0.5},
        {"chunk_size": None, "temperature": 1.0},
        {"student_softcap": 3.0, "student_logit_scale": 0.5, "teacher_softcap": 4.0},
    ),
    reductions=("batchmean", "sum"),
    skip=_ULD_SKIP,
)


# --------------------------------------------------------------------------- self-distillation


def byot_reference(
    exit_logits: list[np.ndarray],
    exit_features: list[np.ndarray],
    final_logits: np.ndarray,
    final_features: np.ndarray,
    labels: np.ndarray,
    *,
    temperature: float = 3.0,
    alpha: float = 0.3,
    hint_weight: float = 0.03,
    ignore_index: int = -100,
    reduction: str = "batchmean",
):
    """Zhang et al. 2019, per sample: sum over exits i of (1 - a) CE(z_i, y)
    + a T^2 KL(p_C || p_i) + lambda sum_j (F_i,j - F_C,j)^2, by loops over samples and exits;
    a row labeled ``ignore_index`` has no CE part."""
    values = []
    for row in range(len(labels)):
        total = 0.0
        labeled = None if int(labels[row]) == ignore_index else int(labels[row])
        for logits, features in zip(exit_logits, exit_features, strict=True):
            hint = sum(
                (float(s) - float(t)) ** 2
                for s, t in zip(features[row].ravel(), final_features[row].ravel(), strict=True)
            )
            total += (
                (1 - alpha) * (0.0 if labeled is None else ce_row(logits[row], labeled))
                + alpha * kd_row(logits[row], final_logits[row], temperature=temperature)
                + hint_weight * hint
            )
        values.append(total)
    return reduce(values, reduction, (len(labels),), 1)


REFERENCES["byot"] = Reference(
    byot_reference,
    {"temperature": 2.0, "alpha": 0.4, "hint_weight": 0.5},
    variants=({}, {"alpha": 1.0, "hint_weight": 0.0}, {"alpha": 0.0}),
    reductions=("batchmean", "sum", "none"),
    skip={"zero_at_equal": "the exits' cross-entropy with the labels remains"},
    teacher_grad=False,
)
