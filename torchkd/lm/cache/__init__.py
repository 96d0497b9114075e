"""Offline sparse teacher cache: a causal-LM teacher's top-k next-token distribution per
position, written once to safetensors shards (:func:`write_teacher_cache`) and read back during
training with no teacher model in memory (:class:`TeacherCacheDataset`): the sparse top-k
distillation of DistillKit, with the tail mass kept. The format is :mod:`torchkd.lm.cache.format`;
:func:`measure_cache_error` says how far the cache is from the dense teacher.
"""

from torchkd.lm.cache.error import measure_cache_error
from torchkd.lm.cache.format import (
    CACHE_FORMAT,
    CACHE_KEYS,
    CACHE_VERSION,
    MANIFEST,
    TeacherCacheError,
    bytes_per_token,
    fingerprint_dataset,
    read_manifest,
    shard_name,
    source_fingerprint,
    split_directory,
    teacher_fingerprint,
    token_id_dtype,
    verify_shards,
    write_manifest,
)
from torchkd.lm.cache.read import TeacherCacheDataset
from torchkd.lm.cache.write import check_k, write_teacher_cache

__all__ = [
    "CACHE_FORMAT",
    "CACHE_KEYS",
    "CACHE_VERSION",
    "MANIFEST",
    "TeacherCacheDataset",
    "TeacherCacheError",
    "bytes_per_token",
    "check_k",
    "fingerprint_dataset",
    "measure_cache_error",
    "read_manifest",
    "shard_name",
    "source_fingerprint",
    "split_directory",
    "teacher_fingerprint",
    "token_id_dtype",
    "verify_shards",
    "write_manifest",
    "write_teacher_cache",
]
