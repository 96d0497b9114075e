"""Offline corpora: the standard library's source files and English documents."""

from __future__ import annotations

import inspect
import sysconfig
import textwrap
from pathlib import Path

from torchkd.data.corpora import EXCLUDED_DIRECTORIES, english_documents, python_stdlib_files


def test_stdlib_files_are_sorted_real_code_without_tests_or_third_party() -> None:
    files = python_stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert files == sorted(files) == python_stdlib_files()
    relative = [path.relative_to(root) for path in files]
    assert all(path.suffix == ".py" for path in files)
    assert not any(EXCLUDED_DIRECTORIES.intersection(path.parts[:-1]) for path in relative)
    names = {path.as_posix() for path in relative}
    assert {"textwrap.py", "json/decoder.py", "idlelib/editor.py"} <= names
    assert not any(name.startswith(("test/", "unittest/test/")) for name in names)
    assert len(files) > 300


def test_english_documents_topics_then_docstrings_in_source_order(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        '"""Module  docstring."""\n'
        "import os\n"
        "class Shape:\n"
        '    """A shape.\n\n        Indented second paragraph.\n    """\n'
        "    def area(self):\n"
        '        """Its area."""\n'
        "    def _hidden(self):\n"
        "        pass\n"
        "async def run():\n"
        '    """Run it."""\n'
    )
    textwrap_file = Path(textwrap.__file__)
    documents = english_documents(files=[module, textwrap_file])
    from pydoc_data.topics import topics

    names = [name for name, _ in documents]
    assert names[: len(topics)] == [f"topic:{key}" for key in sorted(topics)]
    assert documents[len(topics) : len(topics) + 4] == [
        ("sample", "Module  docstring."),
        ("sample:Shape", "A shape.\n\nIndented second paragraph."),
        ("sample:Shape.area", "Its area."),
        ("sample:run", "Run it."),
    ]
    by_name = dict(documents)
    assert by_name["textwrap:TextWrapper"] == inspect.getdoc(textwrap.TextWrapper)
    assert by_name["textwrap:TextWrapper.wrap"] == inspect.getdoc(textwrap.TextWrapper.wrap)
    assert by_name["textwrap"] == inspect.getdoc(textwrap)
    assert all(text for _, text in documents)
