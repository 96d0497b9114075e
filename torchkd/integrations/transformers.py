"""Distillation inside a Hugging Face ``transformers.Trainer``: :class:`DistillationTrainer`.

For people who already train causal LMs with ``Trainer``: pass the student as ``model``, a
teacher as ``teacher_model`` and torchkd :class:`~torchkd.terms.Term` s (default: one fused
forward-KL term, :func:`default_terms`); everything else (``TrainingArguments``, data
collators, callbacks, checkpoints) works as with ``Trainer``. The loss is computed by a
:class:`~torchkd.distiller.Distiller` built on the first batch.

Batches are the ones Hugging Face collators make: ``input_ids``, ``attention_mask`` and
``labels`` UNSHIFTED (``labels[t]`` is the token at position ``t``, ``-100`` where ignored).
:func:`distillation_batch` turns them into torchkd's format (``inputs`` mapping, labels shifted
to the next token: hidden state ``t`` is scored against ``labels[t + 1]``).

Gradient accumulation. ``Trainer`` counts the valid tokens of all the micro-batches of an
optimizer step (``num_items_in_batch``, ``N``). Here the count is taken on the SHIFTED labels
the loss reads (``Trainer`` itself counts ``labels[..., 1:]`` only when the model's
``loss_type`` is the causal-LM loss, and all of ``labels`` otherwise). Each micro-batch's
terms are normalized by ``N / G`` (``G`` micro-batches) and :meth:`DistillationTrainer.
compute_loss` divides the loss by ``G`` itself: a token-normalized term then contributes
``sum_tokens / N`` per micro-batch, so the step's gradient equals that of one batch holding
all the sequences, whatever their lengths, and a per-batch mean term (a hidden-state hint) is
averaged over the micro-batches. ``Trainer`` must then not divide again. It has two rules for
that within transformers 5.x, and both are met: up to 5.18 it divides unless
``model_accepts_loss_kwargs`` and ``num_items_in_batch`` is set (both always true here); from
5.20 the ``loss_is_scaled_for_ga`` attribute, True here, decides.

Every term is logged (``terms/<name>`` beside ``loss`` in the Trainer's logs), averaged over
the logging interval as ``loss`` is.

Several processes (``torchrun``, ``accelerate launch``): DDP through accelerate around the
student and the terms' trainable parts, the teacher left out, ``N`` counted over the processes
(:mod:`torchkd.integrations.transformers_parallel`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from torchkd._extras import require
from torchkd._files import atomic_write
from torchkd.distiller import Distiller, DistillOutput, OnPolicyHook, Term
from torchkd.integrations.transformers_parallel import (
    mean_over_processes,
    refuse_unsupported_parallelism,
    token_processes,
    total_over_processes,
)
from torchkd.lm.cache.format import CACHE_KEYS, SAMPLED_KEYS
from torchkd.lm.tokens import (
    IGNORE_INDEX,
    TOKEN_NORMALIZER,
    TokenNormalizer,
    count_valid_tokens,
    is_token_labels,
    next_token_labels,
)
from torchkd.train.distributed import TrainedPart

transformers = require("transformers", "hf", "torchkd.integrations.transformers")

__all__ = ["EXTRAS_FILE", "DistillationTrainer", "default_terms", "distillation_batch"]

EXTRAS_FILE = "torchkd_extras.safetensors"  # adapters, learned weights/temperatures of the terms

# Batch entries that are not model inputs: they go to the torchkd batch beside "inputs".
_BATCH_KEYS = ("index", "prompt_ids", "prompt_mask", *CACHE_KEYS, *SAMPLED_KEYS)
_LABEL_KEYS = ("labels", "shift_labels")


def default_terms(
    temperature: float = 1.0, divergence: str = "forward_kl", hard_label_weight: float = 0.0
) -> list[Term]:
    """One fused token-level term (:func:`torchkd.losses.fused_linear_kd_loss`) between the
    student's and the teacher's final hidden states through their output projections.

    Args:
        temperature: the softening temperature T (the divergence is scaled by T²).
        divergence: ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"``, ``"tvd"``,
            ``"skew_forward_kl"``, ``"skew_reverse_kl"`` or ``"akl"`` (their options at their
            defaults: :func:`torchkd.losses.fused_linear_kd_loss`).
        hard_label_weight: weight of the hard-label cross-entropy on the same student logits.

    Example:
        >>> [(term.name, term.loss, term.temperature) for term in default_terms()]
        [('token_kd', 'fused_linear_kd', 1.0)]
    """
    kwargs = {"divergence": divergence, "hard_label_weight": hard_label_weight}
    return [Term("token_kd", "fused_linear_kd", loss_kwargs=kwargs, temperature=temperature)]


def distillation_batch(
    inputs: Mapping[str, Any], token_normalizer: TokenNormalizer | None = None
) -> dict[str, Any]:
    """A Hugging Face batch as a torchkd batch.

    ``labels`` (unshifted) become next-token labels ``labels[t + 1]``, ``-100`` at the last
    position and wherever position ``t`` or ``t + 1`` is padding (``attention_mask`` 0); a
    collator's ``shift_labels`` (already shifted) are used as they are. The teacher-cache
    entries and ``index`` stay batch entries; every other entry is a model input.
    ``token_normalizer`` (training) goes to ``batch["token_normalizer"]``.

    Example:
        >>> batch = distillation_batch({
        ...     "input_ids": torch.tensor([[5, 6, 7, 0]]),
        ...     "attention_mask": torch.tensor([[1, 1, 1, 0]]),
        ...     "labels": torch.tensor([[5, 6, 7, -100]]),
        ... })
        >>> sorted(batch["inputs"]), batch["labels"]
        (['attention_mask', 'input_ids'], tensor([[   6,    7, -100, -100]]))
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(f"a Trainer batch must be a mapping, got {type(inputs).__name__}")
    batch: dict[str, Any] = {
        "inputs": {k: v for k, v in inputs.items() if k not in _BATCH_KEYS + _LABEL_KEYS},
        "labels": shifted_labels(inputs),
    }
    batch.update({key: inputs[key] for key in _BATCH_KEYS if key in inputs})
    if token_normalizer is not None:
        batch[TOKEN_NORMALIZER] = token_normalizer
    return batch


