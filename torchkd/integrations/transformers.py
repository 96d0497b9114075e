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
optimizer step (``num_items_in_batch``) and divides each micro-batch loss by the number of
micro-batches ``G`` unless the loss says it is already scaled. Here the count is taken on the
SHIFTED labels the loss reads (``Trainer`` itself counts ``labels[..., 1:]`` only when the
model's ``loss_type`` is the causal-LM loss, and all of ``labels`` otherwise, and only when the
model's ``forward`` takes ``**kwargs``); each micro-batch gets ``num_items_in_batch = N / G``
and ``Trainer`` divides its loss by ``G``. A token-normalized term then contributes
``sum_tokens / N`` per micro-batch, so the step's gradient equals that of one batch holding
all the sequences, whatever their lengths; a per-batch mean term (a hidden-state hint) is
averaged over the micro-batches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchkd._files import atomic_write
from torchkd.distiller import Distiller, DistillOutput, Term
from torchkd.lm import IGNORE_INDEX, count_valid_tokens, next_token_labels

try:
    import transformers
    from safetensors.torch import load_file, save
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "torchkd.integrations.transformers needs transformers and safetensors: "
        "pip install 'torchkd[hf]'"
    ) from error

__all__ = ["EXTRAS_FILE", "DistillationTrainer", "default_terms", "distillation_batch"]

EXTRAS_FILE = "torchkd_extras.safetensors"  # adapters, learned weights/temperatures of the terms

# Batch entries that are not model inputs: they go to the torchkd batch beside "inputs".
_BATCH_KEYS = ("index", "teacher_topk_ids", "teacher_topk_log_probs", "teacher_topk_tail")
_LABEL_KEYS = ("labels", "shift_labels")


def default_terms(
    temperature: float = 1.0, divergence: str = "forward_kl", hard_label_weight: float = 0.0
) -> list[Term]:
    """One fused token-level term (:func:`torchkd.losses.fused_linear_kd_loss`) between the
    student's and the teacher's final hidden states through their output projections.

    Args:
        temperature: the softening temperature T (the divergence is scaled by T²).
        divergence: ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"`` or ``"tvd"``.
        hard_label_weight: weight of the hard-label cross-entropy on the same student logits.

    Example:
        >>> [(term.name, term.loss, term.temperature) for term in default_terms()]
        [('token_kd', 'fused_linear_kd', 1.0)]
    """
    kwargs = {"divergence": divergence, "hard_label_weight": hard_label_weight}
    return [Term("token_kd", "fused_linear_kd", loss_kwargs=kwargs, temperature=temperature)]


def distillation_batch(
    inputs: Mapping[str, Any], num_items_in_batch: Tensor | float | None = None
) -> dict[str, Any]:
    """A Hugging Face batch as a torchkd batch.

    ``labels`` (unshifted) become next-token labels ``labels[t + 1]``, ``-100`` at the last
    position and wherever position ``t`` or ``t + 1`` is padding (``attention_mask`` 0); a
    collator's ``shift_labels`` (already shifted) are used as they are. The teacher-cache
    entries and ``index`` stay batch entries; every other entry is a model input.

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
    if num_items_in_batch is not None:
        batch["num_items_in_batch"] = num_items_in_batch
    return batch


def shifted_labels(inputs: Mapping[str, Any]) -> Tensor:
    """The next-token labels of a Hugging Face batch (see :func:`distillation_batch`)."""
    if inputs.get("shift_labels") is not None:
        return inputs["shift_labels"]
    labels = inputs.get("labels")
    if not isinstance(labels, Tensor) or labels.dim() < 2:
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
        **kwargs: ``transformers.Trainer`` arguments (``args``, ``train_dataset``,
            ``data_collator``, ``callbacks``, ...).

    One process on one device: data parallelism (``torchrun``, several GPUs) and model
    sharding (DeepSpeed, FSDP) are refused, since the Distiller runs the student unwrapped.

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

    loss_is_scaled_for_ga = False  # each micro-batch loss is divided by the number of them

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher_model: nn.Module | None = None,
        terms: Sequence[Term] | None = None,
        *,
        teacher_dtype: torch.dtype | None = None,
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
        if (
            args.world_size > 1
            or args.n_gpu > 1
            or self.is_deepspeed_enabled
            or self.is_fsdp_enabled
        ):
            raise ValueError(
                "DistillationTrainer runs on one process and one device (world_size="
                f"{args.world_size}, n_gpu={args.n_gpu}); for several devices use torchkd's own "
                "engine (torchkd train, torchrun)"
            )
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
        self.distiller = Distiller(self.model, self.teacher_model, list(terms or default_terms()))
        self._terms_built = False
        # the loss (ours) takes num_items_in_batch: Trainer counts it (_get_num_items_in_batch)
        self.model_accepts_loss_kwargs = True

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

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the batch entries the terms read when unused columns are removed."""
        super()._set_signature_columns_if_needed()
        kept = [key for key in _BATCH_KEYS + _LABEL_KEYS if key not in self._signature_columns]
        self._signature_columns += kept

    # ---------------------------------------------------------------- the loss
    def _get_num_items_in_batch(
        self, batch_samples: list[Any], device: torch.device
    ) -> Tensor | None:
        """The valid tokens of the SHIFTED labels of all the micro-batches of a step."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        total = sum(count_valid_tokens(shifted_labels(batch)) for batch in batch_samples)
        return torch.tensor(total, device=device)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Any]]:
        """The Distiller's loss of one micro-batch. In training, token-level terms are
        normalized by ``num_items_in_batch / G`` (``G`` micro-batches per step; ``Trainer``
        then divides the loss by ``G``); in evaluation by the batch's own token count."""
        self.build_distiller()
        self.distiller.train(model.training)  # the teacher stays in eval mode (TeacherList)
        per_micro_batch = None
        if model.training:
            self.distiller.set_progress(self.state.global_step, max(self.state.max_steps, 1))
            if num_items_in_batch is not None:
                per_micro_batch = num_items_in_batch / self.current_gradient_accumulation_steps
        output = self.distiller(distillation_batch(inputs, per_micro_batch))
        if not return_outputs:
            return output.loss
        return output.loss, _outputs(output)

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
        self.distiller.extras.load_state_dict(load_file(path, device=str(self.args.device)))


def _outputs(output: DistillOutput) -> dict[str, Any]:
    """What ``compute_loss(return_outputs=True)`` gives ``Trainer``'s evaluation: the loss,
    and the student's logits when a term built them."""
    outputs: dict[str, Any] = {"loss": output.loss}
    if output.student_logits is not None:
        outputs["logits"] = output.student_logits
    return outputs
