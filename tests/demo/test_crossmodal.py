"""``torchkd demo crossmodal``: retrieval ranks and InfoNCE against brute force, the pairs and
their split, the three-view dataset, and a tiny end-to-end run (a tiny BERT as the teacher)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from torchkd.data.corpora import python_stdlib_files
from torchkd.demo.crossmodal import (
    ARMS,
    function_pairs,
    info_nce,
    retrieval_ranks,
    retrieval_scores,
    run_crossmodal_demo,
    split_pairs,
    stdlib_code_docs,
)
from torchkd.demo.embeddings.data import load_tokenizer
from torchkd.demo.embeddings.models import minilm_teacher

from .test_embeddings import _tiny_model_dir

FILES = 80  # the first standard-library files: a few hundred pairs, read in a second


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"))


def test_ranks_match_brute_force_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    code = torch.randint(-1, 2, (30, 3), generator=generator).double() + 0.01  # many ties
    docs = torch.randint(-1, 2, (30, 3), generator=generator).double() + 0.01
    cosines = torch.nn.functional.normalize(code, dim=1) @ torch.nn.functional.normalize(docs).T
    expected = []
    for i in range(30):
        right = float(cosines[i, i])
        others = [float(cosines[i, j]) for j in range(30) if j != i]
        greater = sum(value > right for value in others)
        expected.append(1 + greater + sum(value == right for value in others) / 2)
    ranks = retrieval_ranks(code, docs)
    assert ranks.tolist() == expected
    scores = retrieval_scores(code, docs)
    assert scores["r1"] == pytest.approx(sum(r <= 1 for r in expected) / 30)
    assert scores["mrr10"] == pytest.approx(sum(1 / r for r in expected if r <= 10) / 30)
    with pytest.raises(ValueError, match="one space of one size"):
        retrieval_ranks(code, docs[:, :2])


def test_info_nce_is_the_symmetric_cross_entropy_by_hand() -> None:
    generator = torch.Generator().manual_seed(1)
    code = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    docs = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    cos = [[float(torch.cosine_similarity(c, d, dim=0)) for d in docs] for c in code]
    tau = 0.1
    total = 0.0
    for i in range(5):
        rows = sum(math.exp(cos[i][j] / tau) for j in range(5))
        columns = sum(math.exp(cos[j][i] / tau) for j in range(5))
        total += 2 * cos[i][i] / tau - math.log(rows) - math.log(columns)
    assert float(info_nce(code, docs, tau)) == pytest.approx(-total / 10, rel=1e-12)


def test_pairs_have_no_docstring_in_their_code_and_split_by_module() -> None:
    pairs = function_pairs(python_stdlib_files()[:FILES])
    assert len(pairs) > 100
    for pair in pairs:
        node = ast.parse(pair.code).body[0]
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        assert ast.get_docstring(node) is None and len(pair.docstring.split()) >= 4
    assert len({pair.docstring for pair in pairs}) == len(pairs)
    splits = split_pairs(pairs, 0.1, 0.2, seed=0)
    modules = {name: {pair.module for pair in split} for name, split in splits.items()}
    assert all(modules.values())
    assert not (modules["train"] & modules["test"]) and not (modules["val"] & modules["test"])
    assert sum(len(split) for split in splits.values()) == len(pairs)


def test_dataset_views_are_cut_to_their_longest_row(tiny_dir: Path, tmp_path: Path) -> None:
    data = stdlib_code_docs(
        "test",
        max_files=FILES,
        vocab_size=300,
        teacher_dir=str(tiny_dir),
        test_pairs=8,
        cache=str(tmp_path),
    )
    assert len(data) == 8 and data.pairs is not None
    batch = data[[0, 1, 2]]
    for view in ("inputs", "doc_inputs"):
        mask = data.views[view][1]
        assert batch[view]["input_ids"].shape[1] == int(mask[:3].sum(1).max())
        assert batch[view]["input_ids"].shape[0] == 3
    assert int(data[1]["index"]) == 1
    cached = list((tmp_path / "crossmodal").glob("teacher-*.safetensors"))
    assert len(cached) == 1  # the teacher's embeddings, computed once
    teacher = minilm_teacher(str(tiny_dir)).eval()
    docs = data.pairs[:3]
    tokens = load_tokenizer(str(tiny_dir))(
        [pair.docstring for pair in docs],
        padding=True,
        truncation=True,
        max_length=48,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = teacher(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(batch["teacher_inputs"]["embedding"], expected)
    again = stdlib_code_docs(
        "test",
        max_files=FILES,
        vocab_size=300,
        teacher_dir=str(tiny_dir),
        test_pairs=8,
        cache=str(tmp_path),
    )
    assert torch.equal(again.teacher, data.teacher)
    assert list((tmp_path / "crossmodal").glob("*")) == cached
    with pytest.raises(ValueError, match="test_pairs must be >= 1"):
        stdlib_code_docs("test", max_files=FILES, test_pairs=0)


def test_tiny_end_to_end_run(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # a user's run writes its results page under OUT only
    lines: list[str] = []
    overrides = [
        f"data.kwargs.teacher_dir={tiny_dir}",
        f"data.kwargs.cache={tmp_path / 'cache'}",
        "data.kwargs.code_length=64",  # the tiny BERT has 72 positions
        "student.kwargs.width=16",
        "student.kwargs.heads=2",
        "student.kwargs.out_dim=16",
    ]
    result = run_crossmodal_demo(
        seeds=2,
        quick=True,
        out=tmp_path / "out",
        workers=1,
        echo=lines.append,
        overrides=overrides,
    )
    assert list((tmp_path / "benchmarks" / "results").iterdir()) == []
    assert {(s.arm, s.seed) for s in result.scores} == {
        (arm.key, seed) for arm in ARMS for seed in ([0, 1] if arm.seeded else [0])
    }
    for score in result.scores:
        assert 0 <= score.r1 <= score.mrr10 <= score.r10 <= 1
    assert result.held_out == 32
    table = (tmp_path / "out" / "results.md").read_text()
    assert "kd minus" in table and "MRR@10" in table
    assert "--quick run" in (tmp_path / "out" / "report.md").read_text()
    run_dir = tmp_path / "out" / "kd" / "seed0"
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / "checkpoints").exists()
    assert "teacher_inputs: teacher_inputs" in (run_dir / "config.yaml").read_text()
    with pytest.raises(ValueError, match="not published"):
        run_crossmodal_demo(seeds=1, quick=True, publish=True, overrides=overrides)
