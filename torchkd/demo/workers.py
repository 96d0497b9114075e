"""Where the demo's runs execute: ``workers`` spawned processes, or this process; every run
trains with one torch thread.

One thread per run, whatever the machine: torch's CPU kernels split their sums by thread, so
the same run with 1 and 2 threads gives different weights after a few hundred steps (the
baseline's test top-1 after 300 steps: 62.2 % with 1 thread, 62.1 % with 2). Fixing the count
makes the demo's numbers the same on a 2-core laptop and a 64-core server; the demo's small
models gain nothing from more threads anyway (more threads than cores make them many times
slower).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["RUN_THREADS", "executor", "run_threads"]

RUN_THREADS = 1


@contextmanager
def run_threads() -> Iterator[None]:
    """Train with :data:`RUN_THREADS` torch threads inside the block (restored after it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(RUN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


def executor(workers: int) -> concurrent.futures.Executor:
    """``workers`` spawned processes with one torch thread each, or this process for
    ``workers=1``."""
    if workers <= 1:
        return _InProcess()
    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_threads,
        initargs=(RUN_THREADS,),
    )
