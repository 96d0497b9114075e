"""The training set of a recipe's ``data.synthetic:`` section: inputs synthesized from the
teacher (data-free distillation by DeepInversion, :mod:`torchkd.data.synthetic`).

:func:`check_synthetic` refuses, before anything is built, a recipe the synthetic set cannot
train: one without a teacher model, or with a term that reads labels (the set has none).
:func:`synthetic_training_set` synthesizes the set from the built teacher (and student, for the
competition term), or reads it back from the cache.

Cached, not regenerated per run: synthesis costs ``steps`` teacher forward and backward passes
per batch, more than distilling on the result, and is a function of the teacher, the settings
and the code alone (seeded noise, eval-mode models), so runs that differ only in the student's
seed or the terms share one set. The cache key (:func:`synthetic_cache_key`) holds a digest of
the teacher's weights (and of the student's, when the competition term reads it), the
settings, the device type it is synthesized on and the code version (the synthesis module, the
teacher's class source and the torch version); the set is a safetensors file
``synthetic/<method>-<key>.safetensors`` under :func:`torchkd.data.cache_dir`. ``cache: false``
synthesizes it every run.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd.config.errors import ConfigError, blame

if TYPE_CHECKING:
    from torch import nn

    from torchkd.config.schema import DataConfig, Recipe
    from torchkd.config.synthetic_schema import SyntheticConfig
    from torchkd.data import TensorDictDataset

__all__ = ["check_synthetic", "synthetic_cache_key", "synthetic_training_set", "weights_digest"]

# the call conventions that pass a loss the batch's labels (torchkd.calls)
LABEL_SIGNATURES = ("labels", "logits_labels", "self_exits", "hidden_states")


def check_synthetic(recipe: Recipe) -> None:
    """Refuse a ``data.synthetic`` recipe without one teacher model, with a teacher cache, or
    with a term whose loss reads labels (the synthetic set is unlabeled)."""
    from torchkd import losses

    if recipe.data.synthetic is None:
        return
    problems = []
    if recipe.teacher is None:
        problems.append(
            "data.synthetic: inputs are synthesized from the teacher; give one teacher: "
            "(a BatchNorm network such as cnn1d_bn)"
        )
    if recipe.data.teacher_cache is not None:
        problems.append(
            "data.teacher_cache: holds the teacher on data.dataset's samples, not on the "
            "synthetic ones; drop it (data.synthetic needs the teacher model)"
        )
    for index, term in enumerate(recipe.terms):
        registered = term.loss in losses.available()
        if registered and losses.entry(term.loss).signature in LABEL_SIGNATURES:
            problems.append(
                f"terms.{index}.loss: {term.loss} reads labels, but the data.synthetic training "
                "set has none (its synthesis targets are not ground truth); use label-free "
                "terms (kd, feature and relation losses)"
            )
    if problems:
        raise ConfigError(problems)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over ``model``'s state dict: every entry's name, dtype, shape and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _code_version(teacher: nn.Module) -> dict[str, str]:
    """What else the synthesized inputs depend on: the synthesis module, the teacher's class
    source file and the torch version."""
    import torch

    from torchkd.data import synthetic

    files = {"synthesis": Path(synthetic.__file__)}
    teacher_file = inspect.getsourcefile(type(teacher))
    if teacher_file is not None:
        files["teacher_class"] = Path(teacher_file)
    version = {key: hashlib.sha256(path.read_bytes()).hexdigest() for key, path in files.items()}
    return {**version, "torch": torch.__version__}


def synthetic_cache_key(
    settings: SyntheticConfig,
    input_shape: list[int],
    teacher: nn.Module,
    student: nn.Module,
    device_type: str,
) -> str:
    """The cache key of a synthetic set (module docstring); ``device_type`` is where it is
    synthesized (``cpu``, ``cuda``: the arithmetic differs)."""
    from torchkd.data.base import cache_key

    return cache_key(
        {
            "settings": settings.model_dump(exclude={"cache", "input_shape", "device"}),
            "input_shape": input_shape,
            "device_type": device_type,
            "teacher": weights_digest(teacher),
            "student": weights_digest(student) if settings.competition_weight else None,
            "code": _code_version(teacher),
        }
    )


def synthetic_training_set(
    data: DataConfig, teacher: nn.Module, student: nn.Module
) -> TensorDictDataset:
    """The unlabeled training set of ``data.synthetic``, synthesized from ``teacher`` (and
    ``student``, for the competition term) or read from the cache."""
    from safetensors.torch import load_file, save

    from torchkd._files import atomic_write
    from torchkd.data import TensorDictDataset, cache_dir, create_dataset, deep_inversion
    from torchkd.train import resolve_device

    settings = data.synthetic
    assert settings is not None
    input_shape = settings.input_shape
    if input_shape is None:  # only the shape of a real sample is read
        split_kwargs = {"val_fraction": data.val_fraction, "split_seed": data.seed, **data.kwargs}
        with blame("data.dataset"):
            input_shape = list(
                create_dataset(data.dataset, "val", **split_kwargs)[0]["inputs"].shape
            )
    try:
        device = resolve_device(settings.device)
    except RuntimeError as error:
        raise ConfigError(
            [f"data.synthetic.device: {settings.device!r}, but CUDA is not available; use auto"]
        ) from error
    key = synthetic_cache_key(settings, input_shape, teacher, student, device.type)
    path = cache_dir() / "synthetic" / f"{settings.method}-{key}.safetensors"
    if settings.cache and path.exists():
        return TensorDictDataset(load_file(path)["inputs"])
    models = [teacher, student] if settings.competition_weight else [teacher]
    homes = [next(model.parameters()).device for model in models]
    with blame("data.synthetic"):
        for model in models:
            model.to(device)
        try:
            inputs, targets = deep_inversion(
                teacher,
                settings.samples,
                input_shape,
                steps=settings.steps,
                batch_size=settings.batch_size,
                lr=settings.lr,
                bn_weight=settings.bn_weight,
                tv_weight=settings.tv_weight,
                l2_weight=settings.l2_weight,
                competition_weight=settings.competition_weight,
                student=student if settings.competition_weight else None,
                seed=settings.seed,
            )
        finally:
            for model, home in zip(models, homes, strict=True):
                model.to(home)
    inputs = inputs.cpu()
    if settings.cache:
        tensors: dict[str, Any] = {"inputs": inputs, "targets": targets.cpu()}
        atomic_write(path, lambda stream: stream.write(save(tensors)))
    return TensorDictDataset(inputs)
