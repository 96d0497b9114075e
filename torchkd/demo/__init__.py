"""The built-in demo: distil a wide MNIST-1D CNN into a small student, three ways, over seeds.

``torchkd demo`` runs four recipes from ``torchkd/configs/demo/`` through the ordinary engine
(:func:`torchkd.config.fit_recipe`), nothing demo-specific:

- ``teacher.yaml``: the teacher, trained once on the labels and cached as safetensors under
  ``$TORCHKD_CACHE`` (default ``~/.cache/torchkd``), keyed by a hash of everything that
  determines it: the resolved recipe, the torchkd code that trains it and the library versions
  (:mod:`torchkd.demo.fingerprint`);
- ``baseline.yaml``: the student on the labels alone;
- ``kd.yaml``, arm (a): Hinton KD with labels on the same labeled training set;
- ``label_free.yaml``, arm (b): label-free KD, the teacher's soft targets on fresh unlabeled
  MNIST-1D samples (the student never sees a label).

Each student recipe runs once per seed (``train.seed``: the student's initialisation and the
shuffle order, shared by the three arms so that seeds pair up). Every number is measured on
the run: the table reports test top-1 as mean ± sample std over seeds, and each arm's gain over
the baseline as the mean ± std of the per-seed (paired) differences. The table, with its
command, environment and wall time, goes to ``OUT/results.md``; ``torchkd demo --publish``
(maintainers, from a torchkd checkout) also writes it to ``benchmarks/results/demo.md``: the
README's demo table is that table.
"""

from __future__ import annotations

from torchkd.demo.arms import (
    ARMS,
    Arm,
    ArmRun,
    demo_recipe_path,
    teacher_cache_path,
    train_arm,
    train_teacher,
)
from torchkd.demo.report import (
    DemoResult,
    paired_gain,
    results_markdown,
    summary_markdown,
    summary_text,
    write_demo_report,
)
from torchkd.demo.run import RESULTS_FILE, run_demo

__all__ = [
    "ARMS",
    "RESULTS_FILE",
    "Arm",
    "ArmRun",
    "DemoResult",
    "demo_recipe_path",
    "paired_gain",
    "results_markdown",
    "run_demo",
    "summary_markdown",
    "summary_text",
    "teacher_cache_path",
    "train_arm",
    "train_teacher",
    "write_demo_report",
]
