"""CRD: memory banks, negative sampling, the NCE value, normalizers, training, checkpoints; the
in-batch variant; the contrastive dataset wrapper."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from tolerances import float32_tolerance
from torch.utils.data import DataLoader

import torchkd.losses as L
from torchkd.data.base import TensorDictDataset
from torchkd.data.contrastive import ContrastiveSampleDataset
from torchkd.losses.crd import CRDLoss, crd_nce_loss
from torchkd.losses.crd_inbatch import CRDInBatchLoss, crd_inbatch_loss
from torchkd.losses.crd_sampling import draw_contrast_index, group_by_class

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 0, 2, 1, 0, 0, 2, 1])


def reference_nce(anchor, rows, temperature, normalizer, num_samples):
    """RepDistiller's ContrastLoss (eq. 18) without its eps, with explicit loops, float64."""
    batch_size, columns, _ = rows.shape
    noise = (columns - 1) / num_samples
    total = 0.0
    for i in range(batch_size):
        for k in range(columns):
            probability = math.exp(float(anchor[i] @ rows[i, k]) / temperature) / normalizer
            ratio = probability if k == 0 else noise
            total += math.log(ratio / (probability + noise))
    return -total / batch_size


def reference_normalizer(anchor, rows, temperature, num_samples):
    """Z = N * mean over anchors and contrasts of exp(score / tau)."""
    values = [
        math.exp(float(anchor[i] @ rows[i, k]) / temperature)
        for i in range(rows.shape[0])
        for k in range(rows.shape[1])
    ]
    return num_samples * sum(values) / len(values)


def unit_error(head, features) -> float:
    """Float32 error bound of each entry of ``head_output``: the projection's ``K + 1`` terms of
    size ``Σ_k |x_k W_ck| + |b_c| ≤ M ‖proj‖`` (relative to the norm), the norm's ``d`` squares,
    square root and division (Higham §3.1), carried into the entry and through the norm."""
    flat = features.reshape(features.shape[0], -1).detach().double()
    weight, bias = head.linear.weight.detach().double(), head.linear.bias.detach().double()
    projected = flat @ weight.T + bias
    sizes = flat.abs() @ weight.abs().T + bias.abs()
    relative = float((sizes / projected.norm(dim=1, keepdim=True)).max())
    return float32_tolerance(2 * (flat.shape[1] + 1) * relative + weight.shape[0] + 3, 1.0)


def head_output(head, features):
    flat = features.reshape(features.shape[0], -1)
    projected = flat @ head.linear.weight.T + head.linear.bias
    return projected / projected.norm(dim=1, keepdim=True)


def small_crd(**overrides):
    settings = dict(
        student_dim=6, teacher_dim=5, num_samples=len(LABELS), feat_dim=4, num_negatives=7
    )
    settings.update(overrides)
    return CRDLoss(**settings)


def test_nce_matches_loop_reference_and_gradcheck():
    generator = torch.Generator().manual_seed(0)
    anchor = F.normalize(torch.randn(3, 4, generator=generator, dtype=torch.float64), dim=1)
    rows = F.normalize(torch.randn(3, 6, 4, generator=generator, dtype=torch.float64), dim=2)
    got = crd_nce_loss(anchor, rows, temperature=0.2, normalizer=50.0, num_samples=40)
    assert got.item() == pytest.approx(reference_nce(anchor, rows, 0.2, 50.0, 40), rel=1e-10)
    anchor.requires_grad_(True)
    rows.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, r: crd_nce_loss(a, r, temperature=0.2, normalizer=50.0, num_samples=40),
        (anchor, rows),
    )


