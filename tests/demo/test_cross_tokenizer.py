"""``torchkd demo cross_tokenizer --quick``: the LM demo's teacher distilled into students with
another tokenizer (the three arms per seed), bits per character, the table and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from torchkd.demo import cross_tokenizer as xtok

SEEDS = 2
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[xtok.XTokResult, Path]:
    """One quick demo (the LM demo's quick teacher trained into an empty cache)."""
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("demo_xtok")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHKD_CACHE", str(cache))
        result = xtok.run_xtok_demo(seeds=SEEDS, quick=True, out=out, workers=1, echo=print)
    return result, out


def test_every_arm_runs_per_seed_on_the_students_own_tokenizer(
    quick_demo: tuple[xtok.XTokResult, Path],
) -> None:
    result, _ = quick_demo
    assert [(run.arm, run.seed) for run in result.runs] == [
        (arm.key, seed) for arm in xtok.XTOK_ARMS for seed in range(SEEDS)
    ]
    assert result.setup["student_vocab"] != result.setup["teacher_vocab"]
    assert 0 < result.setup["shared"] <= result.setup["student_vocab"]
    # every student is measured on the same test tokens; the teacher on its own tokens
    assert {run.test["characters"] for run in result.runs} == {result.setup["characters"]}
    assert result.teacher_test["tokens"] != result.runs[0].test["tokens"]
    for metrics in [result.teacher_test, *(run.test for run in result.runs)]:
        assert "agreement" not in metrics  # no token ids compared across vocabularies
        assert 0 < metrics["bpc"] < 10 and math.isfinite(metrics["perplexity"])
    assert "fused_linear_uld" in result.arm_terms["uld"]
    assert "hybrid_uld" in result.arm_terms["hybrid"]


def test_results_page_holds_the_table_and_command(
    quick_demo: tuple[xtok.XTokResult, Path],
) -> None:
    result, out = quick_demo
    page = (out / "results.md").read_text()
    assert page == xtok.xtok_results_markdown(result, quick=True)
    assert f"Command: `{result.command}`" in page and "--quick" in result.command
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows[2:6]] == [
        "teacher " + result.teacher_description + ", its own tokens",
        *(arm.label for arm in xtok.XTOK_ARMS),
    ]
    assert (out / "report.md").read_text().startswith(page)


def test_bits_per_character_of_a_uniform_model(tmp_path: Path) -> None:
    """A uniform model over V tokens: nll = ln V per token, so bpc = N log2(V) / C."""
    from torchkd.data.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["def f(x):\n    return x\n"] * 8, 270, tmp_path)
    ids = torch.tensor([tokenizer.encode("def f(x):\n    return x + 1\n")])
    labels = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)
    vocab = len(tokenizer)

    class Uniform(nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*input_ids.shape, vocab)

    batch = {
        "inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        "labels": labels,
        "index": torch.tensor([0]),
    }
    metrics = xtok.evaluate_text(Uniform(), [batch], tmp_path)
    characters = len(tokenizer.decode(labels[0, :-1].tolist()))
    assert metrics["characters"] == characters
    expected = (ids.shape[1] - 1) * math.log2(vocab) / characters
    assert metrics["bpc"] == pytest.approx(expected, rel=1e-6)


def test_cli_demo_cross_tokenizer(
    quick_demo: tuple[xtok.XTokResult, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from torchkd import cli
    from torchkd.demo.cross_tokenizer.report import xtok_summary_markdown

    result, out = quick_demo
    received: dict[str, object] = {}

    def fake_run(**kwargs: object) -> xtok.XTokResult:
        received.update(kwargs)
        return result

    monkeypatch.setattr(xtok, "run_xtok_demo", fake_run)
    assert cli.main(["demo", "cross_tokenizer", "--quick", "--out", str(out)]) == 0
    assert received == {
        "seeds": 3,
        "quick": True,
        "out": str(out),
        "workers": None,
        "publish": False,
    }
    assert xtok_summary_markdown(result) in capsys.readouterr().out
    assert cli.main(["demo", "cross_tokenizer", "--quick", "--publish"]) == 2  # not a result
