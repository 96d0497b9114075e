"""Where a checkpoint lies on disk, the one place that knows it.

A run's checkpoint ``checkpoints/<name>.pt`` (``last``, ``best``, ``epoch_<N>``) is that file
when one process or DDP writes it, and the sharded directory ``checkpoints/<name>.dcp/`` under
FSDP, which holds each process's trainer state as ``trainer.rank<R>.pt`` next to the DCP files
(see :mod:`torchkd.train.sharded`).

Example:
    >>> path = Path("runs/r/checkpoints/last.pt")
    >>> sharded_path(path).as_posix(), trainer_file(sharded_path(path), 1).name
    ('runs/r/checkpoints/last.dcp', 'trainer.rank1.pt')
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "SHARDED_SUFFIX",
    "checkpoint_exists",
    "checkpoint_in_the_way",
    "due_checkpoints",
    "sharded_path",
    "trainer_file",
    "trainer_state_file",
]

SHARDED_SUFFIX = ".dcp"


def sharded_path(path: Path) -> Path:
    """The sharded (FSDP) directory of checkpoint ``path``: ``name.pt`` -> ``name.dcp``."""
    return path.with_suffix(SHARDED_SUFFIX)


def trainer_file(directory: Path, rank: int) -> Path:
    """Process ``rank``'s trainer checkpoint in the sharded ``directory``."""
    return directory / f"trainer.rank{rank}.pt"


def checkpoint_exists(path: Path) -> bool:
    """Whether checkpoint ``path`` was written: the file, or its sharded directory."""
    return path.is_file() or sharded_path(path).is_dir()


def checkpoint_in_the_way(path: Path) -> bool:
    """Whether anything lies at ``path`` or its sharded name, which a fresh run would overwrite
    (so it refuses to start)."""
    return path.exists() or sharded_path(path).exists()


def trainer_state_file(path: Path) -> Path | None:
    """The file holding the trainer state (config, progress) of checkpoint ``path``: the file
    itself, or rank 0's trainer file of its sharded directory; ``None`` when neither exists."""
    if path.is_file():
        return path
    sharded = trainer_file(sharded_path(path), 0)
    return sharded if sharded.is_file() else None


def due_checkpoints(
    epoch: int, epochs: int, every: int, keep_every: int | None, improved: bool
) -> list[str]:
    """The checkpoint files a run writes after ``epoch`` (1-based) of ``epochs``: ``best.pt``
    when the epoch improved, ``last.pt`` every ``every`` epochs and after the last one, and
    ``epoch_<N>.pt`` every ``keep_every`` epochs (``None``: never).

    Example:
        >>> due_checkpoints(4, epochs=10, every=2, keep_every=4, improved=True)
        ['best.pt', 'last.pt', 'epoch_004.pt']
        >>> due_checkpoints(3, epochs=10, every=2, keep_every=None, improved=False)
        []
    """
    names = ["best.pt"] if improved else []
    if epoch == epochs or epoch % every == 0:
        names.append("last.pt")
    if keep_every is not None and epoch % keep_every == 0:
        names.append(f"epoch_{epoch:03d}.pt")
    return names