def test_forward_value_first_batch_normalizer_and_bank_update():
    torch.manual_seed(0)
    crd = small_crd(momentum=0.3).double()
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    teacher = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    index = torch.tensor([2, 5, 11, 17])
    contrast_index = torch.randint(len(LABELS), (4, 8), generator=generator)
    contrast_index[:, 0] = index
    student_bank, teacher_bank = crd.student_bank.clone(), crd.teacher_bank.clone()
    student_unit = head_output(crd.student_head, student).detach()
    teacher_unit = head_output(crd.teacher_head, teacher).detach()

    loss = crd(student, teacher, index, contrast_index)

    teacher_rows, student_rows = teacher_bank[contrast_index], student_bank[contrast_index]
    z_student = reference_normalizer(student_unit, teacher_rows, 0.07, len(LABELS))
    z_teacher = reference_normalizer(teacher_unit, student_rows, 0.07, len(LABELS))
    expected = reference_nce(student_unit, teacher_rows, 0.07, z_student, len(LABELS))
    expected += reference_nce(teacher_unit, student_rows, 0.07, z_teacher, len(LABELS))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert crd.student_normalizer.item() == pytest.approx(z_student, rel=1e-9)
    assert crd.teacher_normalizer.item() == pytest.approx(z_teacher, rel=1e-9)
    for bank, old, unit in (
        (crd.student_bank, student_bank, student_unit),
        (crd.teacher_bank, teacher_bank, teacher_unit),
    ):
        mixed = 0.3 * old[index] + 0.7 * unit
        torch.testing.assert_close(bank[index], mixed / mixed.norm(dim=1, keepdim=True))
        untouched = torch.ones(len(LABELS), dtype=torch.bool)
        untouched[index] = False
        assert torch.equal(bank[untouched], old[untouched])
    loss.backward()
    assert crd.student_head.linear.weight.grad.abs().sum() > 0
    assert crd.teacher_head.linear.weight.grad.abs().sum() > 0


def test_normalizer_fixed_after_first_batch_and_ema_moves():
    torch.manual_seed(0)
    index = torch.arange(5)
    batches = [(torch.randn(5, 6), torch.randn(5, 5)) for _ in range(3)]
    fixed = small_crd()
    assert fixed.student_normalizer.item() < 0  # not estimated yet
    fixed(*batches[0], index)
    first = fixed.student_normalizer.clone(), fixed.teacher_normalizer.clone()
    for batch in batches[1:]:
        fixed(*batch, index)
    assert torch.equal(fixed.student_normalizer, first[0])
    assert torch.equal(fixed.teacher_normalizer, first[1])

    ema = small_crd(normalizer="ema", ema_decay=0.9)
    ema(*batches[0], index)
    previous = ema.student_normalizer.item()
    contrast_index = torch.randint(len(LABELS), (5, 8))
    contrast_index[:, 0] = index
    teacher_rows = ema.teacher_bank[contrast_index].clone()
    student_unit = head_output(ema.student_head, batches[1][0]).detach()
    estimate = reference_normalizer(student_unit, teacher_rows, 0.07, len(LABELS))
    ema(*batches[1], index, contrast_index)
    # Each score u·r (4 dims) is off by ≤ (δu + 4 ε) Σ|r_k| on each side (module, reference), so
    # each exp(s / τ) by that / τ relative, plus 2 ε (division, exp); the mean of the 40 positive
    # values, the factor N and the EMA's three operations round 40 + 2 + 3 more times.
    row_size = float(teacher_rows.abs().sum(-1).max())
    score = (unit_error(ema.student_head, batches[1][0]) + float32_tolerance(4, 1.0)) * row_size
    rel = 2 * score / 0.07 + float32_tolerance(2 + 40 + 2 + 3, 1.0)
    assert ema.student_normalizer.item() == pytest.approx(0.9 * previous + 0.1 * estimate, rel=rel)
    assert ema.student_normalizer.item() != pytest.approx(previous, rel=rel)


def test_eval_mode_leaves_state_untouched():
    crd = small_crd().eval()
    banks = crd.student_bank.clone(), crd.teacher_bank.clone()
    loss = crd(torch.randn(3, 6), torch.randn(3, 5), torch.tensor([0, 1, 2]))
    assert torch.isfinite(loss)
    assert torch.equal(crd.student_bank, banks[0]) and torch.equal(crd.teacher_bank, banks[1])
    assert crd.student_normalizer.item() < 0


