"""The README's examples run as written: every Python block executes, every ``torchkd`` command
line parses with the real CLI parser, and the ``list`` commands run. The prose is held to the
same standard: every call in an inline code span binds to the real function's signature, every
``torchkd.x.y`` it names exists, and every command in a ```bash block or an inline span is
checked (``torchkd`` through the CLI parser, ``make`` targets in the Makefile, benchmark scripts
and their options, ``pip install`` of torchkd from the clone with extras that exist)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from torchkd.cli import build_parser, main
from torchkd.cli.base import _parse

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
# "Your own model and dataset" runs in its own project directory: tests/test_own_package.py
OWN_PACKAGE = TEXT.split("\n## Your own model and dataset\n")[1].split("\n## ")[0]
BASH_LINES = [
    line.split("#")[0].strip()
    for block in re.findall(r"```bash\n(.*?)```", TEXT, re.S)
    for line in block.splitlines()
    if line.split("#")[0].strip()
]
# inline code spans of the prose (fenced blocks removed), whitespace collapsed
SPANS = [
    " ".join(span.split())
    for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", TEXT, flags=re.S))
]
COMMANDS = [
    line.split("#")[0].strip()
    for block in re.findall(r"```bash\n(.*?)```", TEXT.replace(OWN_PACKAGE, ""), re.S)
    for line in block.splitlines()
    if line.strip().startswith(".venv/bin/torchkd ")
]


def test_the_readme_has_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 2 and len(COMMANDS) >= 5


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_python_example_runs(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples write runs/... relative to the working directory
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})


@pytest.mark.parametrize("command", COMMANDS)
def test_command_line_parses(command: str) -> None:
    argv = shlex.split(command)[1:]
    arguments = build_parser().parse_args(argv)
    assert arguments.command == argv[0]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.split()[1] == "list"])
def test_list_commands_run(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out.strip()


def test_the_recipe_format_block_is_a_valid_recipe() -> None:
    import yaml

    from torchkd.config import recipe_from_dict

    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", TEXT, re.S) if "name: my_run" in b]
    text = "\n".join(line for line in block.splitlines() if not line.startswith("tune:"))
    recipe = recipe_from_dict(yaml.safe_load(text))
    assert [term.name for term in recipe.terms] == ["kd", "ce", "hint"]


# Extra arguments that only shorten a README command for the test (none changes what it does).
SHORTER = {
    "configs/mnist1d/teacher.yaml": ["train.epochs=2"],
    "tune": ["--trials", "2", "train.epochs=1", "--workers", "1"],
    "select-teacher": ["--probe-steps", "4"],
}


def test_the_command_lines_run_in_order_from_a_fresh_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh clone's view: only ``configs/``; every command line of the README, in order."""
    import glob

    (tmp_path / "configs").symlink_to(README.parent / "torchkd" / "configs")
    monkeypatch.chdir(tmp_path)
    for command in COMMANDS:
        argv = shlex.split(command)[1:]
        argv = [
            match for arg in argv for match in (sorted(glob.glob(arg)) if "*" in arg else [arg])
        ]
        extra = SHORTER.get(argv[0], []) + SHORTER.get(argv[1] if len(argv) > 1 else "", [])
        if argv[0] in ("train", "eval", "tune", "select-teacher"):  # the ones taking overrides
            extra += ["train.progress=false", "data.batch_size=1024"]
        assert main([*argv, *extra]) == 0, command


# ------------------------------------------------------------------------------ the prose

# where a bare function name in the prose is looked up
NAMESPACES = ("torchkd", "torchkd.losses", "torchkd.models", "torchkd.data", "torchkd.train",
              "torchkd.config", "torchkd.schedules", "torchkd.report", "torchkd.lm")  # fmt: skip
# calls the README names that are not torchkd's (``eval()``: a teacher's nn.Module.eval)
NOT_TORCHKD = {"eval": lambda: torch.nn.Module().eval}


def _resolve(dotted: str) -> Any:
    """The object a dotted name names: ``torchkd.report.write_report``, or a bare name looked
    up in :data:`NAMESPACES` (then :data:`NOT_TORCHKD`)."""
    if not dotted.startswith("torchkd"):
        for namespace in NAMESPACES:
            module = importlib.import_module(namespace)
            if hasattr(module, dotted.split(".")[0]):
                return _resolve(f"{namespace}.{dotted}")
        if dotted in NOT_TORCHKD:
            return NOT_TORCHKD[dotted]()
        raise AssertionError(f"{dotted!r} is no name of {NAMESPACES} nor of {NOT_TORCHKD}")
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):  # the longest importable module prefix
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for part in parts[split:]:
            value = getattr(value, part)
        return value
    raise AssertionError(f"{dotted!r} does not resolve")


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return None if owner is None else f"{owner}.{node.attr}"
    return None


def _calls(spans: list[str]) -> list[tuple[str, ast.Call]]:
    """The spans that are one call of a (dotted) name, ``@decorator(...)`` included."""
    calls = []
    for span in spans:
        try:
            tree = ast.parse(span.removeprefix("@"), mode="eval").body
        except SyntaxError:
            continue
        if isinstance(tree, ast.Call) and _dotted(tree.func) is not None:
            calls.append((span, tree))
    return calls


