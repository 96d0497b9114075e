"""``torchkd cache-teacher``: write a recipe's sparse teacher cache, top-k or sampled (training
split in DIR, validation split in DIR/val), and report its size and its error against the
dense teacher."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd.cli.base import (
    EXIT_OK,
    Command,
    UsageError,
    add_overrides_argument,
    add_recipe_argument,
    load_recipe,
    non_negative_int,
    positive_int,
    register,
)

if TYPE_CHECKING:
    from torch import nn


DEFAULT_ROWS_PER_SHARD = 256
DIVERGENCES = {"forward_kl": "forward KL", "uld": "ULD"}  # measure_cache_error's, printed


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    add_overrides_argument(parser)
    parser.add_argument(
        "--dir", metavar="DIR", help="the cache directory (default: data.teacher_cache.dir)"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="samples per teacher forward pass (default: data.batch_size)",
    )
    parser.add_argument(
        "--rows-per-shard",
        type=positive_int,
        default=DEFAULT_ROWS_PER_SHARD,
        help=f"samples per shard file (default {DEFAULT_ROWS_PER_SHARD})",
    )
    parser.add_argument(
        "--error-batches",
        type=non_negative_int,
        default=4,
        help="training batches on which the cache is compared with the dense teacher "
        "(default 4; 0 skips the comparison)",
    )


def _write_split(
    teacher: nn.Module,
    dataset: Any,
    directory: Path,
    split: str,
    args: argparse.Namespace,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Write (or resume) the cache of one split, printing its progress; returns the manifest."""
    from torchkd.lm.cache import MANIFEST, read_manifest, write_teacher_cache

    num_shards = math.ceil(len(dataset) / args.rows_per_shard)
    if (directory / MANIFEST).is_file():
        manifest = read_manifest(directory)
        done, complete = len(manifest["shards"]), manifest["complete"]
        then = "" if complete else ", then resuming"
        print(f"{split}: {done} of {num_shards} shards in {directory}; verifying them{then}")

    def report_shard(shard: int, total: int) -> None:
        print(f"  {split} shard {shard + 1}/{total} written", flush=True)

    try:
        return write_teacher_cache(
            teacher,
            dataset,
            directory,
            rows_per_shard=args.rows_per_shard,
            on_shard=report_shard,
            **settings,
        )
    except KeyboardInterrupt:
        print(
            f"torchkd cache-teacher: interrupted; the shards written so far are kept, run the "
            f"same command again to resume in {directory}",
            file=sys.stderr,
        )
        raise