def test_bank_initialization_range():
    torch.manual_seed(0)
    crd = CRDLoss(3, 3, num_samples=2000, feat_dim=12, num_negatives=4)
    bound = 1.0 / math.sqrt(12 / 3)
    assert crd.student_bank.abs().max() <= bound
    assert crd.student_bank.min() < -0.95 * bound and crd.student_bank.max() > 0.95 * bound
    assert crd.student_bank.norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.05)
    assert not torch.equal(crd.student_bank, crd.teacher_bank)


def test_exact_negatives_never_share_the_anchor_class_and_cover_other_classes():
    samples_by_class, class_offsets = group_by_class(LABELS)
    index = torch.arange(len(LABELS)).repeat(50)
    drawn = draw_contrast_index(
        index,
        40,
        labels=LABELS,
        samples_by_class=samples_by_class,
        class_offsets=class_offsets,
        generator=torch.Generator().manual_seed(0),
    )
    assert drawn.shape == (len(index), 41)
    assert torch.equal(drawn[:, 0], index)
    anchor_class = LABELS[index][:, None]
    assert (LABELS[drawn[:, 1:]] != anchor_class).all()
    for anchor in range(len(LABELS)):  # every other-class sample is drawn, roughly uniformly
        negatives = drawn[index == anchor, 1:].flatten()
        counts = torch.bincount(negatives, minlength=len(LABELS)).float()
        others = LABELS.ne(LABELS[anchor])
        assert (counts[~others] == 0).all()
        expected = negatives.numel() / int(others.sum())
        assert ((counts[others] - expected).abs() < 0.35 * expected).all()


