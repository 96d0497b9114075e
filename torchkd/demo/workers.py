"""Where the demo's runs execute: ``workers`` spawned processes with ``cores // workers``
torch threads each, or this process."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from torchkd.environment import available_cpus

__all__ = ["executor", "worker_threads"]


class _InProcess(concurrent.futures.Executor):
    """Runs each submitted call at once, in this process (``workers=1``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def worker_threads(workers: int) -> int:
    return max(1, available_cpus() // workers)


def executor(workers: int) -> concurrent.futures.Executor:
    """``workers`` spawned processes with ``cores // workers`` torch threads each (more threads
    than cores make small models many times slower), or this process for ``workers=1``."""
    if workers <= 1:
        return _InProcess()
    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_threads,
        initargs=(worker_threads(workers),),
    )
