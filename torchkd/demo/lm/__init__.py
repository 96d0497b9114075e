"""``torchkd demo lm``: distil a code-completion language model on the Python standard library.

The corpus is the running interpreter's standard-library source
(:func:`torchkd.data.corpora.python_stdlib_files`: tests and site-packages excluded), two
disjoint seeded samples of it (:mod:`torchkd.demo.lm.corpus`): the students' files, split by
file into train / val / test by the ``text`` dataset, and the teacher's files, which the
students never see (as a pretrained teacher has seen other data). A byte-level BPE tokenizer of
8192 tokens is trained offline on the training files of both. Everything runs through the
ordinary engine (:func:`torchkd.config.fit_recipe`) from ``torchkd/configs/demo_lm/``:

- ``teacher.yaml``: a 6-layer Llama-style causal LM (width 256), trained once with
  cross-entropy on the teacher's files and cached as safetensors under ``$TORCHKD_CACHE`` (key:
  the resolved recipe, the code that trains it, the library versions and the files' bytes);
- ``baseline.yaml``: a 2-layer student (width 128) alone, with cross-entropy;
- ``forward_kl.yaml``, ``reverse_kl.yaml``, ``jsd.yaml``: the same student distilled per token
  by the fused loss (never the full logits) with forward KL, reverse KL and JSD(0.5);
- ``cache.yaml``: forward KL from the teacher's top-16 cache, written by ``torchkd
  cache-teacher`` itself (no teacher forward pass while training);
- ``on_policy.yaml``: on-policy distillation (GKD): on half of the steps the student continues
  the batch's first 64 tokens with 32 sampled ones and JSD(0.5) covers those.

Each student recipe runs once per seed (``train.seed``: initialisation and batch order, shared
by the arms so that seeds pair up), one torch thread per run. The final students are measured
on the students' held-out test files (:mod:`torchkd.demo.lm.metrics`): perplexity, top-1
agreement with the teacher and tokens/s; each arm's gain over the student alone is the mean ±
std of the per-seed differences, with the seeds it wins. The results page (table, command,
environment, wall time) goes to ``OUT/results.md``; ``torchkd demo lm --publish`` (maintainers,
from a torchkd checkout) also writes it to ``benchmarks/results/demo_lm.md``, the README's
table.
"""

from __future__ import annotations

from torchkd.demo.lm.arms import LM_ARMS, held_out_loader, lm_arm, measure_lm_run, train_lm_arm
from torchkd.demo.lm.corpus import CorpusSettings, corpus_files, demo_tokenizer, training_files
from torchkd.demo.lm.metrics import evaluate_lm, top1_predictions
from torchkd.demo.lm.plan import CORPUS, QUICK_CORPUS, LMDemoPlan, plan_lm_demo
from torchkd.demo.lm.report import (
    LMDemoResult,
    lm_results_markdown,
    lm_summary_markdown,
    lm_summary_text,
    write_lm_report,
)
from torchkd.demo.lm.run import RESULTS_FILE, run_lm_demo
from torchkd.demo.lm.teacher import lm_recipe, lm_recipe_path, teacher_weights_path

__all__ = [
    "CORPUS",
    "LM_ARMS",
    "QUICK_CORPUS",
    "RESULTS_FILE",
    "CorpusSettings",
    "LMDemoPlan",
    "LMDemoResult",
    "corpus_files",
    "demo_tokenizer",
    "evaluate_lm",
    "held_out_loader",
    "lm_arm",
    "lm_recipe",
    "lm_recipe_path",
    "lm_results_markdown",
    "lm_summary_markdown",
    "lm_summary_text",
    "measure_lm_run",
    "plan_lm_demo",
    "run_lm_demo",
    "teacher_weights_path",
    "top1_predictions",
    "train_lm_arm",
    "training_files",
    "write_lm_report",
]