def test_relax_positives_share_the_anchor_class_and_vary():
    samples_by_class, class_offsets = group_by_class(LABELS)
    index = torch.arange(len(LABELS)).repeat(40)
    drawn = draw_contrast_index(
        index,
        5,
        labels=LABELS,
        samples_by_class=samples_by_class,
        class_offsets=class_offsets,
        mode="relax",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(LABELS[drawn[:, 0]], LABELS[index])
    assert (drawn[:, 0] != index).any()
    assert (LABELS[drawn[:, 1:]] != LABELS[index][:, None]).all()


def test_module_sampling_uses_labels_or_uniform():
    torch.manual_seed(0)
    index = torch.arange(len(LABELS))
    labeled = small_crd(labels_per_sample=LABELS, mode="relax")
    drawn = labeled._sample_contrast_index(index)
    assert torch.equal(LABELS[drawn[:, 0]], LABELS)
    assert (LABELS[drawn[:, 1:]] != LABELS[:, None]).all()
    unlabeled = small_crd(num_negatives=200)
    drawn = unlabeled._sample_contrast_index(index)
    assert torch.equal(drawn[:, 0], index)
    assert set(drawn[:, 1:].flatten().tolist()) == set(range(len(LABELS)))


def test_group_by_class_and_label_errors():
    order, offsets = group_by_class(torch.tensor([2, 0, 2, 0, 0]))
    assert order.tolist() == [1, 3, 4, 0, 2] and offsets.tolist() == [0, 3, 3, 5]
    with pytest.raises(ValueError, match="single class"):
        group_by_class(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        group_by_class(torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"shape \[20\]"):
        small_crd(labels_per_sample=LABELS[:5])
    with pytest.raises(ValueError, match="relax"):
        small_crd(mode="relax")


def test_bad_indices_raise():
    crd = small_crd()
    student, teacher = torch.randn(2, 6), torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"index must hold sample indices in \[0, 20\)"):
        crd(student, teacher, torch.tensor([0, 20]))
    with pytest.raises(ValueError, match=r"contrast_index must have shape \[2, 8\]"):
        crd(student, teacher, torch.tensor([0, 1]), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        crd(student, teacher, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="head expects 6"):
        crd(torch.randn(2, 7), teacher, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch size"):
        crd(student, torch.randn(3, 5), torch.tensor([0, 1]))


def test_training_heads_lowers_the_loss():
    torch.manual_seed(0)
    num_samples, batch_size = 64, 16
    labels = torch.arange(num_samples) % 4
    teacher_features = torch.randn(num_samples, 10)
    student_features = teacher_features @ torch.randn(10, 8) + 0.1 * torch.randn(num_samples, 8)
    crd = CRDLoss(
        8,
        10,
        num_samples,
        feat_dim=8,
        num_negatives=16,
        temperature=0.1,
        labels_per_sample=labels,
    )
    optimizer = torch.optim.Adam(crd.parameters(), lr=0.02)
    epoch_losses = []
    for _ in range(12):
        total = 0.0
        for index in torch.randperm(num_samples).split(batch_size):
            loss = crd(student_features[index], teacher_features[index], index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        epoch_losses.append(total)
    assert sum(epoch_losses[-3:]) < 0.5 * sum(epoch_losses[1:4])


def test_state_dict_round_trip_restores_banks_heads_and_normalizers():
    torch.manual_seed(0)
    crd = small_crd(labels_per_sample=LABELS)
    for _ in range(2):
        crd(torch.randn(4, 6), torch.randn(4, 5), torch.randint(len(LABELS), (4,)))
    state = crd.state_dict()
    expected = {"student_bank", "teacher_bank", "student_log_normalizer", "teacher_log_normalizer"}
    assert expected <= set(state)
    assert "labels_per_sample" not in state  # derived from the data, not training state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    restored = small_crd(labels_per_sample=LABELS)
    assert not torch.equal(restored.student_bank, crd.student_bank)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name, value in crd.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    student, teacher, index = torch.randn(4, 6), torch.randn(4, 5), torch.tensor([1, 2, 3, 4])
    contrast_index = torch.randint(len(LABELS), (4, 8))
    crd.eval(), restored.eval()
    assert torch.equal(
        crd(student, teacher, index, contrast_index),
        restored(student, teacher, index, contrast_index),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_device_agnostic(device):
    torch.manual_seed(0)
    crd = small_crd(labels_per_sample=LABELS).to(device)
    assert crd.labels_per_sample.device.type == device
    index = torch.tensor([0, 4, 9], device=device)
    loss = crd(torch.randn(3, 6, device=device), torch.randn(3, 5, device=device), index)
    loss.backward()
    assert loss.device.type == device and torch.isfinite(loss)
    assert crd._sample_contrast_index(index).device.type == device
    assert crd.student_normalizer.item() > 0


def test_registry_and_repr():
    assert L.entry("crd").signature == "indexed"
    assert L.entry("crd_inbatch").signature == "embeddings"
    crd = L.create("crd", student_dim=6, teacher_dim=5, num_samples=20, num_negatives=7)
    assert isinstance(crd, CRDLoss)
    assert "num_negatives=7, temperature=0.07, momentum=0.5, mode='exact'" in repr(crd)


def reference_infonce(student, teacher, temperature):
    """Symmetric InfoNCE with explicit loops (rows L2-normalized)."""
    student = student / student.norm(dim=1, keepdim=True)
    teacher = teacher / teacher.norm(dim=1, keepdim=True)
    size = len(student)
    total = 0.0
    for i in range(size):
        row = [float(student[i] @ teacher[j]) / temperature for j in range(size)]
        column = [float(student[j] @ teacher[i]) / temperature for j in range(size)]
        total -= row[i] - math.log(sum(math.exp(v) for v in row))
        total -= column[i] - math.log(sum(math.exp(v) for v in column))
    return total / (2 * size)


def test_inbatch_matches_loop_reference_and_gradcheck():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    got = crd_inbatch_loss(student, teacher, temperature=0.3)
    assert got.item() == pytest.approx(reference_infonce(student, teacher, 0.3), rel=1e-10)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s, t: crd_inbatch_loss(s, t, temperature=0.3), (student, teacher)
    )
    with pytest.raises(ValueError, match="same shape"):
        crd_inbatch_loss(torch.randn(5, 4), torch.randn(5, 3))


def test_inbatch_module_projects_with_heads():
    torch.manual_seed(0)
    module = CRDInBatchLoss(6, 5, feat_dim=3, temperature=0.5)
    student, teacher = torch.randn(4, 2, 3), torch.randn(4, 5)
    expected = reference_infonce(
        head_output(module.student_head, student).detach(),
        head_output(module.teacher_head, teacher).detach(),
        0.5,
    )
    # Each score u·v / τ of unit vectors in 3 dims is off by ≤ (3 (δu + δv) + 3 ε) / τ; a term
    # lse(row) − s_ii by twice that plus its log-sum-exp's 4 + 3 roundings of size ≤ 1/τ + log 4;
    # the mean of 8 terms rounds 8 more times. Module and reference both round: twice the total.
    score = (
        3 * (unit_error(module.student_head, student) + unit_error(module.teacher_head, teacher))
        + float32_tolerance(3, 1.0)
    ) / 0.5
    term = 2 * score + float32_tolerance(4 + 3, 1 / 0.5 + math.log(4))
    tolerance = 2 * (term + float32_tolerance(8, abs(expected)))
    assert module(student, teacher).item() == pytest.approx(expected, abs=tolerance)


def test_contrastive_dataset_indices():
    base = TensorDictDataset(torch.randn(len(LABELS), 3), LABELS)
    exact = ContrastiveSampleDataset(base, LABELS, num_negatives=30, seed=0)
    relax = ContrastiveSampleDataset(base, LABELS, num_negatives=30, mode="relax", seed=0)
    for position in range(len(LABELS)):
        sample = exact[position]
        assert set(sample) == {"inputs", "labels", "index", "contrast_index"}
        assert sample["contrast_index"].shape == (31,)
        assert sample["contrast_index"][0].item() == position
        assert (LABELS[sample["contrast_index"][1:]] != LABELS[position]).all()
        positives = torch.stack([relax[position]["contrast_index"][0] for _ in range(10)])
        assert (LABELS[positives] == LABELS[position]).all()
    batch = next(iter(DataLoader(exact, batch_size=4)))
    assert batch["contrast_index"].shape == (4, 31)
    draws = [
        ContrastiveSampleDataset(base, LABELS, 30, seed=seed)[3]["contrast_index"]
        for seed in (5, 5, 6)
    ]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    crd = small_crd(num_negatives=30)
    loss = crd(torch.randn(4, 6), torch.randn(4, 5), batch["index"], batch["contrast_index"])
    assert torch.isfinite(loss)


def test_contrastive_dataset_errors():
    base = TensorDictDataset(torch.randn(len(LABELS), 3), LABELS)
    with pytest.raises(ValueError, match=r"shape \[20\]"):
        ContrastiveSampleDataset(base, LABELS[:10], num_negatives=4)
    with pytest.raises(ValueError, match="num_negatives"):
        ContrastiveSampleDataset(base, LABELS, num_negatives=0)
    with pytest.raises(ValueError, match="labels must follow"):
        ContrastiveSampleDataset(base, LABELS.roll(1), num_negatives=4)[0]


def test_checkpoint_with_linear_normalizers_loads_into_log_space():
    """Checkpoints written before the normalizers moved to log space still load."""
    torch.manual_seed(0)
    crd = small_crd(labels_per_sample=LABELS)
    crd(torch.randn(4, 6), torch.randn(4, 5), torch.randint(len(LABELS), (4,)))
    state = crd.state_dict()
    old_state = {
        key.replace("_log_normalizer", "_normalizer"): value.exp()
        if key.endswith("_log_normalizer")
        else value
        for key, value in state.items()
    }
    restored = small_crd(labels_per_sample=LABELS)
    restored.load_state_dict(old_state)
    torch.testing.assert_close(restored.student_log_normalizer, crd.student_log_normalizer)
    torch.testing.assert_close(restored.teacher_normalizer, crd.teacher_normalizer)
    unset = small_crd(labels_per_sample=LABELS)
    unset.load_state_dict({**old_state, "student_normalizer": torch.tensor(-1.0)})
    assert unset.student_normalizer.item() == -1.0


def test_inbatch_module_without_heads_is_the_functional():
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    module = CRDInBatchLoss(5, 5, temperature=0.5, heads=False)
    assert list(module.parameters()) == []
    expected = crd_inbatch_loss(student, teacher, temperature=0.5)
    assert torch.equal(module(student, teacher), expected)
    with pytest.raises(ValueError, match="heads=False needs student_dim == teacher_dim"):
        CRDInBatchLoss(5, 4, heads=False)
