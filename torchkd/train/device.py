"""The device training runs on: which one (``train.device``), whether it can run the chosen
mixed precision (``train.amp``), and the generator states a step on it draws from."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_amp", "device_rng_state", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


def check_amp(amp: str, device: torch.device) -> None:
    """Refuse a ``train.amp`` mode the device cannot run."""
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"train.amp='fp16' needs a CUDA device (loss scaling with torch.amp.GradScaler), "
            f"but training runs on {device.type!r}; use amp='bf16' or amp='none' on CPU"
        )
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("train.amp='bf16' is not supported by this GPU; use 'fp16'")


def device_rng_state(device: torch.device) -> dict[str, Any]:
    """A copy of the generator states a training step on ``device`` draws from (cheap)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
