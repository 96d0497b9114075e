"""``torchkd demo cross_tokenizer``: distil the LM demo's teacher into a student that has
another tokenizer.

A demo of its own rather than arms of ``torchkd demo lm``: its students read another
tokenization of the text (a second tokenizer to train, ``data.kwargs.teacher_tokenizer``), its
metrics differ (bits per character, no top-1 agreement: the two models' token ids are of
different vocabularies) and the LM demo's plan, report and published table stay as they are.
It reuses the LM demo's corpus, teacher tokenizer (8192 tokens) and cached teacher
(:func:`torchkd.demo.lm.plan_lm_demo`; trained first when not cached). The students get a
byte-level BPE of 4096 tokens trained offline on their training files only. Arms
(``torchkd/configs/demo_cross_tokenizer/``): the student alone (cross-entropy), CE + 1.5 · ULD
(``fused_linear_uld``) and CE + 1.5 · hybrid ULD (``hybrid_uld``: KL over the shared tokens,
ULD over the rest), each at every seed. Measured on the held-out test files
(:func:`~torchkd.demo.cross_tokenizer.run.evaluate_text`): the perplexity in the model's own
tokens and the bits per character

.. math:: \\mathrm{bpc} = \\frac{\\sum_t -\\log p(y_t \\mid y_{<t})}{C \\ln 2},

with :math:`C` the characters of the predicted tokens, comparable across tokenizers.
"""

from __future__ import annotations

from torchkd.demo.cross_tokenizer.report import XTOK_ARMS, XTokResult, xtok_results_markdown
from torchkd.demo.cross_tokenizer.run import RESULTS_FILE, evaluate_text, run_xtok_demo

__all__ = [
    "RESULTS_FILE",
    "XTOK_ARMS",
    "XTokResult",
    "evaluate_text",
    "run_xtok_demo",
    "xtok_results_markdown",
]
