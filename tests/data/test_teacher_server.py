"""The teacher server in this process (a thread on 127.0.0.1): its answers equal what a teacher
cache of the same teacher and settings stores, top-k and sampled; settings and fingerprints are
checked on both sides; malformed requests get HTTP 400 and a message; an unreachable server is
named."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors

from torchkd.lm.cache import TeacherCacheDataset, write_teacher_cache
from torchkd.lm.server import (
    TeacherServer,
    TeacherServerClient,
    TeacherServerDataset,
    TeacherServerError,
    bind,
    server_url,
)
from torchkd.lm.server.protocol import ANSWER_PATH, encode

from .test_teacher_cache import SETTINGS, VOCAB, TokenSamples, tiny_llama

KINDS = {
    "topk": {"kind": "topk", "k": SETTINGS["k"], "temperature": 2.0},
    "sampled": {"kind": "sampled", "samples": 6, "k": 3, "seed": 3, "temperature": 2.0},
}


@pytest.fixture(scope="module")
def teacher() -> Any:
    return tiny_llama()


@pytest.fixture(scope="module")
def data() -> TokenSamples:
    return TokenSamples()


@contextmanager
def serving(teacher: Any, **settings: Any) -> Iterator[str]:
    """The URL of a teacher server answering in a thread of this process."""
    httpd = bind(TeacherServer(teacher, **settings), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_url(httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="module", params=sorted(KINDS))
def served(
    request: pytest.FixtureRequest,
    teacher: Any,
    data: TokenSamples,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """A server and a cache of the same teacher and settings."""
    settings = KINDS[request.param]
    directory = tmp_path_factory.mktemp("cache") / request.param
    write_teacher_cache(teacher, data, directory, batch_size=2, rows_per_shard=3, **settings)
    with serving(teacher, **settings) as url:
        yield url, directory, settings


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a refused request (status 200 and {} when answered)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30):
            return 200, {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_served_batches_equal_the_cache_batches(
    served: tuple[str, Path, dict[str, Any]], data: TokenSamples
) -> None:
    url, directory, settings = served
    cached = TeacherCacheDataset(data, directory)
    client = TeacherServerClient(url, {"temperature": 2.0, "kind": settings["kind"]})
    remote = TeacherServerDataset(data, client)
    assert remote.keys == cached.keys
    for position in ([3, 0, 6], [1, 2], 4):  # batches of other rows than the writer's, a sample
        expected, answered = cached[position], remote[position]
        assert answered.keys() == expected.keys()
        for key in cached.keys:
            assert answered[key].dtype == expected[key].dtype, key
            assert torch.equal(answered[key], expected[key]), key
        assert torch.equal(answered["labels"], expected["labels"])


def test_other_settings_or_another_teacher_are_refused(
    served: tuple[str, Path, dict[str, Any]], data: TokenSamples
) -> None:
    url, _, settings = served
    wrong = TeacherServerClient(url, {"temperature": 4.0, "teacher_fingerprint": "0" * 64})
    with pytest.raises(TeacherServerError) as refusal:
        TeacherServerDataset(data, wrong)
    message = str(refusal.value)
    assert message.startswith(f"teacher.server: the teacher server at {url} serves")
    assert "temperature: 4.0 expected, 2.0 served" in message
    assert f"teacher_fingerprint: '{'0' * 64}' expected, '" in message
    # a client pinned to one server refuses another teacher behind the same URL mid-run
    client = TeacherServerClient(url)
    client.settings()
    with serving(tiny_llama(seed=1), **settings) as other:
        client.url = other
        with pytest.raises(TeacherServerError, match=r"refused: HTTP 409: .*teacher_fingerprint"):
            client.answer(data[[0]]["inputs"], torch.tensor([0]))


def test_malformed_requests_get_400_and_a_message(
    served: tuple[str, Path, dict[str, Any]], data: TokenSamples
) -> None:
    url, _, settings = served
    answer = url + ANSWER_PATH
    ids, mask = data.input_ids[:2], data.attention_mask[:2]
    index = torch.tensor([0, 1])

    def request(expected: dict[str, Any] | None = None, **tensors: torch.Tensor) -> bytes:
        return encode(tensors, expected or {})

    refusals = [
        (b"not safetensors", 400, "the request body is not a safetensors payload"),
        (request(attention_mask=mask, index=index), 400, "no input_ids tensor"),
        (request(input_ids=ids.float(), index=index), 400, "non-empty integer [B, L]"),
        (request(input_ids=ids + VOCAB, index=index), 400, f"must lie in [0, {VOCAB})"),
        (request(input_ids=ids, attention_mask=mask[:1], index=index), 400, "attention_mask"),
        (request(input_ids=ids, index=index[:1]), 400, "index must be non-negative int64 [2]"),
        (request(input_ids=ids, index=index, labels=ids.clone()), 400, "unknown request tensors"),
        (request({"chunk_size": 4}, input_ids=ids, index=index), 400, "unknown settings"),
        (request({"k": 99}, input_ids=ids, index=index), 409, "k: 99 expected"),
    ]
    if settings["kind"] == "sampled":
        refusals.append((request(input_ids=ids), 400, "needs the rows' index"))
    for body, status, message in refusals:
        got, refusal = post(answer, body)
        assert got == status and message in refusal["error"], (message, refusal)
    assert post(url + "/v1/elsewhere", b"")[0] == 404
    assert post(answer, save_safetensors({"input_ids": ids, "index": index})) == (200, {})


def test_an_unreachable_server_is_named(data: TokenSamples) -> None:
    with serving(tiny_llama(), kind="topk", k=2) as url:
        pass  # stopped: nothing listens there any more
    client = TeacherServerClient(url, retries=1, backoff=0.01, timeout=5)
    with pytest.raises(TeacherServerError, match=rf"no answer from the teacher server at {url}"):
        client.settings()


def test_a_silent_server_times_out_and_a_failed_answer_is_retried(
    data: TokenSamples, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = TeacherServerClient(url, retries=1, backoff=0.01, timeout=0.2)
        with pytest.raises(TeacherServerError, match=r"after 2 attempts \(.*timed out"):
            client.settings()
    failures = []
    answer = TeacherServer.answer

    def fail_once(self: TeacherServer, body: bytes) -> bytes:
        if not failures:
            failures.append(1)
            raise RuntimeError("out of memory")
        return answer(self, body)

    monkeypatch.setattr(TeacherServer, "answer", fail_once)
    with serving(tiny_llama(), kind="topk", k=2) as url:
        retried = TeacherServerClient(url, backoff=0.01)
        assert retried.answer(data[[0]]["inputs"], torch.tensor([0]))["token_ids"].shape[-1] == 2
        failures.clear()
        once = TeacherServerClient(url, retries=0)
        with pytest.raises(
            TeacherServerError, match=r"HTTP 500: the teacher failed: .*out of memory"
        ):
            once.answer(data[[0]]["inputs"], torch.tensor([0]))
