"""DistillationTrainer runs compared across process counts: the same tiny float64 Llamas,
data and settings on one process (in the test) and on 2 (this module under ``torchrun``).

Under ``torchrun`` (:func:`torchrun_cases`), every process runs :func:`train` 3 times: 4
straight steps (checkpoints at step 2), steps 3-4 again resumed from ``checkpoint-2``, and 4
steps with each process's tokens counted alone; each rank saves the final trained parameters
and what it saw (its tokens, the wrapping, the teacher, the logs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import transformers
from torch import Tensor, nn
from train.distributed_cases import free_port

from integrations.test_transformers import LENGTHS, llama, samples
from torchkd import Term
from torchkd.integrations.transformers import DistillationTrainer, default_terms
from torchkd.train.distributed import end_process

PER_DEVICE, ACCUMULATION, PROCESSES = 2, 2, 2
GLOBAL_BATCH = PER_DEVICE * ACCUMULATION * PROCESSES  # 8 of the 16 sequences a step
STEPS, SAVE_STEPS = 4, 2  # 2 epochs
TORCHRUN_TIMEOUT_S = 300


def rows() -> list[dict[str, Tensor]]:
    """16 right-padded sequences of 1 to 12 valid tokens."""
    return samples(LENGTHS, seed=0) + samples((4, 9, 1, 12, 3, 7, 5, 2), seed=1)


def terms() -> list[Term]:
    """The fused token term and a hint through a learned 8 -> 16 adapter with a learned
    ("auto") weight: both extras are trained beside the student."""
    hint = Term("hint", "hint", student="model.layers.0", teacher="model.layers.1", weight="auto")
    return [*default_terms(temperature=2.0, hard_label_weight=0.5), hint]


class TokenRecorder:
    """The attended tokens of every training forward of the student's decoder (this rank's
    micro-batches, in order)."""

    def __init__(self, student: nn.Module) -> None:
        self.tokens: list[int] = []
        student.model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if module.training:
            self.tokens.append(int(kwargs["attention_mask"].sum()))


def train(
    run_dir: Path,
    *,
    per_device: int,
    accumulation: int,
    resume: Path | None = None,
    save: bool = False,
    global_tokens: bool = True,
) -> tuple[DistillationTrainer, TokenRecorder]:
    """Distil for :data:`STEPS` steps of ``per_device x accumulation`` sequences per process
    (SGD, gradient clipping at its default 1.0); ``global_tokens``:
    ``average_tokens_across_devices``."""
    student, teacher = llama(8, 1, seed=0), llama(16, 2, seed=1)
    recorder = TokenRecorder(student)
    args = transformers.TrainingArguments(
        output_dir=str(run_dir),
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_steps=STEPS,
        optim="sgd",
        learning_rate=0.5,
        save_strategy="steps" if save else "no",
        save_steps=SAVE_STEPS,
        logging_strategy="steps",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        average_tokens_across_devices=global_tokens,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, terms=terms(), args=args, train_dataset=rows()
    )
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return trainer, recorder


def trained_state(trainer: DistillationTrainer) -> dict[str, Tensor]:
    """The student's and the extras' parameters and buffers (adapter, "auto" weight)."""
    state = trainer.distiller.state_dict()
    return {k: v.detach().clone() for k, v in state.items() if not k.startswith("teachers")}


def training_logs(trainer: DistillationTrainer) -> list[dict[str, float]]:
    return [log for log in trainer.state.log_history if "loss" in log]


def wrapping(trainer: DistillationTrainer) -> dict[str, Any]:
    """What Trainer trains under DDP, and the teacher's place in it."""
    wrapped = trainer.model_wrapped
    teacher = {id(p) for p in trainer.teacher_model.parameters()}
    in_ddp = {id(p) for p in wrapped.parameters()}
    trained = {id(p) for p in trainer.distiller.trainable_parameters()}
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    return {
        "wrapper": type(wrapped).__name__,
        "wraps_trained_part": getattr(wrapped, "module", None) is trainer.trained_part,
        "model_is_student": trainer.model is trainer.distiller.student,
        "teacher_in_ddp": bool(teacher & in_ddp),
        "ddp_is_trained": in_ddp == trained,
        "optimizer_is_trained": optimized == trained,
        "teacher_requires_grad": any(p.requires_grad for p in trainer.teacher_model.parameters()),
        "teacher_grads": sum(p.grad is not None for p in trainer.teacher_model.parameters()),
        "teacher_training": trainer.teacher_model.training,
        "extras": sorted(name for name, _ in trainer.distiller.extras.named_parameters()),
    }


def main(out: str) -> None:
    """Under torchrun: the straight run, the resumed one, and one normalizing each process's
    tokens by its own count; each rank's results in ``out``."""
    out_dir, rank = Path(out), int(os.environ["RANK"])
    torch.set_num_threads(1)
    straight, recorder = train(
        out_dir / "straight", per_device=PER_DEVICE, accumulation=ACCUMULATION, save=True
    )
    resumed, _ = train(
        out_dir / "resumed",
        per_device=PER_DEVICE,
        accumulation=ACCUMULATION,
        resume=out_dir / "straight" / f"checkpoint-{SAVE_STEPS}",
    )
    local, _ = train(
        out_dir / "local", per_device=PER_DEVICE, accumulation=ACCUMULATION, global_tokens=False
    )
    for name, trainer in (("straight", straight), ("resumed", resumed), ("local", local)):
        torch.save(trained_state(trainer), out_dir / f"{name}.rank{rank}.pt")
    facts = {
        "tokens": recorder.tokens,
        "wrapping": wrapping(straight),
        "logs": training_logs(straight),
        "world_size": straight.args.world_size,
    }
    (out_dir / f"facts.rank{rank}.json").write_text(json.dumps(facts))
    dist.barrier()
    end_process(0)


def torchrun_cases(out: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 -m integrations.transformers_cases OUT`` (gloo, one
    torch thread per process, this checkout first on the path); exit code not checked."""
    tests = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(PROCESSES),
        "--master-port",
        str(free_port()),
        "-m",
        "integrations.transformers_cases",
        str(out),
    ]
    path = os.pathsep.join([str(tests.parent), str(tests)])
    environment = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        timeout=TORCHRUN_TIMEOUT_S,
        check=False,
    )


if __name__ == "__main__":
    main(sys.argv[1])
