"""The README's demo tables are the tables the demos wrote to ``benchmarks/results/``."""

from __future__ import annotations

from pathlib import Path

from torchkd import demo

ROOT = Path(__file__).resolve().parents[2]


def markdown_table(text: str, after: str = "") -> list[list[str]]:
    """Cells of the first markdown table in ``text`` that follows the first line starting with
    ``after`` (separator row included)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    table = []
    for line in lines[start:]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    return table


def test_markdown_table_parser() -> None:
    text = "intro\n**Demo** x\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n| other |\n"
    assert markdown_table(text, "**Demo**") == [["a", "b"], ["---", "---"], ["1", "2"]]


def test_readme_demo_table_is_the_demo_results_table() -> None:
    results = markdown_table((ROOT / demo.RESULTS_FILE).read_text())
    readme = markdown_table((ROOT / "README.md").read_text(), after="**Demo**")
    assert [row[0] for row in results[2:]][1:] == [arm.label for arm in demo.ARMS]
    assert readme == results


def test_readme_embeddings_table_is_the_demo_results_table() -> None:
    from torchkd.demo.embeddings.run import RESULTS_FILE

    results = markdown_table((ROOT / RESULTS_FILE).read_text())
    readme = markdown_table((ROOT / "README.md").read_text(), after="**Embeddings demo**")
    assert len(results) == 7 and readme == results


def test_readme_crossmodal_tables_are_the_demo_results_tables() -> None:
    from torchkd.demo.crossmodal.run import RESULTS_FILE

    results = (ROOT / RESULTS_FILE).read_text()
    readme = (ROOT / "README.md").read_text()
    section = readme.split("**Cross-modal demo**")[1]
    for header in ("| model (code", "| kd minus"):  # the arms' table, the paired deltas
        table = markdown_table(results, after=header)
        assert len(table) >= 4 and markdown_table(section, after=header) == table
