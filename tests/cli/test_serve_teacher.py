"""``torchkd serve-teacher RECIPE`` in a subprocess on 127.0.0.1 (port 0) with a tiny Llama
teacher, and ``teacher: {server: URL}``: training against it equals training from the cache
``torchkd cache-teacher`` writes from the same teacher, bit for bit; the recipe's checks; a
malformed request answered with HTTP 400."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from torchkd.cli import main
from torchkd.config import ConfigError, ModelConfig, build_model, load_recipe
from torchkd.lm.cache import read_manifest
from torchkd.train import load_student_weights

from .test_cache_teacher import FAST, LENGTH, LLAMA, TEACHER, K, corpus  # noqa: F401

pytest.importorskip("transformers")

STARTUP_S = 300  # importing torch and transformers on a busy machine


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:  # noqa: F811
    """A directory with a teacher checkpoint and a recipe whose fused KD term reads the cache
    at T = 2 (all paths absolute, for the server's process)."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(5)
    teacher = build_model(TEACHER.model_copy(update={"checkpoint": None}), "teacher")
    save_file(teacher.state_dict(), root / "teacher.safetensors")
    settings = {
        "name": "serve_demo",
        "data": {
            "dataset": "text",
            "kwargs": {
                "files": [f"{corpus}/*.txt"],
                "tokenizer": str(corpus / "tokenizer"),
                "seq_len": LENGTH,
                "cache": str(root / "text"),
            },
            "batch_size": 4,
            "val_fraction": 0.2,
            "teacher_cache": {"dir": str(root / "cache"), "k": K},
        },
        "teacher": {**TEACHER.model_dump(), "checkpoint": str(root / "teacher.safetensors")},
        "student": {"model": "hf_causal_lm", "kwargs": {"config": LLAMA}},
        "terms": [{"name": "kd", "loss": "fused_linear_kd", "teacher": "cache", "temperature": 2}],
        "train": {"seed": 3},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(settings))
    return root


@pytest.fixture(scope="module")
def url(workspace: Path) -> Iterator[str]:
    """The URL ``torchkd serve-teacher RECIPE --port 0`` prints, serving in a subprocess."""
    command = [sys.executable, "-m", "torchkd", "serve-teacher", "recipe.yaml", "--port", "0"]
    process = subprocess.Popen(
        command,
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    output = []
    try:
        while True:
            try:
                output.append(lines.get(timeout=STARTUP_S))
            except queue.Empty:
                pytest.fail("serve-teacher printed no URL:\n" + "".join(output))
            match = re.match(r"serving at (http://127\.0\.0\.1:\d+)$", output[-1].strip())
            if match:
                break
            if process.poll() is not None:
                pytest.fail("serve-teacher exited:\n" + "".join(output))
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_training_against_the_server_equals_training_from_the_cache(
    workspace: Path, url: str
) -> None:
    recipe = str(workspace / "recipe.yaml")
    assert main(["cache-teacher", recipe, "--error-batches", "0"]) == 0
    assert main(["train", recipe, *FAST, "--run-dir", str(workspace / "from_cache")]) == 0
    served = [f"teacher={{server: {url}}}", "data.teacher_cache=null"]
    assert main(["train", recipe, *FAST, *served, "--run-dir", str(workspace / "served")]) == 0
    for name in ("last.pt", "best.pt"):
        cached = load_student_weights(workspace / "from_cache" / "checkpoints" / name)
        answered = load_student_weights(workspace / "served" / "checkpoints" / name)
        assert cached.keys() == answered.keys()
        assert all(torch.equal(cached[key], answered[key]) for key in cached), name
    metrics = [
        (workspace / run / "metrics.jsonl").read_text().splitlines()
        for run in ("from_cache", "served")
    ]
    drop = {"time_s", "samples_per_s", "wall_s", "elapsed_s"}
    losses = [
        [{k: v for k, v in json.loads(line).items() if k not in drop} for line in run]
        for run in metrics
    ]
    assert losses[0] == losses[1]
    # the server's settings are the cache's
    with urllib.request.urlopen(f"{url}/v1/settings", timeout=30) as response:
        settings = json.loads(response.read())
    manifest = read_manifest(workspace / "cache")
    for key in ("teacher_fingerprint", "teacher_source", "kind", "k", "temperature"):
        assert settings[key] == manifest[key], key


def test_the_recipe_refuses_another_teacher_or_settings(
    workspace: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(workspace / "recipe.yaml")
    run = [*FAST, "--run-dir", str(workspace / "refused"), "data.teacher_cache=null"]
    wrong = "0" * 64
    served = f"teacher={{server: {url}}}"
    refusals = [
        (
            [f"teacher={{server: {url}, fingerprint: '{wrong}'}}"],
            [
                f"teacher.server: the teacher server at {url} serves another teacher",
                f"teacher_fingerprint: '{wrong}' expected, '",
            ],
        ),
        ([f"teacher={{server: {url}, k: 3}}"], ["k: 3 expected, 8 served"]),
        ([served, "terms.0.temperature=4"], ["temperature: 4.0 expected, 2.0 served"]),
        ([served, "terms.0.teacher=logits"], ["terms.0.teacher: a teacher server"]),
        (
            ["teacher={server: 'http://127.0.0.1:1', retries: 0}"],
            ["teacher.server: no answer from the teacher server at http://127.0.0.1:1/v1/"],
        ),
    ]
    for overrides, messages in refusals:
        assert main(["train", recipe, *run, *overrides]) == 2, overrides
        err = capsys.readouterr().err
        assert all(message in err for message in messages), err
    assert not (workspace / "refused").exists()
    assert main(["train", recipe, *FAST, f"teacher={{server: {url}}}"]) == 2
    assert "data.teacher_cache: the teacher server (teacher.server)" in capsys.readouterr().err


def test_a_malformed_request_is_answered_400(url: str) -> None:
    request = urllib.request.Request(f"{url}/v1/teacher", data=b"{not safetensors")
    with pytest.raises(urllib.error.HTTPError) as refusal:
        urllib.request.urlopen(request, timeout=30)
    assert refusal.value.code == 400
    assert "not a safetensors payload" in json.loads(refusal.value.read())["error"]


def test_serve_teacher_usage_errors(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = str(workspace / "recipe.yaml")
    assert main(["serve-teacher", recipe, "--port", "70000"]) == 2
    assert "--port must be at most 65535" in capsys.readouterr().err
    assert main(["serve-teacher", recipe, "teacher=null"]) == 2
    assert "runs the recipe's teacher" in capsys.readouterr().err


def test_an_untrained_teacher_is_the_one_cache_teacher_draws(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchkd.lm.server

    def interrupt() -> None:
        raise KeyboardInterrupt  # Ctrl-C as soon as it serves

    def stopped_at_once(*args: object) -> object:
        httpd = bind(*args)
        monkeypatch.setattr(httpd, "serve_forever", interrupt)
        return httpd

    bind = torchkd.lm.server.bind
    monkeypatch.setattr(torchkd.lm.server, "bind", stopped_at_once)
    recipe = str(workspace / "recipe.yaml")
    untrained = ["teacher.checkpoint=null", "teacher.untrained=true"]
    directory = workspace / "untrained_cache"
    assert main(["serve-teacher", recipe, "--port", "0", *untrained]) == 0
    out = capsys.readouterr().out
    assert "torchkd serve-teacher: stopped" in out
    fingerprint = re.search(r"teacher fingerprint ([0-9a-f]{64})", out)
    assert fingerprint
    argv = ["cache-teacher", recipe, "--dir", str(directory), "--error-batches", "0"]
    assert main([*argv, *untrained]) == 0
    assert read_manifest(directory)["teacher_fingerprint"] == fingerprint.group(1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("teacher={server: 'ftp://host:1'}", "teacher.server: expected a match of"),
        ("teacher={server: 'http://host:1', kk: 3}", "teacher.kk: unknown key (did you mean 'k'?)"),
        ("teacher={server: 'http://host:1', fingerprint: abc}", "teacher.fingerprint: expected"),
        ("teacher={server: 'http://host:1', retries: -1}", "teacher.retries: expected a value"),
        ("teacher={model: mlp, kwarg: {}}", "teacher.kwarg: unknown key (did you mean 'kwargs'?)"),
    ],
)
def test_the_teacher_server_keys_are_checked(workspace: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(workspace / "recipe.yaml", [override])
    assert isinstance(load_recipe(workspace / "recipe.yaml").teacher, ModelConfig)