def check_call(span: str, call: ast.Call) -> None:
    """The call binds to the real signature: its positional arguments (up to a ``...``, which
    stands for more) and its keywords."""
    name = _dotted(call.func)
    assert name is not None
    function = _resolve(name)
    ellipsis = [isinstance(a, ast.Constant) and a.value is Ellipsis for a in call.args]
    positional = [None] * (ellipsis.index(True) if any(ellipsis) else len(call.args))
    keywords = {keyword.arg: None for keyword in call.keywords if keyword.arg is not None}
    bind = inspect.signature(function).bind_partial if any(ellipsis) else None
    try:
        (bind or inspect.signature(function).bind)(*positional, **keywords)
    except TypeError as error:
        raise AssertionError(f"README `{span}`: {error}") from None


PROSE_CALLS = _calls(SPANS)
REFERENCES = [span for span in SPANS if re.fullmatch(r"torchkd(\.\w+)+", span)]


def test_the_prose_has_calls_and_references() -> None:
    names = {_dotted(call.func) for _, call in PROSE_CALLS}
    assert "torchkd.report.write_report" in names and "torchkd.config.fit_recipe" in REFERENCES


@pytest.mark.parametrize(("span", "call"), PROSE_CALLS, ids=[span for span, _ in PROSE_CALLS])
def test_a_call_in_the_prose_binds_to_the_real_signature(span: str, call: ast.Call) -> None:
    check_call(span, call)


def test_a_call_that_does_not_bind_is_caught() -> None:
    """The check itself: the keyword-only ``test_metrics`` given by position is refused."""
    ((span, call),) = _calls(["torchkd.report.write_report(run_dir, history, test_metrics)"])
    with pytest.raises(AssertionError, match="too many positional arguments"):
        check_call(span, call)
    ((span, call),) = _calls(["torchkd.losses.fused_linear_kd_loss(a, b, ..., nope=1)"])
    with pytest.raises(AssertionError, match="nope"):
        check_call(span, call)


@pytest.mark.parametrize("reference", REFERENCES)
def test_a_torchkd_name_in_the_prose_exists(reference: str) -> None:
    _resolve(reference)


# --------------------------------------------------------------------------- the commands

_ENVIRONMENT = re.compile(r"^(\w+=(\$\([^)]*\)|\S+)\s+)+")  # VAR=value VAR=$(...) prefixes
_TORCHKD = re.compile(r"^(\.venv/bin/torchkd|torchkd|python -m torchkd)( |$)")
_TORCHRUN = re.compile(r"^\.venv/bin/torchrun .*?-m torchkd ")
COMMAND_START = re.compile(r"^(\.venv/bin/|torchkd( |$)|python |make( |$)|pip )")


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def check_command(line: str) -> None:
    """A README command line is one torchkd knows (see the module docstring)."""
    line = _ENVIRONMENT.sub("", line)
    if _TORCHKD.match(line) or _TORCHRUN.match(line):
        argv = shlex.split(re.sub(_TORCHRUN, "torchkd ", line))[1:]
        argv = [word for word in argv if word != "-m" and word != "torchkd"]
        if argv in ([], ["..."]):  # `python -m torchkd ...`: the CLI as a whole
            return
        if len(argv) == 1:  # `torchkd train`: a command named, not run
            assert argv[0] in build_parser()._subparsers._group_actions[0].choices, line
            return
        try:
            _parse(argv)
        except SystemExit as refused:
            raise AssertionError(f"README `{line}`: the CLI refuses it ({refused})") from None
        return
    words = shlex.split(line)
    if words[0] == "make":  # targets, and VAR=value settings of variables the Makefile has
        makefile = (ROOT / "Makefile").read_text()
        settings = [word.split("=")[0] for word in words[1:] if "=" in word]
        missing = {word for word in words[1:] if "=" not in word} - _make_targets()
        missing |= {f"{name}=" for name in settings if f"\n{name} ?=" not in makefile}
        assert not missing, f"README `{line}`: no Makefile target or variable {sorted(missing)}"
    elif words[0] == "python" and words[1].startswith("benchmarks/"):
        script = ROOT / words[1]
        assert script.is_file(), f"README `{line}`: no {words[1]}"
        for option in [word for word in words[2:] if word.startswith("--")]:
            assert f'"{option}"' in script.read_text(), f"README `{line}`: {option}?"
    elif words[:2] == ["pip", "install"]:
        import tomllib

        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        for word in words[2:]:
            assert "torchkd" not in word, f"README `{line}`: torchkd is installed from the clone"
            local = re.fullmatch(r"\.(\[([\w,]+)\])?", word)
            extras = set(local.group(2).split(",")) if local and local.group(2) else set()
            unknown = extras - set(project["optional-dependencies"])
            assert not unknown, f"README `{line}`: no extra {sorted(unknown)} in pyproject.toml"
    else:
        raise AssertionError(f"README `{line}`: no check for this kind of command; add one")


PROSE_COMMANDS = [span for span in SPANS if COMMAND_START.match(_ENVIRONMENT.sub("", span))]


def test_the_readme_has_commands() -> None:
    assert len(BASH_LINES) >= 10 and len(PROSE_COMMANDS) >= 10


@pytest.mark.parametrize("line", BASH_LINES + PROSE_COMMANDS)
def test_a_command_of_the_readme_is_one_torchkd_knows(line: str) -> None:
    check_command(line)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("pip install 'torchkd[hf]'", "installed from the clone"),
        ("pip install -e '.[nope]'", "no extra ['nope']"),
        ("make demo NOPE=1", "variable ['NOPE=']"),
        ("make demo-nope", "no Makefile target"),
        ("torchkd demo --nope", "the CLI refuses it"),
        ("python benchmarks/token_kd.py --nope", "--nope"),
        ("curl https://example.com", "no check"),
    ],
)
def test_a_wrong_command_is_caught(line: str, why: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(why)):
        check_command(line)
