"""Writing a teacher cache: a causal-LM teacher's top-k next-token distribution per position,
or tokens sampled from it, written once to safetensors shards (:func:`write_teacher_cache`),
resumable shard by shard.

The format (layout, ``bytes/token = k (b_id + 2) + 2`` or ``N (b_id + b_count) + 4``,
fingerprints, manifest) is described in :mod:`torchkd.lm.cache.format`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn
from torch.utils.data import default_collate

from torchkd._files import atomic_write, remove_stale_temporaries
from torchkd.batch import to_device
from torchkd.lm.aligned import TEACHER_INPUTS, TEACHER_POSITIONS
from torchkd.lm.cache.draws import sampled_batch
from torchkd.lm.cache.format import (
    CACHE_FORMAT,
    CACHE_VERSION,
    ENTROPY_DTYPE,
    KINDS,
    MANIFEST,
    MAX_SAMPLES,
    SETTINGS,
    VALUE_DTYPE,
    TeacherCacheError,
    count_dtype,
    fingerprint_dataset,
    read_manifest,
    shard_name,
    teacher_fingerprint,
    token_id_dtype,
    verify_shards,
    write_manifest,
)
from torchkd.lm.cache.layout import student_layout
from torchkd.lm.model import last_hidden_state, output_projection
from torchkd.losses import TopKLogits, default_chunk_size
from torchkd.losses._common import check_temperature

__all__ = ["check_head", "check_k", "check_samples", "stored_batch", "write_teacher_cache"]


def _start(directory: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: the existing one when its settings match and its shards
    their digests (resume, or a complete cache verified), a fresh one (written) for an empty or
    new directory. Temporaries of killed writes are removed first."""
    remove_stale_temporaries(directory)
    if (directory / MANIFEST).is_file():
        manifest = read_manifest(directory)
        changed = [
            f"{key}: {manifest.get(key)!r} in the cache, {settings[key]!r} now"
            for key in SETTINGS
            if manifest.get(key) != settings[key]
        ]
        if changed:
            raise TeacherCacheError(
                f"{directory} holds a teacher cache written with other settings ("
                + "; ".join(changed)
                + "); delete the directory or write to another one"
            )
        verify_shards(directory, manifest)
        return manifest
    if directory.exists() and any(directory.iterdir()):
        raise TeacherCacheError(
            f"{directory} is not empty and holds no teacher cache ({MANIFEST}); choose a new "
            "or empty directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {**settings, "shards": [], "complete": False}
    write_manifest(directory, manifest)
    return manifest


# ------------------------------------------------------------------------------------ writer


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_k(k: Any, teacher: nn.Module) -> None:
    """``k`` must be a positive integer, at most the teacher's vocabulary."""
    _check_positive("k", k)
    vocab_size = output_projection(teacher, "teacher").weight.shape[0]
    if k > vocab_size:
        raise ValueError(f"k must be at most the teacher's vocabulary ({vocab_size}), got {k}")


def check_samples(samples: Any) -> None:
    """``samples`` must be a positive integer, at most 65,535 (counts are stored as uint16)."""
    _check_positive("samples", samples)
    if samples > MAX_SAMPLES:
        raise ValueError(f"samples must be at most {MAX_SAMPLES} (uint16 counts), got {samples}")


def _check_kind(kind: Any, k: Any, samples: Any, teacher: nn.Module) -> None:
    """A top-k cache takes ``k`` (not ``samples``); a sampled one ``samples`` and, for an exact
    head, ``k`` below the vocabulary (tokens must be left to sample)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "topk":
        if samples is not None:
            raise ValueError("samples is for a 'sampled' cache, not 'topk'; give k only")
        if k is None:
            raise ValueError("a 'topk' teacher cache needs k")
        check_k(k, teacher)
        return
    if samples is None:
        raise ValueError("a 'sampled' teacher cache needs samples")
    check_samples(samples)
    if k is not None:
        check_head(k, teacher)


def check_head(k: Any, teacher: nn.Module) -> None:
    """The exact head of a sampled cache: a ``k`` (:func:`check_k`) below the teacher's
    vocabulary, leaving tokens to sample."""
    check_k(k, teacher)
    vocab_size = output_projection(teacher, "teacher").weight.shape[0]
    if k == vocab_size:
        raise ValueError(
            f"k (the exact head of a sampled cache) must be below the teacher's vocabulary "
            f"({vocab_size}) to leave tokens to sample, got {k}"
        )


def _collate(dataset: Any, positions: Iterable[int]) -> dict[str, Any]:
    """The batch of ``dataset[p]`` for ``positions``, checking that each sample's ``index`` is
    its position (cache rows are keyed by it)."""
    samples = []
    for position in positions:
        sample = dataset[position]
        index = sample.get("index")
        if index is None or int(index) != position:
            raise ValueError(
                f"dataset[{position}]['index'] must be {position} (teacher-cache rows are keyed "
                f"by the sample index), got {index!r}"
            )
        samples.append(sample)
    return default_collate(samples)


def _top_k(
    teacher: nn.Module, inputs: Any, k: int, temperature: float, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, L, k]`` top-k ids and log-probs and ``[B, L]`` tail log-masses of
    ``softmax(teacher logits / T)``, computed a chunk of ``chunk_size`` positions at a time
    from the last hidden state (never the logits of the whole batch)."""
    projection = output_projection(teacher, "teacher")
    hidden = last_hidden_state(teacher, inputs, "teacher")
    flat = hidden.reshape(-1, hidden.shape[-1])
    parts = [
        TopKLogits.from_logits(projection.logits(flat[start : start + chunk_size]), k, temperature)
        for start in range(0, flat.shape[0], chunk_size)
    ]
    rows = hidden.shape[:-1]
    ids = torch.cat([part.token_ids for part in parts]).reshape(*rows, k)
    log_probs = torch.cat([part.log_probs for part in parts]).reshape(*rows, k)
    tail = torch.cat([part.tail_log_mass for part in parts]).reshape(rows)
    return ids, log_probs, tail


def stored_batch(
    teacher: nn.Module,
    inputs: Any,
    rows: Sequence[int],
    *,
    kind: str,
    k: int | None,
    samples: int | None,
    seed: int,
    temperature: float,
    chunk_size: int,
    id_dtype: torch.dtype,
) -> dict[str, Tensor]:
    """The tensors a cache shard stores (by their shard names, on the CPU, in the stored
    dtypes) for one batch of ``inputs`` whose sample indices are ``rows``: a top-k cache's
    ``token_ids``, float16 ``log_probs`` (clamped to float16's range) and ``tail``, or a
    sampled cache's ``token_ids``, ``counts`` and float32 ``entropy`` (and head) of each row's
    seeded draws (:func:`~torchkd.lm.cache.draws.sampled_batch`). The writer stores them; a
    teacher server (:mod:`torchkd.lm.server`) answers them."""
    if kind == "sampled":
        drawn = sampled_batch(teacher, inputs, rows, samples, k, seed, temperature, chunk_size)
        stored = {"counts": count_dtype(samples), "token_ids": id_dtype, "head_ids": id_dtype}
        # values (entropy, head) in float32
        return {name: t.cpu().to(stored.get(name, ENTROPY_DTYPE)) for name, t in drawn.items()}
    top_ids, top_log_probs, tail = _top_k(teacher, inputs, k, temperature, chunk_size)
    # a log-probability below float16's range would become -inf: clamp it to the minimum
    low = torch.finfo(VALUE_DTYPE).min
    return {
        "token_ids": top_ids.cpu().to(id_dtype),
        "log_probs": top_log_probs.cpu().clamp_min(low).to(VALUE_DTYPE),
        "tail": tail.cpu().to(VALUE_DTYPE),  # -inf (no mass left) stays -inf
    }


def _shard_tensors(
    teacher: nn.Module,
    dataset: Any,
    rows: range,
    *,
    batch_size: int,
    device: torch.device,
    inputs_key: str = "inputs",
    aligned: bool,
    **settings: Any,
) -> dict[str, Tensor]:
    """A shard's tensors: ``index`` and the :func:`stored_batch` of its rows, a batch of
    ``batch_size`` samples at a time; with ``aligned`` (a teacher with its own tokenizer), of
    the samples' ``teacher_inputs``, in the student's layout
    (:func:`~torchkd.lm.cache.layout.student_layout`)."""
    parts: dict[str, list[Tensor]] = {}
    for start in range(rows.start, rows.stop, batch_size):
        positions = range(start, min(start + batch_size, rows.stop))
        batch = _collate(dataset, positions)
        if aligned and (batch.get(TEACHER_INPUTS) is None or TEACHER_POSITIONS not in batch):
            raise ValueError(
                f"dataset: a teacher with its own tokenizer needs samples with "
                f"{TEACHER_INPUTS!r} and {TEACHER_POSITIONS!r} (the text dataset with "
                f"teacher_tokenizer), got keys {list(batch)}"
            )
        inputs = to_device(batch[TEACHER_INPUTS if aligned else inputs_key], device)
        stored = stored_batch(teacher, inputs, positions, **settings)
        if aligned:
            stored = student_layout(stored, batch[TEACHER_POSITIONS])
        for name, tensor in stored.items():
            parts.setdefault(name, []).append(tensor)
    return {
        "index": torch.arange(rows.start, rows.stop, dtype=torch.int64),
        **{name: torch.cat(tensors) for name, tensors in parts.items()},
    }


def write_teacher_cache(
    teacher: nn.Module,
    dataset: Any,
    directory: str | os.PathLike[str],
    *,
    k: int | None = None,
    kind: str = "topk",
    samples: int | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 8,
    rows_per_shard: int = 256,
    tokenizer_fingerprint: str | None = None,
    teacher_tokenizer_fingerprint: str | None = None,
    dataset_fingerprint: str | None = None,
    teacher_source: str | None = None,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    inputs_key: str = "inputs",
    on_shard: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the causal LM ``teacher`` over ``dataset`` once and store its top-``k`` next-token
    distribution at every position, or ``samples`` tokens drawn from it (``kind="sampled"``;
    the format: :mod:`torchkd.lm.cache.format`). Storage of a top-k cache is

    .. math::
        \\text{bytes/token} = k \\, (b_\\text{id} + 2) + 2

    (:func:`bytes_per_token`): ``k`` ids of ``b_id`` = 2 bytes (uint16, vocabularies up to
    65,535) or 4 (int32), ``k`` float16 log-probabilities and one float16 tail per position,
    plus 8 bytes per sample (``index``) and a small header per shard.

    Per position the stored values are those of
    :meth:`TopKLogits.from_logits(logits, k, temperature) <torchkd.losses.TopKLogits.from_logits>`:
    the ``k`` largest log-probabilities of ``softmax(z / T)`` and the log of the rest
    :math:`\\log \\sum_{j \\notin K} e^{\\log q_j}`, computed from the last hidden state and the
    output projection ``chunk_size`` positions at a time. The teacher runs in eval mode without
    gradients, over the samples in index order (``dataset[i]["index"]`` must be ``i``).

    A sampled cache stores per position what
    :meth:`SampledLogits.from_logits <torchkd.losses.SampledLogits.from_logits>` gives: the
    distinct ids of ``samples`` i.i.d. draws from ``softmax(z / T)``, their counts and the
    entropy :math:`H(q)`, an unbiased estimate of forward KL and its gradient
    (:mod:`torchkd.losses.sampled`), at :math:`N (b_\\text{id} + b_\\text{count}) + 4` bytes
    per position (:func:`~torchkd.lm.cache.format.sampled_bytes_per_token`). With ``k`` the
    ``k`` most likely tokens are kept exactly (float32) and the draws come from the others
    (``SampledLogits.head``), ``k (b_\\text{id} + 4) + 4`` more bytes. Row ``i``'s draws
    come from a generator seeded with ``row_seed(seed, i)``, so they do not depend on the batch
    size, the chunk size or where a write was resumed.

    Shards are written one by one through a temp file and a rename, each followed by an atomic
    rewrite of ``manifest.json`` with its SHA-256, so an interrupted run (Ctrl-C, a crash)
    leaves a consistent cache (the temporary of a write killed outright is removed by the next
    call). Calling again with the same teacher, data and settings checks the SHA-256 of every
    shard already written, then resumes at the first missing one (a complete cache is verified
    and left as it is); other settings, or a missing or damaged shard, raise.

    Args:
        teacher: a causal LM (:func:`torchkd.lm.is_causal_lm`).
        dataset: spec-format causal-LM samples (``inputs`` mapping, ``index``).
        directory: the cache directory (created; must be new, empty or this cache's).
        k: tokens kept per position (``kind="topk"``), or the exact head of a sampled cache
            (top-k plus samples combined; None: no head).
        kind: ``"topk"`` (default) or ``"sampled"``.
        samples: draws per position (``kind="sampled"``; the paper's default is 12).
        seed: the seed of a sampled cache's draws (recorded in the manifest).
        temperature: the softening temperature, the temperature of the term that reads it.
        batch_size: samples per teacher forward pass.
        rows_per_shard: samples per shard.
        tokenizer_fingerprint: recorded and checked by readers (default: the dataset's
            ``tokenizer_fingerprint`` attribute, if any).
        teacher_tokenizer_fingerprint: the teacher's own tokenizer (default: the dataset's
            ``teacher_tokenizer_fingerprint`` attribute, if any), recorded and checked by
            readers. When set, the teacher reads each sample's ``teacher_inputs`` and the cache
            stores its top-k in the student's layout (by ``teacher_positions``,
            :mod:`torchkd.lm.cache.layout`); a top-k cache only.
        dataset_fingerprint: default :func:`fingerprint_dataset` of the dataset and
            ``inputs_key``.
        teacher_source: recorded for readers that know the teacher only by where it comes
            from (:func:`~torchkd.lm.cache.format.source_fingerprint`; ``torchkd
            cache-teacher`` records the recipe's teacher, ``torchkd train`` compares it).
        chunk_size: positions per logits chunk (default
            :func:`~torchkd.losses.default_chunk_size` of the vocabulary).
        device: where the batches go; the teacher must already be there (default: where
            its parameters are). The results are stored from the CPU.
        inputs_key: the samples' entry the teacher reads (``data.teacher_inputs``).
        on_shard: called as ``on_shard(shard, num_shards)`` after each written shard.

    Returns:
        The final manifest.

    Raises:
        TeacherCacheError: the directory holds something else, a cache with other settings, or
            a missing or damaged shard.
        ValueError: a bad argument (named).
    """
    _check_kind(kind, k, samples, teacher)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _check_positive("batch_size", batch_size)
    _check_positive("rows_per_shard", rows_per_shard)
    if chunk_size is not None:
        _check_positive("chunk_size", chunk_size)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    check_temperature(temperature)
    if len(dataset) == 0:
        raise ValueError("dataset is empty: there is nothing to cache")
    if teacher_tokenizer_fingerprint is None:
        teacher_tokenizer_fingerprint = getattr(dataset, "teacher_tokenizer_fingerprint", None)
    aligned = teacher_tokenizer_fingerprint is not None
    if aligned and kind != "topk":
        raise ValueError(
            f"kind={kind!r}: a teacher with its own tokenizer (teacher_tokenizer) is cached as "
            "a 'topk' cache only: its readers compare vocabularies by ULD, which is not linear "
            "in the teacher's probabilities (a sampled estimate of it would be biased)"
        )
    vocab_size = output_projection(teacher, "teacher").weight.shape[0]
    id_dtype = token_id_dtype(vocab_size)
    if tokenizer_fingerprint is None:
        tokenizer_fingerprint = getattr(dataset, "tokenizer_fingerprint", None)
    settings = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "teacher_fingerprint": teacher_fingerprint(teacher),
        "teacher_source": teacher_source,
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "teacher_tokenizer_fingerprint": teacher_tokenizer_fingerprint,
        "dataset_fingerprint": dataset_fingerprint or fingerprint_dataset(dataset, inputs_key),
        "kind": kind,
        "k": k,
        "samples": samples,
        "seed": seed if kind == "sampled" else None,
        "temperature": float(temperature),
        "vocab_size": vocab_size,
        "token_id_dtype": str(id_dtype).removeprefix("torch."),
        "value_dtype": str(VALUE_DTYPE if kind == "topk" else ENTROPY_DTYPE).removeprefix("torch."),
        "rows": len(dataset),
        "rows_per_shard": rows_per_shard,
    }
    directory = Path(directory)
    manifest = _start(directory, settings)
    num_shards = math.ceil(len(dataset) / rows_per_shard)
    if device is None:
        device = next(teacher.parameters()).device
    device = torch.device(device)
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab_size)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            for shard in range(len(manifest["shards"]), num_shards):
                rows = range(
                    shard * rows_per_shard, min((shard + 1) * rows_per_shard, len(dataset))
                )
                tensors = _shard_tensors(
                    teacher,
                    dataset,
                    rows,
                    kind=kind,
                    k=k,
                    samples=samples,
                    seed=seed,
                    temperature=float(temperature),
                    batch_size=batch_size,
                    chunk_size=chunk_size,
                    id_dtype=id_dtype,
                    device=device,
                    inputs_key=inputs_key,
                    aligned=aligned,
                )
                data = save_safetensors(tensors)
                atomic_write(
                    directory / shard_name(shard), lambda stream, data=data: stream.write(data)
                )
                entry = {
                    "file": shard_name(shard),
                    "rows": len(rows),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
                manifest["shards"].append(entry)
                write_manifest(directory, manifest)
                if on_shard is not None:
                    on_shard(shard, num_shards)
    finally:
        teacher.train(was_training)
    if not manifest["complete"]:
        manifest["complete"] = True
        write_manifest(directory, manifest)
    return manifest
