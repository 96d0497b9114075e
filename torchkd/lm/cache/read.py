"""Reading a teacher cache during training: :class:`TeacherCacheDataset` adds the cached
teacher's top-k distribution (or its sampled tokens) to every sample of the dataset it was
written from, with no teacher model in memory; :func:`cached_targets` makes the loss's teacher
of a batch."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from torchkd.lm.cache.format import (
    CACHE_KEYS,
    SAMPLED_KEYS,
    TeacherCacheError,
    fingerprint_dataset,
    read_manifest,
    verify_shards,
)
from torchkd.losses import SampledLogits, TopKLogits

__all__ = ["TeacherCacheDataset", "cached_targets", "entry_keys", "stored_entries"]


def cached_targets(batch: Mapping[str, Any]) -> TopKLogits | SampledLogits | None:
    """The batch's cached teacher: :class:`~torchkd.losses.SampledLogits` from the
    :data:`~torchkd.lm.cache.format.SAMPLED_KEYS` of a sampled cache,
    :class:`~torchkd.losses.TopKLogits` from the :data:`~torchkd.lm.cache.format.CACHE_KEYS`
    of a top-k one (both: a sampled cache with an exact head, ``SampledLogits.head``), or None
    when the batch carries neither."""
    topk = None
    if all(batch.get(key) is not None for key in CACHE_KEYS[:2]):
        topk = TopKLogits(*(batch.get(key) for key in CACHE_KEYS))
    if all(batch.get(key) is not None for key in SAMPLED_KEYS):
        return SampledLogits(*(batch[key] for key in SAMPLED_KEYS), head=topk)
    return topk


def entry_keys(kind: str, k: int | None) -> tuple[str, ...]:
    """The batch keys a cache of ``kind`` adds: :data:`CACHE_KEYS` (top-k),
    :data:`SAMPLED_KEYS` (sampled), or both (sampled with an exact head of ``k`` tokens)."""
    if kind == "topk":
        return CACHE_KEYS
    return SAMPLED_KEYS if k is None else (*SAMPLED_KEYS, *CACHE_KEYS)


def stored_entries(kind: str, k: int | None, read: Callable[[str], Tensor]) -> tuple[Tensor, ...]:
    """The batch entries (in :func:`entry_keys` order) of the tensors a shard stores, each
    fetched by its shard name with ``read`` (one row's slice, or a batch of rows as a teacher
    server answers): ids and counts as int64, log-probabilities, tails and entropies as
    float32."""
    ids = read("token_ids").to(torch.int64)
    if kind == "sampled":
        counts = read("counts").to(torch.int64)
        drawn = (ids, counts, read("entropy").to(torch.float32))
        if k is None:
            return drawn
        head_ids = read("head_ids").to(torch.int64)
        return (*drawn, head_ids, read("head_log_probs"), read("head_tail"))
    return ids, read("log_probs").to(torch.float32), read("tail").to(torch.float32)


def _describe(fingerprint: str | None) -> str:
    if fingerprint is None:
        return "no data.kwargs.teacher_tokenizer (the teacher reads the student's tokens)"
    return f"a teacher tokenizer of fingerprint {fingerprint[:16]}..."


def _check_teacher_tokenizer(directory: Any, stored: str | None, data: str | None) -> None:
    """The cache's teacher tokenizer must be the data's (both None: one tokenizer)."""
    if stored != data:
        raise TeacherCacheError(
            f"the teacher cache in {directory} was written with {_describe(stored)}, but the "
            f"data has {_describe(data)}: set data.kwargs.teacher_tokenizer to the teacher "
            "tokenizer the cache was written with, or write the cache again with `torchkd "
            "cache-teacher RECIPE --dir NEW_DIR`"
        )


class TeacherCacheDataset:
    """``base_dataset`` with the cached teacher's top-k distribution (or sampled tokens) added
    to every sample.

    Each sample (or batch, for a list of positions) of the base dataset gains, from a top-k
    cache, ``teacher_topk_ids`` int64 ``[..., L, k]``, ``teacher_topk_log_probs`` float32
    ``[..., L, k]`` and ``teacher_topk_tail`` float32 ``[..., L]`` (what
    ``TopKLogits(ids, log_probs, tail)`` takes), and from a sampled cache
    ``teacher_sample_ids`` and ``teacher_sample_counts`` int64 ``[..., L, N]`` and
    ``teacher_entropy`` float32 ``[..., L]`` (what ``SampledLogits(ids, counts, entropy)``
    takes; with an exact head, the head under the top-k keys too), looked up by the sample's
    ``index`` (``teacher: cache`` terms).

    The manifest is checked when the dataset is made: the cache must be complete and written
    for this data (dataset fingerprint, tokenizer fingerprint when both sides know one, the
    teacher tokenizer's (a cache in the student's layout, :mod:`torchkd.lm.cache.layout`), and
    ``kind`` / ``k`` / ``samples`` / ``temperature`` when given: a top-k cache read as a
    sampled one, or the reverse, is refused), and so are its own digest and shard list
    (:func:`~torchkd.lm.cache.format.read_manifest`) and the SHA-256 of every shard
    (:func:`~torchkd.lm.cache.format.verify_shards`): a damaged cache is refused before
    training starts. Shards are then read lazily, row by row, from memory-mapped safetensors
    files.

    Args:
        base_dataset: the dataset the cache was written from.
        directory: the cache directory.
        k: the ``k`` the caller expects (e.g. the recipe's ``data.teacher_cache.k``).
        temperature: the temperature the caller expects.
        kind: the kind the caller expects (``"topk"`` or ``"sampled"``).
        samples: the ``samples`` the caller expects (a sampled cache).
        tokenizer_fingerprint: the data's tokenizer fingerprint (default: the base dataset's
            ``tokenizer_fingerprint`` attribute, if any).
        inputs_key: the samples' entry the teacher read (``data.teacher_inputs``): part of
            the dataset fingerprint (:func:`~torchkd.lm.cache.format.fingerprint_dataset`).
        teacher_tokenizer_fingerprint: the fingerprint of the teacher's own tokenizer
            (default: the base dataset's ``teacher_tokenizer_fingerprint`` attribute, if any;
            None: the teacher reads the student's tokens); it must be the cache's.

    Raises:
        TeacherCacheError: naming what does not match and the cache directory.
    """

    def __init__(
        self,
        base_dataset: Any,
        directory: str | os.PathLike[str],
        *,
        k: int | None = None,
        temperature: float | None = None,
        tokenizer_fingerprint: str | None = None,
        teacher_tokenizer_fingerprint: str | None = None,
        kind: str | None = None,
        samples: int | None = None,
        inputs_key: str = "inputs",
    ) -> None:
        self.dataset = base_dataset
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        self.manifest = manifest
        if not manifest["complete"]:
            raise TeacherCacheError(
                f"the teacher cache in {directory} is incomplete ({len(manifest['shards'])} "
                "shards written); run `torchkd cache-teacher RECIPE` again to finish it"
            )
        if kind is not None and manifest["kind"] != kind:
            raise TeacherCacheError(
                f"the teacher cache in {directory} is a {manifest['kind']!r} cache, but a "
                f"{kind!r} one is asked for (data.teacher_cache.kind); write a {kind!r} cache "
                "with `torchkd cache-teacher RECIPE --dir NEW_DIR`"
            )
        asked = (("k", k), ("samples", samples), ("temperature", temperature))
        for name, expected in asked:
            if expected is not None and manifest[name] != expected:
                raise TeacherCacheError(
                    f"the teacher cache in {directory} was written with {name}="
                    f"{manifest[name]}, but {name}={expected} is asked for"
                )
        if tokenizer_fingerprint is None:
            tokenizer_fingerprint = getattr(base_dataset, "tokenizer_fingerprint", None)
        stored = manifest["tokenizer_fingerprint"]
        if None not in (tokenizer_fingerprint, stored) and tokenizer_fingerprint != stored:
            raise TeacherCacheError(
                f"the teacher cache in {directory} was written with another tokenizer "
                f"(fingerprint {stored[:16]}..., the data's is {tokenizer_fingerprint[:16]}...)"
            )
        if teacher_tokenizer_fingerprint is None:
            teacher_tokenizer_fingerprint = getattr(
                base_dataset, "teacher_tokenizer_fingerprint", None
            )
        _check_teacher_tokenizer(
            directory, manifest.get("teacher_tokenizer_fingerprint"), teacher_tokenizer_fingerprint
        )
        fingerprint = fingerprint_dataset(base_dataset, inputs_key)
        if fingerprint != manifest["dataset_fingerprint"] or manifest["rows"] != len(base_dataset):
            raise TeacherCacheError(
                f"the teacher cache in {directory} was written for other data (dataset "
                f"fingerprint {manifest['dataset_fingerprint'][:16]}..., {manifest['rows']} rows; "
                f"this dataset's is {fingerprint[:16]}..., {len(base_dataset)} rows); rewrite "
                "it with `torchkd cache-teacher RECIPE --dir NEW_DIR`"
            )
        verify_shards(self.directory, manifest)
        self._handles: dict[int, Any] = {}

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def k(self) -> int | None:
        return self.manifest["k"]

    @property
    def samples(self) -> int | None:
        return self.manifest["samples"]

    @property
    def keys(self) -> tuple[str, ...]:
        """The batch keys this cache adds (:func:`entry_keys`)."""
        return entry_keys(self.kind, self.k)

    @property
    def temperature(self) -> float:
        return float(self.manifest["temperature"])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for DataLoader workers without the open shard files (reopened lazily)."""
        return {**self.__dict__, "_handles": {}}

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "__setstate__") or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _shard(self, shard: int) -> Any:
        """The open shard ``shard`` (verified when the dataset was made); its row indices are
        checked when it is opened."""
        if shard in self._handles:
            return self._handles[shard]
        entry = self.manifest["shards"][shard]
        path = self.directory / entry["file"]
        handle = safe_open(str(path), framework="pt")
        start = shard * int(self.manifest["rows_per_shard"])
        expected = torch.arange(start, start + int(entry["rows"]))
        if not torch.equal(handle.get_tensor("index"), expected):
            raise TeacherCacheError(f"teacher cache shard {path} holds other rows than expected")
        self._handles[shard] = handle
        return handle

    def _row(self, index: int) -> tuple[Tensor, ...]:
        if not 0 <= index < int(self.manifest["rows"]):
            raise IndexError(
                f"sample index {index} is outside the teacher cache's {self.manifest['rows']} rows"
            )
        shard, offset = divmod(index, int(self.manifest["rows_per_shard"]))
        handle = self._shard(shard)
        return stored_entries(self.kind, self.k, lambda name: handle.get_slice(name)[offset])

    def __getitem__(self, position: Any) -> dict[str, Any]:
        """A sample, or a batch for a sequence of positions (as the base dataset answers)."""
        sample = self.dataset[position]
        index = torch.as_tensor(sample["index"])
        rows = [self._row(int(i)) for i in index.reshape(-1).tolist()]
        columns = [torch.stack(column) for column in zip(*rows, strict=True)]
        if index.dim() == 0:
            columns = [column[0] for column in columns]
        return {**sample, **dict(zip(self.keys, columns, strict=True))}
