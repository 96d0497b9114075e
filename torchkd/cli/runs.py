"""The commands that train and use one run: ``train``, ``eval``, ``export``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from torchkd.cli.base import (
    EXIT_OK,
    Command,
    UsageError,
    add_overrides_argument,
    add_recipe_argument,
    load_recipe,
    print_metrics,
    register,
    student_from_checkpoint,
)

if TYPE_CHECKING:
    from torchkd.config import Recipe
    from torchkd.train import FitResult

# ------------------------------------------------------------------------------------ train


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    add_overrides_argument(parser)
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where checkpoints, metrics.jsonl, TensorBoard events and report.md go "
        "(default: runs/<recipe name>)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in DIR from checkpoints/last.pt"
    )
    parser.add_argument(
        "--baseline",
        metavar="RUN_DIR",
        help="a finished run to compare with in report.md (e.g. the student without KD: "
        "runs/<baseline recipe name>)",
    )


def _train(args: argparse.Namespace) -> int:
    from torchkd.config import fit_recipe
    from torchkd.config.generations import generation_dir
    from torchkd.train.checkpoint_layout import checkpoint_exists, checkpoint_in_the_way
    from torchkd.train.distributed import is_main_process

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / recipe.name
    first = generation_dir(run_dir, 1) if recipe.generations > 1 else run_dir  # born-again
    last = first / "checkpoints" / "last.pt"
    if args.resume and not checkpoint_exists(last):  # last.pt, or an FSDP run's last.dcp/
        raise UsageError(f"--resume: {last} does not exist (nothing to resume in {run_dir})")
    if not args.resume and checkpoint_in_the_way(last):
        raise UsageError(
            f"{run_dir} already holds a run; pass --resume to continue it, or --run-dir DIR "
            "to start a new one"
        )
    if args.baseline and not (Path(args.baseline) / "metrics.jsonl").is_file():
        raise UsageError(f"--baseline {args.baseline}: no metrics.jsonl (not a torchkd run)")
    result = fit_recipe(recipe, run_dir, resume=args.resume, baseline=args.baseline)
    if not is_main_process():  # under torchrun, rank 0 reports
        return EXIT_OK
    teacher_top1 = result.final_metrics.get("teacher_top1")
    if teacher_top1 is not None:  # an untrained or wrong teacher shows here, near chance
        print(f"teacher's own validation top-1: {teacher_top1:.2f} %")
    _print_scores(result)
    print(f"run directory: {result.run_dir}")
    if result.report_path is not None:
        print(f"report: {result.report_path}")
    return EXIT_OK


def _print_scores(result: FitResult) -> None:
    """Top-1 of each checkpoint, saying which: ``best.pt`` (the best validation epoch, the
    weights other recipes load) first, then the final model (``last.pt``)."""
    best, final = result.best_test_metrics or {}, result.test_metrics or {}
    last_epoch = result.history[-1]["epoch"] if result.history else 0
    if "top1" in result.best_metrics:
        print(
            f"best validation top-1: {result.best_metrics['top1']:.2f} % (epoch "
            f"{result.best_epoch}, saved as checkpoints/best.pt: the checkpoint recipes load)"
        )
    if "top1" in best:
        epoch = result.best_epoch
        print(f"test top-1 of checkpoints/best.pt (epoch {epoch}): {best['top1']:.2f} %")
    if "top1" in final and (result.best_epoch != last_epoch or "top1" not in best):
        print(
            f"test top-1 of the final model (checkpoints/last.pt, epoch {last_epoch}): "
            f"{final['top1']:.2f} %"
        )


register(
    Command(
        name="train",
        summary="train a student from a YAML recipe",
        description="Train the recipe's student (with its teachers and loss terms) and write "
        "checkpoints, metrics.jsonl, TensorBoard events and report.md to the run directory. "
        "With generations: N > 1 (born-again networks), train N students in a chain in "
        "DIR/gen1 .. DIR/genN, each taught by the previous one's best.pt, and summarise them "
        "in DIR/report.md.",
        examples="torchkd train configs/mnist1d/baseline.yaml\n"
        "torchkd train configs/mnist1d/kd.yaml teacher.checkpoint=teacher.safetensors "
        "terms.0.loss_kwargs.temperature=8\n"
        "torchkd train configs/mnist1d/kd.yaml --run-dir runs/kd --resume\n"
        "torchkd train configs/mnist1d/born_again.yaml generations=3",
        add_arguments=_train_arguments,
        run=_train,
    )
)


# ------------------------------------------------------------------------------------- eval


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    add_overrides_argument(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a training checkpoint (checkpoints/best.pt, last.pt; an FSDP run's best.dcp/, "
        "last.dcp/) or exported .safetensors",
    )
    parser.add_argument("--split", choices=("val", "test"), default="test", help="default: test")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON line")


def _eval(args: argparse.Namespace) -> int:
    from torchkd.config import build_loaders
    from torchkd.distiller import Distiller, Term
    from torchkd.train import evaluate, resolve_device

    recipe = load_recipe(args.recipe, args.overrides)
    student = student_from_checkpoint(recipe, args.checkpoint)
    # the labeled splits only: a transfer or synthetic set is training data
    loaders = build_loaders(recipe.data.model_copy(update={"transfer": None, "synthetic": None}))
    # a teacher-free Distiller reads the logits where the recipe's output_key says
    model = Distiller(student, None, [Term("ce", "ce")], output_key=recipe.output_key)
    device = resolve_device(recipe.train.device)
    metrics = evaluate(model.to(device), getattr(loaders, args.split), device=device)
    metrics = {"split": args.split, **metrics, "samples": int(metrics["samples"])}
    if not args.json and "top1" in metrics:
        metrics["top1"] = f"{metrics['top1']:.2f} %"
    print_metrics(metrics, args.json)
    return EXIT_OK


register(
    Command(
        name="eval",
        summary="evaluate a trained student on the validation or test split",
        description="Load the student weights of a checkpoint into the recipe's student and "
        "print top-1, NLL and expected calibration error on a split of the recipe's dataset.",
        examples="torchkd eval configs/mnist1d/kd.yaml --checkpoint runs/mnist1d_kd/checkpoints/"
        "best.pt\ntorchkd eval configs/mnist1d/kd.yaml --checkpoint student.safetensors "
        "--split val --json",
        add_arguments=_eval_arguments,
        run=_eval,
    )
)


# ----------------------------------------------------------------------------------- export


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    add_overrides_argument(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a torchkd training checkpoint (a .pt file, or an FSDP run's .dcp/ directory; "
        "or, for --format hf, any weights file)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="where to write: FILE.safetensors (--format safetensors) or a directory (hf)",
    )
    parser.add_argument(
        "--format",
        choices=("safetensors", "hf"),
        default="safetensors",
        help="safetensors (default): the bare student weights; hf: a Hugging Face "
        "save_pretrained directory (config.json + weights) of a Hugging Face model",
    )
    parser.add_argument(
        "--model",
        choices=("student", "teacher"),
        default="student",
        help="hf: build the recipe's student (default) or its teacher and load the weights into it",
    )


def _export_safetensors(args: argparse.Namespace, recipe: Recipe) -> str:
    from safetensors.torch import load_file

    from torchkd.config import build_model
    from torchkd.train import CheckpointError, export_student

    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out must name a .safetensors file, got {args.out!r}")
    student_from_checkpoint(recipe, args.checkpoint)  # the weights fit the recipe's student
    try:
        path = export_student(args.checkpoint, args.out)
    except CheckpointError as error:
        raise UsageError(f"--checkpoint: {error}") from None
    fresh = build_model(recipe.student.model_copy(update={"checkpoint": None}), "student")
    fresh.load_state_dict(load_file(path))  # what was written loads into a new student
    count = sum(parameter.numel() for parameter in fresh.parameters())
    return f"wrote {path}: student {recipe.student.model}, {count:,} parameters (no extras)"


def _export_hf(args: argparse.Namespace, recipe: Recipe) -> str:
    from torchkd.models.hf import quiet_progress_bars
    from torchkd.train.checkpoint import export_pretrained, pretrained_part

    model = student_from_checkpoint(recipe, args.checkpoint, args.model)
    try:
        path = export_pretrained(model, args.out)
    except ValueError as error:
        raise UsageError(f"--format hf: the recipe's {args.model}: {error}") from None
    pretrained = pretrained_part(model)
    with quiet_progress_bars():
        reloaded = type(pretrained).from_pretrained(path, local_files_only=True)  # loads back
    count = sum(parameter.numel() for parameter in reloaded.parameters())
    return (
        f"wrote {path}: {args.model} {type(pretrained).__name__}, {count:,} parameters; load it "
        f"with transformers' from_pretrained({str(path)!r})"
    )


def _export(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.format == "safetensors" and args.model != "student":
        raise UsageError("--model teacher needs --format hf (safetensors exports the student)")
    exporter = _export_hf if args.format == "hf" else _export_safetensors
    print(exporter(args, recipe))
    return EXIT_OK


register(
    Command(
        name="export",
        summary="write a checkpoint's student to .safetensors or a Hugging Face directory",
        description="Export the student of a training checkpoint, without adapters, loss "
        "state or optimizer, as safetensors with the SHA-256 digest of its tensors in its "
        "metadata. Load it with `student.load_state_dict(torchkd.train.load_student_weights("
        "FILE))`, which checks the digest (`safetensors.torch.load_file` reads it unchecked). "
        "--format hf writes a Hugging Face student (hf_causal_lm, hf_encoder, the encoder of "
        "hf_sentence_encoder) with save_pretrained, so `AutoModelForCausalLM.from_pretrained("
        "DIR)` loads it; --model teacher builds the recipe's teacher instead (e.g. with the "
        "checkpoint of the run that trained it). Overrides (key=value) apply to the recipe.",
        examples="torchkd export configs/mnist1d/kd.yaml "
        "--checkpoint runs/mnist1d_kd/checkpoints/best.pt --out student.safetensors\n"
        "torchkd export configs/demo_lm/forward_kl.yaml --checkpoint runs/lm/checkpoints/best.pt "
        "--format hf --out student_hf\n"
        "torchkd export configs/demo_lm/forward_kl.yaml --checkpoint runs/lm_teacher/checkpoints/"
        "best.pt "
        "--format hf --model teacher --out teacher_hf",
        add_arguments=_export_arguments,
        run=_export,
    )
)
