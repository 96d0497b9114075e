"""Training against a teacher server (``teacher: {server: URL}``): :class:`TeacherServerClient`
asks it for a batch's teacher, :class:`TeacherServerDataset` adds the answer to every batch of
a dataset under the keys a teacher cache adds (converted by the cache reader's
:func:`~torchkd.lm.cache.read.stored_entries`), so a term reads it as it reads a cache."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from torchkd.lm.cache.read import entry_keys, stored_entries
from torchkd.lm.server.protocol import (
    ANSWER_PATH,
    CHECKED,
    INPUT_KEYS,
    PROTOCOL,
    SETTINGS_PATH,
    VERSION,
    TeacherServerError,
    decode,
    encode,
    mismatches,
)

__all__ = ["TeacherServerClient", "TeacherServerDataset"]


class TeacherServerClient:
    """The client of the teacher server at ``url``, expecting ``expected`` settings.

    :meth:`settings` fetches the server's settings once and refuses any that differ from
    ``expected`` (e.g. ``teacher_fingerprint``, ``kind``, ``k``, ``temperature``; None: any);
    from then on every request carries all of them and every answer is checked against them,
    so a server restarted with another teacher is refused mid-run too.

    A request that gets no answer (connection refused, timeout, HTTP 5xx) is retried
    ``retries`` times, waiting ``backoff * 2**attempt`` seconds before each; a refusal (4xx)
    is not retried.

    Args:
        url: ``http://HOST:PORT`` of ``torchkd serve-teacher``.
        expected: the settings the caller expects.
        timeout: seconds to wait for an answer.
        retries: more attempts after a request that got no answer.
        backoff: the first wait between attempts, in seconds.
        where: who gave the URL, for the messages (a recipe's ``teacher.server``).
    """

    def __init__(
        self,
        url: str,
        expected: Mapping[str, Any] | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        where: str = "teacher.server",
    ) -> None:
        self.url = url.rstrip("/")
        self.expected = {"protocol": PROTOCOL, "version": VERSION, **(expected or {})}
        self.timeout, self.retries, self.backoff, self.where = timeout, retries, backoff, where
        self._settings: dict[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        """The server's settings, checked against the expected ones (fetched once).

        Raises:
            TeacherServerError: unreachable, or serving other settings (naming both values).
        """
        if self._settings is None:
            try:
                served = json.loads(self._request(SETTINGS_PATH))
            except json.JSONDecodeError:
                served = None
            if not isinstance(served, dict):
                raise TeacherServerError(
                    f"{self.where}: {self.url}{SETTINGS_PATH} answered no JSON object; is it "
                    "`torchkd serve-teacher`?"
                )
            self._check(served)
            self._settings = served
            self.expected = {key: served.get(key) for key in CHECKED}  # pinned from now on
        return self._settings

    def answer(self, inputs: Mapping[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        """The tensors a teacher cache stores for the rows ``inputs`` (``input_ids``,
        ``attention_mask``: ``[B, L]``) with dataset indices ``index`` (``[B]``), by their
        shard names."""
        self.settings()
        unknown = sorted(set(inputs) - set(INPUT_KEYS) - {"labels"})
        if unknown:
            raise TeacherServerError(
                f"{self.where}: a teacher server takes {list(INPUT_KEYS)} only, but the data's "
                f"inputs also hold {unknown}"
            )
        # copies: safetensors refuses views of one storage (e.g. rows of the dataset's tensor)
        tensors = {key: inputs[key].cpu().clone() for key in INPUT_KEYS if key in inputs}
        tensors["index"] = index.to(torch.int64).reshape(-1).clone()
        body = self._request(ANSWER_PATH, encode(tensors, self.expected))
        try:
            stored, served = decode(body)
        except ValueError as error:
            raise TeacherServerError(f"{self.where}: {self.url} answered {error}") from None
        self._check(served)
        return stored

    def _check(self, served: Mapping[str, Any]) -> None:
        refused = mismatches(self.expected, served)
        if refused:
            raise TeacherServerError(
                f"{self.where}: the teacher server at {self.url} serves another teacher or other "
                "settings than expected (" + "; ".join(refused) + ")"
            )

    def _request(self, path: str, body: bytes | None = None) -> bytes:
        """The body of a GET (no ``body``) or POST answered 200, with the retries."""
        url = f"{self.url}{path}"
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/octet-stream"}
        )
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code}: {_error_message(error)}"
                if error.code < 500:
                    raise TeacherServerError(f"{self.where}: {url} refused: {problem}") from None
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                problem = f"{type(reason).__name__}: {reason}"
        raise TeacherServerError(
            f"{self.where}: no answer from the teacher server at {url} after "
            f"{self.retries + 1} attempts ({problem}); is `torchkd serve-teacher` running there?"
        )


def _error_message(error: urllib.error.HTTPError) -> str:
    """The ``error`` of a refusal's JSON body, else its text."""
    text = error.read().decode(errors="replace")
    try:
        return str(json.loads(text)["error"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return text or str(error.reason)


class TeacherServerDataset:
    """``base_dataset`` with the served teacher added to every sample or batch, as a
    :class:`~torchkd.lm.cache.TeacherCacheDataset` of a cache written by the same teacher with
    the same settings adds it: the same keys (:func:`~torchkd.lm.cache.read.entry_keys`), the
    same values (:func:`~torchkd.lm.cache.read.stored_entries` of what the server answers). A
    batch (a list of positions, as :func:`torchkd.data.batching.batch_loader` asks) is one
    request.

    Args:
        base_dataset: spec-format causal-LM samples (``inputs`` mapping, ``index``).
        client: the server's client (its settings are checked here).
    """

    def __init__(self, base_dataset: Any, client: TeacherServerClient) -> None:
        self.dataset = base_dataset
        self.client = client
        settings = client.settings()
        self.kind, self.k = str(settings["kind"]), settings["k"]

    @property
    def keys(self) -> tuple[str, ...]:
        return entry_keys(self.kind, self.k)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "__setstate__") or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, position: Any) -> dict[str, Any]:
        """A sample, or a batch for a sequence of positions (as the base dataset answers)."""
        sample = self.dataset[position]
        index = torch.as_tensor(sample["index"])
        single = index.dim() == 0
        inputs = sample["inputs"]
        if single:
            inputs = {key: value.unsqueeze(0) for key, value in inputs.items()}
        stored = self.client.answer(inputs, index)
        columns = stored_entries(self.kind, self.k, stored.__getitem__)
        if single:
            columns = tuple(column[0] for column in columns)
        return {**sample, **dict(zip(self.keys, columns, strict=True))}
