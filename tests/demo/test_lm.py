"""``torchkd demo lm --quick``: corpora, tokenizer, teacher cache, the six arms, the metrics,
the table and the report, on a tiny corpus with tiny models."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from tolerances import cascade_sum_terms, float32_tolerance

from torchkd.config import build_model
from torchkd.data.documents import split_documents
from torchkd.demo import lm
from torchkd.demo.lm.metrics import evaluate_lm, top1_predictions

SEEDS = 2
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[lm.LMDemoResult, Path, Path]:
    """One quick demo (teacher trained into an empty cache), shared by the tests."""
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("demo_lm")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHKD_CACHE", str(cache))
        result = lm.run_lm_demo(seeds=SEEDS, quick=True, out=out, workers=1, echo=lines.append)
    return result, out, cache


def _brute_force(model: torch.nn.Module, loader: object, teacher: torch.nn.Module) -> dict:
    """Perplexity and agreement counted position by position in float64, from the logits the
    metric reads (the same model, inputs and batch shapes, so the same float32 logits), and
    ``tolerance``: the float32 error bound of the metric's relative perplexity.

    The metric sums ``cross_entropy`` over each batch's ``n`` positions in float32: each term
    (log-sum-exp of ``V`` exponentials, the log, two subtractions) is off by at most
    ``(V + 4) ε (2 max|z| + log V)``, the cascade sum by ``depth · ε · Σ nll``. The perplexity
    ``exp(mean nll)`` then has that mean's absolute error as its relative error (to first order).
    """
    nll, agree, tokens, error = 0.0, 0, 0, 0.0
    with torch.no_grad():
        for batch in loader:  # type: ignore[attr-defined]
            ids = batch["inputs"]["input_ids"]
            logits = model(**batch["inputs"]).logits.double()
            teacher_top1 = teacher(input_ids=ids).logits.argmax(-1)
            batch_nll, batch_tokens = 0.0, 0
            for row in range(ids.shape[0]):
                for t in range(ids.shape[1]):
                    label = int(batch["labels"][row, t])
                    if label == -100:
                        continue
                    batch_nll -= float(logits[row, t].log_softmax(-1)[label])
                    agree += int(logits[row, t].argmax() == teacher_top1[row, t])
                    size = 2 * float(logits[row, t].abs().max()) + math.log(logits.shape[-1])
                    error += float32_tolerance(logits.shape[-1] + 4, size)
                    batch_tokens += 1
            if batch_tokens:
                error += float32_tolerance(cascade_sum_terms(batch_tokens), batch_nll)
            nll, tokens = nll + batch_nll, tokens + batch_tokens
    return {
        "perplexity": math.exp(nll / tokens),
        "agreement": 100 * agree / tokens,
        "tolerance": error / tokens,
    }


def test_every_arm_runs_its_recipe_per_seed(
    quick_demo: tuple[lm.LMDemoResult, Path, Path],
) -> None:
    result, out, cache = quick_demo
    assert sorted((run.arm, run.seed) for run in result.runs) == sorted(
        (arm.key, seed) for arm in lm.LM_ARMS for seed in range(SEEDS)
    )
    teacher_weights = next((cache / "teachers").glob("demo_lm_teacher-*.safetensors"))
    for run in result.runs:
        config = yaml.safe_load((out / run.arm / f"seed{run.seed}" / "config.yaml").read_text())
        assert config["train"]["seed"] == run.seed
        terms = {term["name"]: term for term in config["terms"]}
        if run.arm == "baseline":
            assert config.get("teacher") is None and terms["ce"]["loss"] == "ce"
            continue
        assert terms["kd"]["loss"] == "fused_linear_kd"
        assert config["teacher"]["checkpoint"] == str(teacher_weights)
        divergence = terms["kd"]["loss_kwargs"]["divergence"]
        expected = {"reverse_kl": "reverse_kl", "jsd": "jsd", "on_policy": "jsd"}
        assert divergence == expected.get(run.arm, "forward_kl")
        assert (terms["kd"]["teacher"] == "cache") == (run.arm == "cache")
        assert (config.get("on_policy") is not None) == (run.arm == "on_policy")
        if run.arm == "cache":
            assert Path(config["data"]["teacher_cache"]["dir"]).is_dir()


def test_reported_metrics_are_the_final_students_on_the_held_out_files(
    quick_demo: tuple[lm.LMDemoResult, Path, Path],
) -> None:
    from torchkd.config import ModelConfig, build_loaders, recipe_from_dict

    result, _, _ = quick_demo
    run = next(r for r in result.runs if r.arm == "forward_kl" and r.seed == 1)
    recipe = recipe_from_dict(yaml.safe_load((Path(run.run_dir) / "config.yaml").read_text()))
    last = str(Path(run.run_dir) / "checkpoints" / "last.pt")
    student = build_model(ModelConfig(**{**recipe.student.model_dump(), "checkpoint": last}))
    teacher = build_model(recipe.teacher, "teacher")  # type: ignore[arg-type]
    loader = build_loaders(recipe.data, splits=["test"]).test
    expected = _brute_force(student, loader, teacher)
    assert run.test["perplexity"] == pytest.approx(
        expected["perplexity"], rel=expected["tolerance"]
    )
    assert run.test["agreement"] == pytest.approx(expected["agreement"], abs=1e-9)
    # the held-out files are the test split's documents: never a training document
    test_files = set(loader.dataset.documents)  # type: ignore[union-attr]
    train_files = set(build_loaders(recipe.data, splits=["train"]).train.dataset.documents)  # type: ignore[union-attr]
    assert test_files and test_files.isdisjoint(train_files)


def test_teacher_is_trained_on_other_files_and_cached(
    quick_demo: tuple[lm.LMDemoResult, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    result, out, cache = quick_demo
    assert not result.teacher_cached and result.teacher_seconds > 0
    teacher_config = yaml.safe_load((out / "teacher" / "config.yaml").read_text())
    student_config = yaml.safe_load((out / "baseline" / "seed0" / "config.yaml").read_text())
    assert set(teacher_config["data"]["kwargs"]["files"]).isdisjoint(
        student_config["data"]["kwargs"]["files"]
    )
    monkeypatch.setenv("TORCHKD_CACHE", str(cache))

    def no_training(*args: object) -> None:
        raise AssertionError("the cached teacher should have been reused")

    monkeypatch.setattr(lm.run, "train_teacher", no_training)
    again = lm.run_lm_demo(seeds=1, quick=True, out=tmp_path, workers=1, echo=lambda _: None)
    assert again.teacher_cached
    assert again.teacher_test["perplexity"] == result.teacher_test["perplexity"]
    first = {(r.arm, r.seed): r.test["perplexity"] for r in result.runs}
    assert {(r.arm, r.seed): r.test["perplexity"] for r in again.runs} == {
        key: value for key, value in first.items() if key[1] == 0
    }  # deterministic: the same numbers from the cached teacher and cached data


def test_cache_was_written_by_cache_teacher_and_reported(
    quick_demo: tuple[lm.LMDemoResult, Path, Path],
) -> None:
    result, _, _ = quick_demo
    cache = result.cache
    assert cache["k"] == 16  # the training and validation splits are cached
    assert cache["tokens"] == result.corpus["train_tokens"] + result.corpus["val_tokens"]
    # uint16 ids + float16 log-probs per kept token, float16 tail, plus the manifest
    assert 16 * 4 + 2 <= cache["bytes_per_token"] < 16 * 4 + 2 + 16
    assert 0 <= cache["loss_relative_error"] < 1 and 0 <= cache["grad_relative_error"] < 1


def test_table_reports_paired_gains_and_wins(
    quick_demo: tuple[lm.LMDemoResult, Path, Path],
) -> None:
    result, _, _ = quick_demo
    table = lm.lm_summary_markdown(result).splitlines()
    assert len(table) == 2 + 1 + len(lm.LM_ARMS)  # header, separator, teacher, arms
    assert table[2].startswith("| teacher llama, 1 layers × 32")
    baseline = result.values("baseline", "perplexity")
    for line, arm in zip(table[3:], lm.LM_ARMS, strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        values = result.values(arm.key, "perplexity")
        assert cells[0] == arm.label
        assert cells[1] == f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
        if arm.key == "baseline":
            assert cells[2:4] == ["", ""]
            continue
        differences = [a - b for a, b in zip(values, baseline, strict=True)]
        assert cells[2].startswith(f"{statistics.fmean(differences):+.2f} ± ")
        assert cells[3] == f"{sum(d < 0 for d in differences)}/{SEEDS}"


def test_report_results_file_and_plots(
    quick_demo: tuple[lm.LMDemoResult, Path, Path],
) -> None:
    result, out, _ = quick_demo
    report = (out / "report.md").read_text()
    assert "--quick run" in report and lm.lm_summary_markdown(result) in report
    for plot in ("perplexity.png", "agreement.png"):
        assert (out / "plots" / plot).read_bytes().startswith(b"\x89PNG")
    text = lm.lm_results_markdown(result)
    assert lm.lm_summary_markdown(result) in text and f"`{result.command}`" in text
    assert "bytes/token" in text and f"torch {torch.__version__}" in text


def test_tokenizer_is_trained_on_training_files_only(tmp_path: Path) -> None:
    students, teacher = lm.corpus_files(lm.QUICK_CORPUS)
    recipe = lm.lm_recipe("baseline.yaml")
    chosen = lm.training_files(students, recipe.data)
    parts = split_documents(
        len(students), recipe.data.val_fraction, recipe.data.kwargs["test_fraction"], 0
    )
    assert chosen == [students[index] for index in parts["train"]]
    assert set(students).isdisjoint(teacher)


def test_evaluate_lm_against_brute_force() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=11, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    model, teacher = LlamaForCausalLM(config), LlamaForCausalLM(config)
    ids = torch.randint(0, 11, (3, 6))
    labels = torch.cat([ids[:, 1:], torch.full((3, 1), -100)], dim=1)
    labels[1, :3] = -100
    batch = {
        "inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        "labels": labels,
        "index": torch.arange(3),
    }
    reference = top1_predictions(teacher, [batch])
    metrics = evaluate_lm(model, [batch], reference)
    expected = _brute_force(model, [batch], teacher)
    assert metrics["perplexity"] == pytest.approx(expected["perplexity"], rel=expected["tolerance"])
    assert metrics["agreement"] == pytest.approx(expected["agreement"])
    assert metrics["tokens"] == int((labels != -100).sum())
    with pytest.raises(ValueError, match="no labeled position"):
        evaluate_lm(model, [{**batch, "labels": torch.full_like(labels, -100)}])


def test_results_file_and_readme_table_agree() -> None:
    from tests.demo.test_readme_table import markdown_table

    results = markdown_table((ROOT / lm.RESULTS_FILE).read_text())
    readme = markdown_table((ROOT / "README.md").read_text(), after="**Language-model demo**")
    assert [row[0] for row in results[3:]] == [arm.label for arm in lm.LM_ARMS]
    assert readme == results


def test_cli_demo_lm_runs_the_lm_demo(
    quick_demo: tuple[lm.LMDemoResult, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from torchkd import cli

    result, out, _ = quick_demo
    received: dict[str, object] = {}

    def fake_run(**kwargs: object) -> lm.LMDemoResult:
        received.update(kwargs)
        return result

    monkeypatch.setattr(lm, "run_lm_demo", fake_run)
    assert cli.main(["demo", "lm", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    assert received == {
        "seeds": 2,
        "quick": True,
        "out": str(out),
        "workers": None,
        "publish": False,
    }
    assert result.table() in capsys.readouterr().out
    assert (out / "results.md").read_text() == lm.lm_results_markdown(result)
    assert cli.main(["demo", "lm", "--seeds", "1"]) == 0  # default --out
    assert received["out"] == "runs/demo_lm"


RECIPES = sorted((ROOT / "configs" / "demo_lm").glob("*.yaml"))
NOT_SET = "data.kwargs.files and data.kwargs.tokenizer not set"


def _header(recipe: Path) -> str:
    """The recipe's header comment as one line of prose."""
    lines = recipe.read_text().split("\nname:")[0].splitlines()
    return " ".join(line.removeprefix("#").strip() for line in lines)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_a_demo_lm_recipe_alone_names_what_the_demo_fills_in(recipe: Path) -> None:
    """Without the corpus and tokenizer the demo fills in, the recipe names them as YAML paths
    (not as a Python signature error), and its header says so in the same words."""
    from torchkd.config import ConfigError, build_datasets, load_recipe

    loaded = load_recipe(recipe, ["train.progress=false"])
    with pytest.raises(ConfigError, match=NOT_SET) as refused:
        build_datasets(loaded.data, splits=["train"])
    assert "load_text()" not in str(refused.value)
    assert f"stops with `data: {NOT_SET}` (exit 2)" in _header(recipe)


def test_train_of_a_demo_lm_recipe_alone_exits_2_naming_the_kwargs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchkd import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", str(ROOT / "configs" / "demo_lm" / "baseline.yaml")]) == 2
    error = capsys.readouterr().err
    assert f"data: {NOT_SET}" in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()


def test_the_resolved_recipe_of_a_demo_lm_run_trains_alone(
    quick_demo: tuple[lm.LMDemoResult, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the recipes' headers promise: ``torchkd train OUT/ARM/seed0/config.yaml`` runs."""
    from torchkd import cli

    _, out, cache = quick_demo
    monkeypatch.setenv("TORCHKD_CACHE", str(cache))
    for recipe in RECIPES:
        if recipe.stem != "teacher":
            assert f"runs/demo_lm/{recipe.stem}/seed0/config.yaml" in _header(recipe)
    config = out / "forward_kl" / "seed0" / "config.yaml"
    assert cli.main(["train", str(config), "--run-dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "checkpoints" / "best.pt").is_file()
