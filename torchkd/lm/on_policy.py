"""On-policy distillation (GKD) and sequence-level KD: train on continuations that a model
samples from the batch's prompts.

Supervised KD trains the student on fixed sequences, yet at inference it conditions on its own
tokens; on-policy distillation (Agarwal et al., *On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes*, ICLR 2024) closes that gap. With probability ``λ``
(``fraction``) a batch is replaced by its prompts followed by continuations ``y ~ p_S(· | x)``
sampled from the student, and the token loss of the batch's terms (e.g. reverse KL or
JSD(β) of ``fused_linear_kd``) is computed on the generated tokens only, with the teacher
scoring them:

.. math::

    L = (1 - λ)\\, \\mathbb{E}_{(x, y) \\sim \\text{data}}\\, \\mathcal{D}(p_T, p_S)(y \\mid x)
      + λ\\, \\mathbb{E}_{x,\\, y \\sim p_S(\\cdot \\mid x)}\\, \\mathcal{D}(p_T, p_S)(y \\mid x)

(no gradient flows through the sampling, as in GKD). ``source="teacher"`` samples from the
teacher instead: sequence-level KD (Kim & Rush, *Sequence-Level Knowledge Distillation*, EMNLP
2016), where the student is trained with cross-entropy and/or KD on the teacher's outputs.

:class:`OnPolicy` is the Distiller's ``on_policy`` hook: the training loop calls it on every
micro-batch before the forward passes. Its decisions and samples are functions of
``(seed, step)`` (and the batch's sample indices), so a resumed run regenerates exactly what
the uninterrupted one did and there is no state to checkpoint; it leaves the global RNG
streams exactly as it found them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torchkd._extras import require
from torchkd.lm.cache.format import CACHE_KEYS, SAMPLED_KEYS
from torchkd.lm.tokens import IGNORE_INDEX

__all__ = ["OnPolicy"]

SOURCES = ("student", "teacher")
_KEPT_KEYS = ("index", "prompt_ids", "prompt_mask")  # per-sample keys still aligned afterwards


def _derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a fixed function of ``parts`` (independent streams per tuple)."""
    digest = hashlib.sha256(",".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class OnPolicy:
    """Replace a fraction of the training batches by sampled continuations of their prompts.

    Args:
        fraction: ``λ`` in [0, 1], the probability that a step's batches are regenerated
            (decided per step from ``(seed, step)``: every micro-batch of a step agrees).
        max_new_tokens: how many tokens to sample after each prompt (generation stops at the
            model's end-of-sequence token; what follows it is padding).
        temperature: sampling temperature (> 0); independent of any loss temperature.
        top_k: sample among the ``top_k`` most likely tokens only; None: the whole vocabulary.
        source: ``"student"`` (on-policy, GKD) or ``"teacher"`` (sequence-level KD; the first
            teacher generates).
        prompt_length: for plain-text batches, the first ``prompt_length`` tokens of
            ``batch["inputs"]["input_ids"]`` are the prompt. Prompt/completion batches carry
            their prompts as ``prompt_ids`` / ``prompt_mask`` (left-padded), used first.
        seed: seeds the decisions and the sampling together with the step.

    Sampling uses the generating model's ``generate`` (a transformers causal LM) with
    ``do_sample=True`` and exactly the settings above: the model's own ``generation_config``
    sampling options (top-p, repetition penalty, ...) are not applied.

    Example:
        >>> on_policy = OnPolicy(fraction=0.0, max_new_tokens=8, prompt_length=4)
        >>> batch = {"inputs": {"input_ids": torch.ones(2, 6, dtype=torch.long)}}
        >>> on_policy(batch, step=0, student=nn.Identity(), teachers=[]) is batch
        True
    """

    fraction: float
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    source: Literal["student", "teacher"] = "student"
    prompt_length: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, int | float):
            raise TypeError(f"fraction must be a number in [0, 1], got {self.fraction!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(
                f"fraction must be in [0, 1] (the share λ of batches), got {self.fraction}"
            )
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise TypeError(f"temperature must be a positive number, got {temperature!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {self.top_k!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.prompt_length is not None and (
            not _is_int(self.prompt_length) or self.prompt_length < 1
        ):
            raise ValueError(
                f"prompt_length must be None or an integer >= 1, got {self.prompt_length!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def regenerates(self, step: int) -> bool:
        """Whether the batches of training step ``step`` are regenerated (probability λ)."""
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, step, 0))
        return bool(torch.rand((), generator=generator) < self.fraction)

    def __call__(
        self,
        batch: Mapping[str, Any],
        *,
        step: int,
        student: nn.Module,
        teachers: Sequence[nn.Module],
    ) -> Mapping[str, Any]:
        """``batch`` itself, or (with probability λ) its prompts and sampled continuations.

        The new batch has ``inputs = {input_ids, attention_mask, position_ids}`` of length
        ``P + max_new_tokens`` (the left-padded prompt, then the continuation; mask 1 on real
        tokens, 0 on padding and after the first end-of-sequence token; positions counted from
        the first real token, as during generation), ``labels`` = the next token wherever it is a
        generated one (``-100`` elsewhere: the loss covers the generated tokens only) and the
        batch's ``index``, ``prompt_ids`` and ``prompt_mask``. Other keys are dropped.
        """
        cached = [key for key in (*CACHE_KEYS, *SAMPLED_KEYS) if key in batch]
        if cached:
            raise ValueError(
                f"on-policy distillation needs a teacher model to score the sampled tokens, but "
                f"the batch carries a cached teacher ({', '.join(cached)}), which only covers "
                "the dataset's own tokens; drop the teacher cache or on_policy"
            )
        if not self.regenerates(step):
            return batch
        model = self._generator_model(student, teachers)
        prompt_ids, prompt_mask = self._prompts(batch)
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        index = batch.get("index")
        sample_seed = _derived_seed(
            self.seed, step, 1, *(index.reshape(-1).tolist() if isinstance(index, Tensor) else ())
        )
        eos_ids, pad_id = _special_tokens(model)
        generated = self._sample(model, prompt_ids, prompt_mask, sample_seed, eos_ids, pad_id)
        return self._new_batch(batch, prompt_ids, prompt_mask, generated, eos_ids, pad_id)

    # ------------------------------------------------------------------ pieces
    def _generator_model(self, student: nn.Module, teachers: Sequence[nn.Module]) -> nn.Module:
        if self.source == "teacher":
            if len(teachers) == 0:
                raise ValueError(
                    "on_policy source='teacher' (sequence-level KD) samples from the first "
                    "teacher, but the Distiller has no teacher"
                )
            model, what = teachers[0], "teachers[0]"
        else:
            model, what = student, "the student"
        if not callable(getattr(model, "generate", None)):
            raise TypeError(
                f"on_policy source={self.source!r}: {what} ({type(model).__name__}) has no "
                "generate(); on-policy sampling needs a transformers causal LM"
            )
        return model

    def _prompts(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """``[B, P]`` prompt ids and mask, left-padded (every row's last position is real)."""
        if "prompt_ids" in batch:
            prompt_ids = batch["prompt_ids"]
            prompt_mask = batch.get("prompt_mask")
            if prompt_mask is None:
                prompt_mask = torch.ones_like(prompt_ids)
            where = "batch['prompt_ids']"
        elif self.prompt_length is not None:
            inputs = batch.get("inputs")
            if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
                raise ValueError(
                    "on_policy prompt_length: the batch needs inputs['input_ids'] to take the "
                    f"prompt from, got inputs of type {type(inputs).__name__}"
                )
            input_ids = inputs["input_ids"]
            if input_ids.dim() != 2 or input_ids.shape[1] < self.prompt_length:
                raise ValueError(
                    f"on_policy prompt_length={self.prompt_length}: input_ids "
                    f"{tuple(input_ids.shape)} must be [batch, length >= prompt_length]"
                )
            prompt_ids = input_ids[:, : self.prompt_length]
            mask = inputs.get("attention_mask")
            prompt_mask = (
                torch.ones_like(prompt_ids) if mask is None else mask[:, : self.prompt_length]
            )
            where = f"the first {self.prompt_length} tokens of inputs['input_ids']"
        else:
            raise ValueError(
                "on_policy: the batch has no prompts: give prompt/completion data "
                "(prompt_ids, prompt_mask) or set prompt_length for plain text"
            )
        if prompt_ids.dim() != 2 or prompt_mask.shape != prompt_ids.shape:
            raise ValueError(
                f"on_policy: prompts ({where}) must be [batch, length] with a mask of the same "
                f"shape, got ids {tuple(prompt_ids.shape)} and mask {tuple(prompt_mask.shape)}"
            )
        if not bool(prompt_mask[:, -1].bool().all()):
            rows = torch.nonzero(~prompt_mask[:, -1].bool()).reshape(-1).tolist()
            raise ValueError(
                f"on_policy: prompts ({where}) must be left-padded and non-empty (last position "
                f"real in every row), but rows {rows} end in padding"
            )
        return prompt_ids.long(), prompt_mask.long()

    def _sample(
        self,
        model: nn.Module,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        seed: int,
        eos_ids: list[int],
        pad_id: int,
    ) -> Tensor:
        """``[B, max_new_tokens]`` sampled tokens (as ``generate`` returns them, padded to the
        full length with ``pad_id`` when every row stopped early)."""
        generation_config = require("transformers", "hf", "on-policy generation").GenerationConfig
        settings = generation_config(
            do_sample=True,
            temperature=float(self.temperature),
            top_k=self.top_k or 0,  # 0 disables transformers' default top-k of 50
            top_p=1.0,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=eos_ids or None,
            pad_token_id=pad_id,
        )
        device = prompt_ids.device
        was_training = model.training
        own_settings = model.generation_config
        model.generation_config = generation_config()  # its sampling options must not fill in
        try:
            model.eval()
            with (
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
                torch.no_grad(),
            ):
                torch.random.default_generator.manual_seed(seed)
                if device.type == "cuda":
                    torch.cuda.default_generators[device.index or 0].manual_seed(seed)
                sequences = model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    generation_config=settings,
                    synced_gpus=_is_sharded(model),
                )
        finally:
            model.generation_config = own_settings
            model.train(was_training)
        generated = sequences[:, prompt_ids.shape[1] :]
        missing = self.max_new_tokens - generated.shape[1]
        return nn.functional.pad(generated, (0, missing), value=pad_id) if missing else generated

    def _new_batch(
        self,
        batch: Mapping[str, Any],
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        generated: Tensor,
        eos_ids: list[int],
        pad_id: int,
    ) -> dict[str, Any]:
        is_eos = torch.isin(
            generated, torch.tensor(eos_ids, dtype=generated.dtype, device=generated.device)
        )
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        real = ~after_eos  # the first eos itself is real: the student learns to stop
        generated = generated.masked_fill(~real, pad_id)
        input_ids = torch.cat([prompt_ids, generated], dim=1)
        attention_mask = torch.cat([prompt_mask, real.long()], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        # hidden state t predicts token t + 1: P - 1 (the last prompt token) predicts the first
        # generated token, and each real generated token is the label of the position before it
        labels[:, prompt_ids.shape[1] - 1 : -1] = generated.masked_fill(~real, IGNORE_INDEX)
        new_batch: dict[str, Any] = {
            "inputs": {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "position_ids": position_ids,
            },
            "labels": labels,
        }
        new_batch.update({key: batch[key] for key in _KEPT_KEYS if key in batch})
        return new_batch


def _is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` has FSDP2-sharded parts in a multi-process run: then every process
    must keep calling its forward until all have finished generating (``synced_gpus``), or
    the all-gathers of a process that stopped early would leave the others waiting."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def _special_tokens(model: nn.Module) -> tuple[list[int], int]:
    """The end-of-sequence ids and the padding id of ``model`` (its generation config first,
    then its config; padding falls back to the first eos id, then 0: padded positions are
    masked anyway)."""
    sources = [getattr(model, "generation_config", None), getattr(model, "config", None)]

    def first(name: str) -> Any:
        return next((value for s in sources if (value := getattr(s, name, None)) is not None), None)

    eos = first("eos_token_id")
    eos_ids = [] if eos is None else [int(eos)] if _is_int(eos) else [int(e) for e in eos]
    pad = first("pad_token_id")
    pad_id = int(pad) if pad is not None else eos_ids[0] if eos_ids else 0
    return eos_ids, pad_id
