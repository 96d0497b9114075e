"""The recipe key of a table, its path, and the jsonl log of ``benchmarks/methods_mnist1d.py``
(runs under another key are not mixed into a table)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .rows import (
    BATCHES_PER_EPOCH,
    GROUPS,
    LOG_PATH,
    METHODS,
    RECIPES,
    RESULTS,
    STAGE1_FRACTION,
    STEPS,
    TRANSFER_LABELED_PER_BATCH,
    TRANSFER_SAMPLES,
    common_overrides,
)


def recipe_hash(paths: Sequence[Path], overrides: Sequence[str], ignore: Sequence[str] = ()) -> str:
    """A short hash of the recipes' parsed contents and ``overrides``.

    Comments do not count, nor the dotted keys in ``ignore`` (settings the benchmark overrides).
    """
    import yaml

    contents = [yaml.safe_load(path.read_text()) for path in paths]
    for content in contents:
        for dotted in ignore:
            *parents, leaf = dotted.split(".")
            section = content
            for part in parents:
                section = section.get(part) or {}
            section.pop(leaf, None)
    text = json.dumps([contents, list(overrides)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_key(steps: int, group: str = "all") -> str:
    """Identifies the training recipe of ``group``'s table: runs with another key are not mixed
    into it."""
    methods = [METHODS[name] for name in GROUPS[group]]
    names = {"teacher.yaml"} | {m.recipe for m in methods}
    names |= {m.stage1 for m in methods if m.stage1 is not None}
    paths = [RECIPES / name for name in sorted(names)]
    sizes = (steps, BATCHES_PER_EPOCH, TRANSFER_SAMPLES, TRANSFER_LABELED_PER_BATCH)
    extra = [str(value) for value in (*sizes, STAGE1_FRACTION)]
    extra += [repr(method) for method in methods]
    overridden = [override.split("=", 1)[0] for override in common_overrides(steps)]
    return recipe_hash(paths, [*common_overrides(steps), *extra], ignore=overridden)


def table_path(steps: int, group: str = "all") -> Path:
    suffix = ("" if group == "all" else f"_{group}") + ("" if steps == STEPS else f"_steps{steps}")
    return RESULTS / f"methods_mnist1d{suffix}.md"


def read_log(key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(runs, invocations)`` of the log that belong to the recipe key ``key``."""
    if not LOG_PATH.exists():
        return [], []
    lines = LOG_PATH.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    current = [record for record in records if record.get("config") == key]
    runs = [record for record in current if record.get("kind", "run") == "run"]
    invocations = [record for record in current if record.get("kind") == "invocation"]
    return runs, invocations
