"""Offline sparse teacher cache: a causal-LM teacher's top-k next-token distribution per
position (the sparse top-k distillation of DistillKit, with the tail mass kept), or tokens
sampled from it (``kind="sampled"``: the unbiased random-sampling KD of Anshumann et al., ACL
2025), written once to safetensors shards (:func:`write_teacher_cache`) and read back during
training with no teacher model in memory (:class:`TeacherCacheDataset`). The format is
:mod:`torchkd.lm.cache.format`;
:func:`measure_cache_error` says how far the cache is from the dense teacher.
"""

from torchkd.lm.cache.error import measure_cache_error
from torchkd.lm.cache.format import (
    CACHE_FORMAT,
    CACHE_KEYS,
    CACHE_VERSION,
    KINDS,
    MANIFEST,
    SAMPLED_KEYS,
    TeacherCacheError,
    bytes_per_token,
    count_dtype,
    fingerprint_dataset,
    read_manifest,
    row_seed,
    sampled_bytes_per_token,
    shard_name,
    source_fingerprint,
    split_directory,
    teacher_fingerprint,
    token_id_dtype,
    verify_shards,
    write_manifest,
)
from torchkd.lm.cache.read import TeacherCacheDataset, cached_targets
from torchkd.lm.cache.write import check_head, check_k, check_samples, write_teacher_cache

__all__ = [
    "CACHE_FORMAT",
    "CACHE_KEYS",
    "CACHE_VERSION",
    "KINDS",
    "MANIFEST",
    "SAMPLED_KEYS",
    "TeacherCacheDataset",
    "TeacherCacheError",
    "bytes_per_token",
    "cached_targets",
    "check_head",
    "check_k",
    "check_samples",
    "count_dtype",
    "fingerprint_dataset",
    "measure_cache_error",
    "read_manifest",
    "row_seed",
    "sampled_bytes_per_token",
    "shard_name",
    "source_fingerprint",
    "split_directory",
    "teacher_fingerprint",
    "token_id_dtype",
    "verify_shards",
    "write_manifest",
    "write_teacher_cache",
]
