"""Models of a recipe with their weights: :func:`build_model`, and the refusal of a teacher that
would distil its random initial weights (:func:`check_teacher_weights`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd.config.arguments import check_arguments
from torchkd.config.errors import ConfigError, blame
from torchkd.config.schema import ModelConfig

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_model", "check_teacher_weights"]


def _model_factory(name: str) -> Any:
    """The class or factory a recipe's ``model`` names (registered, or ``module:Class``)."""
    from torchkd.models import MODELS

    return MODELS.resolve(name)


def build_model(spec: ModelConfig, path: str = "student") -> nn.Module:
    """Instantiate ``spec.model`` with ``spec.kwargs`` and load ``spec.checkpoint`` if given.

    ``model`` is a registered name (:func:`torchkd.models.create_model`) or ``"package.module:
    Class"`` for your own ``nn.Module``. ``checkpoint`` is a ``.safetensors`` file, a torchkd
    training checkpoint (its student weights are used) or a ``torch.save``-d state dict.
    """
    from torchkd.train.weights import load_student_weights

    with blame(f"{path}.model"):
        factory = _model_factory(spec.model)
    check_arguments(factory, spec.kwargs, f"{path}.kwargs")
    with blame(f"{path}.kwargs"):
        model = factory(**spec.kwargs)
    if spec.checkpoint is not None:
        _check_weights_exist(spec.checkpoint, f"{path}.checkpoint")
        with blame(f"{path}.checkpoint"):
            weights = load_student_weights(spec.checkpoint)
            try:
                model.load_state_dict(weights)
            except RuntimeError as error:
                raise ValueError(
                    f"the weights in {spec.checkpoint} do not fit model {spec.model!r} with "
                    f"kwargs {spec.kwargs}: {error}"
                ) from error
    return model


def check_teacher_weights(spec: ModelConfig, path: str) -> None:
    """Refuse a teacher that would distil its random initial weights by mistake: one with no
    ``checkpoint`` whose recipe says neither ``pretrained: true`` (its constructor loads trained
    weights) nor ``untrained: true`` (on purpose). A ``kwargs.path`` (the local directory a
    Hugging Face model, ``hf_causal_lm`` / ``hf_encoder``, loads its trained weights from) says
    ``pretrained`` by itself."""
    pretrained = spec.pretrained or "path" in spec.kwargs
    if spec.checkpoint is None and not pretrained and not spec.untrained:
        raise ConfigError(
            [
                f"{path}.checkpoint: required: without it the teacher ({spec.model}) keeps its "
                f"random initial weights and the run distils noise; set {path}.checkpoint=PATH "
                "(e.g. runs/<teacher run>/checkpoints/best.pt), or say "
                f"{path}.pretrained=true if its constructor loads trained weights, or "
                f"{path}.untrained=true to distil an untrained teacher on purpose"
            ]
        )


def _check_weights_exist(checkpoint: str, path: str) -> None:
    """A missing weights file is refused saying how to make it: ``runs/NAME/...`` is written by
    ``torchkd train`` of the recipe named NAME (the shipped one is named when it exists)."""
    file = Path(checkpoint)
    if file.is_file():
        return
    hint = "point it at a torchkd checkpoint, a .safetensors file or a saved state dict"
    if len(file.parts) > 2 and file.parts[0] == "runs":
        run_name = file.parts[1]
        shipped = _shipped_recipe(run_name)
        command = f"torchkd train {shipped}" if shipped else f"a recipe named {run_name!r}"
        hint = f"train its run first ({command}), or {hint}"
    raise ConfigError([f"{path}: {checkpoint} does not exist; {hint}"])


def _shipped_recipe(name: str) -> str | None:
    """``configs/<group>/<file>.yaml`` of the shipped recipe whose ``name`` is ``name``."""
    from importlib import resources

    import yaml

    root = Path(str(resources.files("torchkd") / "configs"))
    for recipe in sorted(root.rglob("*.yaml")):
        data = yaml.safe_load(recipe.read_text())
        if isinstance(data, dict) and data.get("name") == name:
            return f"configs/{recipe.relative_to(root).as_posix()}"
    return None