def _run(args: argparse.Namespace) -> int:
    from torchkd.config import (
        TeacherCacheConfig,
        build_datasets,
        build_model,
        cache_teacher,
        cache_temperature,
        check_teacher_weights,
    )
    from torchkd.config.errors import blame
    from torchkd.config.teacher_cache import CACHED_SPLITS, check_cache_terms, recipe_teacher_source
    from torchkd.lm.cache import (
        TeacherCacheDataset,
        bytes_per_token,
        check_head,
        check_k,
        check_samples,
        read_manifest,
        sampled_bytes_per_token,
        split_directory,
        write_manifest,
    )
    from torchkd.lm.cache.error import measure_cache_error
    from torchkd.train import resolve_device
    from torchkd.train.rng import seed_everything

    recipe = load_recipe(args.recipe, args.overrides)
    cache = recipe.data.teacher_cache
    if args.dir is None and cache is None:
        raise UsageError("give --dir DIR, or set data.teacher_cache.dir in the recipe")
    directory = Path(args.dir) if args.dir else Path(cache.dir)  # type: ignore[union-attr]
    cache = cache or TeacherCacheConfig(dir=str(directory))
    kind, size = cache.kind, cache.k if cache.kind == "topk" else cache.samples
    temperature = cache_temperature(recipe)
    check_cache_terms(recipe)
    teacher_config, teacher_path = cache_teacher(recipe)
    seed_everything(recipe.train.seed)  # the student as training initializes it (built first)
    student = build_model(recipe.student, "student")
    check_teacher_weights(teacher_config, teacher_path)
    teacher = build_model(teacher_config, teacher_path)
    with blame("data.teacher_cache.k"):
        if kind == "topk":
            check_k(cache.k, teacher)
        elif cache.k is not None:
            check_head(cache.k, teacher)
    if kind == "sampled":
        with blame("data.teacher_cache.samples"):
            check_samples(size)
    data = recipe.data.model_copy(update={"teacher_cache": None})
    datasets = build_datasets(data, CACHED_SPLITS)
    device = resolve_device(recipe.train.device)
    batch_size = args.batch_size or recipe.data.batch_size
    sizes = {"k": cache.k}
    if kind == "sampled":
        sizes.update(samples=size, seed=cache.seed)
    settings = {
        "kind": kind,
        **sizes,
        "temperature": temperature,
        "batch_size": batch_size,
        "device": device,
        "teacher_source": recipe_teacher_source(teacher_config),
        "inputs_key": recipe.data.teacher_inputs or "inputs",
    }
    teacher.to(device)
    manifests = {
        split: _write_split(
            teacher, datasets[split], split_directory(directory, split), split, args, settings
        )
        for split in CACHED_SPLITS
    }
    cached = TeacherCacheDataset(
        datasets["train"],
        directory,
        kind=kind,
        temperature=temperature,
        k=cache.k,
        samples=cache.samples,
        inputs_key=settings["inputs_key"],
    )
    length = int(cached[0][cached.keys[2]].shape[-1])
    tokens = {split: manifest["rows"] * length for split, manifest in manifests.items()}
    positions = sum(tokens.values())
    on_disk = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    manifest = manifests["train"]
    if kind == "topk":
        stored = bytes_per_token(size, manifest["vocab_size"])
        layout = f"k x ({manifest['token_id_dtype']} id + float16 log-prob) + float16 tail"
        print(f"teacher cache: {directory} (k = {size}, temperature {temperature:g})")
    else:
        stored = sampled_bytes_per_token(size, manifest["vocab_size"], cache.k)
        layout = f"samples x ({manifest['token_id_dtype']} id + count) + float32 entropy"
        head = ""
        if cache.k is not None:
            layout += f" + k x ({manifest['token_id_dtype']} id + float32 log-prob) + float32 tail"
            head = f", exact top-{cache.k}"
        print(
            f"teacher cache: {directory} (sampled, {size} samples{head}, seed {cache.seed}, "
            f"temperature {temperature:g})"
        )
    print(
        f"  tokens cached    {positions:,} ("
        + ", ".join(f"{split} {count:,}" for split, count in tokens.items())
        + ")"
    )
    shards = sum(len(split_manifest["shards"]) for split_manifest in manifests.values())
    print(f"  bytes on disk    {on_disk:,} ({shards} shards and the manifests)")
    print(f"  bytes/token      {on_disk / positions:.1f} on disk; {stored} stored ({layout})")
    manifest = read_manifest(directory)
    manifest["tokens"], manifest["bytes_on_disk"] = positions, on_disk  # both splits
    if args.error_batches:
        error = measure_cache_error(
            teacher,
            student.to(device),
            cached,
            temperature=temperature,
            batches=args.error_batches,
            batch_size=batch_size,
            device=device,
            teacher_inputs_key=settings["inputs_key"],
        )
        manifest["error"] = {
            "temperature": temperature,
            "student": "the recipe's student at initialization",
            **error,
        }
        print(
            f"  cache vs dense teacher ({DIVERGENCES[error['divergence']]} at T = "
            f"{temperature:g}, student at "
            f"initialization, {error['batches']} training batches, {error['tokens']:,} tokens):"
        )
        print(f"    loss relative error      {error['loss_relative_error']:.4g}")
        print(
            f"    gradient relative error  {error['grad_relative_error']:.4g} "
            f"(cosine {error['grad_cosine']:.4f}; w.r.t. the student's last hidden states)"
        )
    write_manifest(directory, manifest)
    return EXIT_OK


register(
    Command(
        name="cache-teacher",
        summary="write the recipe teacher's top-k (or sampled) outputs on its data to a cache",
        description="Run the recipe's teacher once over the training split (into DIR) and the "
        "validation split (into DIR/val, for the per-epoch evaluation of the terms) and store, per "
        "token, its top-k token ids, log-probabilities and tail mass (or, with "
        "data.teacher_cache.kind=sampled, the ids and counts of tokens sampled from it and its "
        "entropy) at the temperature of the terms that read the cache (teacher: cache) in "
        "safetensors shards with a manifest "
        "(fingerprints, per-shard SHA-256). Training with data.teacher_cache then needs no "
        "teacher forward pass. Prints the size (bytes/token) and the error of the cached "
        "teacher against the dense one on a few training batches (also written to the "
        "manifest). Safe to interrupt: run it again to resume at the first missing shard. "
        "`torchkd demo lm` writes its cache recipe, with the corpus, tokenizer and teacher "
        "filled in, to runs/demo_lm/cache_teacher/config.yaml.",
        examples="torchkd cache-teacher configs/demo_lm/cache.yaml teacher.checkpoint=teacher."
        "safetensors 'data.kwargs.files=[\"corpus/**/*.py\"]' data.kwargs.tokenizer=tokenizer\n"
        "torchkd cache-teacher runs/demo_lm/cache_teacher/config.yaml --dir cache/lm_k32 "
        "data.teacher_cache.k=32\n"
        "torchkd cache-teacher runs/demo_lm/cache_teacher/config.yaml --dir cache/lm_n12 "
        "data.teacher_cache.kind=sampled data.teacher_cache.samples=12",
        add_arguments=_arguments,
        run=_run,
    )
)