def shifted_labels(inputs: Mapping[str, Any]) -> Tensor:
    """The next-token labels of a Hugging Face batch (see :func:`distillation_batch`)."""
    if inputs.get("shift_labels") is not None:
        return inputs["shift_labels"]
    labels = inputs.get("labels")
    if not is_token_labels(labels):
        described = type(labels).__name__ if not isinstance(labels, Tensor) else labels.shape
        raise ValueError(
            "DistillationTrainer needs token labels: batch['labels'] of shape [batch, length] "
            f"(unshifted, -100 where ignored, as Hugging Face collators make them), got "
            f"{described}; e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False)"
        )
    return next_token_labels(labels, inputs.get("attention_mask"), IGNORE_INDEX)


class DistillationTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose loss is a torchkd distillation loss.

    Args:
        model: the student (a ``*ForCausalLM`` for the token-level terms).
        teacher_model: the teacher; frozen, kept in eval mode and moved to the student's
            device (and to ``teacher_dtype`` when given). The Trainer saves the student only.
            None when every term reads a teacher cache (``Term(..., teacher="cache")``, with
            the batches carrying ``teacher_topk_*``).
        terms: torchkd terms (default :func:`default_terms`): token-level terms
            (``fused_linear_kd``, from the final hidden states) and hidden-state terms between
            layers (``student="model.layers.1"``, ``teacher="model.layers.5"``, with automatic
            adapters). Adapters and other learned parts of the terms are built on the first
            batch, trained with the student (an extra optimizer parameter group) and saved
            beside the student as :data:`EXTRAS_FILE`.
        teacher_dtype: cast the teacher to this dtype (e.g. ``torch.bfloat16``).
        on_policy: the Distiller's on-policy hook (e.g. :class:`torchkd.lm.on_policy.OnPolicy`):
            each training micro-batch goes through :meth:`Distiller.prepare` at its optimizer
            step (``state.global_step``) before the step's tokens are counted. ``OnPolicy``'s
            samples are functions of its seed and the step, so resuming regenerates them.
        **kwargs: ``transformers.Trainer`` arguments (``args``, ``train_dataset``,
            ``data_collator``, ``callbacks``, ...).

    One process, or several under ``torchrun`` / ``accelerate launch`` (DDP through
    accelerate, around the student and the terms' trainable parts; the teacher is not wrapped;
    tokens are counted over every process: :mod:`torchkd.integrations.transformers_parallel`).
    ``nn.DataParallel``, DeepSpeed, FSDP and tensor / context / sequence parallelism are
    refused.

    Example (``tests/integrations/test_transformers.py`` runs it on tiny Llamas)::

        trainer = DistillationTrainer(
            model=student,  # e.g. AutoModelForCausalLM.from_pretrained(local_dir)
            teacher_model=teacher,
            terms=default_terms(temperature=2.0, hard_label_weight=0.5),
            args=TrainingArguments("out", gradient_accumulation_steps=4, report_to=[]),
            train_dataset=dataset,  # input_ids, attention_mask, labels (unshifted)
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        )
        trainer.train()
        trainer.save_model("out/student")
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the number of micro-batches

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher_model: nn.Module | None = None,
        terms: Sequence[Term] | None = None,
        *,
        teacher_dtype: torch.dtype | None = None,
        on_policy: OnPolicyHook | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "DistillationTrainer needs the student as model= (an nn.Module; model_init is "
                f"not supported), got {type(model).__name__}"
            )
        if not isinstance(teacher_model, nn.Module) and (
            teacher_model is not None or terms is None
        ):
            raise TypeError(
                "DistillationTrainer needs teacher_model= (an nn.Module; None only with terms "
                f"that read a teacher cache), got {type(teacher_model).__name__}"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "DistillationTrainer computes the loss from terms=, not compute_loss_func"
            )
        super().__init__(model=model, **kwargs)
        args = self.args
        refuse_unsupported_parallelism(self)
        if args.label_smoothing_factor != 0:
            raise ValueError(
                "DistillationTrainer: label_smoothing_factor is not used (the loss is the terms'); "
                "leave it at 0"
            )
        reference = next(self.model.parameters(), None)
        device = args.device if reference is None else reference.device
        if teacher_model is not None:
            teacher_model = teacher_model.to(device=device, dtype=teacher_dtype)
        self.teacher_model = teacher_model
        self.distiller = Distiller(
            self.model, self.teacher_model, list(terms or default_terms()), on_policy=on_policy
        )
        self._terms_built = False
        # what the optimizer trains (student + extras) as one module whose forward is the
        # Distiller's, what Trainer trains (_wrap_model): in DDP on several processes; the
        # teacher is not part of it
        self.trained_part = TrainedPart(self.distiller)
        # the loss (ours) takes num_items_in_batch: Trainer counts it (_get_num_items_in_batch);
        # up to transformers 5.18 this also tells training_step not to divide the loss by G
        self.model_accepts_loss_kwargs = True
        self._term_sums: dict[str, Tensor] = {}  # each term summed since the last training log
        self._term_steps: set[int] = set()  # the optimizer steps those sums cover
        self.add_callback(_ClearExtrasGradients(self.distiller.extras))

    # ---------------------------------------------------------------- building
    def build_distiller(self, example: Mapping[str, Any] | None = None) -> None:
        """Build the Distiller's adapters and loss modules (once) from ``example`` (a Hugging
        Face batch; default: the first sample of the training or evaluation set, collated).
        Called before the optimizer is created, so that they are trained."""
        if self._terms_built:
            return
        if example is None:
            example = self._example_batch()
        self.distiller.build(distillation_batch(self._prepare_inputs(example)))
        self._terms_built = True

    def _example_batch(self) -> Mapping[str, Any]:
        dataset = self.train_dataset if self.train_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError(
                "DistillationTrainer builds its terms from a first batch: give train_dataset "
                "or eval_dataset, or call trainer.build_distiller(batch) first"
            )
        if isinstance(dataset, Mapping):  # a dict of eval datasets
            dataset = next(iter(dataset.values()))
        sample = dataset[0] if hasattr(dataset, "__getitem__") else next(iter(dataset))
        return self.data_collator([sample])

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """``Trainer``'s optimizer over the student, plus one parameter group holding the
        terms' trainable parts (adapters, learned weights and temperatures)."""
        self.build_distiller()
        had_optimizer = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        extras = [param for param in self.distiller.extras.parameters() if param.requires_grad]
        if not had_optimizer:
            if extras:
                group = {"params": extras, "weight_decay": self.args.weight_decay}
                optimizer.add_param_group(group)
            return optimizer
        given = {id(param) for group in optimizer.param_groups for param in group["params"]}
        if any(id(param) not in given for param in extras):
            raise ValueError(
                "the optimizer given to DistillationTrainer (optimizers=) misses the terms' "
                "trainable parts (adapters, learned weights or temperatures); pass "
                "optimizer_cls_and_kwargs= instead, or call trainer.build_distiller() and set "
                "trainer.optimizer to one that also holds trainer.distiller.extras.parameters()"
            )
        return optimizer

    def _wrap_model(
        self, model: nn.Module, training: bool = True, dataloader: Any = None
    ) -> nn.Module:
        """What the training step calls: :attr:`trained_part` (student and extras, the
        Distiller's forward) prepared by accelerate (on several processes wrapped in DDP;
        mixed precision autocasts the whole forward), where ``Trainer`` would prepare the
        student alone. The gradient clipping and the logged ``grad_norm`` therefore cover the
        extras too."""
        wrapped = super()._wrap_model(model, training, dataloader)
        if training and wrapped is self.model:
            self.build_distiller()
            return self.accelerator.prepare_model(self.trained_part)
        return wrapped

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the batch entries the terms read when unused columns are removed."""
        super()._set_signature_columns_if_needed()
        kept = [key for key in _BATCH_KEYS + _LABEL_KEYS if key not in self._signature_columns]
        self._signature_columns += kept

    # ---------------------------------------------------------------- the loss
    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list[Any], Tensor]:
        """``Trainer``'s micro-batches of one optimizer step and their valid tokens; with
        ``on_policy``, each micro-batch is first passed through :meth:`Distiller.prepare` (so
        the tokens counted are the ones trained on)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(
            epoch_iterator, num_batches, device
        )
        if self.distiller.on_policy is None:
            return batch_samples, num_items_in_batch
        self.distiller.train()  # only the training loop draws batches this way
        batch_samples = [self._prepared(batch) for batch in batch_samples]
        return batch_samples, self._get_num_items_in_batch(batch_samples, device)

    def _prepared(self, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """``inputs`` after :meth:`Distiller.prepare` at this step, as a Hugging Face batch
        (a regenerated batch's next-token labels become ``shift_labels``)."""
        batch = distillation_batch(inputs)
        prepared = self.distiller.prepare(batch, self.state.global_step)
        if prepared is batch:
            return inputs
        hf_batch = {**prepared["inputs"], "shift_labels": prepared["labels"]}
        hf_batch.update({key: prepared[key] for key in _BATCH_KEYS if key in prepared})
        return hf_batch

    def _get_num_items_in_batch(self, batch_samples: list[Any], device: torch.device) -> Tensor:
        """The valid tokens of the SHIFTED labels of all the micro-batches of a step, summed
        over the processes with ``average_tokens_across_devices`` (never None: ``Trainer`` up
        to 5.18 would then divide the loss by ``G`` a second time)."""
        total = sum(count_valid_tokens(shifted_labels(batch)) for batch in batch_samples)
        return total_over_processes(self, torch.tensor(total, device=device))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Any]]:
        """The Distiller's loss of one micro-batch. In training, token-level terms are
        normalized by ``TokenNormalizer(num_items_in_batch, G, W)`` (divisor ``N / (G W)``,
        ``W`` the processes counted: :func:`~torchkd.integrations.transformers_parallel.
        token_processes`), the loss is divided by ``G`` (``G`` micro-batches per step), and the
        terms are recorded for the logs; in evaluation, token-level terms are normalized by the
        batch's own token count."""
        self.build_distiller()
        self.distiller.train(model.training)  # the teacher stays in eval mode (TeacherList)
        if not model.training:
            output = self.distiller(distillation_batch(inputs))
            return (output.loss, _outputs(output)) if return_outputs else output.loss
        micro_batches = self.current_gradient_accumulation_steps
        self.distiller.set_progress(self.state.global_step, max(self.state.max_steps, 1))
        normalizer = None
        if num_items_in_batch is not None and float(num_items_in_batch) > 0:
            processes = token_processes(self.args)
            normalizer = TokenNormalizer(float(num_items_in_batch), micro_batches, processes)
        trains_part = self.accelerator.unwrap_model(model) is self.trained_part
        output = (model if trains_part else self.distiller)(distillation_batch(inputs, normalizer))
        self._term_steps.add(self.state.global_step)
        for name, value in output.terms.items():
            self._term_sums[name] = self._term_sums.get(name, 0) + value.detach() / micro_batches
        loss = output.loss / micro_batches
        return (loss, _outputs(output)) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """``Trainer``'s log, with each term's mean over the steps since the last training log
        (``terms/<name>``, averaged over the processes) beside ``loss``."""
        if "loss" in logs and self._term_steps:
            steps = len(self._term_steps)
            sums = mean_over_processes(self, self._term_sums)
            logs.update({f"terms/{name}": value / steps for name, value in sums.items()})
            self._term_sums, self._term_steps = {}, set()
        super().log(logs, start_time)

    # ---------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        extras = self.distiller.extras.state_dict()
        if extras and self.args.should_save:
            directory = output_dir if output_dir is not None else self.args.output_dir
            tensors = {name: tensor.detach().contiguous() for name, tensor in extras.items()}
            atomic_write(
                os.path.join(directory, EXTRAS_FILE), lambda stream: stream.write(save(tensors))
            )

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.load_extras(resume_from_checkpoint)

    def load_extras(self, directory: str) -> None:
        """Load the terms' trained parts saved by :meth:`save_model` from ``directory``
        (builds the Distiller first; no file there: nothing to load)."""
        path = os.path.join(directory, EXTRAS_FILE)
        if not os.path.exists(path):
            return
        self.build_distiller()
        # read on the CPU (safetensors refuses a "cpu:0" device, what args.device is under DDP)
        # and copied into the extras where they are
        self.distiller.extras.load_state_dict(load_file(path))


class _ClearExtrasGradients(transformers.TrainerCallback):
    """``Trainer`` clears the gradients of the student alone (``model.zero_grad()``, before
    training and after each optimizer step); the terms' trainable parts (adapters, learned
    temperatures) live outside it, so their gradients are cleared at the same points."""

    def __init__(self, extras: nn.Module) -> None:
        self.extras = extras

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.extras.zero_grad()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.extras.zero_grad()


def _outputs(output: DistillOutput) -> dict[str, Any]:
    """What ``compute_loss(return_outputs=True)`` gives ``Trainer``'s evaluation: the loss,
    and the student's logits when a term built them."""
    outputs: dict[str, Any] = {"loss": output.loss}
    if output.student_logits is not None:
        outputs["logits"] = output.student_logits
    return outputs
